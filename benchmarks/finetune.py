"""Fine-tuning benchmark (issue #12): a shipped SR x2 model on a domain it has not seen.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/finetune.py            # writes results/finetune.{md,json,png}
    PYTHONPATH=$PWD .venv/bin/python benchmarks/finetune.py --steps 100   # a shorter budget

Target domain: greyscale light microscopy (scikit-image's `cell`, 660x550) and
astronomy (`moon`, 512x512), neither seen by the shipped models (trained on colour
photographs), cut into 128x128 ground-truth tiles. Physics: the shipped model's
(SR x2, Gaussian noise 5/255), simulated with a fixed seed per tile. A fixed third of
the tiles of each image is the test set; training uses measurements only, of 1, 5
or all of the remaining tiles.

Three starts, same objective (SEI), same data stream and seed:
- shipped: `sei-cnn-sr2-grey` as it is (no training);
- fine-tuned: from it (`sei_tf.finetune.start_from`), --ft_lr, L2-SP --l2sp;
- scratch: the default cnn from its default initialisation, --lr (the quality
  benchmark's CPU learning rate).
Test PSNR (8-bit, `sei_tf.evaluate`) every --eval_every steps; finished runs are
cached in results/finetune.json, so a rerun only does what is missing.
"""

import hashlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.machine import cpu_model  # noqa: E402
FLAGS = flags.FLAGS
flags.DEFINE_string("model", "sei-cnn-sr2-grey", "The shipped (or saved) SR x2 greyscale model to start from.")
flags.DEFINE_integer("steps", 300, "Training steps per run.")
flags.DEFINE_integer("eval_every", 30, "Steps between test PSNR points (also 'an epoch' for the goal check).")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("patch_size", 32, "Training patch side in measurement pixels.")
flags.DEFINE_float("lr", 5e-4, "Adam learning rate from scratch (delayed linear decay).")
flags.DEFINE_float("ft_lr", 1e-4, "Adam learning rate when fine-tuning (delayed linear decay).")
flags.DEFINE_float("l2sp", 0.1, "L2-SP weight when fine-tuning.")
flags.DEFINE_list("sizes", ["1", "5", "all"], "Numbers of training measurements.")
flags.DEFINE_integer("seed", 0, "Seed of noise, crops, transforms and the scratch initialisation.")
flags.DEFINE_string("results_dir", os.path.join(HERE, "results"), "Where finetune.md/.json/.png go.")

TILE = 128
IMAGES = ("cell", "moon")
NOISE_SIGMA = 5.0




def tiles():
    """(name, ground truth (128, 128, 1) float32) of every tile of IMAGES, row-major."""
    import numpy as np
    from skimage import data as skdata

    out = []
    for name in IMAGES:
        im = getattr(skdata, name)().astype(np.float32) / 255.0
        for r in range(im.shape[0] // TILE):
            for c in range(im.shape[1] // TILE):
                out.append((f"{name}_{r}_{c}", im[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE, None]))
    return out


def make_data(op):
    """Train/test split (every third tile of each image is a test tile) and the simulated measurements."""
    import tensorflow as tf

    from sei_tf.data import simulation

    train, test = [], []
    for i, (name, x) in enumerate(tiles()):
        seed = simulation.noise_seed(FLAGS.seed, name)
        y = op(tf.constant(x[None]), seed=seed).numpy()[0]
        (test if i % 3 == 1 else train).append((name, y, x))
    return train, test


def test_psnr(model, test):
    from sei_tf import evaluate

    rows = evaluate.evaluate(model, test)
    return {s["method"]: s["psnr"] for s in evaluate.summarize(rows)}


def run(start, n, train, test, op):
    """One training run; returns {"steps": [...], "psnr": [...], "minutes": m}."""
    import keras

    from sei_tf import data, finetune, losses, models, sei_model

    keras.utils.set_random_seed(FLAGS.seed)
    if start == "finetune":
        source, _ = finetune.load_source(FLAGS.model)
        backbone = finetune.start_from(source, "float32")
        lr, l2sp = FLAGS.ft_lr, FLAGS.l2sp
    else:
        backbone = models.build("cnn", upscale=op.upscale, channels=1)
        lr, l2sp = FLAGS.lr, 0.0
    model = sei_model.SEIModel(backbone, op, objective="sei", seed=FLAGS.seed, l2sp=l2sp,
                               tau=losses.METHOD_TAU)  # the step of the committed results
    model.compile(keras.optimizers.Adam(sei_model.DelayedLinearDecay(lr, FLAGS.steps)))
    ys = [y for _, y, _ in train[:n]]
    ds = data.measurement_dataset(ys, FLAGS.patch_size, FLAGS.batch_size, 1, seed=FLAGS.seed, factor=op.upscale)
    curve = {"steps": [0], "psnr": [test_psnr(model, test)["model"]]}
    seconds, step = 0.0, 0
    while step < FLAGS.steps:
        chunk = min(FLAGS.eval_every, FLAGS.steps - step)
        t = time.time()
        model.fit(ds.skip(step), steps_per_epoch=chunk, epochs=1, verbose=0)
        seconds += time.time() - t
        step += chunk
        curve["steps"].append(step)
        curve["psnr"].append(test_psnr(model, test)["model"])
        logging.info("%s n=%d: step %d  test PSNR %.2f dB", start, n, step, curve["psnr"][-1])
    curve["minutes"] = seconds / 60
    return curve


def steps_to_reach(curve, target):
    """The first evaluated step whose PSNR is >= target (None if never)."""
    return next((s for s, p in zip(curve["steps"], curve["psnr"]) if p >= target), None)


def write_report(res, path_md, path_png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [k for k in res["runs"]]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, key in zip(axes[0], sizes):
        runs = res["runs"][key]
        for start, style in (("finetune", "-o"), ("scratch", "-s")):
            if start in runs:
                ax.plot(runs[start]["steps"], runs[start]["psnr"], style, ms=3,
                        label="fine-tuned" if start == "finetune" else "from scratch")
        ax.axhline(res["shipped"], color="k", ls="--", label="shipped, as is")
        ax.axhline(res["baseline"], color="grey", ls=":", label=res["baseline_name"])
        ax.set_title(f"{key} training measurement(s) ({runs.get('n', '?')})")
        ax.set_xlabel("training steps")
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_png, dpi=100)

    cfg = res["config"]
    lines = [
        "# Fine-tuning a shipped model on an unseen domain (benchmarks/finetune.py)",
        "",
        f"Model `{cfg['model']}` (SR x2, noise 5/255, trained on colour photographs' luma) on 128x128 tiles of "
        f"scikit-image's greyscale `cell` (light microscopy) and `moon` (astronomy): {res['num_train']} training "
        f"tiles (measurements only), {res['num_test']} test tiles (every third tile). Same physics. "
        f"Budget per run: {cfg['steps']} steps, batch {cfg['batch_size']}, {cfg['patch_size']}-px measurement "
        f"patches, SEI; fine-tuned: Adam {cfg['ft_lr']:g}, L2-SP {cfg['l2sp']:g}; from scratch: Adam "
        f"{cfg['lr']:g}, default initialisation; both with the delayed linear decay. Test PSNR every "
        f"{cfg['eval_every']} steps (8-bit, full tiles). {res['cpu']}, float32, shared 2-core CPU; "
        f"{res['date']}.",
        "",
        f"Shipped model as it is: **{res['shipped']:.2f} dB**; {res['baseline_name']}: {res['baseline']:.2f} dB.",
        "",
        "| training measurements | fine-tuned after 1/5 of the steps | fine-tuned final | from scratch final | "
        "steps for fine-tuning to reach scratch's final | fine-tuned never below shipped after the first "
        f"{cfg['eval_every']} steps | minutes (ft / scratch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sizes:
        runs = res["runs"][key]
        ft, sc = runs.get("finetune"), runs.get("scratch")
        if not ft or not sc:
            lines.append(f"| {key} | not run yet | | | | | |")
            continue
        fifth = cfg["steps"] // 5
        at_fifth = next(p for s, p in zip(ft["steps"], ft["psnr"]) if s >= fifth)
        reach = steps_to_reach(ft, sc["psnr"][-1])
        never_worse = all(p >= res["shipped"] - 1e-9 for s, p in zip(ft["steps"], ft["psnr"])
                          if s >= cfg["eval_every"])
        lines.append(f"| {key} ({runs['n']}) | {at_fifth:.2f} | {ft['psnr'][-1]:.2f} | {sc['psnr'][-1]:.2f} | "
                     f"{reach if reach is not None else 'not reached'} of {cfg['steps']} | "
                     f"{'yes' if never_worse else 'no'} (min {min(ft['psnr'][1:]):.2f}) | "
                     f"{ft['minutes']:.1f} / {sc['minutes']:.1f} |")
    lines += ["", "![PSNR against training steps](finetune.png)", "",
              "Goal (issue #12): fine-tuning reaches the from-scratch final PSNR in at most a fifth of the steps, "
              "and is never worse than the shipped model after its first epoch (here: the first "
              f"{cfg['eval_every']} steps)."]
    with open(path_md, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv):
    del argv
    import datetime

    from sei_tf import loading

    os.makedirs(FLAGS.results_dir, exist_ok=True)
    path = os.path.join(FLAGS.results_dir, "finetune.json")
    config = {k: getattr(FLAGS, k) for k in ("model", "steps", "eval_every", "batch_size", "patch_size", "lr",
                                              "ft_lr", "l2sp", "seed")}
    with open(loading.model_path(FLAGS.model), "rb") as f:  # the weights, not just the name: a retrained
        config["model_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]  # model invalidates the runs
    res = json.load(open(path)) if os.path.isfile(path) else {}
    if res.get("config") != config:
        res = {"config": config, "runs": {}}
    shipped = loading.load_model(FLAGS.model)
    op = shipped.physics
    train, test = make_data(op)
    scores = test_psnr(shipped, test)
    res.update({"shipped": scores["model"], "baseline": scores["baseline"], "baseline_name": op.baseline_name,
                "num_train": len(train), "num_test": len(test), "cpu": cpu_model(),
                "date": datetime.date.today().isoformat()})
    print(f"CPU: {cpu_model()}; shipped {FLAGS.model}: {scores['model']:.2f} dB, {op.baseline_name} "
          f"{scores['baseline']:.2f} dB on {len(test)} test tiles")
    for key in FLAGS.sizes:
        n = len(train) if key == "all" else int(key)
        runs = res["runs"].setdefault(key, {"n": n})
        for start in ("finetune", "scratch"):
            if start not in runs:
                runs[start] = run(start, n, train, test, op)
                tmp = path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(res, f, indent=1)
                os.replace(tmp, path)
                write_report(res, os.path.join(FLAGS.results_dir, "finetune.md"),
                             os.path.join(FLAGS.results_dir, "finetune.png"))
    write_report(res, os.path.join(FLAGS.results_dir, "finetune.md"), os.path.join(FLAGS.results_dir, "finetune.png"))
    print(open(os.path.join(FLAGS.results_dir, "finetune.md")).read())
    return 0


if __name__ == "__main__":
    app.run(main)
