"""Quality benchmark: SEI against its baselines on real photographs (issue #4).

    PYTHONPATH=. .venv/bin/python benchmarks/quality.py            # the CPU budget
    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --tasks sr_x2 --methods sei
    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --preset paper --ground_truth_dir DIV2K_HR/

Trains every method on every task with the same backbone, budget (steps, batch,
patch), optimizer schedule (Adam, constant for half the steps then linear decay
to 0.01x) and seed, then evaluates on the held-out test photographs with the
paper's protocol (full images, 8-bit luma PSNR/SSIM, mean and std over the set)
next to the non-learned baseline (bicubic upsampling / the blurred input).

Data (default): scikit-image's bundled colour photographs plus the 12 nature
photographs of Debian's `mate-backgrounds` package, resized so the shorter side
is 256 px. The train/test split is fixed in `TEST_NAMES`; no method ever sees a
test image in training. Measurements are simulated once (`sei_tf.data.simulate`,
noise seed per image name) and cached under `--cache_dir`.

Every finished cell (task x method) is cached as JSON (final metrics, learning
curve, timing) with its weights and 8-bit test predictions; an unfinished cell
keeps a checkpoint at each evaluation, so a killed run resumes where it stopped.
Tables and figures in `--results_dir` are regenerated from whatever cells are
finished; missing cells are marked "not run yet".
"""

import glob
import hashlib
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# ------------------------------------------------------------------------------------
# Fixed protocol
# ------------------------------------------------------------------------------------

MATE_DIR = "/usr/share/backgrounds/mate/nature"
MATE_NAMES = ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
              "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower")
# The test set of the default data, fixed once (before any training) and never
# changed: two scikit-image photographs and four mate-backgrounds photographs.
# The stereo pair motorcycle_left/right stays together (in training).
TEST_NAMES = ("astronaut", "coffee", "Blinds", "GreenMeadow", "Storm", "YellowFlower")

TASKS = {
    "sr_x2": {"task": "sr", "factor": 2, "label": "SR x2"},
    "sr_x4": {"task": "sr", "factor": 4, "label": "SR x4"},
    "gaussian_2": {"task": "deblur", "kernel": "gaussian:2", "label": "Gaussian blur s=2"},
    "box_3": {"task": "deblur", "kernel": "box:3", "label": "Box blur r=3"},
}
ALL_METHODS = ("supervised", "css", "sure", "ei_shift", "ei_rotate", "sei", "sei_nostop")
SELF_SUPERVISED = ("css", "sure", "ei_shift", "ei_rotate", "sei", "sei_nostop")
METHODS_PER_TASK = {
    "sr_x2": ALL_METHODS, "gaussian_2": ALL_METHODS,
    "sr_x4": ("supervised", "sure", "sei"), "box_3": ("supervised", "sure", "sei"),
}
# Order in which cells run: the most informative first.
PRIORITY = (
    [("sr_x2", m) for m in ("supervised", "sei", "sure")]
    + [("gaussian_2", m) for m in ("supervised", "sei", "sure")]
    + [(t, m) for t in ("sr_x2", "gaussian_2") for m in ("sei_nostop", "ei_shift", "css", "ei_rotate")]
    + [(t, m) for t in ("sr_x4", "box_3") for m in ("supervised", "sei", "sure")]
)
METHOD_LABELS = {"supervised": "Supervised", "css": "CSS", "sure": "SURE", "ei_shift": "EI (shift)",
                 "ei_rotate": "EI (rotate)", "sei": "SEI", "sei_nostop": "SEI, no stop-gradient",
                 "baseline": "Non-learned baseline"}
# The authors' published PSNR (dB), noise 5/255, DIV2K validation, SwinIR, GPU budget.
PAPER_PSNR = {
    "sr_x2": {"supervised": 29.2, "sei": 29.1, "baseline": 27.4},
    "sr_x4": {"supervised": 22.7, "sei": 22.9, "baseline": 21.9},
    "gaussian_2": {"supervised": 25.9, "sei": 25.8, "baseline": 22.8},
}
# Bars of issue #4 on the CPU budget: max PSNR gap (dB) of SEI below supervised.
GAP_BARS = {"sr_x2": 0.3, "sr_x4": 0.5, "gaussian_2": 1.5}
NOISE_SIGMA = 5.0
VISUAL_NAME = "astronaut"  # the test image shown in visual.png (centre crop)

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "cpu", ["cpu", "paper"],
                  "cpu: the default CPU budget. paper: the paper's GPU protocol (SwinIR classical, "
                  "patches 48, batch 8, Adam 2e-4 SR / 1e-4 deblurring, delayed linear decay, 500 "
                  "epochs) on --ground_truth_dir; explicit flags still override.")
flags.DEFINE_list("tasks", list(TASKS), f"Tasks to run, among {', '.join(TASKS)}.")
flags.DEFINE_list("methods", list(ALL_METHODS),
                  f"Methods to run (each task runs those of its list), among {', '.join(ALL_METHODS)}.")
flags.DEFINE_string("ground_truth_dir", None,
                    "Ground-truth photographs instead of the default data. Split: names 0001-0800 "
                    "train / 0801-0900 test when all names are numbers (DIV2K), else --test_names.")
flags.DEFINE_list("test_names", None, "Test image names (file stems) for --ground_truth_dir.")
flags.DEFINE_integer("shorter_side", 256, "Ground truth resized so its shorter side is this.")
flags.DEFINE_integer("steps", None, "Training steps per cell (cpu default 1000; paper: from --epochs).")
flags.DEFINE_integer("epochs", None, "Epochs (paper preset: 500); ignored when --steps is given.")
flags.DEFINE_integer("batch_size", None, "Batch size (default 8).")
flags.DEFINE_integer("patch_size", None, "Training patch side in measurement pixels (default 48).")
flags.DEFINE_integer("patch_size_x4", None, "Patch side in measurement pixels for SR x4 "
                     "(cpu default 32, i.e. 128-px signal patches; paper 48).")
flags.DEFINE_enum("backbone", None, ["cnn", "swinir", "swinir_light"], "Backbone (cpu: cnn, paper: swinir).")
flags.DEFINE_integer("features", None, "cnn: feature channels (default 32).")
flags.DEFINE_integer("num_blocks", None, "cnn: residual blocks (default 8).")
flags.DEFINE_integer("swinir_embed_dim", None, "SwinIR embedding dim override (tiny runs).")
flags.DEFINE_list("swinir_depths", None, "SwinIR stage depths override, e.g. 1,1.")
flags.DEFINE_list("swinir_num_heads", None, "SwinIR heads per stage override, e.g. 2,2.")
flags.DEFINE_integer("swinir_window_size", None, "SwinIR window size override.")
flags.DEFINE_float("lr_sr", None, "Adam learning rate for SR (cpu 5e-4, paper 2e-4).")
flags.DEFINE_float("lr_deblur", None, "Adam learning rate for deblurring (cpu 5e-4, paper 1e-4).")
flags.DEFINE_integer("eval_every", None, "Evaluate test PSNR (learning curve) and checkpoint every N "
                     "steps (default steps/10).")
flags.DEFINE_integer("seed", 0, "Seed of weights, crops, noise and transforms (same for all methods).")
flags.DEFINE_string("results_dir", os.path.join(HERE, "results"), "Where tables and figures go.")
flags.DEFINE_string("cache_dir", os.path.join(HERE, "cache"), "Simulated data, finished cells, checkpoints.")
flags.DEFINE_boolean("report_only", False, "Only regenerate tables and figures from finished cells.")
flags.DEFINE_boolean("rerun", False, "Retrain the selected cells even when they are finished.")


# ------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------

def resolve_config():
    """The budget from the preset and the flags (explicit flags win)."""
    paper = FLAGS.preset == "paper"
    if paper and not FLAGS.ground_truth_dir:
        raise app.UsageError("--preset paper needs --ground_truth_dir (e.g. DIV2K's HR photographs).")

    def pick(value, cpu, gpu):
        return value if value is not None else (gpu if paper else cpu)

    backbone = pick(FLAGS.backbone, "cnn", "swinir")
    if backbone == "cnn":
        backbone_args = {"features": pick(FLAGS.features, 32, 32), "num_blocks": pick(FLAGS.num_blocks, 8, 8)}
    else:
        backbone_args = {}
        if FLAGS.swinir_embed_dim is not None:
            backbone_args["embed_dim"] = FLAGS.swinir_embed_dim
        if FLAGS.swinir_depths is not None:
            backbone_args["depths"] = [int(v) for v in FLAGS.swinir_depths]
        if FLAGS.swinir_num_heads is not None:
            backbone_args["num_heads"] = [int(v) for v in FLAGS.swinir_num_heads]
        if FLAGS.swinir_window_size is not None:
            backbone_args["window_size"] = FLAGS.swinir_window_size
    cfg = {
        "preset": FLAGS.preset,
        "backbone": backbone,
        "backbone_args": backbone_args,
        "batch_size": pick(FLAGS.batch_size, 8, 8),
        "patch_size": pick(FLAGS.patch_size, 48, 48),
        "patch_size_x4": pick(FLAGS.patch_size_x4, 32, 48),
        "lr_sr": pick(FLAGS.lr_sr, 5e-4, 2e-4),
        "lr_deblur": pick(FLAGS.lr_deblur, 5e-4, 1e-4),
        "schedule": "Adam(0.9, 0.999), constant for half the steps, then linear decay to 0.01x",
        "noise_sigma": NOISE_SIGMA,
        "shorter_side": FLAGS.shorter_side,
        "seed": FLAGS.seed,
        "steps": FLAGS.steps,
        "epochs": None if FLAGS.steps is not None else pick(FLAGS.epochs, None, 500),
    }
    if cfg["steps"] is None and cfg["epochs"] is None:
        cfg["steps"] = 1000
    return cfg


def cell_steps(cfg, num_train):
    if cfg["steps"] is not None:
        return int(cfg["steps"])
    return int(cfg["epochs"]) * max(1, num_train // cfg["batch_size"])


def short_hash(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------

class MissingData(RuntimeError):
    pass


def default_sources(cache_dir):
    """Source photographs of the default data: scikit-image's plus mate-backgrounds'."""
    from sei_tf import data

    missing = [n for n in MATE_NAMES if not os.path.isfile(os.path.join(MATE_DIR, n + ".jpg"))]
    if missing:
        raise MissingData(
            f"The mate-backgrounds photographs are missing from {MATE_DIR} ({len(missing)} of "
            f"{len(MATE_NAMES)}: {', '.join(missing[:4])}...). Install them (Debian/Ubuntu) with\n\n"
            "    sudo apt-get update && sudo apt-get install -y mate-backgrounds\n\n"
            "or give your own photographs with --ground_truth_dir DIR --test_names a,b,c.")
    src = os.path.join(cache_dir, "sources")
    os.makedirs(src, exist_ok=True)
    want = [os.path.join(src, n + ".png") for n in data.SAMPLE_NAMES]
    if not all(os.path.isfile(p) for p in want):
        data.sample_ground_truth(src)
    files = list(want)
    for n in MATE_NAMES:
        link = os.path.join(src, n + ".jpg")
        if not os.path.lexists(link):
            os.symlink(os.path.join(MATE_DIR, n + ".jpg"), link)
        files.append(link)
    return files, set(TEST_NAMES)


def user_sources(gt_dir, test_names):
    from sei_tf import data

    files = data.list_images(gt_dir)
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    if test_names:
        test = set(test_names)
    elif all(s.isdigit() for s in stems):  # DIV2K: 0001-0800 train, 0801-0900 test
        test = {s for s in stems if 801 <= int(s) <= 900}
        files = [f for f, s in zip(files, stems) if 1 <= int(s) <= 900]
    else:
        raise app.UsageError("--ground_truth_dir: give --test_names (file names are not DIV2K numbers).")
    unknown = test - set(stems)
    if unknown:
        raise app.UsageError(f"--test_names not found in {gt_dir}: {', '.join(sorted(unknown))}.")
    return files, test


def make_physics(task_key):
    from sei_tf import physics

    t = TASKS[task_key]
    if t["task"] == "sr":
        return physics.SuperResolution(t["factor"], NOISE_SIGMA)
    return physics.Blur(t["kernel"], NOISE_SIGMA)


def prepare_task(task_key, sources, test, cfg, cache_dir):
    """Simulates (once) and splits the measurements of one task."""
    from sei_tf import data

    key = short_hash({"files": sorted(os.path.basename(f) for f in sources), "side": cfg["shorter_side"],
                      "seed": cfg["seed"], "noise": NOISE_SIGMA, "task": TASKS[task_key]})
    out = os.path.join(cache_dir, "data", f"{task_key}-{key}")
    sidecar = os.path.join(out, data.MEASUREMENTS_DIR, data.SIDECAR_NAME)
    if not os.path.isfile(sidecar):
        logging.info("Simulating %s measurements into %s", task_key, out)
        data.simulate(sources, out, make_physics(task_key), shorter_side=cfg["shorter_side"],
                      seed=cfg["seed"], overwrite=True, progress=False, channels=3)
    meta = json.load(open(sidecar))
    stems = sorted(os.path.splitext(f)[0] for f in meta["files"])
    split = {"train": [s for s in stems if s not in test], "test": [s for s in stems if s in test]}
    assert not set(split["train"]) & set(split["test"])
    if not split["train"] or not split["test"]:
        raise app.UsageError(f"Empty split: {len(split['train'])} training, {len(split['test'])} test images.")
    ydir, xdir = os.path.join(out, data.MEASUREMENTS_DIR), os.path.join(out, data.GROUND_TRUTH_DIR)
    return {
        "dir": out,
        "train_y": [os.path.join(ydir, s + ".tif") for s in split["train"]],
        "train_x": [os.path.join(xdir, s + ".png") for s in split["train"]],
        "test_names": split["test"],
        "test_y": [data.read_image(os.path.join(ydir, s + ".tif")) for s in split["test"]],
        "test_x": [data.read_image(os.path.join(xdir, s + ".png")) for s in split["test"]],
    }


# ------------------------------------------------------------------------------------
# Training and evaluation of one cell
# ------------------------------------------------------------------------------------

def evaluate(restore, ys, xs):
    """Per-image PSNR/SSIM (paper protocol) and 8-bit predictions of a restorer."""
    import numpy as np
    import tensorflow as tf

    from sei_tf import metrics

    psnrs, ssims, preds = [], [], []
    for y, x in zip(ys, xs):
        xh = restore(tf.constant(y[None]))
        xt = tf.constant(x[None])
        psnrs.append(float(metrics.psnr(xh, xt)[0]))
        ssims.append(float(metrics.ssim(xh, xt)[0]))
        preds.append(np.round(np.clip(np.asarray(xh[0]), 0, 1) * 255).astype(np.uint8))
    return psnrs, ssims, preds


def summary(psnrs, ssims):
    import numpy as np

    return {"psnr_mean": float(np.mean(psnrs)), "psnr_std": float(np.std(psnrs)),
            "ssim_mean": float(np.mean(ssims)), "ssim_std": float(np.std(ssims)),
            "psnr": [float(v) for v in psnrs], "ssim": [float(v) for v in ssims]}


def baseline_cell(task_key, td, cell_dir):
    import numpy as np

    path = os.path.join(cell_dir, f"{task_key}__baseline.json")
    if os.path.isfile(path):
        return json.load(open(path))
    phys = make_physics(task_key)
    psnrs, ssims, preds = evaluate(phys.baseline, td["test_y"], td["test_x"])
    res = {"task": task_key, "method": "baseline", "test_names": td["test_names"], **summary(psnrs, ssims)}
    np.savez_compressed(os.path.join(cell_dir, f"{task_key}__baseline.npz"),
                        **{n: p for n, p in zip(td["test_names"], preds)})
    _write_json(path, res)
    return res


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def _var_key(v):
    return v.path.replace("/", "|")


def train_cell(task_key, method, td, cfg, cell_dir):
    """Trains one (task, method) cell, with resumable checkpoints; returns its result dict."""
    import keras
    import numpy as np
    import tensorflow as tf

    from sei_tf import data, models, training

    name = f"{task_key}__{method}"
    phys = make_physics(task_key)
    factor = TASKS[task_key].get("factor", 1)
    num_train = len(td["train_y"])
    steps = cell_steps(cfg, num_train)
    eval_every = FLAGS.eval_every or max(1, steps // 10)
    patch = cfg["patch_size_x4"] if factor == 4 else cfg["patch_size"]
    lr = cfg["lr_sr"] if factor > 1 else cfg["lr_deblur"]

    keras.utils.set_random_seed(cfg["seed"])  # same initial weights for every method
    backbone = models.build(cfg["backbone"], upscale=factor, channels=3, **cfg["backbone_args"])
    base_method = "sei" if method == "sei_nostop" else method
    model = training.SEIModel(backbone, phys, method=base_method, stop_gradient=(method != "sei_nostop"),
                              seed=cfg["seed"])
    model.compile(optimizer=keras.optimizers.Adam(training.DelayedLinearDecay(lr, steps),
                                                  beta_1=0.9, beta_2=0.999))
    if method == "supervised":
        ds = data.paired_patch_dataset(td["train_y"], td["train_x"], patch, cfg["batch_size"], 3,
                                       factor=factor, seed=cfg["seed"])
    else:
        ds = data.measurement_dataset(td["train_y"], patch, cfg["batch_size"], 3, seed=cfg["seed"],
                                      factor=factor)

    ckpt = os.path.join(cell_dir, name + ".partial")
    state = {"step": 0, "curve": [], "train_seconds": 0.0, "eval_seconds": 0.0, "loss": []}
    if os.path.isfile(os.path.join(ckpt, "state.json")):
        state = json.load(open(os.path.join(ckpt, "state.json")))
        backbone.load_weights(os.path.join(ckpt, "backbone.weights.h5"))
        model.optimizer.build(backbone.trainable_variables)
        opt = np.load(os.path.join(ckpt, "optimizer.npz"))
        for v in model.optimizer.variables:
            if _var_key(v) in opt:
                v.assign(opt[_var_key(v)])
        logging.info("%s: resuming at step %d/%d", name, state["step"], steps)

    def restore(y):
        return backbone(y, training=False)

    if state["step"] == 0 and not state["curve"]:
        t = time.time()
        p, s, _ = evaluate(restore, td["test_y"], td["test_x"])
        state["curve"].append([0, float(np.mean(p)), float(np.mean(s))])
        state["eval_seconds"] += time.time() - t

    while state["step"] < steps:
        chunk = min(eval_every, steps - state["step"])
        t = time.time()
        hist = model.fit(ds.skip(state["step"]), steps_per_epoch=chunk, epochs=1, verbose=0)
        state["train_seconds"] += time.time() - t
        state["step"] += chunk
        state["loss"].append([state["step"], float(hist.history["loss"][-1])])
        if not np.isfinite(hist.history["loss"][-1]):
            logging.warning("%s: non-finite loss at step %d", name, state["step"])
        t = time.time()
        p, s, _ = evaluate(restore, td["test_y"], td["test_x"])
        state["curve"].append([state["step"], float(np.mean(p)), float(np.mean(s))])
        state["eval_seconds"] += time.time() - t
        logging.info("%s: step %d/%d  loss %.3g  test PSNR %.2f dB  (%.1f min training)", name,
                     state["step"], steps, state["loss"][-1][1], state["curve"][-1][1],
                     state["train_seconds"] / 60)
        if state["step"] < steps:  # checkpoint for resumption
            os.makedirs(ckpt, exist_ok=True)
            backbone.save_weights(os.path.join(ckpt, "backbone.weights.h5"))
            np.savez(os.path.join(ckpt, "optimizer.npz"),
                     **{_var_key(v): np.asarray(v) for v in model.optimizer.variables})
            _write_json(os.path.join(ckpt, "state.json"), state)

    psnrs, ssims, preds = evaluate(restore, td["test_y"], td["test_x"])
    backbone.save_weights(os.path.join(cell_dir, name + ".weights.h5"))
    np.savez_compressed(os.path.join(cell_dir, name + ".npz"),
                        **{n: p for n, p in zip(td["test_names"], preds)})
    res = {"task": task_key, "method": method, "steps": steps, "eval_every": eval_every,
           "batch_size": cfg["batch_size"], "patch_size": patch, "learning_rate": lr,
           "num_train": num_train, "train_names": [os.path.splitext(os.path.basename(f))[0]
                                                   for f in td["train_y"]],
           "test_names": td["test_names"], "curve": state["curve"], "loss": state["loss"],
           "train_minutes": state["train_seconds"] / 60, "eval_minutes": state["eval_seconds"] / 60,
           "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **summary(psnrs, ssims)}
    _write_json(os.path.join(cell_dir, name + ".json"), res)
    shutil.rmtree(ckpt, ignore_errors=True)
    return res


# ------------------------------------------------------------------------------------
# Report: tables and figures from the finished cells
# ------------------------------------------------------------------------------------

def load_cells(cell_dir):
    cells = {}
    for path in glob.glob(os.path.join(cell_dir, "*__*.json")):
        r = json.load(open(path))
        cells[(r["task"], r["method"])] = r
    return cells


def load_partial(cell_dir):
    """Checkpoint states of unfinished cells: {(task, method): state}."""
    out = {}
    for path in glob.glob(os.path.join(cell_dir, "*__*.partial", "state.json")):
        task, method = os.path.basename(os.path.dirname(path))[:-len(".partial")].split("__")
        try:
            out[(task, method)] = json.load(open(path))
        except ValueError:
            pass
    return out


def _fmt(r, key="psnr"):
    if r is None:
        return "not run yet"
    return f"{r[key + '_mean']:.{2 if key == 'psnr' else 4}f} ± {r[key + '_std']:.{2 if key == 'psnr' else 3}f}"


def bars(cells, tasks):
    """Checks the bars of issue #4 on the finished cells; a list of (bar, verdict, detail)."""
    out = []
    for t in tasks:
        sei = cells.get((t, "sei"))
        others = {m: cells.get((t, m)) for m in SELF_SUPERVISED if m in METHODS_PER_TASK[t]
                  and m not in ("sei",)}
        done = {m: r for m, r in others.items() if r is not None}
        label = TASKS[t]["label"]
        if sei is None:
            out.append((f"{label}: SEI best self-supervised", "not run yet", ""))
        else:
            best_other = max(done.items(), key=lambda kv: kv[1]["psnr_mean"]) if done else None
            missing = [m for m, r in others.items() if r is None]
            if best_other is None:
                verdict, detail = "not run yet", "no other self-supervised cell finished"
            else:
                ok = sei["psnr_mean"] > best_other[1]["psnr_mean"]
                verdict = ("met" if ok else "NOT met") + (" (so far)" if missing else "")
                detail = (f"SEI {sei['psnr_mean']:.2f} dB vs best other {METHOD_LABELS[best_other[0]]} "
                          f"{best_other[1]['psnr_mean']:.2f} dB"
                          + (f"; not run yet: {', '.join(missing)}" if missing else ""))
            out.append((f"{label}: SEI best self-supervised", verdict, detail))
        if t in GAP_BARS:
            sup = cells.get((t, "supervised"))
            name = f"{label}: SEI within {GAP_BARS[t]} dB of supervised"
            if sei is None or sup is None:
                out.append((name, "not run yet", ""))
            else:
                gap = sup["psnr_mean"] - sei["psnr_mean"]
                out.append((name, "met" if gap <= GAP_BARS[t] else "NOT met", f"gap {gap:+.2f} dB"))
        if "sei_nostop" in METHODS_PER_TASK[t]:
            nos = cells.get((t, "sei_nostop"))
            name = f"{label}: stop-gradient ablation shows an effect"
            if sei is None or nos is None:
                out.append((name, "not run yet", ""))
            else:
                d = sei["psnr_mean"] - nos["psnr_mean"]
                out.append((name, "met" if d > 0.05 else "NOT met",
                            f"SEI with stop-gradient {d:+.2f} dB vs without"))
    return out


def write_tables(cells, cfg, tasks, results_dir, cell_key, partial=None):
    import csv

    partial = partial or {}

    os.makedirs(results_dir, exist_ok=True)
    rows = []
    for t in tasks:
        for m in ("baseline",) + tuple(METHODS_PER_TASK[t]):
            r = cells.get((t, m))
            rows.append({
                "task": t, "method": m,
                "status": "done" if r is not None else (
                    f"running (step {partial[(t, m)]['step']})" if (t, m) in partial else "not run yet"),
                "psnr_mean": f"{r['psnr_mean']:.3f}" if r else "", "psnr_std": f"{r['psnr_std']:.3f}" if r else "",
                "ssim_mean": f"{r['ssim_mean']:.4f}" if r else "", "ssim_std": f"{r['ssim_std']:.4f}" if r else "",
                "paper_psnr": PAPER_PSNR.get(t, {}).get(m, ""),
                "steps": r.get("steps", "") if r else "", "batch_size": r.get("batch_size", "") if r else "",
                "patch_size": r.get("patch_size", "") if r else "",
                "learning_rate": r.get("learning_rate", "") if r else "",
                "train_minutes": f"{r['train_minutes']:.1f}" if r and "train_minutes" in r else "",
                "eval_minutes": f"{r['eval_minutes']:.1f}" if r and "eval_minutes" in r else "",
                "backbone": cfg["backbone"] + json.dumps(cfg["backbone_args"], sort_keys=True) if m != "baseline" else "",
            })
    with open(os.path.join(results_dir, "quality.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    any_cell = next((r for r in cells.values() if r["method"] != "baseline"), None)
    n_train = any_cell["num_train"] if any_cell else "?"
    test_names = next(iter(cells.values()))["test_names"] if cells else []
    L = ["# Quality benchmark (issue #4)", "",
         "Generated by `benchmarks/quality.py` from the finished cells "
         f"(cell set `{cell_key}`); cells marked *not run yet* have not finished.", "",
         "## Protocol", "",
         f"- Data: {'the default real photographs (scikit-image colour photographs + mate-backgrounds nature photographs)' if not FLAGS.ground_truth_dir else FLAGS.ground_truth_dir}, "
         f"shorter side {cfg['shorter_side']} px; {n_train} training images, {len(test_names)} test images "
         f"({', '.join(test_names)}), split fixed in the code.",
         f"- Measurements: simulated once, noise sigma {NOISE_SIGMA:g}/255, fixed noise seed per image.",
         f"- Backbone: `{cfg['backbone']}` {json.dumps(cfg['backbone_args'], sort_keys=True)}, same initial weights "
         f"(seed {cfg['seed']}) for all methods.",
         f"- Budget per cell: {cfg['steps'] if cfg['steps'] is not None else str(cfg['epochs']) + ' epochs'} steps, batch "
         f"{cfg['batch_size']}, patches {cfg['patch_size']} measurement px ({cfg['patch_size_x4']} for SR x4), "
         f"{cfg['schedule']}, learning rate {cfg['lr_sr']:g} (SR) / {cfg['lr_deblur']:g} (deblurring).",
         "- Evaluation: full test images, outputs clamped and quantised to 8 bits, PSNR (dB) / SSIM on the "
         "BT.601 luma channel, mean ± std over the test images.",
         "- Minutes: wall-clock training time of the cell on this machine's CPU (2 shared cores, no GPU; "
         "other jobs ran concurrently, so times are indicative), evaluation time separate.", ""]
    for t in tasks:
        L += [f"## {TASKS[t]['label']}", "",
              "| Method | PSNR (dB) | vs baseline | SSIM | Paper PSNR (DIV2K, SwinIR, GPU) | train min | steps |",
              "|---|---|---|---|---|---|---|"]
        for m in ("baseline",) + tuple(METHODS_PER_TASK[t]):
            r = cells.get((t, m))
            paper = PAPER_PSNR.get(t, {}).get(m)
            minutes = f"{r['train_minutes']:.1f}" if r and "train_minutes" in r else ""
            steps = str(r["steps"]) if r and "steps" in r else ""
            b = cells.get((t, "baseline"))
            delta = f"{r['psnr_mean'] - b['psnr_mean']:+.2f}" if r and b and m != "baseline" else ""
            shown = _fmt(r)
            if r is None and (t, m) in partial:
                c = partial[(t, m)]["curve"][-1]
                shown = f"not finished (step {c[0]}: {c[1]:.2f})"
            L.append(f"| {METHOD_LABELS[m]} | {shown} | {delta} | {_fmt(r, 'ssim') if r else ''} | "
                     f"{paper if paper is not None else '-'} | {minutes} | {steps} |")
        L.append("")
    L += ["## Per-image PSNR (dB)", "",
          "The standard deviations above are dominated by differences between images; "
          "paired differences per image say more about differences between methods.", ""]
    for t in tasks:
        done = [m for m in ("baseline",) + tuple(METHODS_PER_TASK[t]) if (t, m) in cells]
        if len(done) < 2:
            continue
        names = cells[(t, done[0])]["test_names"]
        L += [f"**{TASKS[t]['label']}**", "", "| Method | " + " | ".join(names) + " | SEI minus it (mean ± std) |",
              "|---|" + "---|" * (len(names) + 1)]
        sei = cells.get((t, "sei"))
        for m in done:
            r = cells[(t, m)]
            diff = ""
            if sei is not None and m != "sei":
                d = [a - b for a, b in zip(sei["psnr"], r["psnr"])]
                mean = sum(d) / len(d)
                sd = (sum((v - mean) ** 2 for v in d) / len(d)) ** 0.5
                diff = f"{mean:+.2f} ± {sd:.2f} (SEI higher on {sum(v > 0 for v in d)}/{len(d)})"
            L.append(f"| {METHOD_LABELS[m]} | " + " | ".join(f"{v:.2f}" for v in r["psnr"]) + f" | {diff} |")
        L.append("")
    L += ["## Bars of issue #4", "", "| Bar | Verdict | Detail |", "|---|---|---|"]
    for name, verdict, detail in bars(cells, tasks):
        L.append(f"| {name} | {verdict} | {detail} |")
    notes = []
    for t in tasks:
        sei, sup = cells.get((t, "sei")), cells.get((t, "supervised"))
        if sei and sup and sup.get("train_minutes"):
            c = sup["curve"]
            tail = c[-1][1] - c[len(c) // 2][1] if len(c) > 2 else float("nan")
            notes.append(f"{TASKS[t]['label']}: an SEI step took {sei['train_minutes'] / sup['train_minutes']:.1f}x "
                         f"the wall-clock time of a supervised step; supervised test PSNR changed by "
                         f"{tail:+.2f} dB over the second half of its steps.")
    if notes:
        L += ["", "Budget caveat: every method gets the same number of steps, not the same compute, and the "
              "budget is short. SEI does three network passes per step (SURE's two plus the equivariance "
              "pass), supervised one, so at equal steps SEI has spent more compute, and its equivariance "
              "term adds a scale-augmented training pair per patch. A supervised result below SEI here "
              "says the CPU budget stops supervised training early; it is not a claim that SEI beats "
              "supervised training at convergence (the paper finds them close)."] + [f"- {n}" for n in notes]
    L += ["", "The paper's numbers (SwinIR, 500 epochs on 800 DIV2K images, GPU) are given for orientation "
          "only: data, backbone and budget differ, so absolute values are not comparable.", "",
          "Figures: `learning_curves.png` (test PSNR vs step), `visual.png` (crops), `spectra.png` "
          "(radially averaged power spectra).", ""]
    with open(os.path.join(results_dir, "quality.md"), "w") as fh:
        fh.write("\n".join(L))


def _luma(img):
    import numpy as np

    img = np.asarray(img, np.float64)
    if img.dtype != np.float64 or img.max() > 1.5:
        img = img / 255.0
    return 16 / 255 + img @ (np.array([65.481, 128.553, 24.966]) / 255)


def radial_spectrum(img):
    """Radially averaged power spectrum of an image's luma (Hann window)."""
    import numpy as np

    y = _luma(img)
    y = y - y.mean()
    h, w = y.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    p = np.abs(np.fft.fftshift(np.fft.fft2(y * win))) ** 2
    yy, xx = np.indices((h, w))
    r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)  # cycles per pixel
    bins = np.linspace(0, 0.5, 65)
    idx = np.digitize(r.ravel(), bins)
    spec = np.array([p.ravel()[idx == i].mean() if np.any(idx == i) else np.nan for i in range(1, len(bins))])
    return 0.5 * (bins[1:] + bins[:-1]), spec


def write_figures(cells, tasks, cell_dir, data_dirs, results_dir, partial=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sei_tf import data

    colors = {"supervised": "k", "css": "tab:purple", "sure": "tab:orange", "ei_shift": "tab:olive",
              "ei_rotate": "tab:cyan", "sei": "tab:red", "sei_nostop": "tab:pink"}

    # Learning curves.
    ncols = min(2, len(tasks))
    nrows = (len(tasks) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.4 * nrows), squeeze=False)
    for ax in axes.ravel()[len(tasks):]:
        ax.set_visible(False)
    for ax, t in zip(axes.ravel(), tasks):
        for m in METHODS_PER_TASK[t]:
            r = cells.get((t, m))
            if r is None and (t, m) in (partial or {}):
                c = np.array(partial[(t, m)]["curve"])
                ax.plot(c[:, 0], c[:, 1], color=colors[m], ls="--", marker=".",
                        label=f"{METHOD_LABELS[m]} (unfinished, step {int(c[-1, 0])})")
                continue
            if r is None:
                ax.plot([], [], color=colors[m], label=f"{METHOD_LABELS[m]} (not run yet)", ls=":")
                continue
            c = np.array(r["curve"])
            ax.plot(c[:, 0], c[:, 1], color=colors[m], label=METHOD_LABELS[m], marker=".")
        b = cells.get((t, "baseline"))
        if b is not None:
            ax.axhline(b["psnr_mean"], color="gray", ls="--", label="Non-learned baseline")
        finished = [cells[(t, m)]["steps"] for m in METHODS_PER_TASK[t] if (t, m) in cells]
        finished += [p["curve"][-1][0] for k, p in (partial or {}).items() if k[0] == t]
        ax.set_xlim(0, max(finished) if finished else 1)
        ax.set_title(TASKS[t]["label"])
        ax.set_xlabel("training step")
        ax.set_ylabel("test PSNR (dB, luma)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "learning_curves.png"), dpi=110)
    plt.close(fig)

    def preds(t, m):
        p = os.path.join(cell_dir, f"{t}__{m}.npz")
        return np.load(p) if os.path.isfile(p) else None

    # Visual comparison: the same crop of one test image for each task.
    cols = [("measurement", "Measurement"), ("baseline", "Baseline"), ("sure", "SURE"),
            ("ei", "EI"), ("sei", "SEI"), ("supervised", "Supervised"), ("gt", "Ground truth")]
    shown = [t for t in tasks if t in data_dirs]
    if shown:
        fig, axes = plt.subplots(len(shown), len(cols), figsize=(2.1 * len(cols), 2.3 * len(shown)),
                                 squeeze=False)
        for row, t in zip(axes, shown):
            dd = data_dirs[t]
            i = dd["test_names"].index(VISUAL_NAME) if VISUAL_NAME in dd["test_names"] else 0
            name, x, y = dd["test_names"][i], dd["test_x"][i], dd["test_y"][i]
            f = TASKS[t].get("factor", 1)
            h, w = x.shape[:2]
            size = min(96, h, w) // 4 * 4 or min(h, w)
            r0, c0 = (h - size) // 2, (w - size) // 2
            for ax, (key, label) in zip(row, cols):
                img, info = None, ""
                if key == "gt":
                    img = x
                elif key == "measurement":
                    img = np.clip(y[r0 // f:(r0 + size) // f, c0 // f:(c0 + size) // f], 0, 1)
                    img = np.kron(img, np.ones((f, f, 1))) if f > 1 else img
                else:
                    if key == "ei":
                        m = "ei_shift" if (t, "ei_shift") in cells or (t, "ei_rotate") not in cells else "ei_rotate"
                        label = METHOD_LABELS[m] if m in METHODS_PER_TASK[t] else "EI"
                    else:
                        m = key
                    r = cells.get((t, m))
                    p = preds(t, m)
                    if r is not None and p is not None and name in p:
                        img = p[name] / 255.0
                        info = f"\n{r['psnr'][i]:.2f} dB"
                if img is not None and key != "measurement":
                    img = img[r0:r0 + size, c0:c0 + size]
                if img is None:
                    ax.text(0.5, 0.5, "not run yet" if m in METHODS_PER_TASK[t] else "n/a",
                            ha="center", va="center", fontsize=8)
                else:
                    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(label + info, fontsize=8)
            row[0].set_ylabel(f"{TASKS[t]['label']}\n{name}", fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(results_dir, "visual.png"), dpi=110)
        plt.close(fig)

    # Radially averaged power spectra (averaged over the test images), SR x2 and Gaussian blur.
    spec_tasks = [t for t in ("sr_x2", "gaussian_2") if t in data_dirs] or list(data_dirs)[:1]
    if spec_tasks:
        fig, axes = plt.subplots(1, len(spec_tasks), figsize=(5.8 * len(spec_tasks), 4.4), squeeze=False)
        for ax, spec_task in zip(axes[0], spec_tasks):
            dd = data_dirs[spec_task]
            base_label = "Bicubic baseline" if TASKS[spec_task]["task"] == "sr" else "Measurement (= baseline)"
            curves = [("Ground truth", [np.asarray(x) for x in dd["test_x"]], "k", "-")]
            for m, label, col, ls in (("baseline", base_label, "gray", "--"),
                                      ("sure", "SURE", "tab:orange", "-"), ("sei", "SEI", "tab:red", "-"),
                                      ("supervised", "Supervised", "tab:blue", ":")):
                p = preds(spec_task, m)
                curves.append((label, [p[n] / 255.0 for n in dd["test_names"]] if p is not None else None,
                               col, ls) if p is not None else (label + " (not run yet)", None, col, ls))
            for label, imgs, col, ls in curves:
                if imgs is None:
                    ax.plot([], [], color=col, ls=ls, label=label)
                    continue
                specs = [radial_spectrum(im) for im in imgs]
                ax.semilogy(specs[0][0], np.nanmean([sp for _, sp in specs], axis=0), color=col, ls=ls,
                            label=label)
            ax.set_xlabel("spatial frequency (cycles / pixel)")
            ax.set_ylabel("power (luma, mean over test images)")
            ax.set_title(f"Radially averaged power spectrum, {TASKS[spec_task]['label']}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(results_dir, "spectra.png"), dpi=110)
        plt.close(fig)
    del data


def report(cells, cfg, tasks, cell_dir, data_dirs, results_dir, cell_key):
    partial = load_partial(cell_dir)
    write_tables(cells, cfg, tasks, results_dir, cell_key, partial)
    write_figures(cells, tasks, cell_dir, data_dirs, results_dir, partial)
    with open(os.path.join(results_dir, "quality.json"), "w") as fh:
        json.dump({"config": cfg, "cell_set": cell_key,
                   "cells": [{k: v for k, v in r.items()} for r in cells.values()]}, fh, indent=1)
    logging.info("Report written to %s", results_dir)


# ------------------------------------------------------------------------------------

def main(argv):
    del argv
    unknown = [t for t in FLAGS.tasks if t not in TASKS]
    bad = [m for m in FLAGS.methods if m not in ALL_METHODS]
    if unknown or bad:
        raise app.UsageError(f"Unknown tasks {unknown} or methods {bad}.")
    cfg = resolve_config()
    os.makedirs(FLAGS.cache_dir, exist_ok=True)
    try:
        if FLAGS.ground_truth_dir:
            sources, test = user_sources(FLAGS.ground_truth_dir, FLAGS.test_names)
        else:
            sources, test = default_sources(FLAGS.cache_dir)
    except MissingData as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    data_key = short_hash({"sources": sorted(os.path.basename(f) for f in sources), "test": sorted(test),
                           "gt_dir": os.path.abspath(FLAGS.ground_truth_dir) if FLAGS.ground_truth_dir else None})
    cell_key = f"{cfg['preset']}-{short_hash({'cfg': cfg, 'data': data_key})}"
    cell_dir = os.path.join(FLAGS.cache_dir, "cells", cell_key)
    os.makedirs(cell_dir, exist_ok=True)
    _write_json(os.path.join(cell_dir, "config.json"), {"config": cfg, "data": data_key})
    logging.info("Cells in %s (config %s)", cell_dir, json.dumps(cfg, sort_keys=True))

    tasks = [t for t in TASKS if t in FLAGS.tasks]
    # The report covers the selected tasks and every task with a finished cell.
    report_tasks = [t for t in TASKS if t in tasks or any(k[0] == t for k in load_cells(cell_dir))]
    data_dirs = {t: prepare_task(t, sources, test, cfg, FLAGS.cache_dir) for t in report_tasks}
    for t in report_tasks:
        baseline_cell(t, data_dirs[t], cell_dir)

    todo = [c for c in PRIORITY if c[0] in tasks and c[1] in FLAGS.methods]
    todo += [(t, m) for t in tasks for m in METHODS_PER_TASK[t] if m in FLAGS.methods and (t, m) not in todo]
    if not FLAGS.report_only:
        for t, m in todo:
            done = os.path.isfile(os.path.join(cell_dir, f"{t}__{m}.json"))
            if done and not FLAGS.rerun:
                logging.info("%s / %s: finished earlier, kept", t, m)
                continue
            if done:
                shutil.rmtree(os.path.join(cell_dir, f"{t}__{m}.partial"), ignore_errors=True)
            r = train_cell(t, m, data_dirs[t], cfg, cell_dir)
            logging.info("%s / %s: PSNR %.2f ± %.2f dB, SSIM %.4f (%.1f min)", t, m, r["psnr_mean"],
                         r["psnr_std"], r["ssim_mean"], r["train_minutes"])
            report(load_cells(cell_dir), cfg, report_tasks, cell_dir, data_dirs, FLAGS.results_dir, cell_key)
    report(load_cells(cell_dir), cfg, report_tasks, cell_dir, data_dirs, FLAGS.results_dir, cell_key)
    return 0


if __name__ == "__main__":
    app.run(main)
