"""Evaluates a trained restorer against ground truth: PSNR and SSIM, next to the baseline.

    python -m sei_tf.evaluate --model RUN_DIR/model.keras --measurements DIR --ground_truth DIR \\
        [--per_image] [--output_csv PATH] [--rgb]

Measurements and ground-truth images are paired by file name without extension
(`astronaut.tif` with `astronaut.png`, as `sei_tf.simulate` writes them). Every
measurement is restored whole by the model and by the non-learned baseline of its
physics (bicubic upsampling for super-resolution, the blurred input itself for
deblurring). The protocol is the paper's (`sei_tf.metrics`): outputs clamped to
[0, 1] and quantised to 8 bits, PSNR/SSIM on the luma channel (BT.601 Y), or on
all channels with --rgb. The table (mean and standard deviation over images, and
each image with --per_image) is printed and written as CSV.

The functions are importable (no flags are defined on import), e.g. for a benchmark:

    from sei_tf import evaluate
    model = evaluate.load_model("runs/x2/model.keras")
    pairs = evaluate.iter_pairs("data/measurements", "data/ground_truth", model)
    rows = evaluate.evaluate(model, pairs)          # one row per image and method
    table = evaluate.summarize(rows)                # mean and std per method
"""

import csv
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # fewer TF INFO logs (start-up lines remain)

from absl import flags, logging  # noqa: E402

from sei_tf import cli, loading  # noqa: E402
from sei_tf.errors import SeiTfError  # noqa: E402

FLAGS = flags.FLAGS

SSIM_WINDOW = 11  # tf.image.ssim's Gaussian window: images must be at least this large
CSV_COLUMNS = ("scope", "method", "description", "image", "n", "psnr", "psnr_std", "ssim", "ssim_std",
               "protocol")


class EvaluationError(SeiTfError, ValueError):
    """Input that cannot be evaluated; the message says which file and why."""


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------

model_path = loading.model_path
load_model = loading.load_model


def model_channels(model):
    return int(model.backbone.channels)


def model_factor(model):
    return int(model.physics.upscale)


def describe_model(model):
    """E.g. 'sei ResidualCNN'."""
    return f"{model.method} {type(model.backbone).__name__}"


def describe_baseline(model):
    """E.g. 'bicubic x2' or 'blurred input'."""
    return model.physics.baseline_name


def check_sidecar(model, measurements):
    """Compares a measurement folder's sei_tf.json (if any) with the model's physics.

    Returns:
      Warnings (strings): a different noise level or blur kernel (the model can still
      be applied, e.g. to test robustness, but was not trained for these data).

    Raises:
      EvaluationError: another kind of operator or upscale (the model cannot apply).
    """
    from sei_tf import data

    folder = measurements
    if isinstance(folder, (list, tuple)):
        folder = folder[0] if folder else None
    if folder is None or not os.path.exists(folder):
        return []
    meta = data.read_sidecar(folder)
    if meta is None:
        return []
    op, where = model.physics, meta.get("_path", "the sidecar")
    recorded = data.physics_from_sidecar(meta)
    if not op.is_compatible(recorded):
        raise EvaluationError(f"The model was trained for {op.describe()} but {where} records "
                              f"{recorded.describe()}: it cannot restore these measurements.")
    return [f"The model was trained for {op.describe()} but {where} records {recorded.describe()}: "
            f"{difference} differs." for difference in op.differences(recorded)]


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------

def check_channels(image, channels, source):
    """Raises a clear error when an image's channels do not match the model's (no conversion)."""
    c = image.shape[-1]
    if c == channels:
        return
    names = {1: "greyscale (1 channel)", 3: "RGB (3 channels)"}
    raise EvaluationError(
        f"{source}: {names.get(c, f'{c} channels')} image, but the model restores "
        f"{names.get(channels, f'{channels}-channel')} images. Convert the file, or use a model trained "
        "on such images; sei-tf does not convert silently.")


def list_pairs(measurements, ground_truth):
    """(stem, measurement file, ground-truth file), paired by stem (see `data.pair_files`)."""
    from sei_tf import data

    return data.pair_files(measurements, ground_truth)  # both accept comma-separated paths


def iter_pairs(measurements, ground_truth, model, pairs=None):
    """Yields (stem, y, x) float32 arrays (H, W, C), read lazily and checked against the model.

    Raises (while iterating):
      DataError / EvaluationError: unreadable file, NaN values, channel or size mismatch.
    """
    from sei_tf import data

    channels, factor = model_channels(model), model_factor(model)
    for stem, yf, xf in pairs if pairs is not None else list_pairs(measurements, ground_truth):
        y, x = data.read_image(yf), data.read_image(xf)
        check_channels(y, channels, yf)
        check_channels(x, channels, xf)
        data.check_pair_size(stem, y, x, yf, xf, factor)
        if min(x.shape[:2]) < SSIM_WINDOW:
            raise EvaluationError(f"{xf}: {x.shape[0]}x{x.shape[1]} pixels is too small for SSIM "
                                  f"(needs at least {SSIM_WINDOW}x{SSIM_WINDOW}).")
        yield stem, y, x


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------

def restore_array(model, y):
    """Runs the model on one image (H, W, C) -> float32 NumPy (H*f, W*f, C), not clipped."""
    import numpy as np
    import tensorflow as tf

    out = model(tf.constant(np.asarray(y, np.float32)[None]), training=False)
    return out[0].numpy()


def evaluate(model, pairs, luma=True, progress=False, total=None):
    """PSNR/SSIM of the model and of the baseline on every pair.

    Args:
      model: an `SEIModel` (see `load_model`).
      pairs: iterable of (name, y, x): measurement and ground truth, float arrays
        (H, W, C) in [0, 1] (see `iter_pairs`).
      luma: the paper's protocol (BT.601 Y); False: all channels.
      progress: show a tqdm bar on stderr (`total`: its length).

    Returns:
      A list of dicts {"image", "method" ('model' or 'baseline'), "description",
      "psnr", "ssim"}, two per image (model first).
    """
    import numpy as np
    import tensorflow as tf

    from sei_tf import metrics

    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, total=total, desc="evaluating", unit="image", file=sys.stderr)
    descriptions = {"model": describe_model(model), "baseline": describe_baseline(model)}
    rows = []
    for name, y, x in pairs:
        yb = tf.constant(np.asarray(y, np.float32)[None])
        xb = tf.constant(np.asarray(x, np.float32)[None])
        estimates = {"model": model(yb, training=False), "baseline": model.physics.baseline(yb)}
        for method, est in estimates.items():
            if tuple(est.shape[1:3]) != tuple(xb.shape[1:3]):
                raise EvaluationError(f"{name}: the {method} output is {est.shape[1]}x{est.shape[2]} but the "
                                      f"ground truth is {xb.shape[1]}x{xb.shape[2]}.")
            if method == "model" and not bool(tf.reduce_all(tf.math.is_finite(est))):
                raise EvaluationError(f"{name}: the model output holds NaN or Inf values (broken weights?).")
            rows.append({"image": name, "method": method, "description": descriptions[method],
                         "psnr": float(metrics.psnr(est, xb, luma=luma)[0]),
                         "ssim": float(metrics.ssim(est, xb, luma=luma)[0])})
    if not rows:
        raise EvaluationError("No image pairs to evaluate.")
    return rows


def summarize(rows):
    """Mean and standard deviation (over images, population: ddof=0) per method.

    Returns:
      A list of dicts {"method", "description", "n", "psnr", "psnr_std", "ssim",
      "ssim_std"}, in the order the methods first appear in `rows`.
    """
    import numpy as np

    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        p = np.array([r["psnr"] for r in sel], np.float64)
        s = np.array([r["ssim"] for r in sel], np.float64)
        out.append({"method": method, "description": sel[0]["description"], "n": len(sel),
                    "psnr": float(p.mean()), "psnr_std": float(p.std()),
                    "ssim": float(s.mean()), "ssim_std": float(s.std())})
    return out


def protocol_name(luma):
    return "luma (BT.601 Y), 8-bit" if luma else "RGB (all channels), 8-bit"


def csv_rows(rows, luma=True, per_image=False):
    """The CSV table: one 'summary' row per method, then (with `per_image`) 'image' rows."""
    protocol = protocol_name(luma)
    table = [{"scope": "summary", "image": "", **s, "protocol": protocol} for s in summarize(rows)]
    if per_image:
        table += [{"scope": "image", "n": 1, "psnr_std": "", "ssim_std": "", **r, "protocol": protocol}
                  for r in rows]
    return table


def write_csv(path, table):
    """Writes the table (atomically: a temporary file renamed into place)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in table:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def format_table(rows, luma=True, per_image=False):
    """The human-readable table (a string)."""
    summary = summarize(rows)
    n = summary[0]["n"]
    lines = [f"PSNR (dB) / SSIM on {n} image(s), {protocol_name(luma)}; mean ± std over images:"]
    cells = [("method", "restorer", "PSNR", "SSIM")]
    cells += [(s["method"], s["description"], f"{s['psnr']:.2f} ± {s['psnr_std']:.2f}",
               f"{s['ssim']:.4f} ± {s['ssim_std']:.4f}") for s in summary]
    by = {s["method"]: s for s in summary}
    if "model" in by and "baseline" in by:
        cells.append(("gain", "", f"{by['model']['psnr'] - by['baseline']['psnr']:+.2f}",
                      f"{by['model']['ssim'] - by['baseline']['ssim']:+.4f}"))
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    for row in cells:
        lines.append("  " + "   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if per_image:
        methods = list(by)
        images = list(dict.fromkeys(r["image"] for r in rows))
        iw = max(8, max(len(i) for i in images) + 2)
        head = "".join(f"{m + ' PSNR':>15}{m + ' SSIM':>15}" for m in methods)
        lines += ["", f"  {'image':<{iw}}{head}"]
        cell = {(r["image"], r["method"]): r for r in rows}
        for image in images:
            vals = "".join(f"{cell[image, m]['psnr']:>15.2f}{cell[image, m]['ssim']:>15.4f}" for m in methods)
            lines.append(f"  {image:<{iw}}{vals}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def define_flags():
    """Defines the command-line flags (only when run as a program, so importing is side-effect free)."""
    flags.DEFINE_string("model", None, "The trained model: RUN_DIR/model.keras written by sei_tf.train "
                        "(a run folder is accepted too).")
    flags.DEFINE_string("measurements", None, "Folder (or comma-separated files) of measurements, e.g. "
                        "DATA/measurements from sei_tf.simulate.")
    flags.DEFINE_string("ground_truth", None, "Folder (or comma-separated files) of ground-truth images, "
                        "paired with the measurements by file name without extension.")
    flags.DEFINE_boolean("per_image", False, "Also print and write every image's PSNR/SSIM.")
    flags.DEFINE_string("output_csv", None, "CSV file for the table (replaced if it exists); default "
                        "evaluation.csv next to the model.")
    flags.DEFINE_boolean("rgb", False, "Compute PSNR/SSIM on all channels instead of the paper's luma "
                         "(BT.601 Y) channel.")
    flags.DEFINE_boolean("progress", True, "Show a progress bar (on stderr).")
    flags.mark_flags_as_required(["model", "measurements", "ground_truth"])


def run():
    """Runs the evaluation from the flags; returns the lines to print."""
    from sei_tf import data

    path = model_path(FLAGS.model)
    output_csv = FLAGS.output_csv or os.path.join(os.path.dirname(os.path.abspath(path)), "evaluation.csv")
    if os.path.isdir(output_csv):
        raise EvaluationError(f"--output_csv {output_csv} is a folder; give a file name.")
    pairs = list_pairs(FLAGS.measurements, FLAGS.ground_truth)  # name checks before the slow model load
    model = load_model(path)
    for warning in check_sidecar(model, data.split_paths(FLAGS.measurements)):
        logging.warning("%s", warning)
    luma = not FLAGS.rgb
    rows = evaluate(model, iter_pairs(None, None, model, pairs=pairs), luma=luma,
                    progress=FLAGS.progress, total=len(pairs))
    write_csv(output_csv, csv_rows(rows, luma=luma, per_image=FLAGS.per_image))
    return (f"model: {path} ({describe_model(model)}, {model.physics.describe()})\n"
            + format_table(rows, luma, FLAGS.per_image)
            + f"\nwrote {output_csv}")


def main(argv):
    if len(argv) > 1:
        raise SeiTfError(f"unexpected arguments {' '.join(argv[1:])} (flags are written --name=value)")
    import tensorflow as tf

    try:
        text = run()
    except tf.errors.ResourceExhaustedError as e:
        raise EvaluationError(f"out of memory while evaluating ({e.message.splitlines()[0]}); evaluate on "
                              "smaller images or free the accelerator.") from e
    print(text)


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
