"""Chooses each method's learning rate on the quality benchmark's validation split (issue 14).

    # 1. train on the validation split at each candidate rate (one cell set per rate):
    for lr in 5e-4 1e-3 2e-3; do
      PYTHONPATH=. .venv/bin/python benchmarks/quality.py --split validation --tasks sr_x2,gaussian_2 \\
          --methods supervised,supervised_aug,sure,sei --lr_sr $lr --lr_deblur $lr
    done
    # 2. pick, per method and task family, the rate of the best validation PSNR:
    PYTHONPATH=. .venv/bin/python benchmarks/select_learning_rates.py
    # 3. the test run uses them:
    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --seeds 0,1,2 \\
          --learning_rates benchmarks/results/learning_rates.json

Validation cells are those of --split validation whose configuration equals the
current one (quality.py's flags) except for the learning rates and the seed.
The validation images are training photographs (quality.VALIDATION_NAMES); the
test photographs are never read. A task family's rate (SR, deblurring) is chosen
on the tasks of that family that have validation cells, by the mean over them of
the validation PSNR (mean over seeds when several ran). A choice at the edge of
the grid is flagged: the best rate may lie outside it.

Writes results/learning_rates.json ({"learning_rates": {method: {"sr": lr,
"deblur": lr}}, "rows": [...]}) and results/learning_rates.md.
"""

import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import quality  # noqa: E402  (its flags define the configuration the rates are chosen for)
from quality_report import METHOD_LABELS  # noqa: E402

FLAGS = flags.FLAGS
# The learning rates and the seed vary between the validation cell sets; everything else must match.
VARYING = ("lr_sr", "lr_deblur", "seed", "learning_rates", "split")


def validation_cells(cache_dir, cfg):
    """Finished validation cells of configurations equal to `cfg` but for VARYING: a list of result dicts."""
    want = {k: v for k, v in cfg.items() if k not in VARYING}
    out = []
    for conf in glob.glob(os.path.join(cache_dir, "cells", "*", "config.json")):
        c = json.load(open(conf))["config"]
        if c.get("split") != "validation" or {k: v for k, v in c.items() if k not in VARYING} != want:
            continue
        for path in glob.glob(os.path.join(os.path.dirname(conf), "*__*.json")):
            r = json.load(open(path))
            if r["method"] != "baseline" and not path.endswith(".stale.json"):
                out.append({**r, "seed": c["seed"]})
    return out


def choose(cells):
    """(rates, rows): {method: {family: lr}} and one row per (method, task, lr) with the validation PSNR."""
    by = {}
    for r in cells:
        by.setdefault((r["method"], r["task"], r["learning_rate"]), []).append(r["psnr_mean"])
    rows = [{"method": m, "task": t, "family": quality.task_family(t), "learning_rate": lr, "seeds": len(v),
             "val_psnr": sum(v) / len(v)} for (m, t, lr), v in sorted(by.items())]
    rates = {}
    for m in sorted({r["method"] for r in rows}):
        for fam in ("sr", "deblur"):
            mine = [r for r in rows if r["method"] == m and r["family"] == fam]
            tasks = sorted({r["task"] for r in mine})
            grid = sorted({r["learning_rate"] for r in mine})
            # Only rates tried on every task of the family compete.
            full = [lr for lr in grid if all(any(r["task"] == t and r["learning_rate"] == lr for r in mine)
                                             for t in tasks)]
            if not full:
                continue
            score = {lr: sum(r["val_psnr"] for r in mine if r["learning_rate"] == lr) / len(tasks) for lr in full}
            best = max(full, key=lambda lr: score[lr])
            rates.setdefault(m, {})[fam] = best
            for r in mine:
                r["chosen"] = r["learning_rate"] == best
                r["at_grid_edge"] = len(full) > 1 and best in (full[0], full[-1])
    return rates, rows


def write(results_dir, rates, rows, cfg):
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "learning_rates.json"), "w") as fh:
        json.dump({"learning_rates": rates, "rows": rows,
                   "validation_names": list(quality.VALIDATION_NAMES), "config": cfg}, fh, indent=1)
    tasks = [t for t in quality.TASKS if any(r["task"] == t for r in rows)]
    grid = sorted({r["learning_rate"] for r in rows})
    L = ["# Learning rates chosen on the validation split (issue 14)", "",
         "Written by `benchmarks/select_learning_rates.py` from the validation cells of `benchmarks/quality.py "
         "--split validation`. Training: the quality benchmark's training photographs less the validation ones "
         f"({', '.join(quality.VALIDATION_NAMES)}); scored on those (8-bit luma PSNR, full images). The test "
         "photographs are never read.", "",
         f"Budget: {cfg['steps']} steps, batch {cfg['batch_size']}, patches {cfg['patch_size']}, {cfg['schedule']}; "
         f"backbone `{cfg['backbone']}` {json.dumps(cfg['backbone_args'], sort_keys=True)}"
         + ("; training crops rotated and flipped" if cfg.get("dihedral") else "") + ".", "",
         "| task | method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |",
         "|---|---|" + "---|" * (len(grid) + 1)]
    for t in tasks:
        for m in quality.METHODS:
            mine = {r["learning_rate"]: r for r in rows if r["task"] == t and r["method"] == m}
            if not mine:
                continue
            cells = []
            for lr in grid:
                r = mine.get(lr)
                cells.append("" if r is None else (f"**{r['val_psnr']:.2f}**" if r.get("chosen") else
                                                   f"{r['val_psnr']:.2f}"))
            chosen = rates.get(m, {}).get(quality.task_family(t))
            edge = any(r.get("at_grid_edge") for r in mine.values())
            L.append(f"| {quality.TASKS[t]['label']} | {METHOD_LABELS[m]} | " + " | ".join(cells)
                     + f" | {chosen if chosen is not None else ''}{' (grid edge)' if edge else ''} |")
    L += ["", "Chosen per method and task family (SR, deblurring); **bold**: the chosen rate. "
          "(grid edge): the best rate is the smallest or largest tried.", ""]
    with open(os.path.join(results_dir, "learning_rates.md"), "w") as fh:
        fh.write("\n".join(L))


def main(argv):
    del argv
    cfg = quality.resolve_config()
    cells = validation_cells(FLAGS.cache_dir, cfg)
    if not cells:
        print("No finished validation cells for this configuration: run quality.py --split validation first.",
              file=sys.stderr)
        return 2
    rates, rows = choose(cells)
    write(FLAGS.results_dir, rates, rows, {k: v for k, v in cfg.items() if k not in VARYING})
    for m, v in rates.items():
        print(f"{m}: {v}")
    return 0


if __name__ == "__main__":
    app.run(main)
