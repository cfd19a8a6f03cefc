"""Where the time of an SEI training step goes: the step against its parts, float32 and bfloat16.

    PYTHONPATH=. python benchmarks/step_breakdown.py

For the 64x8 cnn at batch 8 on 48-pixel patches (noise 5/255), times in one
process, alternating the two precisions round by round so that machine load
affects both alike: a full SEI step (three restorer passes: f(y), f(y + tau b),
f(y2)), a SURE-only step (two passes), a supervised step (one pass), one
restorer forward+backward alone, and the physics `A` forward+backward alone.
Writes benchmarks/results/step_breakdown.md.
"""

import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sei_tf import models, physics, sei_model  # noqa: E402

ROUNDS, REPEATS = 4, 3


def parts(op, precision):
    net = models.build("cnn", upscale=op.upscale, precision=precision, features=64, num_blocks=8)
    y = np.random.default_rng(0).random((8, 48, 48, 3), dtype=np.float32)
    x = np.random.default_rng(1).random((8, 48 * op.upscale, 48 * op.upscale, 3), dtype=np.float32)
    out = {}
    for objective in ("sei", "sure", "supervised"):
        m = sei_model.SEIModel(net, op, objective=objective)
        m.compile(keras.optimizers.Adam(1e-4))
        out[f"{objective} step"] = (lambda m=m: m.train_on_batch(y, x))

    @tf.function
    def restorer_pass():
        with tf.GradientTape() as tape:
            v = tf.reduce_mean(tf.square(net(y, training=True)))
        return tape.gradient(v, net.trainable_variables)

    @tf.function
    def physics_pass():
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            v = tf.reduce_sum(tf.square(op.A(xt)))
        return tape.gradient(v, xt)

    out["one restorer fwd+bwd"] = restorer_pass
    out["physics A fwd+bwd"] = physics_pass
    return out


def main():
    rows = []
    for name, op in (("SR x2", physics.SuperResolution(2, noise_sigma=5)),
                     ("Gaussian blur 2", physics.Blur("gaussian:2", noise_sigma=5))):
        fns = {p: parts(op, p) for p in ("float32", "bfloat16")}
        times = {(p, k): [] for p in fns for k in fns[p]}
        for p in fns:
            for f in fns[p].values():
                f(), f()  # trace and warm up
        for _ in range(ROUNDS):
            for p in fns:
                for k, f in fns[p].items():
                    t0 = time.perf_counter()
                    for _ in range(REPEATS):
                        f()
                    times[p, k].append((time.perf_counter() - t0) / REPEATS)
        for k in fns["float32"]:
            a, b = statistics.median(times["float32", k]), statistics.median(times["bfloat16", k])
            rows.append((name, k, a * 1e3, b * 1e3, a / b))
            print(rows[-1], flush=True)
    lines = ["# Where an SEI step's time goes (ms, median over rounds; float32 and bfloat16 alternated)", "",
             f"Load average at the end: {os.getloadavg()[0]:.2f}. cnn 64x8, batch 8, 48-pixel patches.", "",
             "| task | part | float32 ms | bfloat16 ms | float32 / bfloat16 |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {k} | {a:.0f} | {b:.0f} | {r:.2f}x |" for t, k, a, b, r in rows]
    path = os.path.join(ROOT, "benchmarks", "results", "step_breakdown.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
