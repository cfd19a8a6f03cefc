"""End-to-end tests of the command-line tools, run as users run them (subprocesses).

simulate -> train -> evaluate -> restore on a tiny budget; bad input gets one clear
`error: ...` line, exit code 1 and no partial output; existing results are never
overwritten without --overwrite; a run killed with SIGKILL resumes from its last
finished epoch; a NaN loss stops training and keeps the last good model.
"""

import csv
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
TIMEOUT = 240  # seconds, per command: a hung command fails the test instead of blocking the suite
TINY = ["--backbone_args", '{"features": 8, "num_blocks": 1}', "--patch_size", "16", "--batch_size", "2",
        "--noprogress"]
NAMES = ("astronaut", "chelsea", "coffee")


def command(module, *args):
    return [sys.executable, "-m", module, *[str(a) for a in args]]


def cli(module, *args, timeout=TIMEOUT):
    return subprocess.run(command(module, *args), env=ENV, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def cli_parallel(*commands, timeout=TIMEOUT):
    """Runs independent commands [(module, *args), ...] at once (start-up dominates); their results."""
    procs = [subprocess.Popen(command(*c), env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in commands]
    results = []
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def succeeded(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def error_line(result, *expected):
    """The single `error: ...` line of a failed command, checked for the expected words."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-4000:]
    for word in expected:
        assert word in errors[0], f"{word!r} not in: {errors[0]}"
    return errors[0]


def snapshot(folder):
    """{relative path: (size, mtime_ns, sha1)} of every file under `folder`."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            st = os.stat(path)
            with open(path, "rb") as f:
                digest = hashlib.sha1(f.read()).hexdigest()
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.csv")) as f:
        return list(csv.DictReader(f))


def write_png(path, array):
    from PIL import Image

    Image.fromarray(np.asarray(array)).save(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def dataset(work):
    """3 photographs -> x2 SR measurements (shorter side 64, noise 5/255) with a sidecar."""
    from skimage import data as skdata

    photos = work / "photos"
    photos.mkdir()
    for name in NAMES:
        write_png(photos / f"{name}.png", getattr(skdata, name)())
    out = work / "data"
    succeeded(cli("sei_tf.simulate", "--ground_truth", photos, "--output", out, "--task", "sr", "--factor", 2,
                  "--noise_sigma", 5, "--shorter_side", 64, "--noprogress"))
    return out


@pytest.fixture(scope="module")
def trained(work, dataset):
    """A finished run: 2 epochs x 3 steps, with validation against the ground truth."""
    run_dir = work / "run"
    result = succeeded(cli("sei_tf.train", "--measurements", dataset / "measurements", "--ground_truth",
                           dataset / "ground_truth", "--output", run_dir, "--epochs", 2, "--steps_per_epoch", 3,
                           *TINY))
    assert "model written to" in result.stdout
    # Without --tau: sei-tf's probe step (0.001, not the paper's 0.01), said in the log and saved with the model
    assert "sure: divergence probe step tau = 0.001" in result.stderr
    from sei_tf import loading

    sure = loading.load_model(str(run_dir)).objective[0]
    assert sure.name == "sure" and sure.tau == 0.001
    return run_dir


@pytest.fixture(scope="module")
def restored(work, dataset, trained):
    """The measurements restored as float32 .npy files."""
    out = work / "restored"
    result = succeeded(cli("sei_tf.restore", "--model", trained / "model.keras", dataset / "measurements",
                           "--output", out, "--format", "npy", "--noprogress"))
    assert "restored 3 image(s)" in result.stdout
    return out


def load_model(path):
    from sei_tf import evaluate

    return evaluate.load_model(str(path))


# --------------------------------------------------------------------------------------
# The happy path
# --------------------------------------------------------------------------------------

def test_simulate_train_evaluate_restore(work, dataset, trained, restored):
    measurements = sorted(os.listdir(dataset / "measurements"))
    assert measurements == sorted([f"{n}.tif" for n in NAMES] + ["sei_tf.json"])
    assert sorted(os.listdir(dataset / "ground_truth")) == sorted(f"{n}.png" for n in NAMES)

    # train: the run folder, without backup/ once finished
    assert sorted(os.listdir(trained)) == ["config.json", "log.csv", "model.keras", "tensorboard"]
    log = read_log(trained)
    assert [int(r["epoch"]) for r in log] == [0, 1]
    assert all(math.isfinite(float(r["loss"])) for r in log)
    val_psnr = float(log[-1]["val_psnr"])
    assert 15 < val_psnr < 50

    # evaluate: table on stdout, CSV next to the model by default
    result = succeeded(cli("sei_tf.evaluate", "--model", trained / "model.keras", "--measurements",
                           dataset / "measurements", "--ground_truth", dataset / "ground_truth", "--per_image",
                           "--noprogress"))
    assert "bicubic x2" in result.stdout and "astronaut" in result.stdout
    with open(trained / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    summary = {r["method"]: r for r in rows if r["scope"] == "summary"}
    assert set(summary) == {"model", "baseline"}
    for r in summary.values():
        assert int(r["n"]) == 3
        assert 15 < float(r["psnr"]) < 50 and 0 < float(r["psnr_std"]) < 10
        assert 0.3 < float(r["ssim"]) <= 1 and 0 <= float(r["ssim_std"]) < 0.5
        assert r["protocol"].startswith("luma")
    # 6 optimiser steps from a zero-initialised residual: the model is still close to bicubic
    assert abs(float(summary["model"]["psnr"]) - float(summary["baseline"]["psnr"])) < 2
    # the same protocol as training's validation, on the same images and weights
    assert float(summary["model"]["psnr"]) == pytest.approx(val_psnr, abs=0.01)
    per_image = [r for r in rows if r["scope"] == "image"]
    assert sorted((r["image"], r["method"]) for r in per_image) == sorted(
        (n, m) for n in NAMES for m in ("model", "baseline"))

    # restore: the folder (its sidecar is skipped), float32 output equal to the model's own output
    out = restored
    assert sorted(os.listdir(out)) == sorted(f"{n}.npy" for n in NAMES)
    from sei_tf import data, evaluate

    model = load_model(trained / "model.keras")
    for name in NAMES:
        y = data.read_image(str(dataset / "measurements" / f"{name}.tif"))
        x = np.load(out / f"{name}.npy")
        assert x.shape == (2 * y.shape[0], 2 * y.shape[1], 3) and x.dtype == np.float32
        np.testing.assert_allclose(x, evaluate.restore_array(model, y), atol=1e-5)


# --------------------------------------------------------------------------------------
# Bad input: one clear error, exit code 1, nothing written
# --------------------------------------------------------------------------------------

def test_empty_folder(work):
    empty = work / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    result = cli("sei_tf.train", "--measurements", empty, "--task", "sr", "--noise_sigma", 5, "--output",
                 work / "run_empty", *TINY)
    error_line(result, "No images found", str(empty), ".txt")
    assert not os.path.exists(work / "run_empty")


def test_restore_refuses_bad_images_before_writing(work, dataset, trained):
    """A good first image is not written when a later one is corrupt, greyscale or NaN."""
    good = dataset / "measurements" / "astronaut.tif"
    with open(dataset / "ground_truth" / "chelsea.png", "rb") as f:
        png = f.read()
    cases = {
        "truncated": ("b_truncated.png", lambda p: p.write_bytes(png[:len(png) // 2]),
                      ["b_truncated.png", "corrupt or truncated"]),
        "greyscale": ("b_grey.png", lambda p: write_png(p, np.full((32, 40), 128, np.uint8)),
                      ["b_grey.png", "greyscale", "RGB"]),
        "nan": ("b_nan.npy", lambda p: np.save(p, np.full((32, 40, 3), np.nan, np.float32)),
                ["b_nan.npy", "NaN"]),
    }
    for case, (name, make, _) in cases.items():
        folder = work / f"in_{case}"
        folder.mkdir()
        shutil.copy(good, folder / "a_good.tif")
        make(folder / name)
    results = cli_parallel(*[("sei_tf.restore", "--model", trained / "model.keras", work / f"in_{case}",
                              "--output", work / f"out_{case}", "--noprogress") for case in cases])
    for (case, (_, _, expected)), result in zip(cases.items(), results):
        error_line(result, *expected)
        out = work / f"out_{case}"
        assert not os.path.exists(out), f"{case}: partial output {os.listdir(out)}"


def test_train_rejects_image_smaller_than_patch(work):
    folder = work / "small"
    folder.mkdir()
    np.save(folder / "big.npy", np.random.default_rng(0).random((40, 40, 3), np.float32))
    np.save(folder / "tiny.npy", np.random.default_rng(1).random((12, 20, 3), np.float32))
    result = cli("sei_tf.train", "--measurements", folder, "--task", "sr", "--factor", 2, "--noise_sigma", 5,
                 "--output", work / "run_small", *TINY)
    error_line(result, "tiny.npy", "12x20", "--patch_size 16")
    assert not os.path.exists(work / "run_small")


def test_train_rejects_noise_contradicting_sidecar(work, dataset):
    result = cli("sei_tf.train", "--measurements", dataset / "measurements", "--noise_sigma", 10,
                 "--output", work / "run_noise", *TINY)
    error_line(result, "noise_sigma=10", "contradicts", "sei_tf.json", "sigma 5/255")
    assert not os.path.exists(work / "run_noise")


def test_train_refuses_settings_that_cannot_work(work, dataset):
    """Each of these failed late (NaN SURE, wrong per-example draws) or was silently ignored in 0.1."""
    psf = work / "psf49.npy"
    np.save(psf, np.ones((49, 49), np.float32))
    folder = dataset / "measurements"
    streak = work / "streak.npy"  # a one-sided motion blur: rotating its measurements would be wrong
    np.save(streak, np.pad(np.full((1, 5), 0.2, np.float32), ((4, 4), (4, 0))))
    big_psf, odd_batch, kernel_flag, sei_cmd, motion_dihedral, negative_tau = cli_parallel(
        # a 49x49 PSF leaves no SURE interior in a 48-pixel patch (SURE was NaN at step 1)
        ("sei_tf.train", "--measurements", folder / "astronaut.tif", "--task", "deblur", "--kernel", psf,
         "--noise_sigma", 5, "--patch_size", 48, "--output", work / "run_psf"),
        # two replicas need an even global batch
        ("sei_tf.train", "--measurements", folder, "--strategy", "mirrored", "--batch_size", 3,
         "--output", work / "run_batch"),
        # a kernel flag that contradicts the sidecar (SR x2) is an error, not ignored
        ("sei_tf.train", "--measurements", folder, "--kernel", "box:2", "--output", work / "run_kernel"),
        # the console command runs the same tool
        ("sei_tf.cli", "train", "--measurements", folder, "--task", "deblur", "--output", work / "run_cmd"),
        # rotations and flips of motion-blurred crops are not measurements of the rotated images
        ("sei_tf.train", "--measurements", folder / "astronaut.tif", "--task", "deblur", "--kernel", streak,
         "--noise_sigma", 5, "--dihedral", "--output", work / "run_dihedral"),
        # a negative divergence step
        ("sei_tf.train", "--measurements", folder, "--tau", -0.01, "--output", work / "run_tau"))
    error_line(big_psf, "--patch_size 48", "48x48", "49x49 blur kernel")
    error_line(odd_batch, "--batch_size 3", "2 replicas")
    error_line(kernel_flag, "--kernel does not apply", "sei_tf.json", "records sr x2")
    error_line(sei_cmd, "--task=deblur", "contradicts", "sr x2")
    error_line(motion_dihedral, "--dihedral", "does not commute with rotations and flips")
    error_line(negative_tau, "tau must be > 0", "-0.01")
    for run in ("run_psf", "run_batch", "run_kernel", "run_cmd", "run_dihedral", "run_tau"):
        assert not os.path.exists(work / run)


def test_simulate_output_folder_is_accepted_as_measurements(work, dataset):
    """--measurements may name the folder simulate wrote (holding measurements/ and ground_truth/).

    Also with --dihedral, which SR x2 allows (its refusal for a motion blur is tested above),
    and with --tau 0.02 (SURE's divergence step), which must reach the saved objective.
    """
    result = cli("sei_tf.train", "--measurements", dataset, "--output", work / "run_parent",
                 "--epochs", 1, "--steps_per_epoch", 1, "--dihedral", "--tau", 0.02, *TINY)
    succeeded(result)
    with open(work / "run_parent" / "config.json") as f:
        config = json.load(f)
    assert "sr x2" in config["physics"] and config["flags"]["dihedral"] is True
    from sei_tf import loading

    model = loading.load_model(str(work / "run_parent"))
    assert model.objective[0].name == "sure" and model.objective[0].tau == 0.02


def test_held_out_measurements_take_their_own_ground_truth(work, dataset):
    """--holdout with --ground_truth: training pairs only its files, validation only the held-out ones.

    Both used to be paired against the whole ground-truth folder, which then had images
    "without measurement" (the demo broke on it). Supervised, so both pairings run.
    """
    run_dir = work / "run_holdout"
    result = succeeded(cli("sei_tf.train", "--measurements", dataset / "measurements", "--ground_truth",
                           dataset / "ground_truth", "--method", "supervised", "--holdout", 0.5,
                           "--output", run_dir, "--epochs", 1, "--steps_per_epoch", 1, *TINY))
    held = re.search(r"Holding out (\d+) of 3 measurements", result.stderr)
    assert held and 1 <= int(held.group(1)) <= 2, result.stderr[-3000:]
    assert math.isfinite(float(read_log(run_dir)[-1]["val_psnr"]))


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path):
    """The README's first command (`sei_tf.demo`), with training cut to 2 steps: every step succeeds."""
    out = tmp_path / "demo"
    result = succeeded(cli("sei_tf.demo", "--output", out, "--epochs", 1, "--steps_per_epoch", 2, timeout=600))
    assert "demo finished" in result.stdout
    measurements = sorted(os.path.splitext(f)[0] for f in os.listdir(out / "data" / "measurements")
                          if f.endswith(".tif"))
    assert len(measurements) == 9
    for folder in ("restored", "restored_onnx"):
        assert sorted(os.path.splitext(f)[0] for f in os.listdir(out / folder)) == measurements
    assert (out / "run" / "restorer.onnx").exists() and (out / "run" / "evaluation.csv").exists()


def test_existing_results_are_not_overwritten(work, dataset, trained, restored):
    inputs = work / "inputs"
    inputs.mkdir()
    shutil.copy(dataset / "measurements" / "astronaut.tif", inputs / "astronaut.tif")
    shutil.copy(dataset / "measurements" / "chelsea.tif", inputs / "chelsea.tif")
    (restored / "chelsea.npy").unlink()  # chelsea would be new, astronaut and coffee exist
    run_before, out_before, in_before = snapshot(trained), snapshot(restored), snapshot(inputs)
    train, restore, into_inputs = cli_parallel(
        # train: a finished run is refused
        ("sei_tf.train", "--measurements", dataset / "measurements", "--output", trained,
         "--epochs", 1, "--steps_per_epoch", 1, *TINY),
        # restore: existing outputs are refused before anything is written (chelsea is not written either)
        ("sei_tf.restore", "--model", trained / "model.keras", inputs, dataset / "measurements" / "coffee.tif",
         "--output", restored, "--format", "npy"),
        # an input is never overwritten, even with --overwrite
        ("sei_tf.restore", "--model", trained / "model.keras", inputs, "--output", inputs, "--format", "tif",
         "--overwrite"))
    error_line(train, "already holds a finished run", "--overwrite")
    assert snapshot(trained) == run_before
    error_line(restore, "2 output(s) already exist", "astronaut.npy", "coffee.npy", "--overwrite")
    assert snapshot(restored) == out_before
    error_line(into_inputs, "would overwrite", "astronaut.tif")
    assert snapshot(inputs) == in_before


# --------------------------------------------------------------------------------------
# Crash and resume; NaN
# --------------------------------------------------------------------------------------

def test_killed_run_resumes_from_last_epoch(work, dataset):
    run_dir = work / "run_killed"
    epochs = 12
    args = ["--measurements", dataset / "measurements", "--output", run_dir, "--epochs", epochs,
            "--steps_per_epoch", 2, *TINY]
    log_path = run_dir / "log.csv"
    proc = subprocess.Popen(command("sei_tf.train", *args), env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if log_path.exists() and len(log_path.read_text().strip().splitlines()) >= 2:  # header + epoch 0
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed mid-training"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    logged = [int(r["epoch"]) for r in read_log(run_dir)]
    with open(run_dir / "backup" / "training_metadata.json") as f:
        done = json.load(f)["epoch"]  # epochs finished and backed up
    assert 1 <= done < epochs and logged == list(range(len(logged)))
    # the CSV row of an epoch is written just after its backup: a kill in between loses that row only
    assert len(logged) in (done, done - 1)

    # A resume must keep what the run learns: another seed is refused, and nothing is touched.
    before = snapshot(run_dir)
    refused = cli("sei_tf.train", *args, "--seed", 1)
    error_line(refused, "started with other settings", "--seed was 0, now 1", "another --output")
    assert snapshot(run_dir) == before
    # An optimisation flag may change (e.g. a lower rate after a NaN): logged and recorded.
    result = succeeded(cli("sei_tf.train", *args, "--learning_rate", 1e-4))
    assert "Resuming with --learning_rate 0.0001 (the run started with 0.0002)" in result.stderr
    with open(run_dir / "config.json") as f:
        config = json.load(f)
    assert config["resumes"] == [{"after_epoch": done, "changed": {"learning_rate": [2e-4, 1e-4]}}]
    assert config["flags"]["learning_rate"] == 1e-4
    assert f"Resuming after epoch {done}" in result.stderr
    assert "Epoch 1/" not in result.stdout and f"Epoch {done + 1}/{epochs}" in result.stdout
    resumed = [int(r["epoch"]) for r in read_log(run_dir)]
    assert resumed == logged + list(range(done, epochs))  # continues: no restart from epoch 0
    assert os.path.exists(run_dir / "model.keras") and not os.path.exists(run_dir / "backup")


def test_resume_check_compares_paths_as_absolute(tmp_path, monkeypatch):
    """A relative path in config.json (written by an older version) names the same folder as an absolute one."""
    from sei_tf import train

    (tmp_path / "data").mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    now = {"measurements": str(tmp_path / "data"), "seed": 0, "learning_rate": 1e-4, "output": "elsewhere"}
    record = {"flags": {"measurements": "data", "seed": 0, "learning_rate": 2e-4, "output": "run"}}
    (run_dir / "config.json").write_text(json.dumps(record))
    assert train.check_resume(str(run_dir), now) == {"learning_rate": (2e-4, 1e-4)}
    with pytest.raises(train.TrainingError, match="--measurements was"):
        train.check_resume(str(run_dir), dict(now, measurements=str(tmp_path)))


def test_nan_loss_stops_and_keeps_last_good_model(work, dataset):
    run_dir = work / "run_nan"
    # One step per epoch: epoch 0 ends with huge but finite weights, epoch 1's loss overflows.
    result = cli("sei_tf.train", "--measurements", dataset / "measurements", "--output", run_dir,
                 "--epochs", 3, "--steps_per_epoch", 1, "--learning_rate", 1e30, "--schedule", "constant",
                 *TINY)
    error_line(result, "NaN", "last good model", "--learning_rate")
    log = read_log(run_dir)
    assert [int(r["epoch"]) for r in log] == [0, 1]
    assert math.isfinite(float(log[0]["loss"])) and not math.isfinite(float(log[1]["loss"]))
    model = load_model(run_dir / "model.keras")
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    # the backup (what a rerun resumes from) is the last good epoch too, not the NaN one
    import h5py

    with open(run_dir / "backup" / "training_metadata.json") as f:
        assert json.load(f)["epoch"] == 1
    with h5py.File(run_dir / "backup" / "latest.weights.h5", "r") as f:
        arrays = []
        f.visititems(lambda _, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert arrays and all(np.all(np.isfinite(a)) for a in arrays)
