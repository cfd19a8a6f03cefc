"""SEIModel: training from measurements, saving, and distribution."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from sei_tf import metrics, models, objectives, physics, sei_model, transforms
from sei_tf.errors import SeiTfError
from conftest import photo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _measurements(op, names, size, seed=0):
    xs = np.stack([photo(n, size) for n in names])
    ys = op(tf.constant(xs), seed=[seed, 0]).numpy()
    return ys, xs


def _patches(ys, patch, batch, seed=0):
    ds = tf.data.Dataset.range(10**6).map(
        lambda k: tf.image.stateless_random_crop(
            tf.gather(ys, k % len(ys)), [patch, patch, ys.shape[-1]], tf.stack([seed, tf.cast(k, tf.int32)])))
    return ds.batch(batch, drop_remainder=True)


@pytest.mark.slow
def test_short_fit_on_real_photographs_beats_bicubic():
    keras.utils.set_random_seed(0)
    op = physics.SuperResolution(2, noise_sigma=5)
    ys, xs = _measurements(op, ["astronaut", "chelsea", "coffee"], 128)
    model = sei_model.SEIModel(models.build("cnn", upscale=2, features=24, num_blocks=3), op)
    model.compile(keras.optimizers.Adam(5e-4))

    initial = models.build("cnn", upscale=2, features=24, num_blocks=3)
    initial(ys[:1])  # builds its weights

    def sure():
        return float(tf.reduce_mean(model.loss_terms(ys, seed=[1, 2], training=False)["sure"]))

    sure_before = sure()
    initial.set_weights(model.backbone.get_weights())
    history = model.fit(_patches(ys, 24, 8), steps_per_epoch=40, epochs=3, verbose=0)
    assert set(history.history) == {"loss", "sure", "seq"}
    sure_after = sure()
    assert sure_after < 0.8 * sure_before, (sure_before, sure_after)
    # The SEQ target moves (it is the network's own output, sharpening as it
    # learns), so its raw value may rise. With the target held fixed, the
    # trained network must fit it better than the initial one.
    seed = tf.constant([3, 4])
    x2 = model.objective[1].transform(model(ys), seed)
    y2 = op(x2, seed)
    seq_initial = float(tf.reduce_mean(tf.square(initial(y2) - x2)))
    seq_trained = float(tf.reduce_mean(tf.square(model(y2) - x2)))
    assert seq_trained < seq_initial, (seq_initial, seq_trained)
    baseline = float(tf.reduce_mean(metrics.psnr(op.baseline(ys), xs)))
    ours = float(tf.reduce_mean(metrics.psnr(model.predict(ys, verbose=0), xs)))
    print(f"SURE {sure_before:.6f} -> {sure_after:.6f}; fixed-target SEQ {seq_initial:.6f} -> "
          f"{seq_trained:.6f}; bicubic {baseline:.2f} dB, SEI after 120 steps {ours:.2f} dB")
    assert ours > baseline + 0.1, (baseline, ours)


def test_test_step_reports_psnr_and_ssim():
    op = physics.Blur("gaussian:1", noise_sigma=5)
    ys, xs = _measurements(op, ["astronaut", "coffee"], 48)
    model = sei_model.SEIModel(models.build("cnn", features=8, num_blocks=1), op)
    model.compile()
    result = model.evaluate(tf.data.Dataset.from_tensor_slices((ys, xs)).batch(1), verbose=0, return_dict=True)
    # The CNN starts as the identity (zero-initialised tail): PSNR equals the blurred input's.
    expected = float(tf.reduce_mean(metrics.psnr(ys, xs)))
    assert result["psnr"] == pytest.approx(expected, abs=1e-3)
    assert 0 < result["ssim"] < 1


def test_supervised_needs_ground_truth():
    model = sei_model.SEIModel(models.build("cnn", features=8, num_blocks=1), physics.Blur("box:1"),
                              method="supervised")
    model.compile()
    with pytest.raises(SeiTfError, match="needs \\(measurement, ground truth\\)"):
        model.fit(tf.data.Dataset.from_tensor_slices(tf.zeros([2, 16, 16, 3])).batch(2), verbose=0)
    with pytest.raises(SeiTfError, match="Unknown method"):
        sei_model.SEIModel(models.build("cnn"), physics.Blur("box:1"), method="magic")


@pytest.mark.parametrize("backbone, op", [
    ("cnn", physics.SuperResolution(3, noise_sigma=2)),
    pytest.param("swinir", physics.Blur(np.random.RandomState(0).rand(3, 5), noise_sigma=7), marks=pytest.mark.slow),
])
def test_save_load_predict_identical(tmp_path, backbone, op):
    sizes = {"cnn": dict(features=8, num_blocks=1),
             "swinir": dict(embed_dim=12, depths=(2,), num_heads=(2,), window_size=4)}[backbone]
    upscale = getattr(op, "factor", 1)
    model = sei_model.SEIModel(models.build(backbone, upscale=upscale, **sizes), op, method="ei_rotate",
                              stop_gradient=False, seed=11)
    model.compile(keras.optimizers.Adam(1e-3))
    ys = tf.random.stateless_uniform([2, 12, 12, 3], [1, 2])
    model.fit(tf.data.Dataset.from_tensor_slices(ys).batch(2), verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    y = tf.constant(photo("chelsea", 21)[None])
    np.testing.assert_array_equal(loaded.predict(y, verbose=0), model.predict(y, verbose=0))
    assert loaded.method == "ei_rotate" and loaded.seed == 11
    assert [t.name for t in loaded.objective] == ["sure", "ei"] and loaded.objective[1].stop_gradient is False
    assert isinstance(loaded.objective[1].transform, transforms.Rotate)
    assert type(loaded.physics) is type(op) and loaded.physics.noise_sigma == op.noise_sigma
    np.testing.assert_array_equal(loaded.physics.A(y), op.A(y))
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 1
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_learning_rate_schedule_holds_then_decays():
    s = sei_model.DelayedLinearDecay(2e-4, total_steps=100)
    values = [float(s(k)) for k in (0, 50, 75, 100, 200)]
    np.testing.assert_allclose(values, [2e-4, 2e-4, 1.01e-4, 2e-6, 2e-6], rtol=1e-5)


DISTRIBUTED = textwrap.dedent("""
    import os, sys, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from sei_tf import models, physics, sei_model

    def make(method, noise):
        keras.utils.set_random_seed(0)
        op = physics.SuperResolution(2, noise=noise)
        m = sei_model.SEIModel(models.build("cnn", upscale=2, features=8, num_blocks=1), op, method=method)
        m.compile(keras.optimizers.SGD(0.5))
        m.build((None, None, None, 3))
        return m

    ys = tf.random.stateless_uniform([4, 16, 16, 3], [5, 6])
    runs = [("sei", "gaussian:sigma=5"), ("ei_rotate", "gaussian:sigma=5"), ("css", "gaussian:sigma=5"),
            ("sei", "poisson_gaussian:gain=0.01,sigma=2")]  # Poisson draws per replica, too
    for method, noise in runs:
        single = make(method, noise)
        start = [w.numpy() for w in single.backbone.weights]
        single.fit(tf.data.Dataset.from_tensor_slices(ys).batch(4), epochs=1, verbose=0)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            dist = make(method, noise)
            dist.backbone.set_weights(start)
            dist.fit(tf.data.Dataset.from_tensor_slices(ys).batch(4), epochs=1, verbose=0)
        moved = max(float(np.abs(a.numpy() - b).max()) for a, b in zip(single.backbone.weights, start))
        diff = max(float(np.abs(a.numpy() - b.numpy()).max())
                   for a, b in zip(single.backbone.weights, dist.backbone.weights))
        print(method + "/" + noise.split(":")[0], "moved", moved, "diff", diff)
""")


@pytest.mark.slow
def test_mirrored_step_matches_single_device():
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", DISTRIBUTED], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [l.split() for l in out.stdout.splitlines() if " moved " in l]
    assert len(lines) == 4, out.stdout
    for method, _, moved, _, diff in lines:
        # One SGD step moves weights by ~1e-3; both runs agree to float32 reduction order.
        assert float(moved) > 1e-4, (method, moved)
        assert float(diff) < 1e-5, (method, diff)


def test_custom_objective_is_a_list_of_terms(tmp_path):
    from sei_tf import losses

    op = physics.Blur("box:1", noise_sigma=3)
    terms = [losses.SURE(tau=0.02), losses.Equivariance(transforms.Shift(), name="shift", weight=0.5)]
    model = sei_model.SEIModel(models.build("cnn", features=8, num_blocks=1), op, objective=terms)
    model.compile()
    ys = tf.random.stateless_uniform([2, 16, 16, 3], [1, 2])
    logs = model.fit(tf.data.Dataset.from_tensor_slices(ys).batch(2), verbose=0).history
    assert set(logs) == {"loss", "sure", "shift"}
    # The objective is the weighted sum of the terms.
    values = model.loss_terms(ys, seed=[5, 6])
    assert set(values) == {"sure", "shift"}
    np.testing.assert_allclose(objectives.total(model.objective, values), values["sure"] + 0.5 * values["shift"],
                               rtol=1e-6)
    model.save(tmp_path / "custom.keras")
    loaded = keras.saving.load_model(tmp_path / "custom.keras")
    assert loaded.method == "custom" and [t.name for t in loaded.objective] == ["sure", "shift"]
    assert loaded.objective[0].tau == 0.02 and loaded.objective[1].weight == 0.5
    with pytest.raises(SeiTfError, match="only apply to a preset"):
        sei_model.SEIModel(models.build("cnn", features=8, num_blocks=1), op, objective=terms, alpha=2.0)


def test_a_negative_epoch_mean_of_sure_is_warned_about_once(caplog):
    """SURE estimates a squared error: an epoch mean far below 0 means it no longer measures it."""
    from sei_tf import callbacks, noise

    gaussian = noise.Gaussian(5.0)
    check = callbacks.WarnNegativeSURE.for_objective(objectives.preset("sei"), gaussian)
    floor = -0.1 * (5.0 / 255) ** 2
    assert check.keys == ["sure", "val_sure"] and check.floor == pytest.approx(floor) and check.tau == 0.001
    assert callbacks.WarnNegativeSURE.for_objective(objectives.preset("sei", tau=0.01), gaussian).tau == 0.01
    with caplog.at_level("WARNING"):
        check.on_epoch_end(0, {"sure": 2e-4, "val_sure": 0.5 * floor, "seq": -1.0})  # noise around 0: quiet
        assert not caplog.records
        check.on_epoch_end(1, {"sure": 2 * floor, "val_sure": 1e-4})
        check.on_epoch_end(2, {"sure": 3 * floor})  # said once
    assert len(caplog.records) == 1 and "epoch 2: mean sure" in caplog.text and "--tau" in caplog.text
    # No SURE term, or noise without a Gaussian part: nothing to check.
    assert callbacks.WarnNegativeSURE.for_objective(objectives.preset("supervised"), gaussian) is None
    assert callbacks.WarnNegativeSURE.for_objective(objectives.preset("sure"), noise.Poisson(0.01)) is None
