"""Transforms: shape, per-element parameters, spectral effect of scaling."""

import numpy as np
import pytest
import tensorflow as tf

from sei_tf import rng, transforms
from conftest import photo


def _high_frequency_fraction(img):
    """Fraction of spectral power above half the Nyquist frequency (grey image)."""
    g = img.mean(axis=-1)
    g = g - g.mean()
    p = np.abs(np.fft.fftshift(np.fft.fft2(g))) ** 2
    h, w = g.shape
    fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w)), indexing="ij")
    radius = np.sqrt(fy**2 + fx**2)
    return p[radius > 0.25].sum() / p.sum()


def test_scale_padded_keeps_shape_and_uses_each_elements_factor():
    x = tf.constant(np.repeat(photo("astronaut", 64)[None], 16, axis=0))
    seed = tf.constant([3, 9])
    t = transforms.Scale((0.75, 0.5))
    out = t(x, seed).numpy()
    assert out.shape == x.shape
    choice = t.draw_factors(16, rng.fold(seed, 0)).numpy()
    assert set(choice) == {0, 1}, "both factors should occur in a batch of 16"
    for k, f in enumerate(t.factors):
        single = transforms.Scale((f,))(x, seed).numpy()  # same offsets, one factor
        np.testing.assert_array_equal(out[choice == k], single[choice == k])
    # The shrunk image itself appears somewhere on the canvas.
    small = tf.image.resize(x[:1], (32, 32), method="bicubic").numpy()[0]
    i = int(np.flatnonzero(choice == 1)[0])
    found = any(np.allclose(out[i, a:a + 32, b:b + 32], small, atol=1e-6)
                for a in range(33) for b in range(33))
    assert found


def test_scale_moves_energy_to_high_frequencies():
    x = photo("astronaut", 128)[None]
    before = _high_frequency_fraction(x[0])
    out = transforms.Scale((0.5,))(tf.constant(x), tf.constant([1, 2])).numpy()
    after = _high_frequency_fraction(out[0])
    assert after > 2.0 * before, (before, after)


def test_scale_resize_kind_returns_smaller_image():
    x = tf.zeros([4, 48, 48, 3])
    out = transforms.Scale((0.5,), kind="resize")(x, tf.constant([0, 0]))
    assert out.shape == (4, 24, 24, 3)
    out = transforms.Scale((0.75,), kind="resize", multiple=8)(tf.zeros([1, 50, 50, 1]), tf.constant([0, 0]))
    assert out.shape == (1, 32, 32, 1)
    with pytest.raises(ValueError):
        transforms.Scale((1.5,))


def test_shift_is_a_circular_roll_per_element():
    x = np.arange(2 * 12 * 10, dtype=np.float32).reshape(2, 12, 10, 1)
    out = transforms.Shift()(tf.constant(x), tf.constant([4, 5])).numpy()
    shifts = []
    for i in range(2):
        dy, dx = (int(v) for v in np.argwhere(out[i, :, :, 0] == x[i, 0, 0, 0])[0])
        np.testing.assert_array_equal(out[i], np.roll(x[i], (dy, dx), axis=(0, 1)))
        shifts.append((dy, dx))


def test_rotation_keeps_a_centred_disc_and_zero_fills_corners():
    n = 33
    r = np.hypot(*np.meshgrid(np.arange(n) - 16, np.arange(n) - 16, indexing="ij"))
    blob = np.exp(-(r**2) / 30.0).astype(np.float32)[None, :, :, None]
    ones = tf.ones([4, n, n, 1])
    out = transforms.Rotate()(tf.constant(np.repeat(blob, 4, axis=0)), tf.constant([1, 1])).numpy()
    np.testing.assert_allclose(out, np.repeat(blob, 4, axis=0), atol=0.03)  # isotropic: unchanged
    corners = transforms.Rotate()(ones, tf.constant([1, 1])).numpy()[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
    assert (corners < 1.0).any(), "corners of a rotated image come from outside: zero fill"
    with tf.GradientTape() as tape:
        tape.watch(ones)
        s = tf.reduce_sum(transforms.Rotate()(ones, tf.constant([1, 1])))
    assert tape.gradient(s, ones) is not None


@pytest.mark.parametrize("task", [{"task": "sr", "factor": 2}, {"task": "sr", "factor": 3}, {"task": "sr", "factor": 4},
                                  {"task": "deblur", "kernel": "gaussian:1"}, {"task": "deblur", "kernel": "gaussian:3"},
                                  {"task": "deblur", "kernel": "box:3"}])
def test_the_benchmark_physics_commute_with_rotations_and_flips(task):
    from sei_tf import physics

    assert transforms.commutes_with_dihedral(physics.from_flags(noise_sigma=5.0, **task))


def test_a_motion_blur_does_not_commute_with_rotations_and_flips():
    from sei_tf import physics

    kernel = np.zeros((5, 5), np.float32)
    kernel[2, :3] = 1 / 3  # a one-sided horizontal streak
    assert not transforms.commutes_with_dihedral(physics.make("deblur", kernel=kernel, noise_sigma=5.0))


def test_dihedral_gives_the_eight_distinct_symmetries_of_the_square():
    x = tf.reshape(tf.range(9, dtype=tf.float32), [1, 3, 3, 1])
    images = {tuple(transforms.dihedral(x, d).numpy().ravel()) for d in range(8)}
    assert len(images) == 8
    np.testing.assert_array_equal(transforms.dihedral(x, 0).numpy(), x.numpy())
    np.testing.assert_array_equal(transforms.dihedral(x, 4).numpy(), x.numpy()[:, :, ::-1])


def test_nearest_rotation_only_moves_pixels_and_round_trips_its_config():
    x = np.random.default_rng(3).random((4, 20, 16, 3)).astype(np.float32)
    nearest = transforms.Rotate("nearest")(tf.constant(x), tf.constant([2, 9])).numpy()
    bilinear = transforms.Rotate()(tf.constant(x), tf.constant([2, 9])).numpy()
    for i in range(4):
        values = set(x[i].ravel().tolist()) | {0.0}
        assert set(nearest[i].ravel().tolist()) <= values, "nearest rotation must not blend pixels"
    assert not set(bilinear.ravel().tolist()) <= set(x.ravel().tolist()) | {0.0}, "bilinear blends pixels"
    rebuilt = transforms.Rotate.from_config(transforms.Rotate("nearest").get_config())
    assert rebuilt.interpolation == "nearest"
    assert transforms.Rotate.from_config({}).interpolation == "bilinear"  # configs saved before the option
    with pytest.raises(ValueError, match="interpolation"):
        transforms.Rotate("bicubic")


def test_the_ei_rotate_presets_differ_only_in_interpolation():
    from sei_tf import objectives

    bilinear, nearest = objectives.preset("ei_rotate"), objectives.preset("ei_rotate_nearest")
    assert [type(t) for t in bilinear] == [type(t) for t in nearest]
    assert (bilinear[1].transform.interpolation, nearest[1].transform.interpolation) == ("bilinear", "nearest")
