"""Scores the quality benchmark's trained cells on more held-out photographs (issue 14).

The protocol's test set has 6 photographs, so the 95% interval of "SEI minus another
method" (paired per image, Student t over the images) is wide. This script adds images
without retraining anything: every finished cell's saved model restores the
measurements of EXTRA_TEST_NAMES, simulated with the cell's task physics exactly as the
test photographs were (same shorter side, noise 5/255, seed --seed), and scored the same
way (8-bit luma PSNR, full images).

EXTRA_TEST_NAMES follows one rule, fixed before any of them was scored: every greyscale
photograph bundled in scikit-image's wheel whose shorter side is at least 256 px. They
are used as colour images (the grey channel repeated), since the models are trained on
colour. None is a training photograph of the benchmark.

    PYTHONPATH=. python benchmarks/extra_test_images.py --seeds 0,1,2 \\
        --learning_rates benchmarks/results/learning_rates_used.json --results_dir benchmarks/results

takes quality.py's flags (they name the cell sets, as for --report_only) and writes
results_dir/extra_test_images.{md,json}: per task and method the mean PSNR on the extra
images and SEI minus it, paired per image and averaged over the seeds both finished,
[95% CI], over the extra images alone and over the test photographs plus the extra ones.
The json's "cells" hold every scored cell over all images (test photographs, then the
extra ones) in quality.json's summary form, so `compare_cell_sets.py` can pair cells of
two cell sets (another --tau, say) over all images; a set with SEI alone writes only them.
Scores are cached in each cell folder (extra_test_images/TASK__METHOD.json) and redone
when the cell is retrained.
"""

import json
import os
import sys
from statistics import fmean

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import quality  # noqa: E402  (its flags name the cell sets)
from quality_report import METHOD_LABELS, SELF_SUPERVISED  # noqa: E402
from quality_summary import paired_interval, per_image_difference  # noqa: E402

from sei_tf.data.samples import GREY_SAMPLE_NAMES  # noqa: E402

FLAGS = flags.FLAGS
EXTRA_TEST_NAMES = GREY_SAMPLE_NAMES


def extra_data(task, cfg):
    """{"names", "y", "x"}: the extra photographs measured with the task's physics (simulated once)."""
    from sei_tf import data

    src = os.path.join(FLAGS.cache_dir, "sources_extra")
    files = [os.path.join(src, n + ".png") for n in EXTRA_TEST_NAMES]
    if not all(os.path.isfile(f) for f in files):
        data.sample_ground_truth(src, names=EXTRA_TEST_NAMES)
    key = quality.short_hash({"files": sorted(EXTRA_TEST_NAMES), "side": cfg["shorter_side"], "seed": cfg["seed"],
                              "noise": quality.NOISE_SIGMA, "task": quality.TASKS[task]})
    out = os.path.join(FLAGS.cache_dir, "data", f"extra-{task}-{key}")
    if not os.path.isfile(os.path.join(out, data.MEASUREMENTS_DIR, data.SIDECAR_NAME)):
        data.simulate(files, out, quality.make_physics(task), shorter_side=cfg["shorter_side"], seed=cfg["seed"],
                      overwrite=True, progress=False, channels=3)
    ydir, xdir = os.path.join(out, data.MEASUREMENTS_DIR), os.path.join(out, data.GROUND_TRUTH_DIR)
    return {"names": list(EXTRA_TEST_NAMES),
            "y": [data.read_image(os.path.join(ydir, n + ".tif")) for n in EXTRA_TEST_NAMES],
            "x": [data.read_image(os.path.join(xdir, n + ".png")) for n in EXTRA_TEST_NAMES]}


def score_cell(cell_dir, task, method, cell, images):
    """Per-image PSNR of one finished cell (and of its physics' baseline) on the extra images, cached."""
    from sei_tf import evaluate, loading

    # In a subfolder: quality.load_cells reads every TASK__METHOD.json of the cell folder.
    path = os.path.join(cell_dir, "extra_test_images", f"{task}__{method}.json")
    if os.path.isfile(path):
        cached = json.load(open(path))
        if cached["names"] == images["names"] and cached["finished"] == cell["finished"]:
            return cached
    model = loading.load_model(os.path.join(cell_dir, f"{task}__{method}.keras"))
    rows = evaluate.evaluate(model, zip(images["names"], images["y"], images["x"]))
    out = {"task": task, "method": method, "finished": cell["finished"], "names": images["names"],
           "psnr": [r["psnr"] for r in rows if r["method"] == "model"],
           "baseline_psnr": [r["psnr"] for r in rows if r["method"] == "baseline"]}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    quality._write_json(path, out)
    return out


def compare(scores, protocol, tasks):
    """Rows: per (task, method) with SEI on common seeds, the mean PSNRs and SEI minus it.

    scores / protocol: {(task, method, seed): cell} on the extra images / on the test photographs.
    """
    rows = []
    for task in tasks:
        for method in [m for m in quality.ALL_METHODS if m != "sei"] + ["baseline"]:
            seeds = sorted(s for t, m, s in scores if (t, m) == (task, "sei") and
                           ((task, method, s) in scores or method == "baseline"))
            if not seeds:
                continue
            sei = [scores[task, "sei", s] for s in seeds]
            if method == "baseline":
                other = [{"psnr": c["baseline_psnr"]} for c in sei]
                other_protocol = [{"psnr": protocol[task, "sei", s]["baseline_psnr"]} for s in seeds]
            else:
                other = [scores[task, method, s] for s in seeds]
                other_protocol = [protocol[task, method, s] for s in seeds]
            extra = per_image_difference(list(zip(sei, other)))
            both = per_image_difference(list(zip([protocol[task, "sei", s] for s in seeds], other_protocol))) + extra
            rows.append({"task": task, "method": method, "seeds": seeds,
                         "psnr_extra": fmean(fmean(c["psnr"]) for c in other),
                         "sei_psnr_extra": fmean(fmean(c["psnr"]) for c in sei),
                         "extra": paired_interval(extra), "all": paired_interval(both), "num_all": len(both),
                         "per_image_extra": extra})
    return rows


def all_image_cells(scores, protocol):
    """{seed: [cell]}: each scored cell's PSNR on the test photographs followed by the extra images."""
    out = {}
    for (task, method, seed), extra in scores.items():
        psnr = list(protocol[task, method, seed]["psnr"]) + list(extra["psnr"])
        out.setdefault(str(seed), []).append({
            "task": task, "method": method, "psnr": psnr, "psnr_mean": fmean(psnr),
            "test_names": list(protocol[task, method, seed]["test_names"]) + list(extra["names"])})
    return out


def _interval(v):
    text = f"{v[0]:+.2f} [{v[1]:+.2f}, {v[2]:+.2f}]"
    return f"**{text}**" if v[1] > 0 or v[2] < 0 else text


def runner_up_lines(rows, tasks):
    """Per task: the self-supervised runner-up over all images and whether SEI's interval against it excludes 0."""
    out = []
    for task in tasks:
        mine = [r for r in rows if r["task"] == task and r["method"] in SELF_SUPERVISED]
        if mine:
            r = min(mine, key=lambda r: r["all"][0])
            mean, low, _ = r["all"]
            verdict = "excludes 0" if low > 0 else ("SEI below" if mean <= 0 else "includes 0")
            out.append(f"- {quality.TASKS[task]['label']}: runner-up {METHOD_LABELS[r['method']]}, SEI "
                       f"{_interval(r['all'])} over {r['num_all']} images, seeds {','.join(map(str, r['seeds']))}: "
                       f"{verdict}")
    return out


def write(rows, tasks, cfg, cells):
    lines = ["# The quality benchmark's cells on more held-out photographs (issue 14)", "",
             f"Written by `benchmarks/extra_test_images.py`. The trained models of the quality benchmark "
             f"({cfg['steps']} steps, backbone `{cfg['backbone']}`; nothing retrained) restore "
             f"{len(EXTRA_TEST_NAMES)} more photographs: {', '.join(EXTRA_TEST_NAMES)} (every greyscale "
             "photograph bundled in scikit-image with a shorter side of at least 256 px, a rule fixed before "
             "scoring; used as colour with the grey channel repeated), simulated with each task's physics like "
             "the test photographs. PSNR: 8-bit luma, full images, mean over the images and the seeds.", "",
             "SEI minus a method: per image, averaged over the seeds both finished; mean and 95% Student-t "
             "interval over the images (**bold**: excludes 0), on the extra images alone and on the protocol's "
             "test photographs plus the extra ones.", "",
             "| task | method | seeds | PSNR, extra (dB) | SEI, extra (dB) | SEI minus it, extra | "
             "SEI minus it, all images |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {quality.TASKS[r['task']]['label']} | {METHOD_LABELS.get(r['method'], r['method'])} | "
                     f"{','.join(map(str, r['seeds']))} | {r['psnr_extra']:.2f} | {r['sei_psnr_extra']:.2f} | "
                     f"{_interval(r['extra'])} | {_interval(r['all'])} ({r['num_all']}) |")
    runner_up = runner_up_lines(rows, tasks)
    if runner_up:
        lines += ["", "SEI against the self-supervised runner-up (the smallest SEI-minus-it over all images):", ""]
        lines += runner_up
    if not rows:
        lines += ["", "No other method's cell on a common seed with SEI here: the json's cells (every scored cell "
                  "over all images) are for `compare_cell_sets.py`."]
    text = "\n".join(lines) + "\n"
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    with open(os.path.join(FLAGS.results_dir, "extra_test_images.md"), "w") as f:
        f.write(text)
    quality._write_json(os.path.join(FLAGS.results_dir, "extra_test_images.json"),
                        {"extra_test_names": list(EXTRA_TEST_NAMES), "config": cfg, "rows": rows, "cells": cells})
    print(text)


def main(argv):
    del argv
    if FLAGS.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    cfg = quality.resolve_config()
    if FLAGS.ground_truth_dir:
        sources, test = quality.user_sources(FLAGS.ground_truth_dir, FLAGS.test_names)
    else:
        sources, test = quality.default_sources(FLAGS.cache_dir)
    tasks = [t for t in quality.TASKS if t in FLAGS.tasks]
    seeds = [int(s) for s in (FLAGS.seeds or [FLAGS.seed])]
    scores, protocol = {}, {}
    for seed in seeds:
        scfg = quality.seed_config(cfg, seed)
        cell_dir = os.path.join(FLAGS.cache_dir, "cells", quality.cell_set_key(scfg, sources, test,
                                                                                FLAGS.ground_truth_dir)[1])
        cells = quality.load_cells(cell_dir, scfg) if os.path.isdir(cell_dir) else {}
        for task in tasks:
            baseline = cells.get((task, "baseline"))
            todo = [m for m in quality.ALL_METHODS if (task, m) in cells]
            if not todo:
                continue
            images = extra_data(task, cfg)
            for m in todo:
                logging.info("seed %d: %s / %s", seed, task, m)
                scores[task, m, seed] = score_cell(cell_dir, task, m, cells[task, m], images)
                protocol[task, m, seed] = {**cells[task, m], "baseline_psnr": baseline["psnr"] if baseline else None}
    if not scores:
        raise app.UsageError("No finished cell for these flags (same flags as the quality.py run, please).")
    write(compare(scores, protocol, tasks), tasks, cfg, all_image_cells(scores, protocol))
    return 0


if __name__ == "__main__":
    app.run(main)
