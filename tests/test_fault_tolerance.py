"""Fault tolerance: SIGKILL + resume gives the uninterrupted run's weights; NaN stops; data warnings.

The CLI-level "the log continues after a resume" check lives in test_cli.py;
here the stronger property is checked: a run killed mid-epoch and restarted
ends with the same weights (and the same per-epoch log) as an uninterrupted
run with the same seeds.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import photo
from sei_tf import callbacks as callbacks_lib
from sei_tf import distributed, models, physics, sei_model

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = {"features": 8, "num_blocks": 1}


def _env(tmp):
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
            "TMPDIR": str(tmp)}


def _kill(proc):
    """SIGKILL a process started with start_new_session=True, with all its children."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _start(args, log, tmp):
    return subprocess.Popen([sys.executable, "-m", "sei_tf.train", *args], env=_env(tmp), cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _run(args, tmp, name, timeout=240):
    """Runs the train CLI to the end (killed after `timeout` s); returns (returncode, output)."""
    path = tmp / f"{name}.log"
    with open(path, "w") as log:
        proc = _start(args, log, tmp)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill(proc)
    return proc.returncode, path.read_text()


@pytest.fixture(scope="module")
def measurements(tmp_path_factory):
    """Three x2 SR measurements (sigma 5/255) of real photographs, as .npy files."""
    folder = tmp_path_factory.mktemp("measurements")
    op = physics.SuperResolution(2, noise_sigma=5)
    for i, name in enumerate(["astronaut", "chelsea", "coffee"]):
        y = op(tf.constant(photo(name, 64)[None]), seed=[i, 0]).numpy()[0]
        np.save(folder / f"{name}.npy", y.astype(np.float32))
    return str(folder)


def _train_args(measurements, output, epochs, steps):
    return ["--measurements", measurements, "--task", "sr", "--factor", "2", "--noise_sigma", "5",
            "--backbone_args", json.dumps(CNN), "--epochs", str(epochs), "--steps_per_epoch", str(steps),
            "--batch_size", "4", "--patch_size", "16", "--output", str(output), "--noprogress"]


def _saved_state(path):
    model = keras.saving.load_model(path)
    return ([w.numpy() for w in model.backbone.weights + model.anchor],
            [np.asarray(v) for v in model.optimizer.variables])


def _finetune_args(tmp):
    """A fine-tuning run: from a saved model (tail not zero), L2-SP, two trainable layers, a held-out file."""
    keras.utils.set_random_seed(3)
    backbone = models.build("cnn", upscale=2, **CNN)
    source = sei_model.SEIModel(backbone, physics.SuperResolution(2, noise_sigma=3), seed=3)
    backbone.tail.kernel.assign(tf.random.stateless_normal(backbone.tail.kernel.shape, [3, 4]) * 0.01)
    path = str(tmp / "source.keras")
    source.save(path)
    return ["--init_from", path, "--l2sp", "0.5", "--trainable_layers", "block0_*,tail", "--holdout", "0.34"]


def _log_rows(path):
    with open(path) as f:
        return [{k: v for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.parametrize("finetune", [False, True], ids=["from_scratch", "finetune"])
def test_sigkill_mid_epoch_then_resume_gives_uninterrupted_weights(measurements, tmp_path, finetune):
    epochs, steps = 3, 12
    extra = _finetune_args(tmp_path) if finetune else []
    rc, out = _run(_train_args(measurements, tmp_path / "reference", epochs, steps) + extra, tmp_path, "reference")
    assert rc == 0, out[-3000:]

    run = tmp_path / "killed"
    meta = run / "backup" / "training_metadata.json"
    with open(tmp_path / "first.log", "w") as log:
        proc = _start(_train_args(measurements, run, epochs, steps) + extra, log, tmp_path)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if json.loads(meta.read_text())["epoch"] >= 1:
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.02)
            time.sleep(0.15)  # a few steps into the next epoch
            assert proc.poll() is None, "the run ended before it could be killed:\n" + (
                tmp_path / "first.log").read_text()[-3000:]
        finally:
            _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    finished = json.loads(meta.read_text())["epoch"]
    assert 1 <= finished < epochs, finished

    rc, out = _run(_train_args(measurements, run, epochs, steps) + extra, tmp_path, "resumed")
    assert rc == 0, out[-3000:]
    assert f"Resuming after epoch {finished}" in out
    if finetune:  # the weights come from backup/, not from --init_from again
        assert "(architecture only: resuming)" in out
    assert not (run / "backup").exists()  # removed after a successful run

    ref_w, ref_opt = _saved_state(str(tmp_path / "reference" / "model.keras"))
    got_w, got_opt = _saved_state(str(run / "model.keras"))
    assert int(got_opt[0]) == epochs * steps  # optimizer iterations
    # Same data (finished epochs' batches skipped), same stateless seeds (seed, iteration), same
    # restored Adam state: the resumed run repeats the uninterrupted one operation for operation.
    # Measured: bit-identical on CPU; 1e-6 leaves room for threading-dependent reduction order.
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref_w + ref_opt, got_w + got_opt))
    print(f"killed after {finished} finished epoch(s); resumed vs uninterrupted max |diff| {diff:.3g}")
    assert diff <= 1e-6, diff
    ref_log, got_log = _log_rows(tmp_path / "reference" / "log.csv"), _log_rows(run / "log.csv")
    assert [r["epoch"] for r in got_log] == [str(e) for e in range(epochs)]
    for a, b in zip(ref_log, got_log):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5, abs=1e-9), (a, b)
    if finetune:
        for a, b in zip(ref_log, got_log):
            for key in ("l2sp", "val_loss", "val_sure", "val_seq"):
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-9), (key, a, b)
        # The best held-out epoch is the same in both runs, and best.keras holds it.
        ref_best = json.loads((tmp_path / "reference" / "best.json").read_text())
        got_best = json.loads((run / "best.json").read_text())
        assert got_best["epoch"] == ref_best["epoch"]
        assert ref_best["value"] == pytest.approx(min(float(r["val_loss"]) for r in ref_log), rel=1e-6)
        best_w, _ = _saved_state(str(run / "best.keras"))
        ref_best_w, _ = _saved_state(str(tmp_path / "reference" / "best.keras"))
        assert max(float(np.abs(a - b).max()) for a, b in zip(best_w, ref_best_w)) <= 1e-6


# ----------------------------------------------------- library level (no subprocess)

def _model(seed=0):
    keras.utils.set_random_seed(seed)
    op = physics.SuperResolution(2, noise_sigma=5)
    model = sei_model.SEIModel(models.build("cnn", upscale=2, **CNN), op, seed=seed)
    model.compile(keras.optimizers.Adam(1e-3))
    return model


def _batches(count, nan_at=None):
    """`count` global batches of 4 measurement patches; batch `nan_at` holds a NaN pixel."""
    ys = tf.random.stateless_uniform([count, 4, 12, 12, 3], [7, 8])
    if nan_at is not None:
        ys = tf.tensor_scatter_nd_update(ys, [[nan_at, 1, 3, 3, 0]], [float("nan")])
    return tf.data.Dataset.from_tensor_slices(ys)


class _Interrupt(keras.callbacks.Callback):
    """Simulates a crash after `after` optimiser steps (like a SIGKILL, nothing is saved)."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.after:
            raise KeyboardInterrupt("simulated crash")


def test_custom_loop_resume_matches_uninterrupted(tmp_path):
    """distributed.fit (the multi-worker loop), here on one replica: restore, broadcast, data skip."""
    strategy = tf.distribute.get_strategy()
    epochs, steps = 3, 2
    reference = _model()
    callbacks, _ = callbacks_lib.build_callbacks(str(tmp_path / "reference"))
    distributed.fit(reference, _batches(epochs * steps), epochs, steps, callbacks, strategy, verbose=False)

    run = tmp_path / "resumed"
    first = _model()
    callbacks, _ = callbacks_lib.build_callbacks(str(run))
    with pytest.raises(KeyboardInterrupt):
        distributed.fit(first, _batches(epochs * steps), epochs, steps, callbacks + [_Interrupt(3)],
                        strategy, verbose=False)
    assert callbacks_lib.resumed_epoch(str(run / "backup")) == 1
    second = _model()
    callbacks, _ = callbacks_lib.build_callbacks(str(run))
    distributed.fit(second, _batches(epochs * steps), epochs, steps, callbacks, strategy, verbose=False)
    assert int(second.optimizer.iterations) == epochs * steps
    for a, b in zip(reference.backbone.weights + reference.optimizer.variables,
                    second.backbone.weights + second.optimizer.variables):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    rows = _log_rows(run / "log.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_nan_batch_stops_training_and_keeps_last_good_model(tmp_path, loop):
    epochs, steps, nan_at = 3, 2, 3  # the NaN batch is the 2nd step of epoch 1
    model = _model()
    callbacks, watch = callbacks_lib.build_callbacks(str(tmp_path))
    good = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            good.setdefault(epoch, [w.copy() for w in self.model.backbone.get_weights()])

    callbacks = callbacks + [Snapshot()]
    ds = _batches(epochs * steps, nan_at=nan_at)
    if loop == "fit":
        model.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
    else:
        distributed.fit(model, ds, epochs, steps, callbacks, tf.distribute.get_strategy(), verbose=False)
    assert watch.bad_step == nan_at + 1  # stopped at once: no step after the bad one
    assert int(model.optimizer.iterations) == nan_at + 1
    assert not all(np.isfinite(w).all() for w in model.backbone.get_weights())
    # model.keras holds epoch 0's weights: epoch 1 ended with NaN weights and was not saved.
    saved = keras.saving.load_model(str(tmp_path / "model.keras"))
    for a, b in zip(saved.backbone.get_weights(), good[0]):
        np.testing.assert_array_equal(a, b)
    rows = _log_rows(tmp_path / "log.csv")
    assert float(rows[0]["loss"]) > 0 and not np.isfinite(float(rows[-1]["loss"]))
    # The backup (what a rerun resumes from) still holds the last good epoch, not NaN weights.
    assert callbacks_lib.resumed_epoch(str(tmp_path / "backup")) == 1
    restored = _model()
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(str(tmp_path / "backup" / "latest.weights.h5"))
    for a, b in zip(restored.backbone.get_weights(), good[0]):
        np.testing.assert_array_equal(a, b)


def test_blow_up_rule_compares_with_the_median_of_the_last_window():
    watch = callbacks_lib.StopOnBlowUp(factor=1000, window=4)
    for loss in (5.0, -2e-3, 1e-3, 3e-3, 2e-3):  # a falling loss, one negative value (SURE can be)
        assert watch.blown_up(loss) is None
    # median |loss| of the window is 2e-3, so the bar is 2.0; a bad loss does not enter the window
    assert watch.blown_up(2.1) is not None
    assert watch.blown_up(-2.1) is not None  # |loss| counts: SURE can blow up downwards
    assert watch.blown_up(1.9) is None
    assert list(watch.recent) == [1e-3, 3e-3, 2e-3, 1.9]  # 5.0 has left the window
    assert "NaN/Inf (inf)" in watch.blown_up(float("inf")) and "NaN/Inf (nan)" in watch.blown_up(float("nan"))
    fresh = callbacks_lib.StopOnBlowUp(factor=1000, window=4)
    assert fresh.blown_up(1e-3) is None and fresh.blown_up(1e9) is None  # the window is not full yet


def test_finite_blow_up_stops_training_and_keeps_last_good_model(tmp_path):
    epochs, steps, bad_at = 4, 3, 7  # the bad batch is the 2nd step of epoch 2
    model = _model()
    watch = callbacks_lib.StopOnBlowUp(window=5)
    good = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            good.setdefault(epoch, [w.copy() for w in self.model.backbone.get_weights()])

    ys = tf.random.stateless_uniform([epochs * steps, 4, 12, 12, 3], [7, 8])
    ys = tf.tensor_scatter_nd_update(ys, [[bad_at, 1, 3, 3, 0]], [1e5])  # finite, but far off the scale
    path = str(tmp_path / "model.keras")
    model.fit(tf.data.Dataset.from_tensor_slices(ys), epochs=epochs, steps_per_epoch=steps, verbose=0,
              callbacks=[watch, callbacks_lib.SaveLastGood(path, watch), Snapshot()])
    assert watch.bad_step == bad_at + 1 and "blew up" in watch.reason
    assert int(model.optimizer.iterations) == bad_at + 1
    assert all(np.isfinite(w).all() for w in model.backbone.get_weights())  # a NaN check would go on
    saved = keras.saving.load_model(path)  # epoch 1's weights: epoch 2 had the bad step
    for a, b in zip(saved.backbone.get_weights(), good[1]):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- data diagnostics

def test_train_cli_warns_about_clipped_data_and_wrong_noise_level(tmp_path):
    folder = tmp_path / "clipped"
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = photo("astronaut", 48)
    # Noise of 5/255, then clipped to [0, 1] with a saturated band: values pile up at 0 and 1.
    y = x + rng.normal(0, 5 / 255, x.shape).astype(np.float32)
    y[:12] = 1.3
    y[-12:] = -0.2
    np.save(folder / "clipped.npy", np.clip(y, 0, 1).astype(np.float32))
    # Declared noise 40/255 (true: 5/255). `--method supervised` without ground truth then fails
    # fast with an error, after the data warnings were logged.
    rc, out = _run(["--measurements", str(folder), "--task", "deblur", "--kernel", "gaussian:1",
                    "--noise_sigma", "40", "--method", "supervised", "--output", str(tmp_path / "run")],
                   tmp_path, "warnings", timeout=180)
    assert rc == 1, out[-3000:]
    assert "needs --ground_truth" in out
    assert "look clipped" in out, out[-3000:]
    assert "declared noise sigma 40/255 disagrees with the estimate" in out, out[-3000:]
