"""Which initialisation should ResidualCNN start from? (issue 14, item 0)

    PYTHONPATH=$PWD .venv/bin/python benchmarks/init_choice.py                 # seed 0, SR x2 then Gaussian s2
    PYTHONPATH=$PWD .venv/bin/python benchmarks/init_choice.py --seeds 1 --tasks sr_x2
    PYTHONPATH=$PWD .venv/bin/python benchmarks/init_choice.py --report_only

Trains the default cnn (32 features, 8 blocks) with every initialisation of
`ResidualCNN.INITS` (`--inits`) and every method (`--methods`, default SEI and
supervised) at the quality benchmark's "cpu" budget: 1000 steps, batch 8,
48-px patches, Adam 5e-4 constant for half the steps then linear decay to
0.01x, `--precision auto` (bfloat16 on AMX CPUs). Everything but the
initialisation is the same in a row of cells: the seed fixes the crops, the
noise draws and the weights' random stream.

Scores are PSNR (8-bit luma, full images, `sei_tf.evaluate`) on a VALIDATION
split (`VAL_NAMES`) carved out of the quality benchmark's training photographs.
Its test photographs (`quality.TEST_NAMES`) are left out before anything is
read or simulated, so this choice never sees them.

The data, the simulation, the training loop (resumable per cell: a killed run
continues where it stopped) and the scoring are benchmarks/quality.py's,
imported, and so are its flags (--steps, --precision, --cache_dir, ...). A
"test PSNR" in the training log of a cell here is the validation PSNR. Writes
`init_choice.md` and `init_choice.json` to --results_dir after every finished
cell, from every finished cell in the cache.
"""

import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import quality  # noqa: E402  (defines the quality benchmark's flags, used here too)

from benchmarks.machine import cpu_description as cpu_model  # noqa: E402
FLAGS = flags.FLAGS
# Validation images: four of the quality benchmark's 15 training photographs (two
# scikit-image, two mate-backgrounds), fixed before any run. The stereo pair
# motorcycle_left/right stays together in training.
VAL_NAMES = quality.VALIDATION_NAMES
REFERENCE_INIT = "glorot_uniform"  # the "delta" column is against this one (the former default)


def define_flags():
    from sei_tf.models import residual_cnn

    flags.DEFINE_list("inits", list(residual_cnn.INITS), "Initialisations (keys of ResidualCNN's INITS).")
    FLAGS.set_default("seeds", ["0"])
    FLAGS.set_default("tasks", ["sr_x2", "gaussian_2"])
    FLAGS.set_default("dihedral", False)  # the protocol of results/init_choice.md
    FLAGS.set_default("methods", ["sei", "supervised"])


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file of this process (runs for different tasks may share
    the results and the cell folders)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)




def cells_root(cache_dir):
    return os.path.join(cache_dir, "init_choice")


def cell_config(base, init, seed):
    """The quality benchmark's configuration of one (init, seed): its backbone gets `init`."""
    return {**base, "seed": int(seed), "backbone_args": {**base["backbone_args"], "init": init}}


def cell_dir_of(cfg, cache_dir):
    """Where the cells of one (init, seed) configuration live."""
    return os.path.join(cells_root(cache_dir), quality.short_hash({"cfg": cfg, "val": sorted(VAL_NAMES)}))


def training_sources():
    """The quality benchmark's photographs without its test images (never read here)."""
    sources, test = quality.default_sources(FLAGS.cache_dir)
    return quality.validation_sources(sources, test)[0]


# ------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------

def load_all_cells():
    """Every finished cell under the cache: list of result dicts with init and seed added."""
    out = []
    for conf in glob.glob(os.path.join(cells_root(FLAGS.cache_dir), "*", "config.json")):
        cfg = json.load(open(conf))["config"]
        for path in glob.glob(os.path.join(os.path.dirname(conf), "*__*.json")):
            r = json.load(open(path))
            out.append({**r, "init": cfg["backbone_args"].get("init"), "seed": cfg["seed"],
                        "precision": cfg.get("precision", "float32")})
    return out


def write_report(results_dir, base_cfg):
    import numpy as np

    cells = load_all_cells()
    learned = [c for c in cells if c["method"] != "baseline"]
    baselines = {(c["task"], c["seed"]): c for c in cells if c["method"] == "baseline"}
    by_key = {(c["task"], c["method"], c["init"], c["seed"]): c for c in learned}
    tasks = [t for t in quality.TASKS if any(c["task"] == t for c in learned)]
    inits = list(FLAGS.inits) + sorted({c["init"] for c in learned} - set(FLAGS.inits))

    lines = [f"# ResidualCNN initialisation: validation PSNR ({time.strftime('%Y-%m-%d %H:%M')} UTC)", "",
             f"CPU: {cpu_model()}. Written by benchmarks/init_choice.py.", "",
             f"Backbone cnn {base_cfg['backbone_args']}, {base_cfg['steps']} steps, batch {base_cfg['batch_size']}, "
             f"{base_cfg['patch_size']}-px patches, Adam {base_cfg['lr_sr']:g} (SR) / {base_cfg['lr_deblur']:g} "
             f"(deblurring), {base_cfg['schedule']}, precision {base_cfg.get('precision', 'float32')}, "
             f"noise {quality.NOISE_SIGMA:g}/255.",
             f"Validation: {', '.join(VAL_NAMES)} (training photographs of the quality benchmark; its test "
             "photographs are never read). PSNR: 8-bit luma, full images.", "",
             f"delta: paired per-image PSNR difference to {REFERENCE_INIT} with the same method, task and seed, "
             "mean ± std over images (and seeds). Inits:", ""]
    from sei_tf.models import residual_cnn

    lines += [f"- `{k}`: {v}" for k, v in residual_cnn.INITS.items()] + [""]
    lines += ["| task | method | init | seeds | val PSNR (dB) | per seed | delta vs glorot (dB) | train min |",
              "|---|---|---|---|---|---|---|---|"]
    rows = []
    for task in tasks:
        seeds = sorted({c["seed"] for c in learned if c["task"] == task})
        base = [baselines[(task, s)]["psnr_mean"] for s in seeds if (task, s) in baselines]
        if base:
            lines.append(f"| {task} | baseline | - | {len(base)} | {np.mean(base):.2f} | "
                         f"{' / '.join(f'{b:.2f}' for b in base)} | | |")
        for method in [m for m in quality.METHODS if any(c["method"] == m and c["task"] == task for c in learned)]:
            for init in inits:
                got = [by_key[(task, method, init, s)] for s in seeds if (task, method, init, s) in by_key]
                if not got:
                    lines.append(f"| {task} | {method} | {init} | 0 | not run yet | | | |")
                    continue
                diffs = []
                for c in got:
                    ref = by_key.get((task, method, REFERENCE_INIT, c["seed"]))
                    if ref is not None:
                        diffs += list(np.asarray(c["psnr"]) - np.asarray(ref["psnr"]))
                delta = f"{np.mean(diffs):+.2f} ± {np.std(diffs):.2f}" if diffs else "n/a"
                if init == REFERENCE_INIT:
                    delta = "(reference)"
                psnr = float(np.mean([c["psnr_mean"] for c in got]))
                per_seed = " / ".join(f"{c['psnr_mean']:.2f}" for c in got)
                lines.append(f"| {task} | {method} | {init} | {len(got)} | {psnr:.2f} | {per_seed} | {delta} | "
                             f"{np.mean([c['train_minutes'] for c in got]):.1f} |")
                rows.append({"task": task, "method": method, "init": init, "seeds": [c["seed"] for c in got],
                             "val_psnr_mean": psnr, "val_psnr_per_seed": [c["psnr_mean"] for c in got],
                             "delta_vs_glorot_mean": float(np.mean(diffs)) if diffs else None,
                             "delta_vs_glorot_std": float(np.std(diffs)) if diffs else None})
    lines += ["", "Training minutes are wall-clock on a shared machine: compare them only loosely."]
    os.makedirs(results_dir, exist_ok=True)
    write_atomic(os.path.join(results_dir, "init_choice.json"), json.dumps({
        "config": base_cfg, "val_names": list(VAL_NAMES), "cpu": cpu_model(), "rows": rows,
        "cells": [{k: v for k, v in c.items() if k not in ("train_names",)} for c in cells]}, indent=1))
    write_atomic(os.path.join(results_dir, "init_choice.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------------------------

def main(argv):
    del argv
    from sei_tf.models import residual_cnn

    bad = [i for i in FLAGS.inits if i not in residual_cnn.INITS]
    methods = [quality.method_key(m) for m in FLAGS.methods]
    if bad or any(m not in quality.METHODS for m in methods) or any(t not in quality.TASKS for t in FLAGS.tasks):
        raise app.UsageError(f"Unknown inits {bad}, or methods/tasks not in the quality benchmark's.")
    if FLAGS.preset != "cpu" or FLAGS.ground_truth_dir:
        raise app.UsageError("init_choice runs the quality benchmark's cpu preset on its default data.")
    base = quality.resolve_config()
    if base["backbone"] != "cnn":
        raise app.UsageError("init_choice compares ResidualCNN's initialisations: --backbone cnn.")
    print(f"CPU: {cpu_model()}")
    sources = training_sources()

    for seed in FLAGS.seeds:
        for task in [t for t in quality.TASKS if t in FLAGS.tasks]:
            seed_cfg = cell_config(base, REFERENCE_INIT, seed)
            td = quality.prepare_task(task, sources, set(VAL_NAMES), seed_cfg, FLAGS.cache_dir)
            assert sorted(td["test_names"]) == sorted(VAL_NAMES)
            for method in methods:
                for init in FLAGS.inits:
                    cfg = cell_config(base, init, seed)
                    cell_dir = cell_dir_of(cfg, FLAGS.cache_dir)
                    os.makedirs(cell_dir, exist_ok=True)
                    write_atomic(os.path.join(cell_dir, "config.json"), json.dumps({"config": cfg}))
                    if init == REFERENCE_INIT:
                        quality.baseline_cell(task, td, cfg, cell_dir)
                    if FLAGS.report_only or os.path.isfile(os.path.join(cell_dir, f"{task}__{method}.json")):
                        continue
                    r = quality.train_cell(task, method, td, cfg, cell_dir)
                    logging.info("%s / %s / %s / seed %s: validation PSNR %.2f dB (%.1f min)", task, method,
                                 init, seed, r["psnr_mean"], r["train_minutes"])
                    write_report(FLAGS.results_dir, base)
    write_report(FLAGS.results_dir, base)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
