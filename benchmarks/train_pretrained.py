"""Trains the restorers shipped in sei_tf/pretrained/ (issue #12), from measurements only.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/train_pretrained.py                 # all of MODELS
    PYTHONPATH=$PWD .venv/bin/python benchmarks/train_pretrained.py --models sei-cnn-sr2-rgb
    nohup ... > train_pretrained.log 2>&1 &                                          # in the background

Protocol: the quality benchmark's (benchmarks/quality.py, `--preset cpu`, whose flags
this script shares: --steps, --precision, --seed, --cache_dir...): its photographs
resized so the shorter side is 256 px, noise sigma 5/255, its fixed train/test split.
Each model is the default `cnn` backbone (32 features, 8 blocks, the initialisation
`ResidualCNN` uses by default, recorded in the card) trained with the SEI objective
on the simulated measurements of the TRAINING photographs only (the ground truth is
never read in training); its test PSNR (8-bit luma, full images, `sei_tf.evaluate`)
is measured on the test photographs next to the physics' non-learned baseline.
Greyscale models see the BT.601 luma of the same photographs.

Resumable: a checkpoint (model with optimizer state) is written every --checkpoint_every
steps under --cache_dir/pretrained/; rerunning the same command continues where it
stopped. A finished model is written, float32 and without optimizer state, to
sei_tf/pretrained/<name>.keras with its card <name>.md and its row in index.json
(atomic writes), so models can be committed one by one as they finish.
"""

import datetime
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import quality  # noqa: E402  (defines the protocol's flags: --steps, --precision, --seed, --cache_dir...)

# Shipped name -> (quality benchmark task key, channels). Training runs in this order.
MODELS = {
    "sei-cnn-sr2-rgb": ("sr_x2", 3),
    "sei-cnn-sr2-grey": ("sr_x2", 1),
    "sei-cnn-gauss2-rgb": ("gaussian_2", 3),
    "sei-cnn-sr4-rgb": ("sr_x4", 3),
    "sei-cnn-gauss2-grey": ("gaussian_2", 1),
    "sei-cnn-sr4-grey": ("sr_x4", 1),
}

from benchmarks.machine import cpu_model  # noqa: E402
FLAGS = flags.FLAGS
FLAGS.set_default("dihedral", False)  # the protocol of its committed results
flags.DEFINE_list("models", list(MODELS), f"Models to train, among {', '.join(MODELS)}.")
flags.DEFINE_integer("checkpoint_every", 100, "Steps between resumable checkpoints.")
flags.DEFINE_string("ship_dir", os.path.join(ROOT, "sei_tf", "pretrained"),
                    "Where the finished models, cards and index.json go.")
flags.DEFINE_boolean("retrain", False, "Train again even when the model is already in --ship_dir.")




def prepare(task_key, channels, sources, test, cfg, cache_dir):
    """Simulated measurements (once, cached) of one task and channel count, split train/test."""
    from sei_tf import data

    key = quality.short_hash({"files": sorted(os.path.basename(f) for f in sources), "side": cfg["shorter_side"],
                              "seed": cfg["seed"], "noise": quality.NOISE_SIGMA, "task": quality.TASKS[task_key],
                              "channels": channels})
    out = os.path.join(cache_dir, "data", f"{task_key}-{channels}ch-{key}")
    if not os.path.isfile(os.path.join(out, data.MEASUREMENTS_DIR, data.SIDECAR_NAME)):
        logging.info("Simulating %s (%d channel(s)) into %s", task_key, channels, out)
        data.simulate(sources, out, quality.make_physics(task_key), shorter_side=cfg["shorter_side"],
                      seed=cfg["seed"], overwrite=True, progress=False, channels=channels)
    ydir, xdir = os.path.join(out, data.MEASUREMENTS_DIR), os.path.join(out, data.GROUND_TRUTH_DIR)
    stems = sorted(os.path.splitext(os.path.basename(f))[0] for f in data.list_images(ydir))
    train = [s for s in stems if s not in test]
    test_stems = [s for s in stems if s in test]
    return {
        "train_y": [os.path.join(ydir, s + ".tif") for s in train],
        "train_names": train,
        "test_names": test_stems,
        "test_y": [data.read_image(os.path.join(ydir, s + ".tif")) for s in test_stems],
        "test_x": [data.read_image(os.path.join(xdir, s + ".png")) for s in test_stems],
    }


def new_model(task_key, channels, cfg):
    """The untrained SEIModel: default cnn backbone (its default initialisation), SEI objective."""
    import keras

    from sei_tf import losses, models, sei_model

    keras.utils.set_random_seed(cfg["seed"])
    op = quality.make_physics(task_key)
    backbone = models.build("cnn", upscale=op.upscale, channels=channels, precision=cfg.get("precision", "float32"))
    # The shipped restorers were trained at the paper's probe step.
    return sei_model.SEIModel(backbone, op, objective="sei", seed=cfg["seed"], tau=losses.METHOD_TAU)


def initialisers(backbone):
    """How the backbone's layers were initialised: its `init` setting (e.g. 'torch; tail: Zeros'), else
    read from the layers (e.g. 'GlorotUniform; tail: Zeros')."""
    if getattr(backbone, "init", None):
        return f"{backbone.init}; tail: Zeros"
    names = {}
    for layer in backbone._flatten_layers(include_self=False):
        init = getattr(layer, "kernel_initializer", None)
        if init is not None:
            names.setdefault(type(init).__name__, []).append(layer.name)
    if not names:
        return "unknown"
    main = max(names, key=lambda k: len(names[k]))
    others = [f"{', '.join(v)}: {k}" for k, v in names.items() if k != main]
    return "; ".join([main] + others)


def evaluate_test(model, td):
    from sei_tf import evaluate

    rows = evaluate.evaluate(model, zip(td["test_names"], td["test_y"], td["test_x"]))
    return {s["method"]: {"psnr": s["psnr"], "psnr_std": s["psnr_std"], "ssim": s["ssim"]}
            for s in evaluate.summarize(rows)}


def train_one(name, cfg, sources, test):
    """Trains (or resumes) one model; returns its index row after shipping it."""
    import keras

    from sei_tf import data, sei_model

    task_key, channels = MODELS[name]
    td = prepare(task_key, channels, sources, test, cfg, FLAGS.cache_dir)
    steps = int(cfg["steps"])
    ckpt = os.path.join(FLAGS.cache_dir, "pretrained", name + ".partial")
    resumed = quality.load_checkpoint(ckpt, name)
    if resumed is None:
        model, state = new_model(task_key, channels, cfg), quality.new_state()
        init = initialisers(model.backbone)
    else:
        model, state = resumed
        init = state.get("init", "unknown")
        logging.info("%s: resuming at step %d/%d", name, state["step"], steps)
    state["init"] = init
    upscale = model.physics.upscale
    patch = cfg["patch_size_x4"] if upscale == 4 else cfg["patch_size"]
    lr = cfg["lr_sr"] if upscale > 1 else cfg["lr_deblur"]
    if resumed is None:
        model.compile(optimizer=keras.optimizers.Adam(sei_model.DelayedLinearDecay(lr, steps),
                                                      beta_1=0.9, beta_2=0.999))
    ds = data.measurement_dataset(td["train_y"], patch, cfg["batch_size"], channels, seed=cfg["seed"],
                                  factor=upscale)
    while state["step"] < steps:
        chunk = min(FLAGS.checkpoint_every, steps - state["step"])
        t = time.time()
        hist = model.fit(ds.skip(state["step"]), steps_per_epoch=chunk, epochs=1, verbose=0)
        state["train_seconds"] += time.time() - t
        state["step"] += chunk
        loss = float(hist.history["loss"][-1])
        state["loss"].append([state["step"], loss])
        if loss != loss or abs(loss) == float("inf"):
            raise RuntimeError(f"{name}: non-finite loss by step {state['step']}; checkpoint kept in {ckpt}.")
        logging.info("%s: step %d/%d  loss %.4g  (%.1f min training, %.2f s/step)", name, state["step"], steps,
                     loss, state["train_seconds"] / 60, state["train_seconds"] / state["step"])
        quality.save_checkpoint(model, state, ckpt)
    scores = evaluate_test(model, td)
    row = ship(name, model, td, cfg, state, patch, lr, scores)
    import shutil

    shutil.rmtree(ckpt, ignore_errors=True)
    return row


def ship(name, model, td, cfg, state, patch, lr, scores):
    """Writes <name>.keras (float32, no optimizer), <name>.md and the index row; returns the row."""
    from sei_tf import models, pretrained, sei_model

    backbone = models.as_float32(model.backbone)
    shipped = sei_model.SEIModel(backbone, model.physics, objective=model.method, seed=model.seed,
                                 tau=model.objective[0].tau)
    os.makedirs(FLAGS.ship_dir, exist_ok=True)
    path = os.path.join(FLAGS.ship_dir, name + ".keras")
    tmp = path + ".tmp.keras"
    shipped.save(tmp)
    os.replace(tmp, path)
    row = {
        "file": name + ".keras",
        "card": name + ".md",
        "task": model.physics.task,
        "physics": model.physics.describe(),
        "channels": int(backbone.channels),
        "upscale": int(model.physics.upscale),
        "backbone": "cnn",
        "backbone_config": {k: backbone.get_config()[k] for k in ("features", "num_blocks")},
        "parameters": int(sum(int(v.numpy().size) for v in backbone.weights)),
        "bytes": os.path.getsize(path),
        "objective": model.method,
        "init": state["init"],
        "training": {"images": len(td["train_names"]), "steps": state["step"], "batch_size": cfg["batch_size"],
                     "patch_size": patch, "learning_rate": lr, "precision": cfg.get("precision", "float32"),
                     "seed": cfg["seed"], "minutes": round(state["train_seconds"] / 60, 1), "cpu": cpu_model(),
                     "date": datetime.date.today().isoformat()},
        "test": {"images": td["test_names"], "psnr": round(scores["model"]["psnr"], 2),
                 "psnr_std": round(scores["model"]["psnr_std"], 2), "ssim": round(scores["model"]["ssim"], 4),
                 "baseline": model.physics.baseline_name, "baseline_psnr": round(scores["baseline"]["psnr"], 2),
                 "baseline_ssim": round(scores["baseline"]["ssim"], 4)},
    }
    pretrained.write_card(os.path.join(FLAGS.ship_dir, name + ".md"), name, row, td["train_names"])
    pretrained.update_index(os.path.join(FLAGS.ship_dir, pretrained.INDEX_NAME), name, row)
    logging.info("%s: shipped %s (%.0f kB); test PSNR %.2f dB (baseline %s %.2f dB)", name, path,
                 row["bytes"] / 1024, row["test"]["psnr"], row["test"]["baseline"], row["test"]["baseline_psnr"])
    return row


def main(argv):
    del argv
    unknown = [m for m in FLAGS.models if m not in MODELS]
    if unknown:
        raise app.UsageError(f"Unknown models {unknown}; choose among {', '.join(MODELS)}.")
    cfg = quality.resolve_config()
    sources, test = quality.default_sources(FLAGS.cache_dir)
    print(f"CPU: {cpu_model()}; precision {cfg.get('precision', 'float32')}; {cfg['steps']} steps per model")
    rows = {}
    for name in FLAGS.models:
        if os.path.isfile(os.path.join(FLAGS.ship_dir, name + ".keras")) and not FLAGS.retrain:
            logging.info("%s: already shipped, kept (--retrain to train it again)", name)
            continue
        rows[name] = train_one(name, cfg, sources, test)
    print(f"{'name':22s} {'physics':32s} {'test PSNR':>9s} {'baseline':>9s} {'minutes':>7s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['physics']:32s} {r['test']['psnr']:9.2f} {r['test']['baseline_psnr']:9.2f} "
              f"{r['training']['minutes']:7.1f}")
    return 0


if __name__ == "__main__":
    app.run(main)
