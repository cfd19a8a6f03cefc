"""Tests of the simulation protocol (sei_tf.data.simulate) and its CLI (sei_tf.simulate)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sei_tf import data, physics
from sei_tf.data import DataError
from sei_tf.data import files as files_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_ground_truth(folder, dark=True):
    """Two small real photographs (crops of scikit-image's), one of them very dark."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    data.write_image(folder / "astro.png", skimage.data.astronaut()[100:180, 200:300])
    cat = skimage.data.chelsea()[50:140, 100:170] / 255.0
    data.write_image(folder / "cat.png", cat * (0.03 if dark else 1.0))
    return folder


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    gt = _make_ground_truth(root / "gt")
    op = physics.make("sr", factor=2, noise_sigma=5)
    meta = data.simulate(gt, root / "out", op, shorter_side=48, seed=3, progress=False)
    return root, gt, op, meta


def _measurements(out):
    return {f: data.read_image(out / "measurements" / f) for f in sorted(os.listdir(out / "measurements"))
            if f.endswith(".tif")}


def test_simulate_layout_and_sidecar(sr_run):
    root, _, _, meta = sr_run
    out = root / "out"
    assert sorted(os.listdir(out / "measurements")) == ["astro.tif", "cat.tif", "sei_tf.json"]
    assert sorted(os.listdir(out / "ground_truth")) == ["astro.png", "cat.png"]
    side = json.loads((out / "measurements" / "sei_tf.json").read_text())
    assert side == meta
    assert side["format_version"] == 2 and side["summary"]["task"] == "sr" and side["summary"]["factor"] == 2
    assert side["physics"]["class_name"] == "SuperResolution" and side["physics"]["config"]["factor"] == 2
    assert side["physics"]["config"]["noise"]["config"]["sigma"] == 5.0
    assert side["seed"] == 3 and side["shorter_side"] == 48
    assert side["channels"] == 3 and side["files"] == ["astro.tif", "cat.tif"]
    # Shorter side resized to 48 (astro 80x100 -> 48x60; cat 90x70 -> 62x48 after the
    # crop to a multiple of 2), measurements half that size.
    assert data.read_image(out / "ground_truth" / "astro.png").shape == (48, 60, 3)
    assert data.read_image(out / "ground_truth" / "cat.png").shape == (62, 48, 3)
    assert data.read_image(out / "measurements" / "cat.tif").shape == (31, 24, 3)
    # The output pairs up for evaluation.
    pairs = list(data.paired_dataset(out / "measurements", out / "ground_truth", channels=3, factor=2))
    assert [tuple(y.shape) for y, _ in pairs] == [(1, 24, 30, 3), (1, 31, 24, 3)]
    # Nothing left behind in the parent folder (no staging folders).
    assert sorted(os.listdir(root)) == ["gt", "out"]


def test_output_folder_stands_for_its_measurements(sr_run, monkeypatch):
    # --measurements DATA (the folder simulate wrote) works like DATA/measurements.
    root, _, _, _ = sr_run
    out = root / "out"
    said = []  # absl's logger may or may not propagate to pytest's caplog, depending on earlier tests
    monkeypatch.setattr(files_module.logging, "info", lambda fmt, *args: said.append(fmt % args))
    files = data.list_images(out)
    assert files == data.list_images(out / "measurements") == [str(out / "measurements" / "astro.tif"),
                                                                 str(out / "measurements" / "cat.tif")]
    assert any(str(out / "measurements") in line for line in said)  # said so
    assert data.read_sidecar(out) == data.read_sidecar(out / "measurements")
    # Pairing takes the measurements and the ground truth from their own sub-folders.
    pairs = data.pair_files(out, out)
    folders = [(s, os.path.basename(os.path.dirname(y)), os.path.basename(os.path.dirname(x))) for s, y, x in pairs]
    assert folders == [("astro", "measurements", "ground_truth"), ("cat", "measurements", "ground_truth")]
    assert data.list_images(out, subfolder=data.GROUND_TRUTH_DIR)[0] == str(out / "ground_truth" / "astro.png")


def test_folder_with_images_of_its_own_is_not_replaced(sr_run, tmp_path):
    root, _, _, _ = sr_run
    for sub in ("measurements", "ground_truth"):
        (tmp_path / sub).mkdir()
    data.write_image(tmp_path / "own.png", np.zeros((4, 4, 3), np.float32))
    (tmp_path / "measurements" / data.SIDECAR_NAME).write_bytes((root / "out" / "measurements" /
                                                                 data.SIDECAR_NAME).read_bytes())
    assert data.list_images(tmp_path) == [str(tmp_path / "own.png")]
    assert data.read_sidecar(tmp_path) is None
    os.remove(tmp_path / "own.png")
    assert data.physics_from_sidecar(data.read_sidecar(tmp_path)).factor == 2
    with pytest.raises(DataError, match="No images found"):
        data.list_images(tmp_path, subfolder=None)


def test_simulated_noise_is_gaussian_unclipped_and_at_sigma(sr_run):
    root, _, op, _ = sr_run
    residuals = []
    for stem in ("astro", "cat"):
        x = data.read_image(root / "out" / "ground_truth" / f"{stem}.png")
        y = data.read_image(root / "out" / "measurements" / f"{stem}.tif")
        residuals.append((y - op.A(x[None])[0].numpy()).ravel())
    r = np.concatenate(residuals)
    assert abs(r.std() - 5 / 255) < 0.08 * 5 / 255  # ~6600 samples: std within 8%
    assert abs(r.mean()) < 4 * (5 / 255) / np.sqrt(r.size)
    # The dark image has measurement values below 0: noise is not clipped.
    y_dark = data.read_image(root / "out" / "measurements" / "cat.tif")
    assert (y_dark < 0).mean() > 0.05


def test_same_seed_same_measurements_and_seed_by_name(sr_run, tmp_path):
    root, gt, op, _ = sr_run
    first = _measurements(root / "out")
    data.simulate(gt, tmp_path / "again", op, shorter_side=48, seed=3, progress=False)
    again = _measurements(tmp_path / "again")
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    # The noise of an image depends on its name, not on the other files.
    data.simulate([gt / "cat.png"], tmp_path / "alone", op, shorter_side=48, seed=3, progress=False)
    np.testing.assert_array_equal(_measurements(tmp_path / "alone")["cat.tif"], first["cat.tif"])
    data.simulate(gt, tmp_path / "other", op, shorter_side=48, seed=4, progress=False)
    assert not np.array_equal(_measurements(tmp_path / "other")["cat.tif"], first["cat.tif"])
    assert data.noise_seed(3, "cat") == (3, 0xFFFFFFFF & __import__("zlib").crc32(b"cat"))


def _assert_same_operator(a, b):
    assert type(a) is type(b)
    assert a.get_config() == b.get_config()
    x = tf.random.stateless_uniform([1, 24, 24, 3], seed=[1, 2])
    np.testing.assert_array_equal(a.A(x).numpy(), b.A(x).numpy())


def test_sidecar_rebuilds_identical_operator(sr_run, tmp_path):
    root, gt, op, _ = sr_run
    _assert_same_operator(data.physics_from_sidecar(data.read_sidecar(root / "out" / "measurements")), op)
    psf = np.zeros((5, 5), np.float32)
    psf[2, 1:4] = [1, 2, 1]
    np.save(tmp_path / "psf.npy", psf)
    for i, kernel in enumerate(["gaussian:1", "box:2", str(tmp_path / "psf.npy")]):
        blur = physics.make("deblur", kernel=kernel, noise_sigma=2)
        meta = data.simulate(gt, tmp_path / f"blur{i}", blur, shorter_side=0, seed=0, progress=False)
        assert meta["summary"]["kernel"] == kernel
        assert np.allclose(meta["summary"]["kernel_array"], blur.kernel)
        rebuilt = data.physics_from_sidecar(data.read_sidecar(tmp_path / f"blur{i}" / "measurements"))
        _assert_same_operator(rebuilt, blur)
    # Deblurring keeps sizes (no resize with shorter_side=0).
    assert data.read_image(tmp_path / "blur0" / "measurements" / "astro.tif").shape == (80, 100, 3)


def test_existing_output_is_not_overwritten(sr_run, tmp_path):
    _, gt, op, _ = sr_run
    out = tmp_path / "out"
    data.simulate(gt, out, op, shorter_side=48, progress=False)
    (out / "notes.txt").write_text("mine")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="not empty.*overwrite"):
        data.simulate(gt, out, physics.make("sr", factor=4, noise_sigma=5), shorter_side=48, progress=False)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert after == before
    meta = data.simulate(gt, out, physics.make("sr", factor=4, noise_sigma=5), shorter_side=48,
                         overwrite=True, progress=False)
    assert meta["summary"]["factor"] == 4
    assert data.physics_from_sidecar(data.read_sidecar(out / "measurements")).factor == 4
    assert (out / "notes.txt").read_text() == "mine"  # only our sub-folders are replaced
    assert data.read_image(out / "measurements" / "astro.tif").shape == (12, 15, 3)
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_failure_leaves_no_partial_output(sr_run, tmp_path):
    _, gt, op, _ = sr_run
    bad = tmp_path / "gt"
    _make_ground_truth(bad)
    (bad / "zzz.png").write_bytes((bad / "astro.png").read_bytes()[:300])  # truncated, read last
    with pytest.raises(DataError, match="zzz.png"):
        data.simulate(bad, tmp_path / "out", op, shorter_side=48, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["gt"]


def test_channels_conversion_and_mixed_input(tmp_path):
    gt = _make_ground_truth(tmp_path / "gt", dark=False)
    op = physics.make("sr", factor=3, noise_sigma=0)
    meta = data.simulate(gt, tmp_path / "grey", op, shorter_side=0, channels=1, progress=False)
    assert meta["channels"] == 1
    x = data.read_image(tmp_path / "grey" / "ground_truth" / "astro.png")
    assert x.shape == (78, 99, 1)  # cropped to multiples of 3
    y = data.read_image(tmp_path / "grey" / "measurements" / "astro.tif")
    np.testing.assert_allclose(y, op.A(x[None])[0].numpy(), atol=1e-6)  # sigma 0: exact
    data.write_image(gt / "grey.png", x)
    with pytest.raises(DataError, match="mixes greyscale and RGB"):
        data.simulate(gt, tmp_path / "mixed", op, shorter_side=0, progress=False)
    assert not (tmp_path / "mixed").exists()


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "sei_tf.simulate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_simulates_and_reports(tmp_path):
    gt = _make_ground_truth(tmp_path / "gt")
    out = tmp_path / "out"
    res = _cli(f"--ground_truth={gt}", f"--output={out}", "--task=deblur", "--kernel=gaussian:1",
               "--noise_sigma=2", "--shorter_side=40", "--seed=5", "--noprogress")
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("wrote 2 measurement(s) (blur gaussian:1, gaussian sigma 2/255, seed 5)")
    assert str(out / "measurements") in last
    meta = data.read_sidecar(out / "measurements")
    assert meta["summary"]["task"] == "deblur" and meta["summary"]["kernel"] == "gaussian:1" and meta["seed"] == 5
    assert data.read_image(out / "ground_truth" / "astro.png").shape == (40, 50, 3)


@pytest.mark.slow
def test_cli_errors_are_one_line_exit_1(tmp_path):
    (tmp_path / "empty").mkdir()
    res = _cli(f"--ground_truth={tmp_path / 'empty'}", f"--output={tmp_path / 'out'}", "--factor=4")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert f"error: No images found in folder {tmp_path / 'empty'}" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_noise_models(tmp_path):
    """--noise reaches the sidecar; bad or contradictory noise flags are one-line errors; train reads it back."""
    gt = _make_ground_truth(tmp_path / "gt")
    out = tmp_path / "pg"
    res = _cli(f"--ground_truth={gt}", f"--output={out}", "--task=deblur", "--kernel=gaussian:1",
               "--noise=poisson_gaussian:gain=0.01,sigma=2", "--shorter_side=40", "--noprogress")
    assert res.returncode == 0, res.stderr
    assert "poisson-gaussian gain 0.01 (100 photons at full scale), sigma 2/255" in res.stdout
    recorded = data.physics_from_sidecar(data.read_sidecar(out / "measurements"))
    assert recorded.noise.spec() == "poisson_gaussian:gain=0.01,sigma=2"
    for flags, message in ((["--noise=poisson:gain=0.01", "--noise_sigma=5"], "disagree"),
                           (["--noise=poisson:gain=x"], "gain='x' in noise spec"),
                           (["--noise=auto"], "only `train` takes it")):
        res = _cli(f"--ground_truth={gt}", f"--output={tmp_path / 'bad'}", *flags, "--noprogress")
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert message in res.stderr.strip().splitlines()[-1], res.stderr
        assert not (tmp_path / "bad").exists()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "sei_tf.train", f"--measurements={out}", "--noise=poisson:gain=0.01",
                          f"--output={tmp_path / 'run'}", "--epochs=1", "--steps_per_epoch=1"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and "--noise=poisson:gain=0.01 contradicts" in last and "the noise:" in last, last
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_noise_auto_estimates_the_noise(tmp_path):
    """train --noise auto: the noise comes from the measurements (here near the simulated sigma 10),
    replaces the sidecar's, and is saved with the model; --noise_sigma with it is an error."""
    gt = _make_ground_truth(tmp_path / "gt")
    out = tmp_path / "sim"
    res = _cli(f"--ground_truth={gt}", f"--output={out}", "--task=deblur", "--kernel=gaussian:1",
               "--noise_sigma=10", "--shorter_side=96", "--noprogress")
    assert res.returncode == 0, res.stderr
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def train(*flags):
        return subprocess.run([sys.executable, "-m", "sei_tf.train", f"--measurements={out}", *flags,
                               "--epochs=1", "--steps_per_epoch=1", "--batch_size=2", "--patch_size=32",
                               "--holdout=0", "--noprogress"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)

    res = train("--noise=auto", "--noise_sigma=10", f"--output={tmp_path / 'bad'}")
    assert res.returncode == 1 and "drop --noise_sigma" in res.stderr.strip().splitlines()[-1], res.stderr
    assert not (tmp_path / "bad").exists()
    res = train("--noise=auto", f"--output={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--noise auto: estimated gaussian: sigma" in res.stderr
    assert "replaces the noise" in res.stderr
    from sei_tf import loading

    sigma = loading.load_model(tmp_path / "run" / "model.keras").physics.noise.sigma
    assert 8.5 < sigma < 11.5, sigma  # the estimator is within a few % on blurred measurements


@pytest.mark.slow
def test_train_sei_unsure_needs_no_noise_level(tmp_path):
    """--method sei_unsure on measurements with no sidecar and no noise flag trains (UNSURE learns the level)."""
    import shutil

    gt = _make_ground_truth(tmp_path / "gt", dark=False)
    out = tmp_path / "sim"
    res = _cli(f"--ground_truth={gt}", f"--output={out}", "--task=deblur", "--kernel=gaussian:1",
               "--noise_sigma=10", "--shorter_side=96", "--noprogress")
    assert res.returncode == 0, res.stderr
    plain = tmp_path / "plain"
    shutil.copytree(out / "measurements", plain)
    os.remove(plain / "sei_tf.json")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "sei_tf.train", f"--measurements={plain}", "--task=deblur",
                          "--kernel=gaussian:1", "--method=sei_unsure", f"--output={tmp_path / 'run'}",
                          "--epochs=1", "--steps_per_epoch=1", "--batch_size=2", "--patch_size=32", "--holdout=0",
                          "--noprogress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "sei_unsure learns the noise level" in res.stderr
    assert (tmp_path / "run" / "model.keras").exists()
