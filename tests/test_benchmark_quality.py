"""Smoke test of the quality benchmark (benchmarks/quality.py) on tiny data and budgets."""

import csv
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "quality.py")
OUTPUTS = ("quality.md", "quality.csv", "quality.json", "learning_curves.png", "visual.png", "spectra.png")


@pytest.fixture(scope="module")
def tiny_photos(tmp_path_factory):
    """Four small real photographs (scikit-image), written as PNG."""
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("gt")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        im = Image.fromarray(getattr(data, name)())
        im.thumbnail((96, 96))
        im.save(d / f"{name}.png")
    return str(d)


@pytest.fixture(scope="module")
def quality():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import quality as module

    return module


def _run(quality, args, tmp_path):
    """Runs the benchmark in this process (saves the TensorFlow start-up of a subprocess)."""
    flags = quality.FLAGS
    flags.unparse_flags()
    flags(["quality.py", f"--results_dir={tmp_path / 'results'}", f"--cache_dir={tmp_path / 'cache'}", *args])
    try:
        assert quality.main([]) == 0
    finally:
        flags.unparse_flags()


def _check_outputs(results):
    for name in OUTPUTS:
        path = results / name
        assert path.is_file() and path.stat().st_size > 0, name


def test_cpu_budget_two_methods_and_cache(quality, tiny_photos, tmp_path):
    args = [f"--ground_truth_dir={tiny_photos}", "--test_names=coffee", "--shorter_side=48",
            "--tasks=sr_x2", "--methods=supervised,sei", "--steps=2", "--eval_every=1",
            "--batch_size=2", "--patch_size=12", "--features=8", "--num_blocks=1"]
    _run(quality, args, tmp_path)
    results = tmp_path / "results"
    _check_outputs(results)
    rows = list(csv.DictReader(open(results / "quality.csv")))
    done = {r["method"]: r for r in rows if r["task"] == "sr_x2" and r["status"] == "done"}
    assert set(done) == {"baseline", "supervised", "sei"}
    assert "not run yet" in {r["status"] for r in rows}  # the other methods
    for r in done.values():
        assert 10.0 < float(r["psnr_mean"]) < 60.0
    md = open(results / "quality.md").read()
    assert "not run yet" in md and "SR x2" in md
    report = json.load(open(results / "quality.json"))
    sei = next(c for c in report["cells"] if c["method"] == "sei")
    assert [s for s, _, _ in sei["curve"]] == [0, 1, 2]
    assert "coffee" not in sei["train_names"] and sei["test_names"] == ["coffee"]

    # Finished cells are kept: a rerun trains nothing and reports the same numbers.
    cell_files = list((tmp_path / "cache" / "cells").glob("*/sr_x2__*.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in cell_files}
    _run(quality, args, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in cell_files} == mtimes
    again = {r["method"]: r["psnr_mean"] for r in csv.DictReader(open(results / "quality.csv"))
             if r["task"] == "sr_x2" and r["status"] == "done"}
    assert again == {m: r["psnr_mean"] for m, r in done.items()}


def test_resume_from_checkpoint(quality, tiny_photos, tmp_path):
    """A cell interrupted after a checkpoint resumes at its step, not from zero."""
    args = [f"--ground_truth_dir={tiny_photos}", "--test_names=coffee", "--shorter_side=48",
            "--tasks=gaussian_2", "--methods=sure", "--steps=2", "--eval_every=1",
            "--batch_size=2", "--patch_size=12", "--features=8", "--num_blocks=1"]
    _run(quality, args, tmp_path)
    cells = [d for d in (tmp_path / "cache" / "cells").iterdir()][0]
    res = json.load(open(cells / "gaussian_2__sure.json"))
    # Fake an interruption after step 1: a checkpoint and no final result.
    os.remove(cells / "gaussian_2__sure.json")
    partial = cells / "gaussian_2__sure.partial"
    partial.mkdir()
    import keras
    from sei_tf import models, training, physics

    backbone = models.build("cnn", 1, 3, features=8, num_blocks=1)
    model = training.SEIModel(backbone, physics.Blur("gaussian:2", 5.0), method="sure")
    model.compile(optimizer=keras.optimizers.Adam(training.DelayedLinearDecay(5e-4, 2)))
    model.optimizer.build(backbone.trainable_variables)
    backbone.save_weights(str(partial / "backbone.weights.h5"))
    np.savez(partial / "optimizer.npz", **{v.path.replace("/", "|"): np.asarray(v) for v in model.optimizer.variables})
    sentinel = [1, 99.0, 0.99]  # a curve point only the checkpoint holds
    state = {"step": 1, "curve": [res["curve"][0], sentinel], "train_seconds": 60.0, "eval_seconds": 0.0,
             "loss": res["loss"][:1]}
    json.dump(state, open(partial / "state.json", "w"))
    _run(quality, args, tmp_path)
    res2 = json.load(open(cells / "gaussian_2__sure.json"))
    assert [s for s, _, _ in res2["curve"]] == [0, 1, 2]
    assert res2["curve"][1] == sentinel and res2["train_minutes"] >= 1.0
    assert not partial.exists()


def test_paper_preset_one_step(quality, tiny_photos, tmp_path):
    args = ["--preset=paper", f"--ground_truth_dir={tiny_photos}", "--test_names=coffee",
            "--shorter_side=96", "--tasks=sr_x2", "--methods=sei", "--steps=1",
            "--swinir_embed_dim=8", "--swinir_depths=1", "--swinir_num_heads=2", "--swinir_window_size=4"]
    _run(quality, args, tmp_path)
    results = tmp_path / "results"
    _check_outputs(results)
    report = json.load(open(results / "quality.json"))
    cfg = report["config"]
    assert cfg["backbone"] == "swinir" and cfg["batch_size"] == 8 and cfg["patch_size"] == 48
    assert cfg["lr_sr"] == 2e-4 and cfg["lr_deblur"] == 1e-4
    sei = next(c for c in report["cells"] if c["method"] == "sei")
    assert sei["steps"] == 1 and sei["patch_size"] == 48 and sei["batch_size"] == 8


def test_missing_mate_backgrounds_message(quality, tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "MATE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(quality.MissingData, match="apt-get install -y mate-backgrounds"):
        quality.default_sources(str(tmp_path))
