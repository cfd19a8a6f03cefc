"""Quality benchmark: SEI against its baselines on real photographs (issue #4).

    PYTHONPATH=. .venv/bin/python benchmarks/quality.py            # the CPU budget
    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --tasks sr_x2 --methods sei
    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --preset paper --ground_truth_dir DIV2K_HR/

Trains every method on every task with the same backbone, budget (steps, batch,
patch), optimizer schedule (Adam, constant for half the steps then linear decay
to 0.01x) and seed, then evaluates on the held-out test photographs with the
library's evaluation (`sei_tf.evaluate`: full images, 8-bit luma PSNR/SSIM, mean
and std over the set) next to the non-learned baseline of the task's physics.

Tasks are physics objects (`TASKS`: arguments of `sei_tf.physics.from_flags`);
methods are objective presets of `sei_tf.objectives` (`METHODS`: cell key ->
preset name). This module runs the experiment; `quality_report` writes the
tables and figures.

Data (default): scikit-image's bundled colour photographs plus the 12 nature
photographs of Debian's `mate-backgrounds` package, resized so the shorter side
is 256 px. The train/test split is fixed in `TEST_NAMES`; no method ever sees a
test image in training. Measurements are simulated once (`sei_tf.data.simulate`,
noise seed per image name) and cached under `--cache_dir`.

Every finished cell (task x method) is cached as JSON (final metrics, learning
curve, timing) with its trained model (`<task>__<method>.keras`, loadable with
`sei_tf.loading`) and 8-bit test predictions; an unfinished cell keeps a
checkpoint at each evaluation (`<task>__<method>.partial/`: the SEIModel saved
as model.keras with its optimizer state, and state.json with the curve so far),
so a killed run resumes where it stopped and ends as an uninterrupted one would.
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
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import quality_report  # noqa: E402
import quality_summary  # noqa: E402

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

# Task key -> the arguments of `sei_tf.physics.from_flags` (noise: NOISE_SIGMA) and a
# label. The dicts are hashed as they are into the simulated data's cache folder name.
TASKS = {
    "sr_x2": {"task": "sr", "factor": 2, "label": "SR x2"},
    "sr_x3": {"task": "sr", "factor": 3, "label": "SR x3"},
    "sr_x4": {"task": "sr", "factor": 4, "label": "SR x4"},
    "gaussian_1": {"task": "deblur", "kernel": "gaussian:1", "label": "Gaussian blur s=1"},
    "gaussian_2": {"task": "deblur", "kernel": "gaussian:2", "label": "Gaussian blur s=2"},
    "gaussian_3": {"task": "deblur", "kernel": "gaussian:3", "label": "Gaussian blur s=3"},
    "box_3": {"task": "deblur", "kernel": "box:3", "label": "Box blur r=3"},
}
NOISE_SIGMA = 5.0
# A cnn configuration without "init" in its backbone_args is one from before ResidualCNN had the option.
CNN_INIT_BEFORE_OPTION = "glorot_uniform"
# Method (cell) key -> objective preset of sei_tf.objectives. The keys name the cached
# cell files and the rows of the results, so they stay as they were.
METHODS = {"supervised": "supervised", "supervised_aug": "supervised_scale", "css": "css", "sure": "sure",
           "ei_shift": "ei_shift", "ei_rotate": "ei_rotate", "sei": "sei", "sei_nostop": "sei_no_stop_gradient",
           "ei_rotate_nearest": "ei_rotate_nearest"}
ALL_METHODS = tuple(METHODS)
CORE_METHODS = ("supervised", "supervised_aug", "sure", "sei")
# Variants that check a baseline against the reference's version of it, on the interval-bar tasks only.
REFERENCE_VARIANTS = ("ei_rotate_nearest",)
# Every other method on every task: "SEI is the best self-supervised method" is a claim about each task.
METHODS_PER_TASK = {t: tuple(m for m in ALL_METHODS if m not in REFERENCE_VARIANTS or t in quality_summary.CI_BAR_TASKS)
                    for t in TASKS}
# Training photographs held out to choose learning rates (--split validation); the same as init_choice.py's.
VALIDATION_NAMES = ("chelsea", "rocket", "Garden", "Wood")
# Order in which cells run: the most informative first.
PRIORITY = (
    [(t, m) for t in ("sr_x2", "gaussian_2") for m in ("supervised", "supervised_aug", "sei", "sure")]
    + [(t, m) for t in ("sr_x2", "gaussian_2") for m in ("ei_rotate", "css", "ei_shift", "sei_nostop")]
    + [(t, m) for t in ("sr_x4", "sr_x3", "gaussian_1", "gaussian_3", "box_3") for m in CORE_METHODS]
    + [(t, m) for t in ("sr_x4", "sr_x3", "gaussian_1", "gaussian_3", "box_3") for m in ("ei_rotate", "css")]
)
DEFAULT_DATA_LABEL = ("the default real photographs (scikit-image colour photographs + mate-backgrounds "
                      "nature photographs)")

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "cpu", ["cpu", "paper"],
                  "cpu: the default CPU budget. paper: the paper's GPU protocol (SwinIR classical, "
                  "patches 48, batch 8, Adam 2e-4 SR / 1e-4 deblurring, delayed linear decay, 500 "
                  "epochs) on --ground_truth_dir; explicit flags still override.")
flags.DEFINE_list("tasks", list(TASKS), f"Tasks to run, among {', '.join(TASKS)}.")
flags.DEFINE_list("methods", list(ALL_METHODS),
                  f"Methods to run (each task runs those of its list), among {', '.join(ALL_METHODS)} "
                  "(or their objective preset names, e.g. sei_no_stop_gradient for sei_nostop).")
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
flags.DEFINE_string("cnn_init", None, "cnn: initialisation, a key of ResidualCNN's INITS (default: the backbone's "
                    "default; see benchmarks/results/init_choice.md). glorot_uniform cells keep their cache keys.")
flags.DEFINE_integer("swinir_embed_dim", None, "SwinIR embedding dim override (tiny runs).")
flags.DEFINE_list("swinir_depths", None, "SwinIR stage depths override, e.g. 1,1.")
flags.DEFINE_list("swinir_num_heads", None, "SwinIR heads per stage override, e.g. 2,2.")
flags.DEFINE_integer("swinir_window_size", None, "SwinIR window size override.")
flags.DEFINE_float("lr_sr", None, "Adam learning rate for SR (cpu 5e-4, paper 2e-4).")
flags.DEFINE_float("lr_deblur", None, "Adam learning rate for deblurring (cpu 5e-4, paper 1e-4).")
flags.DEFINE_integer("eval_every", None, "Evaluate test PSNR (learning curve) and checkpoint every N "
                     "steps (default steps/10).")
flags.DEFINE_integer("seed", 0, "Seed of weights, crops, noise and transforms (same for all methods).")
flags.DEFINE_list("seeds", None, "Seeds of the training runs (weights, crops, noise draws), one cell set each "
                  "(default: --seed). The measurements are simulated with --seed for all of them, so every seed "
                  "trains and scores on the same data. With --seeds (even one): a report per seed in "
                  "<results_dir>/seed<N>/, and the summary over seeds (quality_summary.py) in --results_dir.")
flags.DEFINE_enum("split", "test", ["test", "validation"],
                  "test: train on the training photographs, score the test photographs. validation: train on "
                  "the training photographs less VALIDATION_NAMES and score those (to choose learning rates); "
                  "the test photographs are never read.")
flags.DEFINE_list("validation_names", None, "Validation images (file stems) for --split validation (default: "
                  f"{', '.join(VALIDATION_NAMES)}).")
flags.DEFINE_boolean("dihedral", True, "Rotate training crops by multiples of 90 degrees and flip them (every "
                     "method; checked to commute with each task's physics).")
flags.DEFINE_string("learning_rates", None, "JSON file of learning rates per method and task family "
                    "({method: {\"sr\": lr, \"deblur\": lr}}, written by select_learning_rates.py); methods not in "
                    "it use --lr_sr / --lr_deblur.")
flags.DEFINE_enum("precision", "auto", ["auto", "float32", "bfloat16", "float16"],
                  "Type the backbone computes in (sei_tf.precision; auto: bfloat16 where the hardware runs it "
                  "fast, which matched float32 within 0.04 dB: results/bfloat16/). float32 cells keep their "
                  "cache keys.")
flags.DEFINE_float("tau", None, "Step of SURE's Monte-Carlo divergence for the methods with a SURE term (default "
                   "0.01: the benchmark keeps the paper's protocol, though the library's default is 0.001). Cells "
                   "at 0.01 keep their cache keys.")
flags.DEFINE_string("results_dir", os.path.join(HERE, "results"), "Where tables and figures go.")
flags.DEFINE_string("cache_dir", os.path.join(HERE, "cache"), "Simulated data, finished cells, checkpoints.")
flags.DEFINE_integer("threads", 0, "TensorFlow intra-op threads (0: TensorFlow's default, all cores).")
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
        from sei_tf.models import residual_cnn

        init = FLAGS.cnn_init or residual_cnn.DEFAULT_INIT
        if init not in residual_cnn.INITS:
            raise app.UsageError(f"--cnn_init {init}: choose one of {', '.join(residual_cnn.INITS)}.")
        if init != CNN_INIT_BEFORE_OPTION:  # configurations of the old init keep the keys of their cells
            backbone_args["init"] = init
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
    # Options added later enter the configuration only when set, so older configurations keep their keys.
    if FLAGS.dihedral:
        cfg["dihedral"] = True
    if FLAGS.split != "test":
        cfg["split"] = FLAGS.split
    if FLAGS.learning_rates:
        cfg["learning_rates"] = load_learning_rates(FLAGS.learning_rates)
    from sei_tf import losses, precision

    if FLAGS.tau is not None and FLAGS.tau != losses.METHOD_TAU:
        cfg["tau"] = FLAGS.tau

    compute_type, why = precision.resolve(FLAGS.precision)
    logging.info("Precision: %s", why)
    if compute_type != "float32":  # float32 configurations keep the keys of their cached cells
        cfg["precision"] = compute_type
    return cfg


def load_learning_rates(path):
    """{method: {"sr": lr, "deblur": lr}} from a JSON file (select_learning_rates.py writes it)."""
    try:
        table = json.load(open(path))
    except (OSError, ValueError) as e:
        raise app.UsageError(f"--learning_rates {path}: {e}")
    table = table.get("learning_rates", table)
    bad = [m for m, v in table.items() if m not in METHODS or set(v) - {"sr", "deblur"}]
    if bad:
        raise app.UsageError(f"--learning_rates {path}: unknown methods or task families in {bad}.")
    return {m: {k: float(x) for k, x in v.items()} for m, v in table.items()}


def task_family(task_key):
    """"sr" or "deblur": the family whose learning rates a task uses."""
    return "sr" if TASKS[task_key]["task"] == "sr" else "deblur"


def learning_rate(cfg, method, task_key):
    """The Adam learning rate of a method: its chosen one (cfg["learning_rates"], else its
    parent's, quality_report.RATE_PARENT) or the task family's default."""
    family = task_family(task_key)
    default = cfg["lr_sr"] if family == "sr" else cfg["lr_deblur"]
    rates = cfg.get("learning_rates", {})
    chosen = rates.get(method, rates.get(quality_report.RATE_PARENT.get(method), {}))
    return chosen.get(family, default)


def seed_config(cfg, seed):
    return {**cfg, "seed": int(seed)}


def cell_steps(cfg, num_train):
    if cfg["steps"] is not None:
        return int(cfg["steps"])
    return int(cfg["epochs"]) * max(1, num_train // cfg["batch_size"])


def short_hash(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def cell_set_key(cfg, sources, test, gt_dir=None):
    """(data key, cell-set key): the cached cells of a configuration live in cells/<cell-set key>/."""
    data_key = short_hash({"sources": sorted(os.path.basename(f) for f in sources), "test": sorted(test),
                           "gt_dir": os.path.abspath(gt_dir) if gt_dir else None})
    # Learning rates are recorded per cell (a cell trained at another rate is rerun), not in the key.
    keyed = {k: v for k, v in cfg.items() if k != "learning_rates"}
    return data_key, f"{cfg['preset']}-{short_hash({'cfg': keyed, 'data': data_key})}"


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


def validation_sources(sources, test, names=VALIDATION_NAMES):
    """(sources, validation names): the training photographs only, `names` held out from them."""
    stems = {os.path.splitext(os.path.basename(f))[0]: f for f in sources}
    missing = set(names) - set(stems)
    if missing or set(names) & set(test):
        raise app.UsageError(f"Validation images must be training photographs: {', '.join(sorted(missing)) or ''}"
                             f"{' missing' if missing else ''} {', '.join(sorted(set(names) & set(test)))}"
                             f"{' are test images' if set(names) & set(test) else ''}")
    return [f for s, f in stems.items() if s not in test], set(names)


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
    """The physics of a task, built from its row of `TASKS`."""
    from sei_tf import physics

    args = {k: v for k, v in TASKS[task_key].items() if k != "label"}
    return physics.from_flags(noise_sigma=NOISE_SIGMA, **args)


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

def build_model(task_key, method, cfg, physics=None):
    """The untrained SEIModel of a cell: the task's physics, the method's objective preset.

    Seeded so that every method of a task starts from the same initial weights.
    `physics` replaces the task's own (same operator, another noise model).
    """
    import keras

    from sei_tf import losses, models, sei_model

    keras.utils.set_random_seed(cfg["seed"])
    op = physics or make_physics(task_key)
    args = dict(cfg["backbone_args"])
    if cfg["backbone"] == "cnn":
        args.setdefault("init", CNN_INIT_BEFORE_OPTION)
    backbone = models.build(cfg["backbone"], upscale=op.upscale, channels=3,
                            precision=cfg.get("precision", "float32"), **args)
    tau = cfg.get("tau", losses.METHOD_TAU)  # a cell without "tau" ran at the paper's step
    return sei_model.SEIModel(backbone, op, objective=METHODS[method], seed=cfg["seed"], tau=tau)


def evaluate_on_test(model, td):
    """`sei_tf.evaluate` on the full test images: {"model": summary, "baseline": summary}.

    A summary holds psnr_mean/psnr_std/ssim_mean/ssim_std and the per-image
    lists psnr/ssim (in the order of td["test_names"]).
    """
    from sei_tf import evaluate

    rows = evaluate.evaluate(model, zip(td["test_names"], td["test_y"], td["test_x"]))
    out = {}
    for s in evaluate.summarize(rows):
        sel = [r for r in rows if r["method"] == s["method"]]
        out[s["method"]] = {"psnr_mean": s["psnr"], "psnr_std": s["psnr_std"], "ssim_mean": s["ssim"],
                            "ssim_std": s["ssim_std"], "psnr": [r["psnr"] for r in sel],
                            "ssim": [r["ssim"] for r in sel]}
    return out


def to_uint8(image):
    """An estimate as the 8-bit image the metrics score (clamped to [0, 1], rounded)."""
    import numpy as np

    return np.round(np.clip(np.asarray(image), 0, 1) * 255).astype(np.uint8)


def save_predictions(path, names, images):
    """The 8-bit estimates of the test images, written atomically (a parallel run's report may read them)."""
    import numpy as np

    tmp = f"{path}.{os.getpid()}.tmp"  # per process: parallel runs share a cell folder
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **{n: to_uint8(p) for n, p in zip(names, images)})
    os.replace(tmp, path)


def baseline_cell(task_key, td, cfg, cell_dir):
    """The non-learned baseline of the task's physics (`physics.baseline`), evaluated once."""
    import tensorflow as tf

    path = os.path.join(cell_dir, f"{task_key}__baseline.json")
    if os.path.isfile(path):
        return json.load(open(path))
    # sei_tf.evaluate scores a model next to its physics' baseline; keep the baseline's rows.
    model = build_model(task_key, "sure", cfg)
    res = {"task": task_key, "method": "baseline", "test_names": td["test_names"],
           **evaluate_on_test(model, td)["baseline"]}
    save_predictions(os.path.join(cell_dir, f"{task_key}__baseline.npz"), td["test_names"],
                     [model.physics.baseline(tf.constant(y[None]))[0] for y in td["test_y"]])
    _write_json(path, res)
    return res


def _write_json(path, obj):
    """Writes JSON atomically; the temporary name is per process (parallel runs write the same config.json)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def new_state():
    return {"step": 0, "curve": [], "train_seconds": 0.0, "eval_seconds": 0.0, "loss": []}


def save_checkpoint(model, state, ckpt):
    """The SEIModel with its optimizer state (model.keras), then the curve so far (state.json).

    Both are replaced atomically, the model first: the model's optimizer step count
    is the truth on resumption (see `load_checkpoint`).
    """
    os.makedirs(ckpt, exist_ok=True)
    tmp = os.path.join(ckpt, "model.tmp.keras")
    model.save(tmp)
    os.replace(tmp, os.path.join(ckpt, "model.keras"))
    _write_json(os.path.join(ckpt, "state.json"), state)


def load_checkpoint(ckpt, name):
    """(model, state) of an interrupted cell, or None when there is no usable checkpoint.

    The model comes back compiled, with Adam's moments, step count and learning-rate
    schedule, so training continues exactly where it stopped.
    """
    import keras

    path = os.path.join(ckpt, "model.keras")
    if not os.path.isfile(path):
        if os.path.isdir(ckpt):
            logging.warning("%s: %s holds no model.keras (a checkpoint of an older format); the cell "
                            "starts again from step 0", name, ckpt)
            shutil.rmtree(ckpt)
        return None
    model = keras.saving.load_model(path)  # compile=True: the optimizer and its state too
    state_path = os.path.join(ckpt, "state.json")
    state = json.load(open(state_path)) if os.path.isfile(state_path) else new_state()
    step = int(model.optimizer.iterations)
    # Killed between the two writes: keep what the model's step supports.
    state["curve"] = [c for c in state["curve"] if c[0] <= step]
    state["loss"] = [v for v in state["loss"] if v[0] <= step]
    state["step"] = step
    return model, state


def train_cell(task_key, method, td, cfg, cell_dir, physics=None):
    """Trains one (task, method) cell, with resumable checkpoints; returns its result dict.

    `physics` replaces the task's own (see `build_model`).
    """
    import keras

    from sei_tf import callbacks as callbacks_lib, data, evaluate, objectives, sei_model, transforms

    name = f"{task_key}__{method}"
    ckpt = os.path.join(cell_dir, name + ".partial")
    num_train = len(td["train_y"])
    steps = cell_steps(cfg, num_train)
    eval_every = FLAGS.eval_every or max(1, steps // 10)

    resumed = load_checkpoint(ckpt, name)
    if resumed is None:
        model, state = build_model(task_key, method, cfg, physics), new_state()
    else:
        model, state = resumed
        logging.info("%s: resuming at step %d/%d", name, state["step"], steps)
    upscale = model.physics.upscale
    patch = cfg["patch_size_x4"] if upscale == 4 else cfg["patch_size"]
    lr = learning_rate(cfg, method, task_key)
    model.physics.check_measurement_size(patch, patch, f"{name}: the training patch")
    dihedral = bool(cfg.get("dihedral"))
    if dihedral and not transforms.commutes_with_dihedral(model.physics):
        raise RuntimeError(f"{name}: {model.physics.describe()} does not commute with rotations and flips; "
                           "run with --nodihedral.")
    if resumed is None:
        model.compile(optimizer=keras.optimizers.Adam(sei_model.DelayedLinearDecay(lr, steps),
                                                      beta_1=0.9, beta_2=0.999))
    if objectives.needs_ground_truth(model.objective):
        ds = data.paired_patch_dataset(td["train_y"], td["train_x"], patch, cfg["batch_size"], 3,
                                       factor=upscale, seed=cfg["seed"], dihedral=dihedral)
    else:
        ds = data.measurement_dataset(td["train_y"], patch, cfg["batch_size"], 3, seed=cfg["seed"],
                                      factor=upscale, dihedral=dihedral)

    def curve_point():
        t = time.time()
        s = evaluate_on_test(model, td)["model"]
        state["curve"].append([state["step"], s["psnr_mean"], s["ssim_mean"]])
        state["eval_seconds"] += time.time() - t

    if not state["curve"] or state["curve"][-1][0] != state["step"]:
        curve_point()
    watch = callbacks_lib.StopOnBlowUp()  # a NaN or a finite blow-up of the loss
    while state["step"] < steps:
        chunk = min(eval_every, steps - state["step"])
        t = time.time()
        # The data stream of an uninterrupted run: skip the batches of the steps done.
        hist = model.fit(ds.skip(state["step"]), steps_per_epoch=chunk, epochs=1, verbose=0, callbacks=[watch])
        if watch.bad_step is not None:
            raise RuntimeError(f"{name}: the loss {watch.reason} at step {watch.bad_step}; the cell stops (its "
                               f"last checkpoint, if any, is in {ckpt}).")
        state["train_seconds"] += time.time() - t
        state["step"] += chunk
        state["loss"].append([state["step"], float(hist.history["loss"][-1])])
        curve_point()
        logging.info("%s: step %d/%d  loss %.3g  test PSNR %.2f dB  (%.1f min training)", name,
                     state["step"], steps, state["loss"][-1][1], state["curve"][-1][1],
                     state["train_seconds"] / 60)
        if state["step"] < steps:  # checkpoint for resumption
            save_checkpoint(model, state, ckpt)

    final = evaluate_on_test(model, td)["model"]
    model.save(os.path.join(cell_dir, name + ".keras"))
    save_predictions(os.path.join(cell_dir, name + ".npz"), td["test_names"],
                     [evaluate.restore_array(model, y) for y in td["test_y"]])
    res = {"task": task_key, "method": method, "objective": model.method, "steps": steps,
           "eval_every": eval_every, "batch_size": cfg["batch_size"], "patch_size": patch, "learning_rate": lr,
           "num_train": num_train, "train_names": [os.path.splitext(os.path.basename(f))[0]
                                                   for f in td["train_y"]],
           "test_names": td["test_names"], "curve": state["curve"], "loss": state["loss"],
           "train_minutes": state["train_seconds"] / 60, "eval_minutes": state["eval_seconds"] / 60,
           "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **final}
    _write_json(os.path.join(cell_dir, name + ".json"), res)
    shutil.rmtree(ckpt, ignore_errors=True)
    return res


# ------------------------------------------------------------------------------------
# Cached cells and the report
# ------------------------------------------------------------------------------------

def is_stale(result, cfg):
    """True for a finished cell trained at another learning rate than the one `cfg` now gives its method."""
    if result["method"] == "baseline" or "learning_rate" not in result:
        return False
    return abs(result["learning_rate"] - learning_rate(cfg, result["method"], result["task"])) > 1e-12


def load_cells(cell_dir, cfg=None):
    """Finished cells: {(task, method): result dict}; with `cfg`, without those `is_stale` for it."""
    cells = {}
    for path in glob.glob(os.path.join(cell_dir, "*__*.json")):
        if path.endswith(".stale.json"):
            continue
        r = json.load(open(path))
        if cfg is None or not is_stale(r, cfg):
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


def task_info(task_key):
    """What the report shows of a task: label, methods, and facts of its physics."""
    op = make_physics(task_key)
    return {"label": TASKS[task_key]["label"], "methods": METHODS_PER_TASK[task_key], "upscale": op.upscale,
            "baseline_name": op.baseline_name}


def report(cfg, tasks, cell_dir, data_dirs, results_dir, cell_key):
    import numpy as np

    def predictions(task, method):
        p = os.path.join(cell_dir, f"{task}__{method}.npz")
        return np.load(p) if os.path.isfile(p) else None

    quality_report.write_report(
        results_dir, load_cells(cell_dir, cfg), load_partial(cell_dir), cfg, {t: task_info(t) for t in tasks},
        cell_key, FLAGS.ground_truth_dir or DEFAULT_DATA_LABEL, data_dirs, predictions)
    logging.info("Report written to %s", results_dir)


# ------------------------------------------------------------------------------------

def method_key(name):
    """The cell key of a method given by its key or by its objective preset name."""
    by_preset = {preset: key for key, preset in METHODS.items()}
    return name if name in METHODS else by_preset.get(name, name)


def run_seed(cfg, sources, test, data_cfg, tasks, methods, results_dir):
    """Trains (or loads) the cells of one seed and writes their report; returns the cell folder."""
    data_key, cell_key = cell_set_key(cfg, sources, test, FLAGS.ground_truth_dir)
    cell_dir = os.path.join(FLAGS.cache_dir, "cells", cell_key)
    os.makedirs(cell_dir, exist_ok=True)
    _write_json(os.path.join(cell_dir, "config.json"), {"config": cfg, "data": data_key})
    logging.info("Seed %d: cells in %s (config %s)", cfg["seed"], cell_dir, json.dumps(cfg, sort_keys=True))

    # The report covers the selected tasks and every task with a finished cell.
    report_tasks = [t for t in TASKS if t in tasks or any(k[0] == t for k in load_cells(cell_dir))]
    data_dirs = {t: prepare_task(t, sources, test, data_cfg, FLAGS.cache_dir) for t in report_tasks}
    for t in report_tasks:
        baseline_cell(t, data_dirs[t], cfg, cell_dir)

    todo = [c for c in PRIORITY if c[0] in tasks and c[1] in methods]
    todo += [(t, m) for t in tasks for m in METHODS_PER_TASK[t] if m in methods and (t, m) not in todo]
    if not FLAGS.report_only:
        for t, m in todo:
            path = os.path.join(cell_dir, f"{t}__{m}.json")
            finished = json.load(open(path)) if os.path.isfile(path) else None
            if finished and not FLAGS.rerun and not is_stale(finished, cfg):
                logging.info("%s / %s / seed %d: finished earlier, kept", t, m, cfg["seed"])
                continue
            if finished:  # rerun, or trained at another learning rate: kept aside, not overwritten
                os.replace(path, f"{path[:-len('.json')]}.lr{finished.get('learning_rate')}.stale.json")
                shutil.rmtree(os.path.join(cell_dir, f"{t}__{m}.partial"), ignore_errors=True)
            r = train_cell(t, m, data_dirs[t], cfg, cell_dir)
            logging.info("%s / %s / seed %d: PSNR %.2f ± %.2f dB, SSIM %.4f (%.1f min)", t, m, cfg["seed"],
                         r["psnr_mean"], r["psnr_std"], r["ssim_mean"], r["train_minutes"])
            report(cfg, report_tasks, cell_dir, data_dirs, results_dir, cell_key)
    report(cfg, report_tasks, cell_dir, data_dirs, results_dir, cell_key)
    return cell_dir


def main(argv):
    del argv
    methods = [method_key(m) for m in FLAGS.methods]
    unknown = [t for t in FLAGS.tasks if t not in TASKS]
    bad = [m for m in methods if m not in METHODS]
    if unknown or bad:
        raise app.UsageError(f"Unknown tasks {unknown} or methods {bad}.")
    if FLAGS.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
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
    if FLAGS.split == "validation":
        sources, test = validation_sources(sources, test, FLAGS.validation_names or VALIDATION_NAMES)
    seeds = [int(s) for s in (FLAGS.seeds or [FLAGS.seed])]
    tasks = [t for t in TASKS if t in FLAGS.tasks]
    data_cfg = cfg  # one simulation of the measurements (seed --seed) for every seed
    if FLAGS.seeds is None:
        run_seed(seed_config(cfg, seeds[0]), sources, test, data_cfg, tasks, methods, FLAGS.results_dir)
        return 0
    cell_dirs = {}
    for seed in seeds:
        cell_dirs[seed] = run_seed(seed_config(cfg, seed), sources, test, data_cfg, tasks, methods,
                                   os.path.join(FLAGS.results_dir, f"seed{seed}"))

    summary_tasks = [t for t in TASKS if any(k[0] == t for d in cell_dirs.values() for k in load_cells(d))]
    quality_summary.write_summary(
        FLAGS.results_dir, {s: load_cells(d, seed_config(cfg, s)) for s, d in cell_dirs.items()}, cfg,
        {t: task_info(t) for t in summary_tasks}, FLAGS.ground_truth_dir or DEFAULT_DATA_LABEL)
    return 0


if __name__ == "__main__":
    app.run(main)
