"""ResidualCNN: any input size, its stated receptive field is exact, reduced precision keeps a float32 skip."""

import json
import zipfile

import keras
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


# ------------------------------------------------------------ reduced precision


def _random_tail(net, seed=0, scale=0.05):
    net.tail.kernel.assign(scale * tf.random.stateless_normal(net.tail.kernel.shape, [seed, 1]))


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_layers_float32_weights_and_output(precision):
    net = models.build("cnn", upscale=2, channels=3, precision=precision, features=8, num_blocks=2)
    out = net(tf.random.stateless_uniform([2, 6, 5, 3], [0, 1]))
    convs = [layer for layer in net._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 2 * 2 + 3
    assert all(c.compute_dtype == precision for c in convs)
    assert all(v.dtype == "float32" for v in net.variables)
    assert net.precision == precision and net.dtype_policy.name == "mixed_" + precision
    assert out.dtype == tf.float32 and out.shape == (2, 12, 10, 3)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone


@pytest.mark.parametrize("upscale", [1, 2])
def test_reduced_precision_skip_path_is_exact_float32(upscale):
    """With a zero tail the output is the float32 skip itself, bit for bit.

    Random float32 inputs are not representable in bfloat16: had the input
    been cast to bfloat16 first, the skip would be off by up to 2**-9.
    """
    y = tf.random.stateless_uniform([2, 7, 9, 3], [2, 3])
    net = models.build("cnn", upscale=upscale, channels=3, precision="bfloat16", features=8, num_blocks=1)
    skip = y if upscale == 1 else tf.image.resize(y, [7 * upscale, 9 * upscale], method="bicubic")
    np.testing.assert_array_equal(net(y).numpy(), skip.numpy())
    # With a learned residual, the output is skip + float32(bfloat16 residual).
    _random_tail(net)
    residual = net.residual(y)
    assert residual.dtype == tf.bfloat16
    np.testing.assert_array_equal(net(y).numpy(), (skip + tf.cast(residual, tf.float32)).numpy())


def test_bfloat16_forward_and_gradients_close_to_float32():
    keras.utils.set_random_seed(3)
    nets = {p: models.build("cnn", upscale=2, channels=3, precision=p, features=16, num_blocks=2)
            for p in ("float32", "bfloat16")}
    y = tf.random.stateless_uniform([2, 12, 12, 3], [4, 5])
    nets["float32"](y)
    _random_tail(nets["float32"])
    nets["bfloat16"](y)
    nets["bfloat16"].set_weights(nets["float32"].get_weights())
    grads, outs = {}, {}
    for p, net in nets.items():
        with tf.GradientTape() as tape:
            outs[p] = net(y)
            loss = tf.reduce_mean(tf.square(outs[p] - 0.5))
        grads[p] = tape.gradient(loss, net.trainable_variables)
    residual = (outs["float32"] - tf.image.resize(y, [24, 24], method="bicubic")).numpy()
    err = np.abs(outs["bfloat16"].numpy() - outs["float32"].numpy())
    # A few bfloat16 steps (2**-8 relative) of the residual, far below the residual itself.
    assert 0 < err.max() < 0.05 * np.abs(residual).max()
    for g16, g32 in zip(grads["bfloat16"], grads["float32"]):
        assert g16.dtype == tf.float32 and np.all(np.isfinite(g16.numpy()))
        rel = np.linalg.norm(g16.numpy() - g32.numpy()) / np.linalg.norm(g32.numpy())
        assert rel < 0.05, rel


def test_precision_round_trips_through_config_and_keras_file(tmp_path):
    net = models.build("cnn", upscale=2, channels=3, precision="bfloat16", features=8, num_blocks=1)
    y = tf.random.stateless_uniform([1, 8, 8, 3], [6, 7])
    net(y)
    _random_tail(net)
    assert net.get_config()["precision"] == "bfloat16"
    again = models.ResidualCNN.from_config(net.get_config())
    assert again.precision == "bfloat16"
    path = str(tmp_path / "bf16.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.precision == "bfloat16"
    assert all(c.compute_dtype == "bfloat16" for c in loaded._flatten_layers(include_self=False))
    np.testing.assert_array_equal(loaded(y).numpy(), net(y).numpy())


def test_file_without_precision_loads_as_float32(tmp_path):
    """.keras files from before `precision` existed carry only a float32 dtype policy."""
    net = models.build("cnn", upscale=2, channels=3, features=8, num_blocks=1)
    y = tf.random.stateless_uniform([1, 8, 8, 3], [6, 7])
    net(y)
    _random_tail(net)
    path = tmp_path / "new.keras"
    net.save(str(path))
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                assert config["config"].pop("precision") == "float32"
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    loaded = keras.saving.load_model(str(old))
    assert loaded.precision == "float32" and loaded.get_config()["precision"] == "float32"
    np.testing.assert_array_equal(loaded(y).numpy(), net(y).numpy())
