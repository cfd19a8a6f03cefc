"""SwinIR's training speed on CPU: the current code against the two pieces it replaced.

    PYTHONPATH=. python benchmarks/swinir_backward.py [--threads 1]

The backward pass of swinir_light was dominated by two gradients: that of the cyclic
shift written as slice + concat (now tf.roll) and that of q, k, v taken as three
strided slices of the qkv tensor (now tf.unstack). This times one restorer forward +
backward (the unit of a training step; an SEI step makes three) of swinir_light
(embed 60, 4 stages of 6 blocks, window 8) in bfloat16, batch 8 of 48x48 measurements,
SR x2, with each combination of old and new pieces. The variants alternate round by
round in one process, so machine load affects them alike; all give the same output
(checked). Writes benchmarks/results/swinir_backward.md.
"""

import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.machine import cpu_description  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("threads", 1, "TensorFlow intra-op threads (0: TensorFlow's default).")
flags.DEFINE_integer("rounds", 7, "Rounds; each times every variant.")
flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results", "swinir_backward.md"), "Markdown to write.")


def slice_concat_roll(x, shift):
    """The shift as written before: out[i] = in[i - shift] on axes 1 and 2, by slice + concat."""
    if shift == 0:
        return x
    s = -shift
    x = tf.concat([x[:, s:], x[:, :s]], axis=1)
    return tf.concat([x[:, :, s:], x[:, :, :s]], axis=2)


def indexed_qkv(qkv, n, heads, head_dim):
    """q, k, v as taken before: three strided slices of the transposed qkv tensor."""
    qkv = tf.transpose(tf.reshape(qkv, [-1, n, 3, heads, head_dim]), [2, 0, 3, 1, 4])
    return qkv[0], qkv[1], qkv[2]


def main(argv):
    del argv
    from sei_tf import models
    from sei_tf.models import swinir

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    net = models.build("swinir_light", upscale=2, channels=3, precision="bfloat16")
    y = tf.random.uniform([8, 48, 48, 3], seed=0)
    new_roll, new_qkv = swinir._roll_hw, swinir._split_qkv
    variants = {"now (tf.roll, unstack)": (new_roll, new_qkv),
                "shift as before (slice + concat)": (slice_concat_roll, new_qkv),
                "q, k, v as before (strided slices)": (new_roll, indexed_qkv),
                "before (both)": (slice_concat_roll, indexed_qkv)}
    steps, times, outputs = {}, {name: [] for name in variants}, {}
    try:
        for r in range(FLAGS.rounds):
            for name, (roll, split) in variants.items():
                swinir._roll_hw, swinir._split_qkv = roll, split  # what the blocks call when traced
                if name not in steps:
                    outputs[name] = net(y, training=False)

                    @tf.function
                    def step(y):
                        with tf.GradientTape() as tape:
                            loss = tf.reduce_mean(tf.square(net(y, training=True)))
                        return tape.gradient(loss, net.trainable_variables)

                    step(y)  # trace and warm up
                    steps[name] = step
                t = time.perf_counter()
                steps[name](y)
                steps[name](y)
                times[name].append((time.perf_counter() - t) / 2)
                print(f"round {r + 1}/{FLAGS.rounds} {name}: {times[name][-1]:.2f} s", flush=True)
    finally:
        swinir._roll_hw, swinir._split_qkv = new_roll, new_qkv
    ref = outputs["before (both)"]
    same = all(bool(tf.reduce_all(o == ref)) for o in outputs.values())

    med = {n: statistics.median(t) for n, t in times.items()}
    best = {n: min(t) for n, t in times.items()}  # the least disturbed round, on a shared machine
    base, base_best = med["before (both)"], best["before (both)"]
    lines = ["# SwinIR's training speed on CPU: the current code against the pieces it replaced", "",
             f"`benchmarks/swinir_backward.py`. CPU: {cpu_description()}, "
             f"{FLAGS.threads or 'default'} TensorFlow thread(s), TensorFlow {tf.__version__}. swinir_light, "
             "bfloat16, SR x2, batch 8 of 48x48 measurements: one restorer forward + backward, median and "
             f"fastest of {FLAGS.rounds} rounds, the variants alternating. Same output for all: {same}.", "",
             "| variant | median (s) | fastest (s) | speed-up over before, medians | fastest |",
             "|---|---|---|---|---|"]
    for n, m in med.items():
        lines.append(f"| {n} | {m:.2f} | {best[n]:.2f} | {base / m:.2f}x | {base_best / best[n]:.2f}x |")
    text = "\n".join(lines) + "\n"
    with open(FLAGS.out + ".tmp", "w") as f:
        f.write(text)
    os.replace(FLAGS.out + ".tmp", FLAGS.out)
    print(text)


if __name__ == "__main__":
    app.run(main)
