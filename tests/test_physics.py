"""Physics operators: adjointness, circular blur, noise, serialisation; kernels."""

import numpy as np
import pytest
import tensorflow as tf

from sei_tf import kernels, losses, noise, physics
from sei_tf.errors import PhysicsError
from conftest import photo

OPERATORS = [
    physics.SuperResolution(2), physics.SuperResolution(3), physics.SuperResolution(4),
    physics.Blur("gaussian:1"), physics.Blur("gaussian:2"), physics.Blur("box:3"),
    physics.Blur(np.random.RandomState(0).rand(5, 7)),  # asymmetric user PSF
]


@pytest.mark.parametrize("op", OPERATORS, ids=lambda op: op.describe())
def test_adjointness(op):
    rs = np.random.RandomState(1)
    x = tf.constant(rs.randn(2, 48, 48, 3).astype(np.float32))
    ax = op.A(x)
    y = tf.constant(rs.randn(*ax.shape).astype(np.float32))
    lhs = float(tf.reduce_sum(tf.cast(ax, tf.float64) * tf.cast(y, tf.float64)))
    aty = op.A_adjoint(y)
    assert aty.shape == x.shape
    rhs = float(tf.reduce_sum(tf.cast(x, tf.float64) * tf.cast(aty, tf.float64)))
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + np.sqrt(x.shape.num_elements())), (lhs, rhs)


def test_blur_is_circular_convolution_like_fft():
    rs = np.random.RandomState(2)
    psf = rs.rand(5, 3)
    op = physics.Blur(psf, noise_sigma=0)
    x = rs.rand(1, 20, 24, 1).astype(np.float32)
    k = np.zeros((20, 24))
    kh, kw = psf.shape
    k[:kh, :kw] = op.kernel
    k = np.roll(k, (-(kh // 2), -(kw // 2)), axis=(0, 1))  # centre the PSF at (0, 0)
    expected = np.real(np.fft.ifft2(np.fft.fft2(x[0, :, :, 0]) * np.fft.fft2(k)))
    np.testing.assert_allclose(op.A(x)[0, :, :, 0], expected, atol=1e-5)


def test_sr_shapes_and_constant_preserved():
    op = physics.SuperResolution(4)
    x = tf.fill([1, 32, 48, 3], 0.3)
    y = op.A(x)
    assert y.shape == (1, 8, 12, 3)
    np.testing.assert_allclose(y, 0.3, atol=1e-5)
    assert op.baseline(y).shape == x.shape


def test_noise_level_in_8bit_units():
    op = physics.Blur("box:2", noise_sigma=5)
    assert op.noise.std == pytest.approx(5 / 255) and op.noise_sigma == 5
    x = tf.constant(photo("camera", 64, channels=1)[None])
    y = op(x, seed=[1, 2])
    assert float(tf.math.reduce_std(y - op.A(x))) == pytest.approx(5 / 255, rel=0.05)
    np.testing.assert_array_equal(op(x, seed=[1, 2]), y)  # stateless: same seed, same noise


@pytest.mark.parametrize("op", OPERATORS[:4] + OPERATORS[-1:], ids=lambda op: op.describe())
def test_config_round_trip(op):
    restored = physics.deserialize(physics.serialize(op))
    assert type(restored) is type(op)
    assert restored.noise_sigma == op.noise_sigma
    x = tf.constant(photo("astronaut", 48)[None])
    np.testing.assert_array_equal(restored.A(x), op.A(x))


def test_make():
    assert physics.make("sr", factor=3).factor == 3
    assert physics.make("deblur", kernel="box:3").kernel.shape == (7, 7)
    with pytest.raises(ValueError, match="Unknown task"):
        physics.make("denoise")


def test_paper_kernels():
    for s in (1, 2, 3):
        k = kernels.gaussian(s)
        assert k.shape == (6 * s + 1,) * 2
        assert k.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.unravel_index(k.argmax(), k.shape) == (3 * s, 3 * s)
    for r in (2, 3, 4):
        k = kernels.box(r)
        assert k.shape == (2 * r + 1,) * 2 and np.allclose(k, k.flat[0])


@pytest.mark.parametrize("bad, message", [
    (-np.ones((3, 3)), "negative"),
    (np.zeros((0, 3)), "non-empty"),
    (np.ones((4, 4)), "must be odd"),
    (np.zeros((3, 3)), "positive mass"),
    (np.full((3, 3), np.nan), "NaN"),
])
def test_bad_kernels_are_rejected(bad, message):
    with pytest.raises(kernels.KernelError, match=message):
        kernels.validate(bad)


def test_psf_from_image_file(tmp_path):
    from PIL import Image
    psf = np.zeros((9, 9), np.uint8)
    psf[2:7, 3:6] = 200
    path = tmp_path / "psf.png"
    Image.fromarray(psf).save(path)
    op = physics.Blur(str(path))
    assert op.kernel.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(op.kernel, psf / psf.sum(), atol=1e-7)
    with pytest.raises(kernels.KernelError, match="Unknown kernel"):
        kernels.from_spec("not/a/file.png")


def test_noise_is_an_object_that_names_its_sure():
    op = physics.SuperResolution(2, noise=noise.Gaussian(7))
    assert op.noise == noise.Gaussian(7) and op.noise_sigma == 7
    assert op.noise.sure_estimator in losses.SURE_ESTIMATORS
    restored = physics.deserialize(physics.serialize(op))
    assert restored.noise == op.noise and restored.factor == 2
    with pytest.raises(PhysicsError, match="not both"):
        physics.Blur("box:1", noise_sigma=3, noise=noise.Gaussian(3))
    with pytest.raises(PhysicsError, match=">= 0"):
        noise.Gaussian(-1)


def test_legacy_configs_and_flat_descriptions_load():
    op = physics.SuperResolution.from_config({"noise_sigma": 4.0, "factor": 3})  # 0.1 configs
    assert op.noise == noise.Gaussian(4) and op.upscale == 3
    blur = physics.from_legacy({"task": "deblur", "kernel": "box:1", "noise_sigma": 2,
                                "kernel_array": (np.ones((3, 3)) / 9).tolist()})
    assert blur.kernel_name == "box:1" and blur.differences(physics.Blur("box:1", 2)) == []
    assert physics.from_legacy({"task": "sr", "factor": 4, "noise_sigma": 1}).upscale == 4
    with pytest.raises(PhysicsError, match="lacks 'factor'"):
        physics.from_legacy({"task": "sr", "noise_sigma": 1})


def test_differences_and_compatibility():
    sr2 = physics.SuperResolution(2, noise_sigma=5)
    assert sr2.differences(physics.SuperResolution(2, noise_sigma=5)) == []
    assert sr2.differences(physics.SuperResolution(2, noise_sigma=6)) == [
        "the noise: gaussian sigma 5/255 vs gaussian sigma 6/255"]
    assert sr2.is_compatible(physics.SuperResolution(2, noise_sigma=9))
    assert not sr2.is_compatible(physics.SuperResolution(3))
    assert not sr2.is_compatible(physics.Blur("box:1"))
    g2 = physics.Blur("gaussian:2")
    assert "blur kernel" in g2.differences(physics.Blur("gaussian:1"))[0]
    assert g2.is_compatible(physics.Blur("gaussian:1"))


def test_size_checks():
    assert physics.SuperResolution(3).fit_signal_size(256, 100) == (255, 99)
    with pytest.raises(PhysicsError, match="too small for sr x4"):
        physics.SuperResolution(4).fit_signal_size(3, 100)
    big = physics.Blur(np.ones((49, 49)))
    with pytest.raises(PhysicsError, match="smaller than the 49x49 blur kernel"):
        big.fit_signal_size(40, 60)
    # A 48-pixel patch leaves no interior for SURE with a 49x49 PSF (margin 24).
    with pytest.raises(PhysicsError, match="patch.*48x48.*49x49 blur kernel.*larger than 48"):
        big.check_measurement_size(48, 48, source="a training patch")
    big.check_measurement_size(49, 49)
    physics.SuperResolution(2).check_measurement_size(1, 1)


def test_from_flags_fills_in_from_a_recorded_physics():
    recorded = physics.Blur("gaussian:2", noise_sigma=5)
    assert recorded.differences(physics.from_flags(like=recorded)) == []
    assert recorded.differences(physics.from_flags(noise_sigma=5, like=recorded)) == []
    # A kernel flag that differs from the recorded one is a difference (it was ignored in 0.1).
    assert "blur kernel" in recorded.differences(physics.from_flags(kernel="box:3", like=recorded))[0]
    assert "sr x2" in recorded.differences(physics.from_flags(task="sr", like=recorded))[0]
    sr = physics.from_flags(task="sr", factor=3, noise_sigma=2)
    assert sr.factor == 3 and sr.noise == noise.Gaussian(2)
    with pytest.raises(PhysicsError, match="--kernel does not apply to task 'sr'"):
        physics.from_flags(task="sr", kernel="box:1", noise_sigma=1)
    with pytest.raises(PhysicsError, match="noise level"):
        physics.from_flags(task="deblur")
