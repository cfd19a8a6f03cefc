"""SwinIR's cyclic shift: tf.roll (now) against the slice + concat it replaced, training speed.

    PYTHONPATH=. python benchmarks/swinir_shift.py [--threads 1]

swinir_light (embed 60, 4 stages of 6 blocks, window 8) in bfloat16, batch 8 of 48x48
measurements, SR x2: one restorer forward + backward (the unit of a training step; an SEI
step makes three), and the shift of one (8, 48, 48, 60) feature map alone, forward and
forward + backward. The two implementations alternate round by round in one process, so
machine load affects both alike. Both give the same output (checked). Writes
benchmarks/results/swinir_shift.md.
"""

import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("threads", 1, "TensorFlow intra-op threads (0: TensorFlow's default).")
flags.DEFINE_integer("rounds", 3, "Rounds; each times both implementations.")
flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results", "swinir_shift.md"), "Markdown to write.")


def slice_concat_roll(x, shift):
    """The shift as written before (slice + concat): out[i] = in[i - shift] on axes 1 and 2."""
    if shift == 0:
        return x
    s = -shift
    x = tf.concat([x[:, s:], x[:, :s]], axis=1)
    return tf.concat([x[:, :, s:], x[:, :, :s]], axis=2)


def timed(fn, arg, repeats):
    fn(arg)  # trace and warm up
    t = time.perf_counter()
    for _ in range(repeats):
        fn(arg)
    return (time.perf_counter() - t) / repeats


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv):
    del argv
    from sei_tf import models
    from sei_tf.models import swinir

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    net = models.build("swinir_light", upscale=2, channels=3, precision="bfloat16")
    y = tf.random.uniform([8, 48, 48, 3], seed=0)
    feats = tf.cast(tf.random.normal([8, 48, 48, 60], seed=1), tf.bfloat16)
    impls = {"tf.roll (now)": swinir._roll_hw, "slice + concat (before)": slice_concat_roll}

    def make(roll):
        @tf.function
        def restorer_step(y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(net(y, training=True)))
            return tape.gradient(loss, net.trainable_variables)

        @tf.function
        def shift_fwd(x):
            return roll(x, -4)

        @tf.function
        def shift_step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.cast(roll(x, -4), tf.float32) * tf.cast(x, tf.float32))
            return tape.gradient(loss, x)

        return restorer_step, shift_fwd, shift_step

    original = swinir._roll_hw
    times = {name: {"restorer": [], "fwd": [], "step": []} for name in impls}
    fns = {}
    try:
        for r in range(FLAGS.rounds):
            for name, roll in impls.items():
                swinir._roll_hw = roll  # what the blocks call
                if name not in fns:
                    fns[name] = make(roll)
                restorer_step, shift_fwd, shift_step = fns[name]
                times[name]["restorer"].append(timed(restorer_step, y, 2))
                times[name]["fwd"].append(timed(shift_fwd, feats, 20))
                times[name]["step"].append(timed(shift_step, feats, 20))
                print(f"round {r + 1}/{FLAGS.rounds} {name}: restorer fwd+bwd "
                      f"{times[name]['restorer'][-1]:.2f} s", flush=True)
    finally:
        swinir._roll_hw = original
    same = bool(tf.reduce_all(original(feats, -4) == slice_concat_roll(feats, -4)))

    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    new, old = med["tf.roll (now)"], med["slice + concat (before)"]
    lines = ["# SwinIR's cyclic shift: tf.roll against slice + concat", "",
             f"`benchmarks/swinir_shift.py`. CPU: {cpu_name()} ({os.cpu_count()} logical cores), "
             f"{FLAGS.threads or 'default'} TensorFlow thread(s), TensorFlow {tf.__version__}. swinir_light, "
             "bfloat16, SR x2, batch 8 of 48x48 measurements. Medians over "
             f"{FLAGS.rounds} rounds, the two implementations alternating. Same output: {same}.", "",
             "| implementation | restorer fwd+bwd (s) | shift fwd (ms) | shift fwd+bwd (ms) |", "|---|---|---|---|"]
    for n, m in med.items():
        lines.append(f"| {n} | {m['restorer']:.2f} | {m['fwd'] * 1e3:.1f} | {m['step'] * 1e3:.1f} |")
    lines += ["", f"Restorer forward + backward: slice + concat / tf.roll = {old['restorer'] / new['restorer']:.2f}x; "
              f"the shift's forward + backward alone: {old['step'] / new['step']:.1f}x."]
    text = "\n".join(lines) + "\n"
    with open(FLAGS.out + ".tmp", "w") as f:
        f.write(text)
    os.replace(FLAGS.out + ".tmp", FLAGS.out)
    print(text)


if __name__ == "__main__":
    app.run(main)
