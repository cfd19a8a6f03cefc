"""Inference benchmark: Keras, onnxruntime fp32/int8 (tuned) and PyTorch on one large image.

Trained models (issue 13; the rows that choose the Restorer's defaults):

    PYTHONPATH=$PWD python benchmarks/inference.py --trained sr_x2=RUN_SR/model.keras,gaussian_2=RUN_BLUR/model.keras \
        --quality_cache_dir CACHE [--size 1024 --tile 512] [--torch_python /work/peers-venv/bin/python]

For each trained cnn restorer (a task of benchmarks/quality.py, whose simulated
data sits in --quality_cache_dir), all in one run:

1. export fp32 and int8 ONNX (`export.onnx_export.export`; int8 calibrated on the
   task's *training* measurements with the export defaults, so the threshold
   check runs too);
2. quality: PSNR against ground truth of fp32 and int8 on the quality benchmark's
   TEST images (whole images; the quality benchmark's protocol: 8-bit, luma);
3. tuning sweep, per precision, on one --tune_size tile: intra-op threads x
   spinning ("session.intra_op.allow_spinning") x graph optimisation level, then
   tiles batched per run (4 tiles in one run vs 4 runs) at the best setting;
4. timing, each in a fresh process, the same photograph (scikit-image's
   astronaut resized to --size) and tiling code (serving/tiling.py): Keras (the
   model as trained and loaded), onnxruntime fp32 with onnxruntime's defaults,
   fp32 and int8 at their tuned settings, and PyTorch (the twin of
   benchmarks/peers/, Keras weights; with --torch_python, skipped if absent).
   Latency (best of --repeats after a warm-up tile), output megapixels/s, peak
   RSS (VmHWM of that process) and its growth during the timed run.

The CPU model and its VNNI/AMX flags (/proc/cpuinfo) head the results.

Random-init models (the earlier table; weights do not change the timing):

    PYTHONPATH=. python benchmarks/inference.py [--size 1024] [--scale 2] [--tile 512] \
        [--backbones cnn,swinir_light] [--repeats 1]

Each backbone gets untrained weights, is exported, and is timed with Keras,
onnxruntime (default session options) and onnxruntime without spinning.
`cnn` is ResidualCNN (32 features, 8 blocks); `swinir_light` a small SwinIR
(--swinir_embed/--swinir_depths/--swinir_heads/--swinir_window).

Results: benchmarks/results/inference.md and .csv (--results), plus .json (trained mode).
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

from ort_settings import LEVELS, cpu_info, ort_session  # noqa: E402  (benchmarks/, this script's folder)

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
flags.DEFINE_string("results", None, "Results path prefix (.md and .csv are appended); default "
                    "benchmarks/results/inference (--trained) or benchmarks/results/inference_random_init.")
# Internal: one measurement in a fresh process.
flags.DEFINE_string("measure", None, "internal: engine to measure in this process")
flags.DEFINE_string("model", None, "internal: model path for --measure")
flags.DEFINE_string("measure_backbone", None, "internal: backbone name for --measure")
flags.DEFINE_enum("spinning", "default", ["default", "on", "off"], "internal: onnxruntime spinning for --measure")
flags.DEFINE_enum("opt_level", "all", ["basic", "extended", "all"], "internal: graph optimisation for --measure")
flags.DEFINE_string("tune", None, "internal: sweep session settings of this .onnx in this process")
flags.DEFINE_string("image", None, "internal: .npy image for --measure")
# Trained mode.
flags.DEFINE_list("trained", [], "TASK=MODEL.keras pairs (tasks of benchmarks/quality.py, e.g. sr_x2, gaussian_2): "
                  "benchmark these trained models instead of random-init --backbones.")
flags.DEFINE_string("quality_cache_dir", os.path.join(ROOT, "benchmarks", "cache"),
                    "benchmarks/quality.py's --cache_dir: simulated measurements and its train/test split.")
flags.DEFINE_integer("tune_size", 256, "Tuning sweep: tile side (input pixels) timed per setting.")
flags.DEFINE_integer("tune_repeats", 3, "Tuning sweep: timed runs per setting (median).")
flags.DEFINE_string("torch_python", "/work/peers-venv/bin/python",
                    "Python with torch for the PyTorch row (skipped when missing or empty).")


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

    image = np.load(FLAGS.image) if FLAGS.image else _photo(FLAGS.size)
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
    elif FLAGS.measure == "ort":
        from serving.metadata import RestorerMetadata

        session = ort_session(FLAGS.model, threads, FLAGS.spinning, FLAGS.opt_level)
        meta = RestorerMetadata.from_props(session.get_modelmeta().custom_metadata_map, source=FLAGS.model)

        def run(x):
            return session.run([meta.output_name], {meta.input_name: np.ascontiguousarray(x, np.float32)})[0]

        context, align, scale, channels = meta.tile_context, meta.tile_align, meta.scale, meta.channels
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
    tiles = tiling.count_tiles(image.shape[0], image.shape[1], tile, context, tiling.default_overlap(tile), align)
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
           f"--measure_backbone={name}", f"--size={FLAGS.size}", f"--tile={FLAGS.tile}", f"--repeats={FLAGS.repeats}",
           f"--threads={FLAGS.threads}"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{engine} {name} measurement failed:\n{proc.stderr[-3000:]}")


# ------------------------------------------------------------------------------------
# Trained mode: tuned onnxruntime fp32/int8, Keras, PyTorch; int8 quality
# ------------------------------------------------------------------------------------

def _median_time(fn, repeats):
    import numpy as np

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _tune():
    """Runs in a fresh subprocess: times one tile per session setting, then batching at the best one."""
    import numpy as np

    x = (_photo(FLAGS.tune_size).astype(np.float32) / 255)[None]
    cores = len(os.sched_getaffinity(0))
    sweep = []
    for threads in sorted({1, cores}):
        for spinning in ("on", "off"):
            for level in LEVELS:
                session = ort_session(FLAGS.tune, threads, spinning, level)
                session.run(None, {"input": x})
                sweep.append({"threads": threads, "spinning": spinning, "opt_level": level,
                              "latency_s": _median_time(lambda: session.run(None, {"input": x}), FLAGS.tune_repeats)})
                del session
    best = min(sweep, key=lambda r: r["latency_s"])
    session = ort_session(FLAGS.tune, best["threads"], best["spinning"], best["opt_level"])
    x4 = np.concatenate([x] * 4)
    session.run(None, {"input": x4})
    one_by_one = _median_time(lambda: [session.run(None, {"input": x}) for _ in range(4)], FLAGS.tune_repeats)
    batched = _median_time(lambda: session.run(None, {"input": x4}), FLAGS.tune_repeats)
    print("RESULT " + json.dumps({"sweep": sweep, "best": best, "four_tiles_one_by_one_s": one_by_one,
                                  "four_tiles_batched_s": batched}))


def _subprocess(cmd, what, python=None, env=None):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    proc = subprocess.run([python or sys.executable, *cmd], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")


def torch_weights(model_path, out_path):
    """Keras ResidualCNN weights in the layout of the PyTorch twin (benchmarks/peers/deepinv_sei.py), as .npz.

    Conv kernels (kh, kw, cin, cout) -> (cout, cin, kh, kw). The tail's output
    channels are reordered: TF's depth_to_space reads channel (dy*r + dx)*C + c,
    torch's pixel_shuffle reads c*r*r + dy*r + dx. Also stores a check input and
    the Keras output on it (float32 weights and compute).
    """
    import numpy as np

    from sei_tf import loading, models

    backbone, _ = loading.load_any(model_path)
    if models.precision_of(backbone) != "float32":
        backbone = models.as_float32(backbone)
    r, c = int(backbone.upscale), int(backbone.channels)
    w = {}

    def put(name, layer, perm=None):
        kernel, bias = np.asarray(layer.kernel.numpy()), np.asarray(layer.bias.numpy())
        if perm is not None:
            kernel, bias = kernel[..., perm], bias[perm]
        w[name + ".weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        w[name + ".bias"] = bias

    put("head", backbone.head)
    for i, (conv_a, conv_b) in enumerate(backbone.blocks):
        put(f"blocks.{i}.0", conv_a)
        put(f"blocks.{i}.1", conv_b)
    put("body", backbone.body)
    put("tail", backbone.tail, [(dy * r + dx) * c + ch for ch in range(c) for dy in range(r) for dx in range(r)])
    x = (_photo(64).astype(np.float32) / 255)[None]
    w.update(check_input=x, check_keras=np.asarray(backbone(x, training=False)), upscale=r,
             features=backbone.features, num_blocks=backbone.num_blocks, context=backbone.tile_context())
    np.savez(out_path, **w)
    return out_path


def int8_quality(fp32_path, int8_path, td):
    """PSNR (dB, the quality benchmark's protocol) of fp32 and int8 on each test image, and their agreement."""
    import numpy as np
    import tensorflow as tf

    from export import int8
    from sei_tf import metrics

    sessions = {p: ort_session(path, 0, "off", "all") for p, path in (("fp32", fp32_path), ("int8", int8_path))}
    rows = []
    for name, y, x in zip(td["test_names"], td["test_y"], td["test_x"]):
        est = {p: s.run(["output"], {"input": np.asarray(y, np.float32)[None]})[0] for p, s in sessions.items()}
        truth = tf.constant(np.asarray(x, np.float32)[None])
        rows.append({"image": name, **{p: float(metrics.psnr(tf.constant(e), truth)[0]) for p, e in est.items()},
                     "int8_vs_fp32_db": int8.psnr_db(est["int8"], est["fp32"])})
    return rows


_QUALITY_SPLIT = """
import json, sys
sys.argv = sys.argv[:1]
sys.path.insert(0, {benchmarks!r})
import quality
sources, test = quality.default_sources({cache!r})
td = quality.prepare_task({task!r}, sources, test, {{"shorter_side": 256, "seed": 0}}, {cache!r})
print("RESULT " + json.dumps({{"train_y": td["train_y"], "test_names": td["test_names"],
    "test_y": [td["dir"] + "/measurements/" + n + ".tif" for n in td["test_names"]],
    "test_x": [td["dir"] + "/ground_truth/" + n + ".png" for n in td["test_names"]]}}))
"""


def quality_split(task, cache_dir):
    """The quality benchmark's data for `task` (simulated once into cache_dir): training measurement files,
    test names, test measurement and ground-truth files. In a subprocess: quality.py's flags clash with ours."""
    code = _QUALITY_SPLIT.format(benchmarks=os.path.join(ROOT, "benchmarks"), cache=cache_dir, task=task)
    return _subprocess(["-c", code], f"the quality benchmark's {task} data")


def _trained_main():
    import numpy as np

    from export import onnx_export
    from sei_tf import data

    info = cpu_info()
    print(f"CPU: {info['model']}, {info['cores']} usable cores, VNNI {'yes' if info['vnni'] else 'no'}, "
          f"AMX {'yes' if info['amx'] else 'no'} ({' '.join(info['isa']) or 'none'})", flush=True)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    image_path = os.path.join(FLAGS.workdir, f"astronaut_{FLAGS.size}.npy")
    np.save(image_path, _photo(FLAGS.size))
    torch_python = FLAGS.torch_python if FLAGS.torch_python and os.path.isfile(FLAGS.torch_python) else None
    results = {"cpu": info, "flags": {k: FLAGS[k].value for k in ("size", "tile", "repeats", "tune_size",
                                                                   "tune_repeats")}, "tasks": {}}
    rows = []
    for item in FLAGS.trained:
        task, model_path = item.split("=", 1)
        td = quality_split(task, FLAGS.quality_cache_dir)
        td["test_y"] = [data.read_image(f) for f in td["test_y"]]
        td["test_x"] = [data.read_image(f) for f in td["test_x"]]
        paths = {p: os.path.join(FLAGS.workdir, f"{task}_{p}.onnx") for p in ("fp32", "int8")}
        print(f"[{task}] exporting fp32 and int8 (calibration: {len(td['train_y'])} training measurements)", flush=True)
        onnx_export.export(model_path, paths["fp32"], log=lambda *_: None)
        r8 = onnx_export.export(model_path, paths["int8"], int8_calibration=td["train_y"], log=print)
        per_image = int8_quality(paths["fp32"], paths["int8"], td)
        fp32_db, int8_db = (float(np.mean([r[p] for r in per_image])) for p in ("fp32", "int8"))
        print(f"[{task}] test PSNR fp32 {fp32_db:.3f} dB, int8 {int8_db:.3f} dB (loss {fp32_db - int8_db:.3f} dB)",
              flush=True)
        tune = {}
        for p in ("fp32", "int8"):
            print(f"[{task}] tuning {p} session settings ...", flush=True)
            tune[p] = _subprocess([os.path.abspath(__file__), f"--tune={paths[p]}", f"--tune_size={FLAGS.tune_size}",
                                   f"--tune_repeats={FLAGS.tune_repeats}"], f"tuning {p}")
        common = [os.path.abspath(__file__), f"--image={image_path}", f"--tile={FLAGS.tile}",
                  f"--repeats={FLAGS.repeats}"]
        runs = [("keras", "as trained", [f"--measure=keras", f"--model={model_path}"])]
        runs.append(("onnxruntime fp32", "onnxruntime defaults (spinning on, threads = cores, opt all)",
                     ["--measure=ort", f"--model={paths['fp32']}", "--spinning=default", "--opt_level=all"]))
        for p in ("fp32", "int8"):
            b = tune[p]["best"]
            runs.append((f"onnxruntime {p}", f"tuned: threads {b['threads']}, spinning {b['spinning']}, "
                         f"opt {b['opt_level']}",
                         ["--measure=ort", f"--model={paths[p]}", f"--threads={b['threads']}",
                          f"--spinning={b['spinning']}", f"--opt_level={b['opt_level']}"]))
        measured = []
        for engine, settings, args in runs:
            print(f"[{task}] measuring {engine} ({settings}) ...", flush=True)
            measured.append((engine, settings, _subprocess(common + args, f"{task} {engine}")))
        if torch_python:
            weights = torch_weights(model_path, os.path.join(FLAGS.workdir, f"{task}_torch.npz"))
            threads = tune["fp32"]["best"]["threads"]
            print(f"[{task}] measuring pytorch fp32 ({threads} threads) ...", flush=True)
            r = _subprocess([os.path.join(ROOT, "benchmarks", "peers", "torch_inference.py"), f"--weights={weights}",
                             f"--image={image_path}", f"--tile={FLAGS.tile}", f"--threads={threads}",
                             f"--repeats={FLAGS.repeats}"], f"{task} pytorch", python=torch_python,
                            env={"OMP_WAIT_POLICY": "PASSIVE"})  # OpenMP's "spinning off"
            why = ": bicubic a=-0.75 vs -0.5" if "sr" in task else ""
            measured.append(("pytorch fp32", f"torch {r['torch']}, {r['threads']} threads, OMP_WAIT_POLICY=PASSIVE, "
                             f"inference_mode (max abs diff vs Keras {r['max_abs_diff_vs_keras']:.2g}{why})", r))
        else:
            print(f"[{task}] no torch interpreter at {FLAGS.torch_python!r}: PyTorch row skipped", flush=True)
        base = next(r for e, s, r in measured if e == "onnxruntime fp32")["latency_s"]
        keras_s = measured[0][2]["latency_s"]
        for engine, settings, r in measured:
            mp = r["out_h"] * r["out_w"] / 1e6
            rows.append({"task": task, "engine": engine, "settings": settings, "input": f"{FLAGS.size}x{FLAGS.size}",
                         "output": f"{r['out_w']}x{r['out_h']}", "tile": FLAGS.tile or "whole",
                         "latency_s": round(r["latency_s"], 3), "output_mp_per_s": round(mp / r["latency_s"], 3),
                         "peak_rss_mb": round(r["peak_rss_mb"]),
                         "rss_growth_mb": round(r["peak_rss_mb"] - r["rss_before_mb"]),
                         "speedup_vs_ort_fp32_default": f"{base / r['latency_s']:.2f}x",
                         "speedup_vs_keras": f"{keras_s / r['latency_s']:.2f}x"})
            print(f"    {rows[-1]}", flush=True)
        results["tasks"][task] = {"model": model_path, "int8_export": {k: v for k, v in r8["int8"].items()},
                                  "quality": per_image, "fp32_db": fp32_db, "int8_db": int8_db, "tune": tune}
    results["rows"] = rows
    _write_trained(results)


def _write_trained(results):
    import onnxruntime
    import tensorflow as tf

    os.makedirs(os.path.dirname(FLAGS.results), exist_ok=True)
    rows = results["rows"]
    with open(FLAGS.results + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(FLAGS.results + ".json", "w") as f:
        json.dump(results, f, indent=1)
    cpu = results["cpu"]
    lines = [
        "# Inference benchmark: Keras, onnxruntime fp32 / int8 (tuned), PyTorch",
        "",
        f"Generated {datetime.date.today().isoformat()} by `benchmarks/inference.py --trained "
        f"{','.join(FLAGS.trained)} --size {FLAGS.size} --tile {FLAGS.tile} --repeats {FLAGS.repeats}` (one run).",
        "",
        f"- CPU: {cpu['model']}, {cpu['cores']} usable cores (shared with other jobs: timings are noisy, compare "
        f"rows of one run only); VNNI: {'yes' if cpu['vnni'] else 'no'}, AMX: {'yes' if cpu['amx'] else 'no'} "
        f"(/proc/cpuinfo: {' '.join(cpu['isa']) or 'none'}). TensorFlow {tf.__version__}, onnxruntime "
        f"{onnxruntime.__version__} (CPUExecutionProvider).",
        f"- Models: trained cnn restorers (32 features, 8 blocks) named in the command; Keras runs them as trained "
        "and loaded (bfloat16 convolutions where they were trained with `--precision auto` on an AMX CPU).",
        f"- Image: scikit-image astronaut resized to {FLAGS.size}x{FLAGS.size}; tiles of {FLAGS.tile or 'whole'} input "
        "pixels (exact tiling), the same tiling code for every engine. Latency: best of the timed runs after a "
        "warm-up tile, in a fresh process per row; peak RSS: VmHWM of that process (framework + model + run).",
        "",
        "## int8 quality (quality benchmark's test images, 8-bit luma PSNR against ground truth)",
        "",
        "| task | images | fp32 dB | int8 dB | loss dB | worst image loss dB | int8 vs fp32 dB (min) | "
        "export check: held-back int8 vs fp32 dB (min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, t in results["tasks"].items():
        q = t["quality"]
        lines.append(f"| {task} | {len(q)} | {t['fp32_db']:.3f} | {t['int8_db']:.3f} | {t['fp32_db'] - t['int8_db']:.3f} | "
                     f"{max(r['fp32'] - r['int8'] for r in q):.3f} | {min(r['int8_vs_fp32_db'] for r in q):.2f} | "
                     f"{t['int8_export']['psnr_vs_fp32_min_db']:.2f} ({t['int8_export']['calibration_images']} "
                     f"calibration images, {t['int8_export']['calibration_crops']} crops, "
                     f"{t['int8_export']['holdback_images']} held back) |")
    cols = ["task", "engine", "settings", "latency_s", "output_mp_per_s", "peak_rss_mb", "rss_growth_mb",
            "speedup_vs_ort_fp32_default", "speedup_vs_keras"]
    lines += ["", f"## Latency ({FLAGS.size}x{FLAGS.size} input)", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", f"## Session settings sweep (one {FLAGS.tune_size}x{FLAGS.tune_size} tile, median of "
              f"{FLAGS.tune_repeats}; seconds)", "",
              "| task | precision | threads | spinning | opt level | latency_s |", "|---|---|---|---|---|---|"]
    for task, t in results["tasks"].items():
        for p, tune in t["tune"].items():
            for s in tune["sweep"]:
                mark = " **best**" if s == tune["best"] else ""
                lines.append(f"| {task} | {p} | {s['threads']} | {s['spinning']} | {s['opt_level']} | "
                             f"{s['latency_s']:.4f}{mark} |")
    lines += ["", "Tiles batched per run (best setting; 4 tiles one by one vs one batch of 4; seconds):", "",
              "| task | precision | one by one | batched | ratio |", "|---|---|---|---|---|"]
    for task, t in results["tasks"].items():
        for p, tune in t["tune"].items():
            a, b = tune["four_tiles_one_by_one_s"], tune["four_tiles_batched_s"]
            lines.append(f"| {task} | {p} | {a:.4f} | {b:.4f} | {a / b:.2f}x |")
    lines.append("")
    with open(FLAGS.results + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv):
    if FLAGS.measure:
        _measure()
        return
    if FLAGS.tune:
        _tune()
        return
    if FLAGS.results is None:
        FLAGS.results = os.path.join(ROOT, "benchmarks", "results",
                                     "inference" if FLAGS.trained else "inference_random_init")
    if FLAGS.trained:
        _trained_main()
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
