"""Training speed: one SEI step of sei-tf in float32 and bfloat16, next to DeepInverse.

    PYTHONPATH=. python benchmarks/training_speed.py [--steps 10] [--peers_python PATH]

Every cell times the same work: one SEI training step (SURE + scale
equivariance with a stopped-gradient target, Adam) on a batch of 8 measurement
patches of 48x48 pixels, noise 5/255, for SR x2 and Gaussian blur sigma 2, on
ResidualCNN (64 features, 8 blocks) and swinir_light (embed 60, 4 stages of 6).
sei-tf runs `SEIModel.train_on_batch` with the backbone built in float32 or
bfloat16 (`--precision`; the physics and losses stay float32). DeepInverse 0.5
runs a PyTorch twin of the network with `SureGaussianLoss` +
`EILoss(Scale(), no_grad=True)`, in float32 and under
`torch.autocast("cpu", torch.bfloat16)` (benchmarks/peers/deepinv_sei.py).
PyTorch and deepinv live in a separate environment (benchmarks/peers/README.md);
without it the sei-tf rows are still written.

Each cell runs in a fresh subprocess; the median seconds per step over the
timed steps (after warm-up steps) is reported. Two further sections check that
nothing else wastes time: the input pipeline (steps/s reading measurement files
vs an in-memory tensor) and SURE's two restorer passes as one batched call.
Results go to benchmarks/results/training_speed.md and .json; the CPU model and
its bf16 support are printed with them, since only ratios within one run compare.
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("backbones", ["cnn", "swinir_light"], "Backbones (cnn, swinir_light).")
flags.DEFINE_list("tasks", ["sr2", "blur2"], "sr2: SR x2; blur2: Gaussian blur sigma 2.")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "sei-tf precisions (float16 only on a GPU).")
flags.DEFINE_integer("steps", 10, "Timed steps per cell (the median is reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, oneDNN kernel selection).")
flags.DEFINE_integer("threads", 2, "Threads for both frameworks (intra-op).")
flags.DEFINE_string("peers_python", os.environ.get("SEI_TF_PEERS_PYTHON", "/work/peers-venv/bin/python"),
                    "Python of the environment with torch + deepinv; skipped when missing.")
flags.DEFINE_boolean("extras", True, "Also run the input-pipeline and batched-SURE sections.")
flags.DEFINE_string("results_dir", os.path.join(ROOT, "benchmarks", "results"), "Where to write the results.")
flags.DEFINE_string("worker", None, "Internal: run one cell given as JSON and print its result.")

BATCH, PATCH, NOISE = 8, 48, 5.0
CNN = {"features": 64, "num_blocks": 8}


# --------------------------------------------------------------------------------------
# sei-tf cells (run in a subprocess each)
# --------------------------------------------------------------------------------------

def _physics(task):
    from sei_tf import physics

    return {"sr2": lambda: physics.SuperResolution(2, noise_sigma=NOISE),
            "blur2": lambda: physics.Blur("gaussian:2", noise_sigma=NOISE)}[task]()


def _model(backbone, task, precision, objective="sei"):
    import keras

    from sei_tf import models, sei_model

    op = _physics(task)
    sizes = CNN if backbone == "cnn" else {}
    net = models.build(backbone, upscale=op.upscale, channels=3, precision=precision, **sizes)
    model = sei_model.SEIModel(net, op, objective=objective, seed=0)
    model.compile(keras.optimizers.Adam(2e-4))
    return model


def _batch(seed=0):
    import numpy as np

    return np.random.default_rng(seed).random((BATCH, PATCH, PATCH, 3), dtype=np.float32)


def time_steps(run_step, warmup, steps):
    """Median and all durations (seconds) of `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        run_step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def cell_train_step(spec):
    model = _model(spec["backbone"], spec["task"], spec["precision"])
    y = _batch()
    median, times = time_steps(lambda: model.train_on_batch(y), spec["warmup"], spec["steps"])
    return {"seconds_per_step": median, "times": times}


def cell_input_pipeline(spec):
    """Steps/s of `fit` reading measurement files (sei_tf.data) vs a batch held in memory."""
    import numpy as np
    import tensorflow as tf

    from sei_tf import data

    model = _model("cnn", spec["task"], spec["precision"])
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(1)
        for i in range(16):
            data.write_image(os.path.join(tmp, f"m{i:02d}.tif"), rng.random((128, 128, 3), dtype="float32"))
        files = data.list_images(tmp)
        images, _ = data.load_images(files, channels=3)
        from_files = data.measurement_dataset(images, PATCH, BATCH, 3, seed=0)
        in_memory = tf.data.Dataset.from_tensors(tf.constant(_batch())).repeat()
        out = {}
        for name, ds in (("files", from_files), ("memory", in_memory)):
            model.fit(ds, epochs=1, steps_per_epoch=spec["warmup"], verbose=0)
            t0 = time.perf_counter()
            model.fit(ds, epochs=1, steps_per_epoch=spec["steps"], verbose=0)
            out[name] = spec["steps"] / (time.perf_counter() - t0)
    return out


def cell_sure_batching(spec):
    """Gradient of SURE with f(y) and f(y + tau b) as two calls vs one call on twice the batch."""
    import tensorflow as tf

    from sei_tf import losses, rng

    model = _model("cnn", spec["task"], spec["precision"])
    op, net, tau = model.physics, model.backbone, 0.01
    y = tf.constant(_batch())
    seed = tf.constant([0, 1])

    @tf.function
    def two_calls():
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(losses.sure_gaussian(net(y, training=True), y, op,
                                                        lambda t: net(t, training=True), seed, tau))
        return tape.gradient(value, net.trainable_variables)

    @tf.function
    def one_call():
        with tf.GradientTape() as tape:
            b = rng.normal(tf.shape(y), seed) * losses.interior_mask(tf.shape(y), op.margin)
            both = net(tf.concat([y, y + tau * b], axis=0), training=True)
            x1, x_probe = both[:BATCH], both[BATCH:]
            value = tf.reduce_mean(losses.sure_gaussian(x1, y, op, lambda t: x_probe, seed, tau))
        return tape.gradient(value, net.trainable_variables)

    out = {}
    for name, fn in (("two_calls", two_calls), ("one_call", one_call)):
        out[name] = time_steps(fn, spec["warmup"], spec["steps"])[0]
    return out


CELLS = {"train_step": cell_train_step, "input_pipeline": cell_input_pipeline, "sure_batching": cell_sure_batching}


def run_worker(spec_json):
    import tensorflow as tf

    spec = json.loads(spec_json)
    tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
    print(json.dumps(CELLS[spec["kind"]](spec)))


def in_subprocess(spec):
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={json.dumps(spec)}"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def peer_cell(task, backbone, precision):
    if not os.path.exists(FLAGS.peers_python):
        return {"error": f"no peers environment at {FLAGS.peers_python}"}
    script = os.path.join(ROOT, "benchmarks", "peers", "deepinv_sei.py")
    cmd = [FLAGS.peers_python, script, "--task", task, "--backbone", backbone, "--precision", precision,
           "--warmup", str(FLAGS.warmup), "--steps", str(FLAGS.steps), "--threads", str(FLAGS.threads), "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

def cpu_description():
    model, flags_ = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags_ = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = [f for f in ("amx_bf16", "avx512_bf16", "amx_tile") if f in flags_]
    return f"{model}, {os.cpu_count()} logical cores; bf16 units: {', '.join(bf16) or 'none'}"


def _s(cell):
    return cell.get("seconds_per_step") if isinstance(cell, dict) else None


def write_report(rows, extras, header):
    lines = [f"# Training speed ({header['date']})", "",
             f"CPU: {header['cpu']}. Threads: {header['threads']}. TensorFlow {header['tf']}, "
             f"peers: {header.get('peers', 'not run')}. Load average at start / end: {header['load_start']} / "
             f"{header.get('load_end', 'n/a')} (other work on the machine slows every cell).", "",
             f"One SEI training step: batch {BATCH}, {PATCH}x{PATCH} measurement patches, noise {NOISE:g}/255, "
             f"Adam; median of {header['steps']} steps after {header['warmup']} warm-up steps, each cell in "
             "a fresh process. ResidualCNN 64x8; swinir_light embed 60, 4x6 blocks.", "",
             "| backbone | task | engine | precision | s/step | steps/s | vs sei-tf fp32 | vs DeepInverse bf16 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = _s(r["result"])
        if s is None:
            lines.append(f"| {r['backbone']} | {r['task']} | {r['engine']} | {r['precision']} | "
                         f"{r['result'].get('error', 'n/a')} | | | |")
            continue
        base = _s(next((q["result"] for q in rows if q["engine"] == "sei-tf" and q["precision"] == "float32"
                        and q["task"] == r["task"] and q["backbone"] == r["backbone"]), {}))
        peer = _s(next((q["result"] for q in rows if q["engine"] == "deepinv" and q["precision"] == "bf16"
                        and q["task"] == r["task"] and q["backbone"] == r["backbone"]), {}))
        vs_base = f"{base / s:.2f}x" if base else ""
        vs_peer = f"{peer / s:.2f}x" if peer else ""
        lines.append(f"| {r['backbone']} | {r['task']} | {r['engine']} | {r['precision']} | {s:.3f} | "
                     f"{1 / s:.2f} | {vs_base} | {vs_peer} |")
    lines += ["", "Ratios are steps per second relative to the named row of the same backbone and task "
              "(above 1: faster)."]
    if extras:
        lines += ["", "## Nothing else wastes time", ""]
        for key, value in extras.items():
            lines.append(f"- {key}: {json.dumps(value)}")
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    with open(os.path.join(FLAGS.results_dir, "training_speed.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(FLAGS.results_dir, "training_speed.json"), "w") as f:
        json.dump({"header": header, "rows": rows, "extras": extras}, f, indent=1)
    print("\n".join(lines))


def main(argv):
    del argv
    if FLAGS.worker:
        run_worker(FLAGS.worker)
        return
    import tensorflow as tf

    header = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu_description(),
              "threads": FLAGS.threads, "tf": tf.__version__, "steps": FLAGS.steps, "warmup": FLAGS.warmup,
              "load_start": "%.2f" % os.getloadavg()[0]}
    print(header["cpu"], flush=True)
    base = {"warmup": FLAGS.warmup, "steps": FLAGS.steps, "threads": FLAGS.threads}
    rows = []
    for backbone in FLAGS.backbones:
        for task in FLAGS.tasks:
            for precision in FLAGS.precisions:
                result = in_subprocess({**base, "kind": "train_step", "backbone": backbone, "task": task,
                                        "precision": precision})
                rows.append({"backbone": backbone, "task": task, "engine": "sei-tf", "precision": precision,
                             "result": result})
                print(rows[-1], flush=True)
            for precision in ("fp32", "bf16"):
                result = peer_cell(task, backbone, precision)
                if "torch" in result:
                    header["peers"] = f"torch {result['torch']}, deepinv {result.get('deepinv')}"
                rows.append({"backbone": backbone, "task": task, "engine": "deepinv", "precision": precision,
                             "result": result})
                print(rows[-1], flush=True)
            write_report(rows, {}, header)
    extras = {}
    if FLAGS.extras:
        for kind in ("input_pipeline", "sure_batching"):
            for precision in FLAGS.precisions:
                extras[f"{kind} (cnn, sr2, {precision})"] = in_subprocess(
                    {**base, "kind": kind, "task": "sr2", "precision": precision})
                print(kind, precision, extras[f"{kind} (cnn, sr2, {precision})"], flush=True)
    header["load_end"] = "%.2f" % os.getloadavg()[0]
    write_report(rows, extras, header)


if __name__ == "__main__":
    app.run(main)
