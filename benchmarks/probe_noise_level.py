"""Does a restorer whose SURE collapsed treat slightly noisier inputs differently?

    PYTHONPATH=. .venv/bin/python benchmarks/probe_noise_level.py \
        --models name=path.keras,... --data benchmarks/cache/data/sr_x2-<key> [--extra 0,0.003,0.01]

A test of why SURE collapses at the probe step tau = 0.01 with noise sigma = 5/255
(benchmarks/results/sure_probe_step_10000_seeds12.md). Each probe y + tau b raises the
input's noise variance from sigma^2 to sigma^2 + tau^2, by tau^2 / sigma^2 = 26% at
tau = 0.01 and 0.26% at tau = 0.001. If the network has learned to recognise inputs
that noisy and to answer them differently, then on y_s = y + s c (c ~ N(0, I),
independent of any probe) with s = tau = 0.01 it should already behave as it does on
the probe: its local divergence there (measured with the small step 0.001, which
adds almost no variance) turns negative, and its output is far worse than on y.
A network that merely bends over steps of 0.01 would keep a positive local
divergence on y_s.

For each model and extra noise std s (`--extra`, [0, 1] units), on the training
crops of sure_probe_step.py: div / m at steps 0.01, 0.003, 0.001 around y_s, the
measurement-domain error ||A f(y_s) - A x||^2 / m, and the PSNR (dB) of f(y_s)
against the ground-truth crops. Writes benchmarks/results/<--out>.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from benchmarks.sure_probe_step import STEPS, check, training_crops, write_report  # noqa: E402
from sei_tf import loading, rng  # noqa: E402


def psnr(x_hat, x):
    """PSNR in dB of x_hat against x over the whole batch, values in [0, 1] (not clipped: a collapse shows)."""
    mse = tf.reduce_mean(tf.square(tf.cast(x_hat, tf.float32) - x))
    return float(10.0 * tf.math.log(1.0 / mse) / tf.math.log(10.0))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="name=path.keras, comma-separated (SEIModel files).")
    parser.add_argument("--data", required=True, help="A simulated folder (measurements/ and ground_truth/).")
    parser.add_argument("--extra", default="0,0.003,0.01", help="Extra noise stds s added to y, comma-separated.")
    parser.add_argument("--crops", type=int, default=4)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--out", default="probe_noise_level.md")
    args = parser.parse_args()
    extras = [float(s) for s in args.extra.split(",")]

    rows = []
    for item in args.models.split(","):
        name, path = item.split("=", 1)
        model = loading.load_model(path)
        sigma = float(model.physics.noise.gaussian_variance) ** 0.5
        y, x = training_crops(args.data, model.physics.upscale, args.crops)
        for s in extras:
            y_s = y + s * rng.normal(tf.shape(y), tf.constant([99, 3]))
            r = check(model.backbone, model.physics, y_s, x, args.probes)
            added = 100.0 * s ** 2 / sigma ** 2
            rows.append(f"| {name} | {s:g} ({added:.1f}%) | " + " | ".join(f"{r['div'][t]:+.3f}" for t in STEPS)
                        + f" | {r['true'] * 1e4:.2f} | {psnr(r['x_net'], x):.2f} |")
            print(rows[-1], flush=True)

    header = ["| model | extra noise std s (variance added) | div/m, step 0.01 | step 0.003 | step 0.001 "
              "| error of A f(y_s) x1e-4 | PSNR of f(y_s) (dB) |",
              "|---|---|---|---|---|---|---|"]
    notes = [f"y_s = y + s c, c ~ N(0, I) drawn once; the measurements' own noise is sigma = {sigma * 255:g}/255, "
             "and s adds s^2 / sigma^2 to its variance (in brackets).",
             "div/m: the finite-difference divergence per measurement value around y_s at each step; the error is "
             "||A f(y_s) - A x||^2 / m; PSNR of f(y_s) against the ground-truth crops, all crops together, unclipped."]
    write_report(args.out, "Do restorers treat slightly noisier inputs differently?", args, int(y.shape[0]), notes,
                 header + rows)


if __name__ == "__main__":
    main()
