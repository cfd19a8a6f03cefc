"""Noise models (sei_tf.noise): their statistics, sampling edge cases, spec strings and storage."""

import json

import numpy as np
import pytest
import tensorflow as tf

from sei_tf import noise, physics, rng
from sei_tf.errors import PhysicsError


def _constant_batch(values, n):
    """(n, len(values), 1, 1): every example holds the same measurement means."""
    return tf.constant(np.tile(np.asarray(values, np.float32)[None, :, None, None], [n, 1, 1, 1]))


@pytest.mark.parametrize("model", [noise.Poisson(gain=0.01), noise.PoissonGaussian(gain=0.004, sigma=3),
                                   noise.Gaussian(sigma=7)])
def test_mean_and_variance_match_the_documented_units(model):
    n = 20000
    means = [0.05, 0.3, 0.9]
    y = model.sample(_constant_batch(means, n), seed=tf.constant([1, 2])).numpy()[:, :, 0, 0]
    gain = model.gain
    expected_var = gain * np.asarray(means) + model.gaussian_variance
    sample_mean, sample_var = y.mean(axis=0), y.var(axis=0)
    # E[y] = A x within 4 standard errors; Var[y] = gain A x + (sigma/255)^2 within 4 standard errors
    # of the sample variance (about var * sqrt(2/n) for these near-Gaussian counts).
    np.testing.assert_array_less(np.abs(sample_mean - means), 4 * np.sqrt(expected_var / n))
    np.testing.assert_array_less(np.abs(sample_var - expected_var), 4 * expected_var * np.sqrt(2.0 / n) + 1e-9)


def test_poisson_values_are_whole_photon_counts():
    y = noise.Poisson(gain=0.02).sample(_constant_batch([0.1, 0.5], 100), seed=tf.constant([3, 4])).numpy()
    counts = y / 0.02
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)


@pytest.mark.parametrize("model", [noise.Poisson(gain=0.01), noise.PoissonGaussian(gain=0.01, sigma=2)])
def test_negative_and_zero_rates_do_not_break_sampling(model):
    # A blur of a non-negative image rings below 0 near edges; dark pixels have rate 0 (DeepInverse #1115).
    ax = tf.constant([[-0.2, -1e-6, 0.0, 1e-9, 0.5]], tf.float32)[:, :, None, None]
    y = model.sample(tf.tile(ax, [500, 1, 1, 1]), seed=tf.constant([5, 6])).numpy()[:, :, 0, 0]
    assert np.all(np.isfinite(y))
    photons = y if isinstance(model, noise.Poisson) else None
    if photons is not None:
        assert np.all(photons[:, :3] == 0.0)  # rate max(A x, 0) / gain = 0: no photon
        assert photons[:, 4].mean() > 0.4
    else:  # only the Gaussian part remains where the rate is 0
        assert abs(y[:, :3].mean()) < 4 * model.std / np.sqrt(1500)


def test_photon_noise_passes_the_gradient_of_its_mean():
    ax = tf.Variable(tf.fill([2, 4, 4, 1], 0.3))
    with tf.GradientTape() as tape:
        y = noise.PoissonGaussian(gain=0.01, sigma=2).sample(ax * 2.0, seed=tf.constant([1, 2]))
        loss = tf.reduce_sum(y)
    np.testing.assert_allclose(tape.gradient(loss, ax).numpy(), 2.0)


def test_sampling_is_stateless():
    model = noise.PoissonGaussian(gain=0.01, sigma=2)
    ax = _constant_batch([0.2, 0.7], 4)
    a = model.sample(ax, seed=tf.constant([7, 8])).numpy()
    np.testing.assert_array_equal(a, model.sample(ax, seed=tf.constant([7, 8])).numpy())
    assert not np.array_equal(a, model.sample(ax, seed=tf.constant([7, 9])).numpy())


def test_poisson_draws_of_a_replica_are_its_slice_of_the_global_batch(monkeypatch):
    rate = tf.random.uniform([6, 5, 5, 1], maxval=30.0, seed=1)
    seed = tf.constant([11, 12])
    whole = rng.poisson(rate, seed).numpy()
    for replica in range(3):  # three replicas, two examples each
        monkeypatch.setattr(rng, "_replica_slice", lambda r=replica: (r, 3))
        part = rng.poisson(rate[2 * replica:2 * replica + 2], seed).numpy()
        np.testing.assert_array_equal(part, whole[2 * replica:2 * replica + 2])


def test_quantized_files_hold_8_bit_levels_and_mark_saturation():
    model = noise.Quantized(noise.Gaussian(sigma=10), bits=8)
    y = model.sample(_constant_batch([0.0, 0.5, 1.0], 200), seed=tf.constant([1, 1])).numpy()
    np.testing.assert_allclose(y * 255, np.round(y * 255), atol=1e-4)
    assert y.min() == 0.0 and y.max() == 1.0
    mask = model.unsaturated(tf.constant(y)).numpy()
    np.testing.assert_array_equal(mask, ((y > 0) & (y < 1)).astype(np.float32))
    assert model.gaussian_variance == pytest.approx((10 / 255) ** 2 + (1 / 255) ** 2 / 12)
    assert model.sure_estimator == "gaussian" and model.gain == 0.0


# --- spec strings -----------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("gaussian:sigma=5", noise.Gaussian(5)),
    ("poisson:gain=0.01", noise.Poisson(0.01)),
    ("poisson_gaussian:gain=0.01,sigma=2", noise.PoissonGaussian(0.01, 2)),
    (" Poisson_Gaussian: sigma = 2 , gain=1e-2 ", noise.PoissonGaussian(0.01, 2)),
    ("gaussian:sigma=5,bits=8", noise.Quantized(noise.Gaussian(5), 8)),
])
def test_parse_spec(spec, expected):
    parsed = noise.parse_spec(spec)
    assert parsed == expected
    assert noise.parse_spec(parsed.spec()) == parsed  # spec() is parse_spec's inverse


@pytest.mark.parametrize("spec, named", [
    ("laplace:b=1", "'laplace'"),
    ("poisson:gain=0.01,sigma=2", "'sigma' in noise spec"),
    ("poisson_gaussian:gain=0.01", "lacks sigma"),
    ("gaussian:sigma=five", "sigma='five'"),
    ("gaussian:sigma=5,sigma=6", "'sigma' is given twice"),
    ("gaussian:sigma", "'sigma' in noise spec"),
    ("poisson:gain=0", "gain must be > 0"),
    ("gaussian:sigma=-1", "must be >= 0"),
    ("gaussian:sigma=5,bits=0", "bits must be"),
    ("auto", "only `train` takes it"),
])
def test_parse_errors_name_the_bad_part(spec, named):
    with pytest.raises(PhysicsError, match=None) as err:
        noise.parse_spec(spec)
    assert named in str(err.value), str(err.value)


# --- where the noise travels ------------------------------------------------------------

MODELS = [noise.Poisson(0.01), noise.PoissonGaussian(0.005, 1.5), noise.Quantized(noise.Poisson(0.02), 8)]


@pytest.mark.parametrize("model", MODELS)
def test_physics_serialisation_keeps_the_noise(model):
    op = physics.Blur("gaussian:1", noise=model)
    back = physics.deserialize(json.loads(json.dumps(physics.serialize(op))))
    assert back.noise == model and back.differences(op) == []
    assert op.noise_sigma is None  # not a Gaussian level: no sigma to compare with estimates
    other = physics.Blur("gaussian:1", noise=noise.Gaussian(5))
    assert any("the noise" in d for d in op.differences(other))


def test_from_flags_noise_and_noise_sigma():
    op = physics.from_flags("sr", noise="poisson_gaussian:gain=0.01,sigma=2", factor=2)
    assert op.noise == noise.PoissonGaussian(0.01, 2)
    assert physics.from_flags("sr", 5.0, noise="gaussian:sigma=5").noise == noise.Gaussian(5)
    with pytest.raises(PhysicsError, match="disagree"):
        physics.from_flags("sr", 5.0, noise="gaussian:sigma=4")
    with pytest.raises(PhysicsError, match="disagree"):
        physics.from_flags("sr", 5.0, noise="poisson:gain=0.01")
    like = physics.make("deblur", kernel="gaussian:1", noise="poisson:gain=0.01")
    assert physics.from_flags(like=like).noise == noise.Poisson(0.01)  # the sidecar's noise by default
    with pytest.raises(PhysicsError, match="noise level"):
        physics.from_flags("sr")


def test_sidecar_records_the_noise(tmp_path):
    from sei_tf import data

    gt = tmp_path / "gt"
    data.write_image(gt / "a.png", np.linspace(0, 1, 24 * 24 * 3, dtype=np.float32).reshape(24, 24, 3))
    op = physics.make("deblur", kernel="gaussian:1", noise="poisson_gaussian:gain=0.01,sigma=2")
    data.simulate(gt, tmp_path / "out", op, shorter_side=0, progress=False)
    meta = data.read_sidecar(tmp_path / "out")
    assert data.physics_from_sidecar(meta).noise == op.noise
    assert meta["summary"]["noise"] == op.noise.describe()
    with pytest.raises(data.DataError, match="poisson-gaussian gain 0.01"):
        data.check_noise_level(meta, 2.0)  # a Gaussian sigma contradicts a Poisson-Gaussian sidecar
    y = data.read_image(tmp_path / "out" / "measurements" / "a.tif")
    assert np.all(np.isfinite(y)) and y.shape == (24, 24, 3)


def test_saved_model_and_onnx_metadata_keep_the_noise(tmp_path):
    import keras

    from export import onnx_export
    from sei_tf import models, sei_model
    from serving.metadata import RestorerMetadata

    op = physics.SuperResolution(2, noise="poisson_gaussian:gain=0.01,sigma=2")
    backbone = models.build("cnn", upscale=2, channels=3, features=8, num_blocks=1)
    model = sei_model.SEIModel(backbone, op, objective="sei")
    model(tf.zeros([1, 8, 8, 3]))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert loaded.physics.noise == op.noise
    props = onnx_export.build_metadata(backbone, model, "fp32")
    meta = RestorerMetadata.from_props(props)
    assert physics.deserialize(meta.physics).noise == op.noise
    assert props["noise"] == op.noise.describe() and meta.noise_sigma is None
    assert meta.as_dict()["noise"] == op.noise.describe()
