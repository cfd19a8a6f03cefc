"""Smoke tests of the quality benchmark: the experiment (benchmarks/quality.py) on tiny data
and budgets, and the report (benchmarks/quality_report.py) on the committed results."""

import csv
import json
import os
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
OUTPUTS = ("quality.md", "quality.csv", "quality.json", "learning_curves.png", "visual.png", "spectra.png")
# Committed results folders written by quality.py.
# The single-seed tables (before issue 14) and the supervised-3x-budget run.
COMMITTED = (os.path.join(BENCHMARKS, "results", "quality_2026-11-27_single_seed"),
             os.path.join(BENCHMARKS, "results", "supervised_3x"))


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
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    import quality as module

    return module


@pytest.fixture(scope="module")
def quality_report(quality):
    import quality_report as module

    return module


def _run(quality, args, tmp_path, cache="cache"):
    """Runs the benchmark in this process (saves the TensorFlow start-up of a subprocess)."""
    flags = quality.FLAGS
    flags.unparse_flags()
    flags(["quality.py", f"--results_dir={tmp_path / 'results'}", f"--cache_dir={tmp_path / cache}", *args])
    try:
        assert quality.main([]) == 0
    finally:
        flags.unparse_flags()


def _check_outputs(results):
    for name in OUTPUTS:
        path = results / name
        assert path.is_file() and path.stat().st_size > 0, name


def _cell_dir(tmp_path, cache="cache"):
    (cells,) = list((tmp_path / cache / "cells").iterdir())
    return cells


TINY = ["--test_names=coffee", "--shorter_side=48", "--steps=2", "--eval_every=1", "--batch_size=2",
        "--patch_size=12", "--features=8", "--num_blocks=1"]


def test_cpu_budget_two_methods_and_cache(quality, tiny_photos, tmp_path):
    from sei_tf import evaluate, loading

    args = [f"--ground_truth_dir={tiny_photos}", *TINY, "--tasks=sr_x2", "--methods=supervised,sei"]
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

    # The finished cell is a model that sei_tf loads; the library's evaluation of it
    # gives the cell's numbers.
    cells = _cell_dir(tmp_path)
    model = loading.load_model(str(cells / "sr_x2__sei.keras"))
    assert model.method == "sei" and model.physics.upscale == 2 and model.physics.noise_sigma == 5.0
    td = quality.prepare_task("sr_x2", *quality.user_sources(tiny_photos, ["coffee"]), report["config"],
                              str(tmp_path / "cache"))
    rows = evaluate.evaluate(model, zip(td["test_names"], td["test_y"], td["test_x"]))
    assert [r["psnr"] for r in rows if r["method"] == "model"] == pytest.approx(sei["psnr"], abs=1e-4)
    assert [r["psnr"] for r in rows if r["method"] == "baseline"] == pytest.approx(
        next(c for c in report["cells"] if c["method"] == "baseline")["psnr"], abs=1e-4)

    # Finished cells are kept: a rerun trains nothing and reports the same numbers.
    cell_files = list(cells.glob("sr_x2__*.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in cell_files}
    _run(quality, args, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in cell_files} == mtimes
    again = {r["method"]: r["psnr_mean"] for r in csv.DictReader(open(results / "quality.csv"))
             if r["task"] == "sr_x2" and r["status"] == "done"}
    assert again == {m: r["psnr_mean"] for m, r in done.items()}


class Interrupted(Exception):
    pass


def test_resume_ends_as_uninterrupted(quality, tiny_photos, tmp_path, monkeypatch):
    """A cell killed after a checkpoint resumes at its step and ends with the uninterrupted result."""
    import keras

    # Patches of 16 px: SURE leaves out the 6-px border of the 13x13 Gaussian kernel.
    args = [f"--ground_truth_dir={tiny_photos}", *TINY, "--steps=3", "--patch_size=16", "--tasks=gaussian_2",
            "--methods=sure"]
    _run(quality, args, tmp_path, cache="whole")
    whole = json.load(open(_cell_dir(tmp_path, "whole") / "gaussian_2__sure.json"))

    # The same cell, killed right after its checkpoint at step 2.
    save = quality.save_checkpoint

    def save_then_die(model, state, ckpt):
        save(model, state, ckpt)
        if state["step"] == 2:
            raise Interrupted()

    monkeypatch.setattr(quality, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        _run(quality, args, tmp_path, cache="cut")
    monkeypatch.setattr(quality, "save_checkpoint", save)
    cells = _cell_dir(tmp_path, "cut")
    partial = cells / "gaussian_2__sure.partial"
    assert not (cells / "gaussian_2__sure.json").exists()
    # The checkpoint is the library's: a saved SEIModel with its optimizer state.
    saved = keras.saving.load_model(str(partial / "model.keras"))
    assert int(saved.optimizer.iterations) == 2 and saved.method == "sure"
    state = json.load(open(partial / "state.json"))
    assert state["step"] == 2 and [c[0] for c in state["curve"]] == [0, 1, 2]
    sentinel = [1, 99.0, 0.99]  # a curve point only the checkpoint holds
    state["curve"][1] = sentinel
    state["train_seconds"] = 60.0
    json.dump(state, open(partial / "state.json", "w"))

    _run(quality, args, tmp_path, cache="cut")
    resumed = json.load(open(cells / "gaussian_2__sure.json"))
    assert not partial.exists()
    assert [s for s, _, _ in resumed["curve"]] == [0, 1, 2, 3]
    assert resumed["curve"][1] == sentinel and resumed["train_minutes"] >= 1.0  # resumed, not restarted
    # Same weights, optimizer state, step seeds and data stream: the same result.
    assert resumed["psnr"] == pytest.approx(whole["psnr"], abs=1e-4)
    assert resumed["ssim"] == pytest.approx(whole["ssim"], abs=1e-6)
    assert [v for _, v in resumed["loss"]] == pytest.approx([v for _, v in whole["loss"]], rel=1e-5)


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


def test_patch_too_small_for_the_kernel(quality, tiny_photos, tmp_path):
    """A patch with no interior left once SURE's border is removed is refused before training."""
    from sei_tf.errors import PhysicsError

    args = [f"--ground_truth_dir={tiny_photos}", *TINY, "--tasks=gaussian_2", "--methods=sure"]
    with pytest.raises(PhysicsError, match="training patch"):
        _run(quality, args, tmp_path)
    assert not list(_cell_dir(tmp_path).glob("gaussian_2__sure*"))


def test_missing_mate_backgrounds_message(quality, tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "MATE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(quality.MissingData, match="apt-get install -y mate-backgrounds"):
        quality.default_sources(str(tmp_path))


def test_tasks_are_physics_and_methods_are_presets(quality):
    from sei_tf import losses, objectives, physics

    ops = {t: quality.make_physics(t) for t in quality.TASKS}
    assert {t: op.upscale for t, op in ops.items()} == {"sr_x2": 2, "sr_x3": 3, "sr_x4": 4, "gaussian_1": 1,
                                                        "gaussian_2": 1, "gaussian_3": 1, "box_3": 1}
    assert not ops["gaussian_3"].differences(physics.Blur("gaussian:3", noise_sigma=5.0))
    assert all(op.noise_sigma == quality.NOISE_SIGMA for op in ops.values())
    assert not ops["sr_x2"].differences(physics.SuperResolution(2, noise_sigma=5.0))
    assert not ops["box_3"].differences(physics.Blur("box:3", noise_sigma=5.0))
    assert ops["gaussian_2"].differences(physics.Blur("gaussian:3", noise_sigma=5.0))
    assert set(quality.METHODS.values()) <= set(objectives.PRESETS)
    # The ablation keeps its cell key (cached files, result rows) and is also accepted by its preset name.
    assert quality.METHODS["sei_nostop"] == "sei_no_stop_gradient"
    assert quality.method_key("sei_no_stop_gradient") == "sei_nostop" and quality.method_key("sei") == "sei"
    cfg = {"seed": 0, "backbone": "cnn", "backbone_args": {"features": 4, "num_blocks": 1}}
    stops = {}
    for m in ("sei", "sei_nostop"):
        model = quality.build_model("sr_x2", m, cfg)
        (eq,) = [t for t in model.objective if isinstance(t, losses.Equivariance)]
        stops[m] = eq.stop_gradient
    assert stops == {"sei": True, "sei_nostop": False}


def test_cell_set_key_of_the_committed_results(quality):
    """The float32 configuration of the committed results (cnn with its former Glorot init) still maps to their
    cell set (cached cells stay valid); another init is another cell set."""
    from sei_tf import data

    committed = json.load(open(os.path.join(COMMITTED[0], "quality.json")))
    flags = quality.FLAGS
    flags.unparse_flags()
    configs = {}
    for init in ("glorot_uniform", "torch"):
        flags(["quality.py", "--precision=float32", f"--cnn_init={init}", "--nodihedral"])
        try:
            configs[init] = quality.resolve_config()
        finally:
            flags.unparse_flags()
    assert configs["glorot_uniform"] == committed["config"]
    sources = ([f"/src/{n}.png" for n in data.SAMPLE_NAMES]
               + [f"/mate/{n}.jpg" for n in quality.MATE_NAMES])
    keys = {i: quality.cell_set_key(c, sources, set(quality.TEST_NAMES))[1] for i, c in configs.items()}
    assert keys["glorot_uniform"] == committed["cell_set"] != keys["torch"]
    # The model a configuration without "init" builds has the init its cells were trained with.
    assert quality.build_model("sr_x2", "sei", configs["glorot_uniform"]).backbone.init == "glorot_uniform"
    assert quality.build_model("sr_x2", "sei", configs["torch"]).backbone.init == "torch"

    # --tau: the method's 0.01 keeps the key; another step is another cell set, and reaches SURE.
    for tau in ("0.01", "0.001"):
        flags(["quality.py", "--precision=float32", "--cnn_init=torch", "--nodihedral", f"--tau={tau}"])
        try:
            configs[tau] = quality.resolve_config()
        finally:
            flags.unparse_flags()
    assert configs["0.01"] == configs["torch"] and configs["0.001"]["tau"] == 0.001
    assert quality.cell_set_key(configs["0.001"], sources, set(quality.TEST_NAMES))[1] != keys["torch"]
    sure = quality.build_model("sr_x2", "sure", configs["0.001"]).objective[0]
    assert sure.name == "sure" and sure.tau == 0.001
    # A cell without "tau" was trained at the paper's step, whatever the library's default is now.
    assert quality.build_model("sr_x2", "sei", configs["0.01"]).objective[0].tau == 0.01
    # Reports name a non-default step and say nothing for the default.
    report = quality.quality_report
    assert report.tau_text(configs["0.01"]) == "" and "tau = 0.001" in report.tau_text(configs["0.001"])


@pytest.mark.parametrize("folder", COMMITTED, ids=["single_seed", "supervised_3x"])
def test_report_reproduces_committed_tables(quality, quality_report, folder, tmp_path):
    """Regenerating the tables from the committed cells gives the committed files, byte for byte."""
    committed = json.load(open(os.path.join(folder, "quality.json")))
    cells = {(c["task"], c["method"]): c for c in committed["cells"]}
    tasks = {t: quality.task_info(t) for t in quality.TASKS if any(k[0] == t for k in cells)}
    # The method lists of these tables: before the supervised_aug and EI (rotate, nearest) rows existed,
    # and when CSS, the EI rows and the no-stop-gradient ablation were rows of SR x2 and Gaussian s2 only.
    for t, info in tasks.items():
        info["methods"] = tuple(m for m in info["methods"]
                                if m != "supervised_aug" and m not in quality.REFERENCE_VARIANTS
                                and (t in ("sr_x2", "gaussian_2") or m in quality.CORE_METHODS))
    quality_report.write_report(str(tmp_path), cells, {}, committed["config"], tasks, committed["cell_set"],
                                quality.DEFAULT_DATA_LABEL, {}, lambda task, method: None)
    for name in ("quality.md", "quality.csv", "quality.json"):
        assert open(tmp_path / name).read() == open(os.path.join(folder, name)).read(), name
    assert (tmp_path / "learning_curves.png").stat().st_size > 0


def test_report_marks_unfinished_and_missing_cells(quality_report, tmp_path):
    """The report alone, on made-up cells: finished, unfinished (checkpoint) and missing ones."""

    def cell(method, psnr, names=("a", "b")):
        return {"task": "t", "method": method, "psnr_mean": psnr, "psnr_std": 0.5, "ssim_mean": 0.9,
                "ssim_std": 0.01, "psnr": [psnr - 0.5, psnr + 0.5], "ssim": [0.9, 0.9], "test_names": list(names),
                "curve": [[0, 30.0, 0.8], [10, psnr, 0.9]], "steps": 10, "num_train": 3, "train_minutes": 1.0}

    cells = {("t", "baseline"): cell("baseline", 30.0), ("t", "sure"): cell("sure", 31.0),
             ("t", "sei"): cell("sei", 30.5)}
    partial = {("t", "supervised"): {"step": 5, "curve": [[0, 30.0, 0.8], [5, 33.25, 0.95]]}}
    tasks = {"t": {"label": "Task T", "methods": ("supervised", "sure", "sei", "css"), "upscale": 1,
                   "baseline_name": "blurred input"}}
    cfg = {"backbone": "cnn", "backbone_args": {}, "shorter_side": 64, "noise_sigma": 5.0, "seed": 0, "steps": 10,
           "epochs": None, "batch_size": 2, "patch_size": 8, "patch_size_x4": 8, "schedule": "s", "lr_sr": 1e-3,
           "lr_deblur": 1e-3}
    quality_report.write_report(str(tmp_path), cells, partial, cfg, tasks, "cpu-x", "my photos", {},
                                lambda task, method: None)
    status = {r["method"]: r["status"] for r in csv.DictReader(open(tmp_path / "quality.csv"))}
    assert status == {"baseline": "done", "supervised": "running (step 5)", "sure": "done", "sei": "done",
                      "css": "not run yet"}
    md = open(tmp_path / "quality.md").read()
    assert "not finished (step 5: 33.25)" in md and "| CSS | not run yet |" in md and "my photos" in md
    # SEI below SURE here: the bar says so, and that CSS has not run.
    assert "| Task T: SEI best self-supervised | NOT met (so far) | SEI 30.50 dB vs best other SURE 31.00 dB" in md
    assert "SEI minus it" in md and "-0.50 ± 0.00 (SEI higher on 0/2)" in md


def test_a_variant_trains_at_its_parents_learning_rate(quality, quality_report):
    cfg = {"lr_sr": 5e-4, "lr_deblur": 5e-4, "learning_rates": {"ei_rotate": {"sr": 2e-3, "deblur": 3e-3}}}
    assert quality.learning_rate(cfg, "ei_rotate_nearest", "sr_x2") == 2e-3
    assert quality.learning_rate(cfg, "ei_rotate_nearest", "gaussian_2") == 3e-3
    assert quality.learning_rate(cfg, "ei_shift", "sr_x2") == 5e-4  # no parent: the family's default
    own = {**cfg["learning_rates"], "ei_rotate_nearest": {"sr": 1e-4}}
    assert quality.learning_rate({**cfg, "learning_rates": own}, "ei_rotate_nearest", "sr_x2") == 1e-4
    assert quality_report.per_method_rates(cfg["learning_rates"]).endswith(", EI (rotate, nearest) at EI (rotate)'s")
    assert "at EI (rotate)'s" not in quality_report.per_method_rates(own)  # it has its own


def test_seeds_split_and_learning_rates(quality, tiny_photos, tmp_path):
    """Two seeds (one report each plus the summary), a learning rate per method, the validation split."""
    lrs = tmp_path / "lrs.json"
    lrs.write_text(json.dumps({"learning_rates": {"supervised_aug": {"sr": 0.002, "deblur": 0.003}}}))
    args = [f"--ground_truth_dir={tiny_photos}", *TINY, "--tasks=sr_x2", "--methods=supervised_aug,sei",
            "--seeds=0,1", f"--learning_rates={lrs}"]
    _run(quality, args, tmp_path)
    results = tmp_path / "results"
    for seed in (0, 1):
        _check_outputs(results / f"seed{seed}")
    summary = json.load(open(results / "quality.json"))
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["sei"]["seeds"] == [0, 1] and rows["supervised_aug"]["learning_rate"] == 0.002
    assert rows["sei"]["learning_rate"] == 0.0005  # not in the file: the default
    per_seed = {int(s): {c["method"]: c for c in cells} for s, cells in summary["cells"].items()}
    # Same data for both seeds (same baseline), different training runs.
    assert per_seed[0]["baseline"]["psnr"] == per_seed[1]["baseline"]["psnr"]
    assert per_seed[0]["sei"]["psnr"] != per_seed[1]["sei"]["psnr"]
    d = [sum(per_seed[s]["sei"]["psnr"][0] - per_seed[s]["supervised_aug"]["psnr"][0] for s in (0, 1)) / 2]
    assert rows["supervised_aug"]["sei_minus_it"][0] == pytest.approx(d[0])
    md = open(results / "quality.md").read()
    assert "Supervised + SEI's augmentation" in md and "not run yet" in md  # e.g. SURE
    # Each seed's report states the rates its cells trained at, not only the default.
    assert "Supervised + SEI's augmentation 0.002 (SR) / 0.003 (blur)" in open(results / "seed0" / "quality.md").read()

    # Another learning rate for a method: its finished cells are kept aside and retrained.
    lrs.write_text(json.dumps({"supervised_aug": {"sr": 0.001}}))
    _run(quality, args, tmp_path)
    rows = {r["method"]: r for r in json.load(open(results / "quality.json"))["rows"]}
    assert rows["supervised_aug"]["learning_rate"] == 0.001
    assert len(list((tmp_path / "cache" / "cells").glob("*/sr_x2__supervised_aug.lr0.002.stale.json"))) == 2

    # The validation split trains without the held-out images and scores them; the test images stay unread.
    _run(quality, [f"--ground_truth_dir={tiny_photos}", *TINY, "--tasks=sr_x2", "--methods=supervised",
                   "--split=validation", "--validation_names=chelsea,rocket"], tmp_path, cache="cache_val")
    report = json.load(open(results / "quality.json"))
    (cell,) = [c for c in report["cells"] if c["method"] == "supervised"]
    assert report["config"]["split"] == "validation"
    assert cell["test_names"] == ["chelsea", "rocket"] and cell["train_names"] == ["astronaut"]


def test_summary_interval_and_curve_flatness_against_the_formulas(quality):
    import quality_summary as qs

    # Differences 1..6: mean 3.5, sample sd sqrt(3.5), t(0.975, 5) = 2.5706.
    mean, low, high = qs.paired_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    half = 2.570582 * 3.5 ** 0.5 / 6 ** 0.5
    assert mean == pytest.approx(3.5) and low == pytest.approx(3.5 - half, abs=1e-5)
    assert high == pytest.approx(3.5 + half, abs=1e-5)
    curve = [[0, 30.0, 0], [250, 31.0, 0], [500, 31.5, 0], [750, 31.8, 0], [900, 31.82, 0], [1000, 31.83, 0]]
    assert qs.last_quarter_gain(curve, 1000) == pytest.approx(0.03)
    assert str(qs.last_quarter_gain(curve[:-1], 1000)) == "nan"  # unfinished

    def cell(method, psnr):
        return {"task": "sr_x2", "method": method, "psnr": psnr, "psnr_mean": sum(psnr) / len(psnr),
                "ssim_mean": 0.9, "test_names": ["a", "b", "c"], "curve": curve, "steps": 1000,
                "learning_rate": 1e-3, "train_minutes": 1.0}

    cells = {0: {("sr_x2", "sei"): cell("sei", [30.0, 31.0, 32.0]), ("sr_x2", "sure"): cell("sure", [29.0, 31.0, 31.0])},
             1: {("sr_x2", "sei"): cell("sei", [30.0, 31.0, 32.0]), ("sr_x2", "sure"): cell("sure", [30.0, 30.0, 31.0])},
             2: {("sr_x2", "sei"): cell("sei", [30.0, 31.0, 32.0])}}
    mean, low, high, seeds = qs.paired_with_sei(cells, "sr_x2", "sure")
    assert seeds == [0, 1]  # only the seeds both finished
    assert mean == pytest.approx((0.5 + 0.5 + 1.0) / 3)  # per image: (1+0)/2, (0+1)/2, (1+1)/2
    row = qs.method_row(cells, "sr_x2", "sei")
    assert row["seeds"] == [0, 1, 2] and row["psnr_seed_std"] == pytest.approx(0.0)


def test_bars_compare_on_the_seeds_both_finished(quality):
    """A method run on fewer seeds is compared with SEI on those seeds only, not with SEI's mean over all."""
    import quality_summary as qs

    curve = [[0, 30.0, 0], [750, 31.0, 0], [1000, 31.0, 0]]

    def cell(method, psnr):
        return {"task": "gaussian_2", "method": method, "psnr": psnr, "psnr_mean": sum(psnr) / len(psnr),
                "ssim_mean": 0.9, "test_names": ["a", "b", "c"], "curve": curve, "steps": 1000,
                "learning_rate": 1e-3, "train_minutes": 1.0}

    # SEI: 30 on seed 0, 34 on seeds 1 and 2 (mean 32.67). Supervised + aug: seed 0 only, 32.
    # SURE: 1 dB under SEI on every seed, except image "a" of seed 0 where it is 0.5 above.
    cells = {0: {("gaussian_2", "sei"): cell("sei", [30.0, 30.0, 30.0]),
                 ("gaussian_2", "supervised_aug"): cell("supervised_aug", [32.0, 32.0, 32.0]),
                 ("gaussian_2", "sure"): cell("sure", [30.5, 29.0, 29.0])},
             1: {("gaussian_2", "sei"): cell("sei", [34.0, 34.0, 34.0]),
                 ("gaussian_2", "sure"): cell("sure", [33.0, 33.0, 33.0])},
             2: {("gaussian_2", "sei"): cell("sei", [34.0, 34.0, 34.0]),
                 ("gaussian_2", "sure"): cell("sure", [33.0, 33.0, 33.0])}}
    tasks = {"gaussian_2": {"label": "G2", "methods": ("supervised", "supervised_aug", "sure", "sei")}}
    rows = {m: qs.method_row(cells, "gaussian_2", m) for m in ("sei", "supervised_aug", "sure")}
    rows = {("gaussian_2", m): r for m, r in rows.items()}
    pairs = {("gaussian_2", m): qs.paired_with_sei(cells, "gaussian_2", m) for m in ("supervised_aug", "sure")}
    bars = {name: (verdict, detail) for name, verdict, detail in qs.bars(rows, pairs, tasks)}
    # Means over different seeds would give a gap of 32 - 32.67 < 0; on seed 0 it is +2.00 > 1.5.
    verdict, detail = bars["G2: SEI within 1.5 dB of the better supervised row"]
    assert verdict == "NOT met (so far)" and "minus SEI +2.00 dB over seed 0" in detail
    # SURE, per image and averaged over seeds 0-2: a: (-0.5+1+1)/3 = 0.5, b and c: 1.0.
    verdict, detail = bars["G2: SEI best self-supervised (95% interval vs runner-up excludes 0)"]
    mean, low, high = qs.paired_interval([0.5, 1.0, 1.0])
    assert f"SEI {mean:+.2f} dB [{low:+.2f}, {high:+.2f}] over seeds 0, 1, 2" in detail
    assert verdict.startswith("met" if low > 0 else "NOT met")


def test_compare_cell_sets_pairs_seeds_and_images(quality, tmp_path):
    import compare_cell_sets as cc

    def cell(method, psnr, names=("a", "b", "c")):
        return {"task": "sr_x2", "method": method, "psnr": psnr, "psnr_mean": sum(psnr) / len(psnr),
                "test_names": list(names)}

    def summary(path, cells_by_seed):
        with open(path, "w") as f:
            json.dump({"cells": {str(s): cells for s, cells in cells_by_seed.items()}}, f)
        return str(path)

    a = summary(tmp_path / "a.json", {0: [cell("sei", [30.0, 31.0, 32.0]), cell("sure", [29.0, 29.0, 29.0])],
                                      1: [cell("sei", [30.0, 30.0, 30.0])],
                                      2: [cell("sei", [28.0, 28.0, 28.0])]})
    b = summary(tmp_path / "b.json", {0: [cell("sei", [31.0, 31.0, 33.0])],
                                      1: [cell("sei", [30.0, 31.0, 32.0])]})
    rows = cc.compare(cc.load_summary_cells(a), cc.load_summary_cells(b))
    assert [(r["task"], r["method_a"], r["method_b"], r["seeds"]) for r in rows] == [
        ("sr_x2", "sei", "sei", [0, 1])]  # seed 2, SURE: A only
    r = rows[0]
    # Per image, B - A averaged over seeds 0 and 1: (1+0)/2, (0+1)/2, (1+2)/2.
    mean, low, high = cc.paired_interval([0.5, 0.5, 1.5])
    assert (r["diff"], r["low"], r["high"]) == pytest.approx((mean, low, high)) and r["diff"] == pytest.approx(5 / 6)
    assert r["per_seed"] == pytest.approx([2 / 3, 1.0])
    assert r["psnr_a"] == pytest.approx((31.0 + 30.0) / 2) and r["psnr_b"] == pytest.approx((95 / 3 + 31.0) / 2)
    # One method of A against another of B: SEI of B against SURE of A, on seed 0 only (A has SURE there).
    rows = cc.compare(cc.load_summary_cells(a), cc.load_summary_cells(b), "sure", "sei")
    assert [(r["task"], r["method_a"], r["method_b"], r["seeds"]) for r in rows] == [("sr_x2", "sure", "sei", [0])]
    assert rows[0]["diff"] == pytest.approx((2.0 + 2.0 + 4.0) / 3)
    assert rows[0]["psnr_a"] == pytest.approx(29.0)
    assert cc.compare(cc.load_summary_cells(a), cc.load_summary_cells(b), "sure", "sure") == []  # B has no SURE
    # Cells tested on other images are not compared.
    other = summary(tmp_path / "c.json", {0: [cell("sei", [30.0, 31.0, 32.0], names=("a", "b", "d"))]})
    with pytest.raises(ValueError, match="different images"):
        cc.compare(cc.load_summary_cells(a), cc.load_summary_cells(other))
    # Several summaries pool their cells (a task reported in another folder); a cell in two must agree.
    d = summary(tmp_path / "d.json", {0: [dict(cell("sei", [26.0, 27.0, 28.0]), task="sr_x4")],
                                      1: [cell("sei", [30.0, 30.0, 30.0])]})
    pooled = cc.pooled_cells([a, d])
    assert list(pooled) == [("sr_x2", "sei", 0), ("sr_x2", "sure", 0), ("sr_x2", "sei", 1), ("sr_x2", "sei", 2),
                            ("sr_x4", "sei", 0)]  # each file's order, then the next file's new cells
    assert pooled["sr_x4", "sei", 0]["psnr"] == [26.0, 27.0, 28.0]
    with pytest.raises(ValueError, match="other scores"):
        cc.pooled_cells([a, b])  # SEI seed 0 differs


def test_budgets_pair_seeds_across_budgets_and_divide_by_doublings(quality, tmp_path):
    import budgets

    def cell(method, steps, psnr, curve_end):
        # A curve at 0, 3/4 and all of the steps, ending at the cell's PSNR.
        return {"task": "gaussian_2", "method": method, "steps": steps, "psnr_mean": psnr, "psnr": [psnr],
                "ssim_mean": 0.9, "train_minutes": 1.0, "test_names": ["a"],
                "curve": [[0, 28.0, 0.8], [3 * steps // 4, psnr - curve_end, 0.9], [steps, psnr, 0.9]]}

    def summary(name, cells_by_seed):
        path = tmp_path / name
        path.write_text(json.dumps({"cells": {str(s): c for s, c in cells_by_seed.items()}}))
        return str(path)

    short = summary("1000.json", {0: [cell("supervised", 1000, 31.0, 0.4), cell("sure", 1000, 28.5, 0.0)],
                                  1: [cell("supervised", 1000, 31.2, 0.2)],
                                  2: [cell("supervised", 1000, 35.0, 0.1)]})
    long = summary("4000.json", {0: [cell("supervised", 4000, 31.1, 0.1), cell("sure", 4000, 27.0, -1.0)],
                                 1: [cell("supervised", 4000, 31.5, 0.3)],
                                 3: [cell("supervised", 4000, 20.0, 0.3)]})
    rows = budgets.budget_rows([budgets.load_budget(long), budgets.load_budget(short)])
    sup = [r for r in rows if r["method"] == "supervised"]
    assert [r["steps"] for r in sup] == [1000, 4000]
    first, second = sup
    assert "gain" not in first and first["psnr_mean"] == pytest.approx((31.0 + 31.2 + 35.0) / 3)
    assert first["last_quarter_gain"] == pytest.approx((0.4 + 0.2 + 0.1) / 3)
    assert second["seeds"] == [0, 1, 3] and second["psnr_mean"] == pytest.approx((31.1 + 31.5 + 20.0) / 3)
    # Gain on the seeds both budgets ran (0 and 1, not 2 or 3), over log2(4000 / 1000) = 2 doublings.
    assert second["gain_seeds"] == [0, 1] and second["gain"] == pytest.approx((0.1 + 0.3) / 2)
    assert second["gain_per_doubling"] == pytest.approx(0.2 / 2)
    assert budgets.flattened(second["gain_per_doubling"]) == "no"
    sure = [r for r in rows if r["method"] == "sure"][1]
    assert sure["gain_per_doubling"] == pytest.approx(-1.5 / 2)
    assert budgets.flattened(sure["gain_per_doubling"]) == "no: worse with more steps"
    assert budgets.flattened(0.049) == "yes" and budgets.flattened(-0.049) == "yes"
    assert budgets.budget_rows([budgets.load_budget(short)], tasks=["sr_x2"]) == []
    # Two files of one budget merge; the same cell in both is refused.
    other_task = summary("1000_sr.json", {0: [{**cell("sei", 1000, 36.0, 0.1), "task": "sr_x2"}]})
    merged = budgets.merge_budgets([budgets.load_budget(short), budgets.load_budget(other_task)])
    assert [s for s, _ in merged] == [1000] and ("sr_x2", "sei", 0) in merged[0][1]
    assert ("gaussian_2", "supervised", 2) in merged[0][1]
    with pytest.raises(ValueError, match="in two --runs files"):
        budgets.merge_budgets([budgets.load_budget(short), budgets.load_budget(short)])
    # A file that mixes budgets is refused.
    mixed = summary("mixed.json", {0: [cell("supervised", 1000, 31.0, 0.1)], 1: [cell("supervised", 4000, 31.0, 0.1)]})
    with pytest.raises(ValueError, match="several budgets"):
        budgets.load_budget(mixed)


def test_learning_rate_choice_per_method_and_family(quality):
    import select_learning_rates as sel

    def cell(method, task, lr, psnr):
        return {"method": method, "task": task, "learning_rate": lr, "psnr_mean": psnr}

    cells = [cell("sei", "sr_x2", 5e-4, 36.0), cell("sei", "sr_x2", 1e-3, 36.3), cell("sei", "sr_x2", 2e-3, 36.1),
             cell("sei", "sr_x3", 5e-4, 33.0), cell("sei", "sr_x3", 1e-3, 32.5),  # 2e-3 not tried on x3
             cell("sei", "gaussian_2", 5e-4, 33.0), cell("sei", "gaussian_2", 1e-3, 33.4),
             cell("supervised", "sr_x2", 5e-4, 36.5), cell("supervised", "sr_x2", 5e-4, 36.7)]  # two seeds
    rates, rows = sel.choose(cells)
    # SR: 5e-4 scores (36.0 + 33.0) / 2 = 34.5 against 34.4 for 1e-3; 2e-3 misses a task.
    assert rates["sei"] == {"sr": 5e-4, "deblur": 1e-3}
    assert rates["supervised"] == {"sr": 5e-4}
    (sup,) = [r for r in rows if r["method"] == "supervised"]
    assert sup["seeds"] == 2 and sup["val_psnr"] == pytest.approx(36.6)
    assert all(r["at_grid_edge"] for r in rows if r["method"] == "sei" and r["family"] == "deblur")


def test_extra_test_images_score_the_saved_cells(quality, tiny_photos, tmp_path):
    """extra_test_images.py: the saved models scored on the extra photographs, paired with SEI per image."""
    import extra_test_images as extra
    from quality_summary import paired_interval
    from sei_tf import data, evaluate, loading

    args = [f"--ground_truth_dir={tiny_photos}", *TINY, "--tasks=sr_x2", "--methods=supervised,sei"]
    _run(quality, args, tmp_path)
    flags = quality.FLAGS
    flags.unparse_flags()
    flags(["extra_test_images.py", f"--results_dir={tmp_path / 'extra'}", f"--cache_dir={tmp_path / 'cache'}",
           *args])
    try:
        assert extra.main([]) == 0
        cells = _cell_dir(tmp_path)
        # The scores live in a subfolder: the benchmark's own cells are unchanged.
        assert set(quality.load_cells(str(cells))) == {("sr_x2", m) for m in ("baseline", "supervised", "sei")}
        scores = {m: json.load(open(cells / "extra_test_images" / f"sr_x2__{m}.json")) for m in ("supervised", "sei")}
        mtimes = {p: p.stat().st_mtime_ns for p in (cells / "extra_test_images").iterdir()}
        assert extra.main([]) == 0  # a rerun reads the cached scores
        assert {p: p.stat().st_mtime_ns for p in (cells / "extra_test_images").iterdir()} == mtimes
    finally:
        flags.unparse_flags()
    names = list(extra.EXTRA_TEST_NAMES)
    assert scores["sei"]["names"] == names and len(scores["sei"]["psnr"]) == len(names)

    # Against the library: the SEI model restores the extra photographs simulated like the test ones.
    out = tmp_path / "sim"
    data.sample_ground_truth(str(tmp_path / "src"), names=names)
    data.simulate([str(tmp_path / "src" / f"{n}.png") for n in names], str(out), quality.make_physics("sr_x2"),
                  shorter_side=48, seed=0, overwrite=True, progress=False, channels=3)
    pairs = [(n, data.read_image(str(out / data.MEASUREMENTS_DIR / f"{n}.tif")),
              data.read_image(str(out / data.GROUND_TRUTH_DIR / f"{n}.png"))) for n in names]
    rows = evaluate.evaluate(loading.load_model(str(cells / "sr_x2__sei.keras")), pairs)
    assert [r["psnr"] for r in rows if r["method"] == "model"] == pytest.approx(scores["sei"]["psnr"], abs=1e-4)

    # SEI minus supervised: per extra image, then the test photograph (coffee) first in "all".
    report = json.load(open(tmp_path / "extra" / "extra_test_images.json"))
    (row,) = [r for r in report["rows"] if r["method"] == "supervised"]
    d_extra = [a - b for a, b in zip(scores["sei"]["psnr"], scores["supervised"]["psnr"])]
    summary = json.load(open(tmp_path / "results" / "quality.json"))
    cell = {c["method"]: c for c in summary["cells"]}
    d_test = [cell["sei"]["psnr"][0] - cell["supervised"]["psnr"][0]]
    assert row["extra"] == pytest.approx(list(paired_interval(d_extra)))
    assert row["all"] == pytest.approx(list(paired_interval(d_test + d_extra)))
    assert row["num_all"] == 1 + len(names)
    assert "Supervised" in open(tmp_path / "extra" / "extra_test_images.md").read()
    # The cells over all images, for compare_cell_sets: the test photograph first, then the extra ones.
    import compare_cell_sets as cc

    all_cells = cc.load_summary_cells(str(tmp_path / "extra" / "extra_test_images.json"))
    assert all_cells["sr_x2", "sei", 0]["test_names"] == cell["sei"]["test_names"] + names
    assert all_cells["sr_x2", "sei", 0]["psnr"] == pytest.approx(cell["sei"]["psnr"] + scores["sei"]["psnr"])
    (both,) = cc.compare(all_cells, all_cells, "supervised", "sei")
    assert [both["diff"], both["low"], both["high"]] == pytest.approx(row["all"])


def _write_many(quality, path, n, errors):
    try:
        for i in range(n):
            quality._write_json(path, {"writer": os.getpid(), "i": i})
    except OSError as e:  # reported to the parent, which asserts there is none
        errors.put(repr(e))


def test_parallel_processes_write_the_same_json(quality, tmp_path):
    """Two benchmark processes starting together both write the cell folder's config.json."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    path, errors = str(tmp_path / "config.json"), ctx.Queue()
    writers = [ctx.Process(target=_write_many, args=(quality, path, 300, errors)) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert errors.empty(), errors.get()
    assert json.load(open(path))["i"] == 299
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left behind
