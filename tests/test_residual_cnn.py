"""ResidualCNN: any input size, and its stated receptive field is exact."""

import numpy as np
import pytest
import tensorflow as tf

from sei_tf import models


@pytest.mark.parametrize("upscale", [1, 2, 3, 4])
def test_odd_sizes(upscale):
    net = models.build("cnn", upscale=upscale, channels=1, features=8, num_blocks=1)
    assert net(tf.zeros([2, 7, 13, 1])).shape == (2, 7 * upscale, 13 * upscale, 1)


@pytest.mark.parametrize("upscale", [1, 2])
def test_receptive_field_matches_tile_context(upscale):
    net = models.build("cnn", upscale=upscale, channels=1, features=4, num_blocks=2)
    # Non-zero tail so the learned branch contributes.
    net(tf.zeros([1, 8, 8, 1]))
    net.tail.kernel.assign(tf.random.stateless_normal(net.tail.kernel.shape, [0, 1]))
    n, c = 41, 20
    x = tf.random.stateless_uniform([1, n, n, 1], [1, 2])
    poke = tf.tensor_scatter_nd_add(x, [[0, c, c, 0]], [1.0])
    changed = np.abs((net(poke) - net(x)).numpy()[0, :, :, 0]) > 0
    rows = np.flatnonzero(changed.any(axis=1))
    radius = models.tile_context(net)
    assert radius == 2 * 2 + 3
    # Output pixels influenced by input pixel c span exactly +-radius input pixels.
    lo, hi = rows.min() // upscale, rows.max() // upscale
    assert (lo, hi) == (c - radius, c + radius)
