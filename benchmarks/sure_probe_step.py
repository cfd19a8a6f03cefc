"""Does a trained restorer's SURE still measure its error? A check of the divergence step.

    PYTHONPATH=. .venv/bin/python benchmarks/sure_probe_step.py \
        --models bf16=benchmarks/cache/cells/<key>/sr_x2__sure.keras,... \
        --data benchmarks/cache/data/sr_x2-<key> [--crops 4] [--probes 8] [--out sure_probe_step.md]

SURE's divergence is a finite difference with a fixed step tau (method.md: 0.01):

    div(tau) = sum(b * (A f(y + tau b) - A f(y))) / tau,   b ~ N(0, I).

It equals the true divergence while f is close to linear over steps of size tau.
A network can leave that regime; then SURE (residual - sigma^2 + 2 sigma^2 div / m)
no longer estimates the measurement-domain error ||A f(y) - A x||^2 / m, and training
on it can lower the estimate while the error grows. For each model this prints, on
random crops of the simulated training measurements (`--crops` per image, 48 px;
the quality benchmark's test photographs left out),
div / m for tau = 0.01, 0.003 and 0.001 (mean over `--probes` probes; the smaller
steps approach the derivative), SURE with tau = 0.01, and the true error (the
ground truth is known for simulated data). Errors are squared [0, 1] units per
measurement value. The model computes in its own precision; "float32 copy" rows
rerun it in float32 (models.as_float32) to tell the weights from the arithmetic.
Writes benchmarks/results/<--out>.
"""

import argparse
import datetime
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import machine  # noqa: E402
from benchmarks.quality import TEST_NAMES  # noqa: E402
from sei_tf import data, loading, losses, models, rng  # noqa: E402

STEPS = (0.01, 0.003, 0.001)
CROP = 48


def training_crops(folder, upscale, crops, seed=0):
    """(y, x): `crops` random 48-px crops per simulated training image (measurements/ + ground_truth/).

    The quality benchmark's test photographs (quality.TEST_NAMES) are left out.
    """
    ys = sorted(p for p in glob.glob(os.path.join(folder, data.MEASUREMENTS_DIR, "*.tif"))
                if os.path.splitext(os.path.basename(p))[0] not in TEST_NAMES)
    if not ys:
        sys.exit(f"No measurements (*.tif) in {os.path.join(folder, data.MEASUREMENTS_DIR)}.")
    draw = np.random.default_rng(seed)
    y_crops, x_crops = [], []
    for path in ys:
        stem = os.path.splitext(os.path.basename(path))[0]
        y = data.read_image(path)
        x = data.read_image(os.path.join(folder, data.GROUND_TRUTH_DIR, stem + ".png"))
        for _ in range(crops):
            i, j = draw.integers(0, y.shape[0] - CROP), draw.integers(0, y.shape[1] - CROP)
            y_crops.append(y[i:i + CROP, j:j + CROP])
            x_crops.append(x[i * upscale:(i + CROP) * upscale, j * upscale:(j + CROP) * upscale])
    return tf.constant(np.stack(y_crops), tf.float32), tf.constant(np.stack(x_crops), tf.float32)


def check(net, physics, y, x, probes):
    """{"x_net": f(y), "div": {tau: div / m}, "true": ||A f(y) - A x||^2 / m} (batch means)."""
    mask, m = losses.sure_mask(y, physics)
    x_net = net(y)
    ax1 = physics.A(x_net)
    true = tf.reduce_sum(tf.square((ax1 - physics.A(x)) * mask), axis=[1, 2, 3]) / m
    divs = {}
    for tau in STEPS:
        per_probe = []
        for k in range(probes):
            b = rng.normal(tf.shape(y), tf.constant([k, 7])) * mask
            response = losses.probe_response(x_net, y, b, physics, net, tau)
            per_probe.append(tf.reduce_sum(b * response, axis=[1, 2, 3]) / m)
        divs[tau] = float(tf.reduce_mean(tf.stack(per_probe)))
    return {"x_net": x_net, "div": divs, "true": float(tf.reduce_mean(true))}


def sure_estimate(net, physics, y, x_net, probes):
    """SURE at tau = 0.01 (batch mean over `probes` probes, the seeds `check` uses)."""
    sure = [losses.sure_gaussian(x_net, y, physics, net, tf.constant([k, 7]), STEPS[0]) for k in range(probes)]
    return float(tf.reduce_mean(tf.stack(sure)))


def write_report(out, title, args, n_crops, notes, table):
    """Writes benchmarks/results/<out> (atomically): `title`, the machine and data, `notes`, `table`; prints the table."""
    text = "\n".join([
        f"# {title}",
        "",
        f"{datetime.date.today()}, {machine.cpu_description()}. Data: `{args.data}` "
        f"({args.crops} random 48-px crops per training image, {n_crops} in all), {args.probes} Gaussian probes.",
        *notes, "", *table, ""])
    path = os.path.join(ROOT, "benchmarks", "results", out)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print("\n".join(table))
    print(f"Wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="name=path.keras, comma-separated (SEIModel files).")
    parser.add_argument("--data", required=True, help="A simulated folder (measurements/ and ground_truth/).")
    parser.add_argument("--crops", type=int, default=4)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--out", default="sure_probe_step.md")
    args = parser.parse_args()

    rows = []
    for item in args.models.split(","):
        name, path = item.split("=", 1)
        model = loading.load_model(path)
        y, x = training_crops(args.data, model.physics.upscale, args.crops)
        variants = [(name, model.backbone)]
        if models.precision_of(model.backbone) != "float32":
            variants.append((f"{name}, float32 copy", models.as_float32(model.backbone)))
        for label, net in variants:
            r = check(net, model.physics, y, x, args.probes)
            sure = sure_estimate(net, model.physics, y, r["x_net"], args.probes)
            rows.append(f"| {label} | " + " | ".join(f"{r['div'][t]:+.3f}" for t in STEPS)
                        + f" | {sure * 1e4:+.2f} | {r['true'] * 1e4:.2f} |")
            print(rows[-1], flush=True)

    header = ["| model | div/m, tau 0.01 | tau 0.003 | tau 0.001 | SURE (tau 0.01) x1e-4 | true error x1e-4 |",
              "|---|---|---|---|---|---|"]
    notes = ["div/m: the finite-difference divergence per measurement value at each step (it approaches the "
             "derivative as tau shrinks). SURE uses tau = 0.01; the true error is ||A f(y) - A x||^2 / m. Where "
             "div/m at 0.01 departs from the smaller steps, SURE no longer measures the error."]
    write_report(args.out, "SURE's divergence step on trained restorers", args, int(y.shape[0]), notes, header + rows)


if __name__ == "__main__":
    main()
