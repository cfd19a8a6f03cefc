"""What SEI loses when it trains on 8-bit, clipped files instead of float measurements (issue 11, item 4).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/clipping.py --steps 300            # all variants
    PYTHONPATH=$PWD .venv/bin/python benchmarks/clipping.py --variants float,png8   # some of them
    PYTHONPATH=$PWD .venv/bin/python benchmarks/clipping.py --report_only

The quality benchmark's protocol and machinery (`benchmarks/quality.py`: data,
split, backbone, budget, seeds, evaluation; its flags work here too) on SR x2
and Gaussian blur s=2 with Gaussian noise 5/255, SEI only. Variants of the same
simulated measurements:

- `float`: the float32 TIFFs of `simulate` (noise not clipped), Gaussian SURE;
- `png8`: the same measurements clipped to [0, 1] and rounded to 8 bits (what a
  user's PNG holds), training and test; the physics still says Gaussian 5/255
  (what a user gets today);
- `png8_aware`: the same 8-bit files, with the noise model that says so
  (`gaussian:sigma=5,bits=8`: SURE leaves saturated pixels out and adds the
  quantisation variance LSB^2/12; the equivariance pass simulates 8-bit clipped
  measurements too).

Every variant starts from the same weights and sees the same crops. Writes
`results/clipping.md` and `results/clipping.json`; cells are cached under
`--cache_dir`/clipping/ (resumable, like the quality benchmark's).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from absl import app, flags, logging  # noqa: E402

import quality  # noqa: E402  (defines the protocol's flags: --steps, --precision, --cache_dir, ...)

from benchmarks.machine import cpu_model  # noqa: E402
FLAGS = flags.FLAGS
FLAGS.set_default("dihedral", False)  # the protocol of its committed results
TASK_KEYS = ("sr_x2", "gaussian_2")
METHOD = "sei"
VARIANTS = {
    "float": "float32 TIFF (unclipped), Gaussian SURE",
    "png8": "8-bit clipped PNG, Gaussian SURE (today)",
    "png8_aware": "8-bit clipped PNG, noise gaussian:sigma=5,bits=8",
}
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to run, among {', '.join(VARIANTS)}.")
flags.DEFINE_integer("sure_bias_draws", 32, "Noise draws per test image for the SURE-bias table (0: skip it).")




def eight_bit_copy(td, out_dir):
    """The task's measurements written as 8-bit PNGs (clipped to [0, 1], rounded); a new split dict."""
    from sei_tf import data

    def convert(path):
        target = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        if not os.path.isfile(target):
            tmp = target[:-4] + ".tmp.png"
            data.write_image(tmp, data.read_image(path), bit_depth=8)
            os.replace(tmp, target)
        return target

    os.makedirs(out_dir, exist_ok=True)
    test_paths = [os.path.join(td["dir"], data.MEASUREMENTS_DIR, n + ".tif") for n in td["test_names"]]
    return {**td, "dir": out_dir, "train_y": [convert(p) for p in td["train_y"]],
            "test_y": [data.read_image(convert(p)) for p in test_paths]}


def clipped_fraction(images):
    import numpy as np

    return float(np.mean([np.mean((a <= 0.0) | (a >= 1.0)) for a in images]))


def variant_physics(task_key, variant):
    """The physics a variant trains with (None: the task's own, Gaussian 5/255)."""
    if variant != "png8_aware":
        return None
    from sei_tf import noise, physics

    args = {k: v for k, v in quality.TASKS[task_key].items() if k != "label"}
    return physics.from_flags(noise=noise.parse_spec(f"gaussian:sigma={quality.NOISE_SIGMA:g},bits=8"), **args)


def sure_bias(task, model_path, test_x, draws, crop=96):
    """How far SURE is from the true error on 8-bit clipped measurements, for a trained restorer.

    For each test image (a central crop of `crop` px), `draws` noisy 8-bit measurements
    y8 = round(clip(A x + e) * 255) / 255; returns mean over draws and images of
    (estimate - truth) / truth in % for: Gaussian SURE on the float measurement (the
    reference: what is left is the one-probe divergence and the network's curvature), Gaussian SURE on y8 against ||A f(y8) - A x||^2 / m
    (what `png8` trains with), and the 8-bit-aware SURE (saturated values left out,
    sigma^2 + LSB^2/12) against the same error over the values it keeps.
    """
    import numpy as np
    import tensorflow as tf

    from sei_tf import loading, losses, rng

    model = loading.load_model(model_path)
    gaussian = model.physics
    aware = variant_physics(task, "png8_aware")
    u = gaussian.upscale

    def restorer(t):
        return tf.cast(model.backbone(t, training=False), tf.float32)

    out = {"float": [], "png8": [], "png8_aware": []}
    for i, x in enumerate(test_x):
        h, w = x.shape[:2]
        c = (crop // u) * u
        x = x[(h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c]
        ax = gaussian.A(tf.constant(np.repeat(x[None], draws, axis=0)))
        y8 = aware.noise.sample(ax, tf.constant([7, i]))
        x_net = restorer(y8)
        err = tf.square(gaussian.A(x_net) - ax)
        seed = rng.fold(tf.constant([9, i]), 0)
        y = gaussian.noise.sample(ax, tf.constant([7, i]))  # the unclipped float measurement: the reference
        x_float = restorer(y)
        est = losses.SURE(tau=0.01)(x_float, y, gaussian, restorer, seed)
        truth = tf.reduce_sum(tf.square(gaussian.A(x_float) - ax) * losses.sure_mask(y, gaussian)[0],
                              axis=[1, 2, 3]) / losses.sure_mask(y, gaussian)[1]
        out["float"].append(float(tf.reduce_mean(est - truth) / tf.reduce_mean(truth)) * 100)
        for name, op in (("png8", gaussian), ("png8_aware", aware)):
            mask, m = losses.sure_mask(y8, op)
            est = losses.SURE(tau=0.01)(x_net, y8, op, restorer, seed)
            truth = tf.reduce_sum(err * mask, axis=[1, 2, 3]) / m
            out[name].append(float(tf.reduce_mean(est - truth) / tf.reduce_mean(truth)) * 100)
    return {k: float(np.mean(v)) for k, v in out.items()}


def write_report(cfg, rows, path_md, path_json, bias=None):
    by = {(r["task"], r["variant"]): r for r in rows}
    lines = ["# SEI on 8-bit clipped measurements (issue 11, item 4)", "",
             "Generated by `benchmarks/clipping.py`. Protocol: the quality benchmark's (`benchmarks/quality.py`: "
             "data, split, cnn backbone, seeds, full-image 8-bit luma PSNR/SSIM on the 6 test photographs), SEI "
             f"only, Gaussian noise {quality.NOISE_SIGMA:g}/255, {cfg['steps']} steps per cell, batch "
             f"{cfg['batch_size']}, patches {cfg['patch_size']}, precision {cfg.get('precision', 'float32')}.",
             f"CPU: {cpu_model()} (2 cores shared with other jobs; minutes are indicative).", "",
             "Variants (same simulated measurements, same initial weights and crops):", ""]
    lines += [f"- `{k}`: {v}" for k, v in VARIANTS.items()]
    lines += ["", "| Task | Variant | test values outside (0, 1) | PSNR (dB) | vs float | SSIM | train min |",
              "|---|---|---|---|---|---|---|"]
    for task in TASK_KEYS:
        ref = by.get((task, "float"))
        for v in VARIANTS:
            r = by.get((task, v))
            if r is None:
                lines.append(f"| {quality.TASKS[task]['label']} | {v} | | not run yet | | | |")
                continue
            delta = f"{r['psnr_mean'] - ref['psnr_mean']:+.2f}" if ref and v != "float" else ""
            lines.append(f"| {quality.TASKS[task]['label']} | {v} | {100 * r['clipped_fraction']:.2f}% | "
                         f"{r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | {delta} | {r['ssim_mean']:.4f} | "
                         f"{r['train_minutes']:.1f} |")
        base = by.get((task, "baseline"))
        if base:
            lines.append(f"| {quality.TASKS[task]['label']} | non-learned baseline (float input) | | "
                         f"{base['psnr_mean']:.2f} ± {base['psnr_std']:.2f} | | {base['ssim_mean']:.4f} | |")
    lines += ["", "Paired per-image PSNR differences (variant - float, dB, same test images):", ""]
    for task in TASK_KEYS:
        ref = by.get((task, "float"))
        for v in ("png8", "png8_aware"):
            r = by.get((task, v))
            if ref and r:
                d = [a - b for a, b in zip(r["psnr"], ref["psnr"])]
                lines.append(f"- {quality.TASKS[task]['label']}, {v}: " + ", ".join(
                    f"{n} {x:+.2f}" for n, x in zip(r["test_names"], d)))
    if bias:
        lines += ["", "SURE's relative bias on 8-bit clipped measurements, (estimate - true error) / true error in "
                  "the measurement domain, mean over noise draws and the test images (central crops), for the "
                  "restorer trained by the `float` cell:", "",
                  "| Task | float measurements, Gaussian SURE (reference) | 8-bit, Gaussian SURE (png8) | "
                  "8-bit, 8-bit-aware SURE (png8_aware) |", "|---|---|---|---|"]
        lines += [f"| {quality.TASKS[t]['label']} | {b['float']:+.1f}% | {b['png8']:+.1f}% | "
                  f"{b['png8_aware']:+.1f}% |" for t, b in bias.items()]
    os.makedirs(os.path.dirname(path_md), exist_ok=True)
    for path, text in ((path_md, "\n".join(lines) + "\n"),
                       (path_json, json.dumps({"config": cfg, "cpu": cpu_model(), "cells": rows,
                                                      "sure_bias_percent": bias}, indent=1))):
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    print("\n".join(lines))


def main(argv):
    del argv
    bad = [v for v in FLAGS.variants if v not in VARIANTS]
    if bad:
        raise app.UsageError(f"Unknown variants {bad}; use {', '.join(VARIANTS)}.")
    cfg = quality.resolve_config()
    sources, test = quality.default_sources(FLAGS.cache_dir)
    data_key, cell_key = quality.cell_set_key(cfg, sources, test)
    root = os.path.join(FLAGS.cache_dir, "clipping", cell_key)
    logging.info("CPU: %s; cells under %s", cpu_model(), root)
    rows = []
    for task in TASK_KEYS:
        td_float = quality.prepare_task(task, sources, test, cfg, FLAGS.cache_dir)
        td8 = eight_bit_copy(td_float, os.path.join(FLAGS.cache_dir, "clipping", "data", f"{task}-png8"))
        cell_dir = os.path.join(root, "baseline")
        os.makedirs(cell_dir, exist_ok=True)
        rows.append({**quality.baseline_cell(task, td_float, cfg, cell_dir), "variant": "baseline"})
        for variant in VARIANTS:
            td = td_float if variant == "float" else td8
            cell_dir = os.path.join(root, variant)
            os.makedirs(cell_dir, exist_ok=True)
            path = os.path.join(cell_dir, f"{task}__{METHOD}.json")
            if os.path.isfile(path) and not FLAGS.rerun:
                r = json.load(open(path))
            elif variant in FLAGS.variants and not FLAGS.report_only:
                r = quality.train_cell(task, METHOD, td, cfg, cell_dir, physics=variant_physics(task, variant))
                logging.info("%s / %s: PSNR %.2f dB (%.1f min)", task, variant, r["psnr_mean"], r["train_minutes"])
            else:
                continue
            rows.append({**r, "variant": variant, "clipped_fraction": clipped_fraction(td["test_y"])})
            write_report(cfg, rows, os.path.join(FLAGS.results_dir, "clipping.md"),
                         os.path.join(FLAGS.results_dir, "clipping.json"))
    bias = {}
    for task in TASK_KEYS:
        path = os.path.join(root, "float", f"{task}__{METHOD}.keras")
        if FLAGS.sure_bias_draws and os.path.isfile(path):
            td = quality.prepare_task(task, sources, test, cfg, FLAGS.cache_dir)
            bias[task] = sure_bias(task, path, td["test_x"], FLAGS.sure_bias_draws)
            logging.info("%s: SURE bias on 8-bit data %s", task, bias[task])
    write_report(cfg, rows, os.path.join(FLAGS.results_dir, "clipping.md"),
                 os.path.join(FLAGS.results_dir, "clipping.json"), bias)
    return 0


if __name__ == "__main__":
    app.run(main)
