"""SEI when the noise level is unknown: told the true sigma, the estimated sigma, or UNSURE.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/unknown_noise_training.py [--steps 600] [--sigma 10]

One short SEI training per row, SR x2, greyscale, same data, backbone, seed and budget:

  * "true sigma": the "sei" objective with the noise level used to simulate the data;
  * "estimated sigma": "sei" with `sei_tf.noise_estimation.estimate_gaussian` of the
    training measurements (what `--noise auto` gives);
  * "UNSURE": the "sei_unsure" objective, no noise level at all (`sei_tf.unsure`);
  * "UNSURE from the estimate": the same, its variance starting at the estimated sigma;
  * the non-learned baseline (bicubic).

Ground truth: scikit-image greyscale images (TRAIN / TEST below), shorter side 128
(measurements 64 px), Gaussian noise of --sigma/255, one draw per image (seeded).
Backbone ResidualCNN(32 features, 4 blocks); Adam 1e-3, constant for half the steps then
linear decay to 0.01x; batch 8 random 32x32 measurement crops. PSNR (dB, 8-bit luma
protocol of `sei_tf.evaluate`) on the full test images.

Writes the second part of benchmarks/results/noise_estimation.md (and
unknown_noise_training.json); the first part (`noise_estimation.py`) is kept.
"""

import argparse
import datetime
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from noise_estimation import RESULTS, cpu_model, grey  # noqa: E402
from sei_tf import evaluate, models, noise_estimation, objectives, physics, sei_model, unsure  # noqa: E402
from sei_tf.losses import METHOD_TAU  # noqa: E402  (the step the committed results used)

TRAIN = ("brick", "grass", "gravel", "moon", "astronaut", "retina", "chelsea", "coffee", "rocket")
TEST = ("camera", "coins")
PATCH = 32  # measurement crop side (pixels)
BATCH = 8
MARKER = "\n## Training without the noise level"


def data(sigma, seed=0):
    """(train measurements, test measurements, test ground truth), SR x2, float, unclipped."""
    op = physics.make("sr", factor=2, noise_sigma=sigma)

    def measure(names, offset):
        xs, ys = [], []
        for i, name in enumerate(names):
            x = grey(name)
            x = x[:x.shape[0] // 2 * 2, :x.shape[1] // 2 * 2]
            x = tf.image.resize(x, (128 * x.shape[0] // min(x.shape[:2]) // 2 * 2,
                                    128 * x.shape[1] // min(x.shape[:2]) // 2 * 2), antialias=True).numpy()
            x = np.clip(x, 0, 1)
            xs.append(x)
            ys.append(op(x[None], seed=[seed, offset + i])[0].numpy())
        return xs, ys

    _, train_y = measure(TRAIN, 0)
    test_x, test_y = measure(TEST, 100)
    return train_y, test_y, test_x


def crops(images, seed):
    """An endless tf.data stream of batches of random PATCH x PATCH crops."""
    def gen():
        rng = np.random.default_rng(seed)
        while True:
            batch = []
            for _ in range(BATCH):
                a = images[rng.integers(len(images))]
                r, c = rng.integers(a.shape[0] - PATCH + 1), rng.integers(a.shape[1] - PATCH + 1)
                batch.append(a[r:r + PATCH, c:c + PATCH])
            yield np.stack(batch).astype(np.float32)

    return tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([BATCH, PATCH, PATCH, 1], tf.float32))


def train(objective, noise_sigma, train_y, steps, seed=0):
    keras.utils.set_random_seed(seed)
    op = physics.make("sr", factor=2, noise_sigma=noise_sigma)
    backbone = models.build("cnn", upscale=2, channels=1, features=32, num_blocks=4)
    options = {"tau": METHOD_TAU} if isinstance(objective, str) else {}
    model = sei_model.SEIModel(backbone, op, objective=objective, seed=seed, **options)
    model.compile(optimizer=keras.optimizers.Adam(sei_model.DelayedLinearDecay(1e-3, steps)))
    epochs = 10
    t0 = time.perf_counter()
    history = model.fit(crops(train_y, seed), epochs=epochs, steps_per_epoch=steps // epochs, verbose=0,
                        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: print(
                            f"  epoch {e + 1}/{epochs} " + " ".join(f"{k} {v:.5g}" for k, v in logs.items())
                            + f" ({time.perf_counter() - t0:.0f} s)", flush=True))]).history
    return model, history, time.perf_counter() - t0


def psnr(model, test_y, test_x):
    rows = evaluate.evaluate(model, zip(TEST, test_y, test_x))
    return {s["method"]: s["psnr"] for s in evaluate.summarize(rows)}  # "model" and "baseline"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--sigma", type=float, default=10.0, help="true noise sigma, 8-bit units")
    parser.add_argument("--rows", default="true,estimated,unsure,unsure_from_estimate",
                        help="rows to run; the others are kept from the last results file")
    args = parser.parse_args()
    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "cpu": cpu_model(), "steps": args.steps, "sigma": args.sigma}
    print(f"CPU: {header['cpu']}", flush=True)
    train_y, test_y, test_x = data(args.sigma)
    estimated = noise_estimation.estimate_gaussian(train_y)
    print(f"true sigma {args.sigma:g}, estimated {estimated:.3f}", flush=True)
    def from_estimate():
        terms = objectives.preset("sei_unsure", upscale=2, tau=METHOD_TAU)
        terms[0] = unsure.UNSURE(initial_sigma=estimated, tau=METHOD_TAU)
        return objectives.check(terms)

    plan = {"true": ("true sigma", "sei", args.sigma), "estimated": ("estimated sigma", "sei", estimated),
            "unsure": ("UNSURE", "sei_unsure", 0.0),
            "unsure_from_estimate": ("UNSURE from the estimate", from_estimate, 0.0)}
    old = os.path.join(RESULTS, "unknown_noise_training.json")
    rows = json.load(open(old))["rows"] if os.path.exists(old) else []
    for key in args.rows.split(","):
        label, objective, sigma = plan[key]
        name = "sei_unsure" if callable(objective) else objective
        print(f"{label}: {name}, sigma {sigma:.3f}", flush=True)
        model, history, seconds = train(objective() if callable(objective) else objective, sigma, train_y,
                                        args.steps)
        scores = psnr(model, test_y, test_x)
        learned = history.get("unsure_sigma")
        used = learned[-1] if learned else sigma
        row = dict(label=label, objective=name, sigma_used=float(used),
                   sigma_curve=[float(v) for v in learned] if learned else None,
                   psnr=float(scores["model"]), baseline=float(scores["baseline"]), seconds=seconds)
        rows = [r for r in rows if r["label"] != label] + [row]
        print(f"  -> {row}", flush=True)
    order = [plan[k][0] for k in plan]
    rows.sort(key=lambda r: order.index(r["label"]))
    write(rows, header, estimated)


def write(rows, header, estimated):
    lines = [
        MARKER.strip(), "",
        f"Generated by `benchmarks/unknown_noise_training.py` on {header['date']}; CPU: {header['cpu']}.", "",
        f"SR x2, greyscale, Gaussian noise sigma {header['sigma']:g}/255 (float measurements). Train: "
        f"{', '.join(TRAIN)}; test: {', '.join(TEST)} (scikit-image, shorter side 128, measurements 64 px). "
        f"ResidualCNN(32 features, 4 blocks), {header['steps']} steps of batch {BATCH} ({PATCH}x{PATCH} "
        "measurement crops), Adam 1e-3 then linear decay; the same seed for every row. A budget for a shared "
        "2-core CPU: far from convergence, so differences under ~0.1 dB are noise. PSNR: 8-bit luma, mean over the "
        "test images. The sigma column is what SURE was told (true, estimated from the training measurements "
        "by `noise_estimation.estimate_gaussian`) or, for UNSURE, the learned sigma at the end (its per-epoch "
        "values below).", "",
        "| row | objective | sigma used / learned (8-bit) | PSNR (dB) | minutes |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['objective']} | {r['sigma_used']:.2f} | {r['psnr']:.2f} | "
                     f"{r['seconds'] / 60:.1f} |")
    lines.append(f"| bicubic (non-learned) | - | - | {rows[0]['baseline']:.2f} | - |")
    for r in rows:
        if r["sigma_curve"]:
            lines += ["", f"{r['label']}: learned sigma per epoch (8-bit units): "
                      + ", ".join(f"{v:.2f}" for v in r["sigma_curve"]) + "."]
    path = os.path.join(RESULTS, "noise_estimation.md")
    old = open(path).read() if os.path.exists(path) else "# Noise parameters estimated from the measurements\n"
    if MARKER in old:
        old = old[:old.index(MARKER)]
    text = old.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    for target, content in ((path, text), (os.path.join(RESULTS, "unknown_noise_training.json"),
                                          json.dumps({"header": header, "estimated_sigma": estimated, "rows": rows},
                                                     indent=1))):
        tmp = target + ".tmp"
        with open(tmp, "w") as f:
            f.write(content)
        os.replace(tmp, target)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
