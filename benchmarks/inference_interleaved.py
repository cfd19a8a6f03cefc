"""Engines timed in turn inside ONE process, on one tile: ratios that survive a busy machine.

    PYTHONPATH=$PWD python benchmarks/inference_interleaved.py --task sr_x2 --model RUN/model.keras \
        --fp32 SR_fp32.onnx --int8 SR_int8.onnx [--size 256] [--rounds 7]

benchmarks/inference.py times each engine in its own process, one after the
other: on a shared CPU whose load changes by the minute, two rows can see very
different machines. Here every engine runs once per round, in a fixed order,
for --rounds rounds on the same random --size x --size tile (the .onnx files
are those inference.py wrote to its --workdir), and the median per engine is
reported with its ratio to onnxruntime fp32 (intra-op threads = cores, spinning
off: the Restorer's default). Engines: Keras as trained and loaded (bfloat16
convolutions for a model trained with --precision auto on an AMX CPU), Keras
float32 (`sei_tf.models.as_float32`), and onnxruntime fp32 / int8 with 1 or all
threads and spinning off, and all threads with spinning on.

Appends a table to --results (markdown) and prints it, with the CPU model and
the load average before and after.
"""

import datetime
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("task", None, "Label of the model (e.g. sr_x2).")
flags.DEFINE_string("model", None, "Trained model (.keras).")
flags.DEFINE_string("fp32", None, "Its fp32 .onnx export.")
flags.DEFINE_string("int8", None, "Its int8 .onnx export.")
flags.DEFINE_integer("size", 256, "Tile side (input pixels).")
flags.DEFINE_integer("rounds", 7, "Rounds (each engine once per round); the median is reported.")
flags.DEFINE_string("results", os.path.join(ROOT, "benchmarks", "results", "inference_interleaved.md"),
                    "Markdown file the table is appended to.")
flags.mark_flags_as_required(["task", "model", "fp32", "int8"])


def main(argv):
    import numpy as np
    import tensorflow as tf

    from ort_settings import cpu_info, ort_session
    from sei_tf import loading, models

    info = cpu_info()
    load_before = os.getloadavg()
    backbone, _ = loading.load_any(FLAGS.model)
    x = np.random.default_rng(0).random((1, FLAGS.size, FLAGS.size, int(backbone.channels)), np.float32)

    def keras_engine(model):
        fn = tf.function(lambda t: model(t, training=False))
        return lambda: fn(x).numpy()

    def ort_engine(path, threads, spinning):
        session = ort_session(path, threads, spinning, "all")
        return lambda: session.run(None, {"input": x})

    cores = info["cores"]
    engines = {f"keras {models.precision_of(backbone)} (as trained)": keras_engine(backbone)}
    if models.precision_of(backbone) != "float32":
        engines["keras float32"] = keras_engine(models.as_float32(backbone))
    for precision, path in (("fp32", FLAGS.fp32), ("int8", FLAGS.int8)):
        engines[f"onnxruntime {precision}, {cores} threads, spinning off"] = ort_engine(path, cores, "off")
        engines[f"onnxruntime {precision}, 1 thread"] = ort_engine(path, 1, "off")
        engines[f"onnxruntime {precision}, {cores} threads, spinning on"] = ort_engine(path, cores, "on")
    for run in engines.values():
        run()  # warm-up: tracing, session set-up
    times = {name: [] for name in engines}
    for r in range(FLAGS.rounds):
        for name, run in engines.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)
    median = {name: float(np.median(t)) for name, t in times.items()}
    base = median[f"onnxruntime fp32, {cores} threads, spinning off"]
    lines = [
        f"## {FLAGS.task}: {FLAGS.size}x{FLAGS.size} tile, {FLAGS.rounds} interleaved rounds "
        f"({datetime.date.today().isoformat()})", "",
        f"CPU: {info['model']}, {cores} usable cores, VNNI {'yes' if info['vnni'] else 'no'}, "
        f"AMX {'yes' if info['amx'] else 'no'}; load average (1, 5, 15 min) before "
        f"{', '.join(f'{v:.1f}' for v in load_before)}, after {', '.join(f'{v:.1f}' for v in os.getloadavg())}. "
        f"Model: {FLAGS.model}.", "",
        "| engine | median s | min s | speed vs onnxruntime fp32 (threads = cores, spinning off) |",
        "|---|---|---|---|"]
    lines += [f"| {name} | {median[name]:.4f} | {min(times[name]):.4f} | {base / median[name]:.2f}x |"
              for name in engines]
    lines.append("")
    text = "\n".join(lines) + "\n"
    new_file = not os.path.exists(FLAGS.results)
    with open(FLAGS.results, "a") as f:
        if new_file:
            f.write("# Engines timed in turn in one process (benchmarks/inference_interleaved.py)\n\n")
        f.write(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
