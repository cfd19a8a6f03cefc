"""Inference benchmark: Keras (TensorFlow) vs onnxruntime on one large image.

    PYTHONPATH=. python benchmarks/inference.py [--size 1024] [--scale 2] [--tile 512] \
        [--backbones cnn,swinir_light] [--repeats 1]

For each backbone, a model with *untrained (random-init) weights* is built,
saved and exported to ONNX (weights do not change the timing); then the same
real photograph (scikit-image's astronaut, resized to --size x --size) is
restored by each engine, in a fresh subprocess per measurement, with the same
tiling code (serving/tiling.py, --tile input pixels per tile; exact tiles for
the CNN, blended tiles for SwinIR). Reported: latency (after one warm-up
tile), latency per output megapixel, peak resident memory of the process
(VmHWM, i.e. what `ru_maxrss` reports, which sees native TF/onnxruntime
allocations that tracemalloc misses) and its growth during the timed run, and the Keras/onnxruntime speed
ratio. Results go to benchmarks/results/inference.md and .csv.

Defaults: input 1024x1024, x2 -> 2048x2048 output. `cnn` is ResidualCNN in
its default size (32 features, 8 blocks); `swinir_light` is SwinIR with a
small configuration (--swinir_embed/--swinir_depths/--swinir_heads/
--swinir_window) so that it finishes on a 2-core CPU.
"""

import csv
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("backbones", ["cnn", "swinir_light"], "Backbones to benchmark (cnn, swinir_light, swinir).")
flags.DEFINE_list("engines", ["keras", "onnxruntime", "onnxruntime_nospin"],
                  "Engines: keras, onnxruntime (default session options), onnxruntime_nospin "
                  "(worker threads do not spin: better on shared CPUs).")
flags.DEFINE_integer("size", 1024, "Input image side (pixels); the output is size*scale.")
flags.DEFINE_integer("scale", 2, "SR factor.")
flags.DEFINE_integer("tile", 512, "Tile size in input pixels (0: whole image).")
flags.DEFINE_integer("repeats", 1, "Timed runs per measurement (the best is reported).")
flags.DEFINE_integer("threads", 0, "Intra-op threads for both engines (0: engine default).")
flags.DEFINE_integer("cnn_features", 32, "ResidualCNN features.")
flags.DEFINE_integer("cnn_blocks", 8, "ResidualCNN residual blocks.")
flags.DEFINE_integer("swinir_embed", 30, "SwinIR embed_dim for swinir_light.")
flags.DEFINE_list("swinir_depths", ["2", "2"], "SwinIR depths for swinir_light.")
flags.DEFINE_list("swinir_heads", ["3", "3"], "SwinIR heads for swinir_light.")
flags.DEFINE_integer("swinir_window", 8, "SwinIR window size for swinir_light.")
flags.DEFINE_string("workdir", os.path.join(ROOT, "benchmarks", "cache"), "Models are written here.")
flags.DEFINE_string("results", os.path.join(ROOT, "benchmarks", "results", "inference"),
                    "Results path prefix (.md and .csv are appended).")
# Internal: one measurement in a fresh process.
flags.DEFINE_string("measure", None, "internal: engine to measure in this process")
flags.DEFINE_string("model", None, "internal: model path for --measure")
flags.DEFINE_string("backbone", None, "internal: backbone name for --measure")


def _rss_mb():
    """Peak resident memory of this process (MiB).

    /proc/self/status VmHWM first: `ru_maxrss` survives exec on Linux, so a
    subprocess started by a big parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _photo(size):
    from PIL import Image
    from skimage import data as skdata

    return __import__("numpy").asarray(Image.fromarray(skdata.astronaut()).resize((size, size), Image.BICUBIC))


def _measure():
    """Runs in a fresh subprocess: load, warm up, time the restore, print JSON."""
    import numpy as np

    from serving import tiling

    image = _photo(FLAGS.size)
    threads = FLAGS.threads or None
    if FLAGS.measure == "keras":
        import keras
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        import sei_tf.models  # noqa: F401
        import sei_tf.sei_model  # noqa: F401

        model = keras.saving.load_model(FLAGS.model, compile=False)
        backbone = model.backbone
        fn = tf.function(lambda x: backbone(x, training=False),
                         input_signature=[tf.TensorSpec([None, None, None, backbone.channels], tf.float32)])

        def run(x):
            return fn(x).numpy()

        context = backbone.tile_context()
        align = int(getattr(backbone, "window_size", 1) or 1)
        scale, channels = int(backbone.upscale), int(backbone.channels)
    else:
        from serving import Restorer

        restorer = Restorer(FLAGS.model, device="cpu", threads=threads,
                            spinning=False if FLAGS.measure == "onnxruntime_nospin" else None)
        run = restorer.run
        meta = restorer.metadata
        context, align, scale, channels = meta.tile_context, meta.tile_align, meta.scale, meta.channels

    tile = FLAGS.tile or None
    run(np.zeros((1, 64, 64, channels), np.float32))  # warm-up: graph tracing, session setup
    rss_before = _rss_mb()
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        out = tiling.tiled_apply(
            run, image, scale=scale, channels=channels, tile=tile, context=context, overlap=None,
            to_float=lambda a: a.astype(np.float32) / np.float32(255),
            from_float=lambda y: np.rint(np.clip(y, 0, 1) * 255).astype(np.uint8),
            out_dtype=np.uint8, align=align)
        times.append(time.perf_counter() - start)
    tiles = tiling.count_tiles(FLAGS.size, FLAGS.size, tile, context, tiling.default_overlap(tile), align)
    print("RESULT " + json.dumps({
        "latency_s": min(times), "out_h": out.shape[0], "out_w": out.shape[1], "tiles": tiles,
        "peak_rss_mb": _rss_mb(), "rss_before_mb": rss_before,
        "checksum": float(out.astype(np.float64).mean())}))


def _make_models(name):
    from export import onnx_export, random_models

    os.makedirs(FLAGS.workdir, exist_ok=True)
    if name == "cnn":
        sizes = {"features": FLAGS.cnn_features, "num_blocks": FLAGS.cnn_blocks}
    elif name == "swinir_light":
        sizes = {"embed_dim": FLAGS.swinir_embed, "depths": tuple(int(d) for d in FLAGS.swinir_depths),
                 "num_heads": tuple(int(h) for h in FLAGS.swinir_heads), "window_size": FLAGS.swinir_window}
    else:
        sizes = {}
    keras_path = os.path.join(FLAGS.workdir, f"bench_{name}_x{FLAGS.scale}.keras")
    onnx_path = os.path.join(FLAGS.workdir, f"bench_{name}_x{FLAGS.scale}.onnx")
    random_models.make_model(keras_path, name, "sr", scale=FLAGS.scale, **sizes)
    report = onnx_export.export(keras_path, onnx_path, log=lambda *_: None)
    return keras_path, onnx_path, sizes, report["parity_max_abs_error"]


def _run_measurement(engine, name, model_path):
    cmd = [sys.executable, os.path.abspath(__file__), f"--measure={engine}", f"--model={model_path}",
           f"--backbone={name}", f"--size={FLAGS.size}", f"--tile={FLAGS.tile}", f"--repeats={FLAGS.repeats}",
           f"--threads={FLAGS.threads}"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{engine} {name} measurement failed:\n{proc.stderr[-3000:]}")


def main(argv):
    if FLAGS.measure:
        _measure()
        return
    rows = []
    for name in FLAGS.backbones:
        print(f"[{name}] building random-init model and exporting to ONNX ...", flush=True)
        keras_path, onnx_path, sizes, parity = _make_models(name)
        results = {}
        for engine in FLAGS.engines:
            print(f"[{name}] measuring {engine} ...", flush=True)
            path = keras_path if engine == "keras" else onnx_path
            results[engine] = r = _run_measurement(engine, name, path)
            mp = r["out_h"] * r["out_w"] / 1e6
            rows.append({
                "backbone": name, "config": json.dumps(sizes), "engine": engine,
                "input": f"{FLAGS.size}x{FLAGS.size}", "output": f"{r['out_w']}x{r['out_h']}",
                "tile": FLAGS.tile or "whole", "tiles": r["tiles"], "latency_s": round(r["latency_s"], 3),
                "s_per_output_mp": round(r["latency_s"] / mp, 3),
                "peak_rss_mb": round(r["peak_rss_mb"]), "rss_growth_mb": round(r["peak_rss_mb"] - r["rss_before_mb"]),
                "speedup_vs_keras": "1.00x" if engine == "keras" else "", "onnx_parity_max_abs_error": f"{parity:.2g}"})
            print(f"    {rows[-1]}", flush=True)
        if "keras" in results:
            for row in rows:
                if row["backbone"] == name and row["engine"] != "keras":
                    ratio = results["keras"]["latency_s"] / results[row["engine"]]["latency_s"]
                    row["speedup_vs_keras"] = f"{ratio:.2f}x"
    _write(rows)


def _write(rows):
    os.makedirs(os.path.dirname(FLAGS.results), exist_ok=True)
    with open(FLAGS.results + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import onnxruntime
    import tensorflow as tf

    cols = ["backbone", "engine", "input", "output", "tile", "tiles", "latency_s", "s_per_output_mp",
            "peak_rss_mb", "rss_growth_mb", "speedup_vs_keras"]
    lines = [
        "# Inference benchmark: Keras vs onnxruntime",
        "",
        f"Generated {datetime.date.today().isoformat()} by `benchmarks/inference.py` with "
        f"`--size {FLAGS.size} --scale {FLAGS.scale} --tile {FLAGS.tile} --repeats {FLAGS.repeats}`"
        f"{' --threads ' + str(FLAGS.threads) if FLAGS.threads else ''}.",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs: timings are noisy), "
        f"no GPU; TensorFlow {tf.__version__}, onnxruntime {onnxruntime.__version__} (CPUExecutionProvider).",
        f"- Image: scikit-image astronaut resized to {FLAGS.size}x{FLAGS.size}, restored x{FLAGS.scale}; "
        f"tile size {FLAGS.tile or 'whole image'} input pixels (exact tiles for the CNN, blended tiles aligned "
        "to the attention window for SwinIR), the same tiling code for both engines.",
        "- **Untrained (random-init) weights**: fine for timing, meaningless for quality.",
        "- Latency: best of the timed runs after a warm-up tile (graph tracing/session setup excluded); "
        "s/MP is per output megapixel. Peak RSS: VmHWM (peak resident set, as `ru_maxrss`) of a fresh "
        "process per measurement "
        "(includes the framework import and the model); growth: increase during the timed run.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    lines.append("")
    lines.append("Backbone configurations: " + "; ".join(sorted({f"{r['backbone']} {r['config']}" for r in rows})) +
                 ". ONNX parity vs Keras at export: " +
                 "; ".join(sorted({f"{r['backbone']} {r['onnx_parity_max_abs_error']}" for r in rows})) + ".")
    with open(FLAGS.results + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
