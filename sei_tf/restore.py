"""Restores images (super-resolves or deblurs them) with a trained Keras model.

    python -m sei_tf.restore --model RUN_DIR/model.keras INPUT [INPUT ...] --output DIR \\
        [--format tif|png|png16|npy] [--overwrite]

INPUT is an image file or a folder (its images, not its sub-folders; see
`sei_tf.data.list_images` for the formats). Each input `NAME.ext` is restored whole
and written to `DIR/NAME.<format>`:

  tif    float32 TIFF, the network output as is (not clipped, not quantised);
  png    8-bit PNG (clipped to [0, 1], rounded);
  png16  16-bit PNG (clipped to [0, 1], rounded);
  npy    float32 NumPy array (H, W, C), as is.

Safety: an input is never overwritten (not even with --overwrite); outputs that
already exist are refused unless --overwrite, and this is checked before anything
is written. Every input is read and checked (readable, finite, the model's number
of channels) before the first restoration, and results are written to a hidden
staging folder inside DIR and moved into place only when all succeeded: a failure
leaves DIR as it was.
"""

import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # fewer TF INFO logs (start-up lines remain)

from absl import flags, logging  # noqa: E402

from sei_tf import cli, loading  # noqa: E402
from sei_tf.errors import SeiTfError  # noqa: E402

FLAGS = flags.FLAGS

FORMATS = {"tif": (".tif", None), "png": (".png", 8), "png16": (".png", 16), "npy": (".npy", None)}


class RestoreError(SeiTfError, ValueError):
    """Inputs or outputs that cannot be used; the message says which and why."""


def _same_file(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def list_inputs(inputs):
    """Image files named by `inputs` (files and/or folders), in order, without duplicates."""
    from sei_tf import data

    if not inputs:
        raise RestoreError("Give at least one input image or folder.")
    files, seen = [], set()
    for f in data.list_images(list(inputs)):
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            files.append(f)
    return files


def plan_outputs(files, output_dir, fmt="tif"):
    """[(input, output)]: `output_dir/<stem>.<ext>` for each input.

    Raises:
      RestoreError: two inputs share a stem, or an output would replace an input.
    """
    if fmt not in FORMATS:
        raise RestoreError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise RestoreError(f"The output {output_dir} is a file, not a folder.")
    ext = FORMATS[fmt][0]
    plan, by_name = [], {}
    for f in files:
        name = os.path.splitext(os.path.basename(f))[0] + ext
        if name in by_name:
            raise RestoreError(f"{by_name[name]} and {f} would both be written to {name} in {output_dir}; "
                               "restore them into different --output folders.")
        by_name[name] = f
        plan.append((f, os.path.join(output_dir, name)))
    for _, out in plan:
        for f in files:
            if _same_file(out, f):
                raise RestoreError(f"Restoring {f} would overwrite it: the output {out} is that input. "
                                   "Choose another --output folder (or another --format).")
    return plan


def check_existing(plan, overwrite):
    """Refuses existing outputs unless `overwrite` (never a folder in the way)."""
    existing = [out for _, out in plan if os.path.lexists(out)]
    folders = [out for out in existing if os.path.isdir(out)]
    if folders:
        raise RestoreError(f"{folders[0]} is a folder; it cannot be replaced by an image.")
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise RestoreError(f"{len(existing)} output(s) already exist ({shown}); nothing was written. "
                           "Pass --overwrite to replace them, or choose another --output folder.")


def check_inputs(files, channels, progress=False):
    """Reads every input once: readable, finite, with the model's channels (no silent conversion)."""
    from sei_tf import data, evaluate

    items = files
    if progress:
        from tqdm import tqdm

        items = tqdm(files, desc="checking", unit="image", file=sys.stderr)
    for f in items:
        evaluate.check_channels(data.read_image(f), channels, f)


def restore_files(model, plan, fmt="tif", progress=False):
    """Restores every input of `plan` and writes its output; all or nothing.

    Outputs are written into a hidden staging folder inside the output folder and
    moved into place once every image is restored; on failure the staging folder
    is removed (and the output folder too, if this call created it and it is empty).
    """
    import numpy as np

    from sei_tf import data, evaluate

    if not plan:
        return []
    bit_depth = FORMATS[fmt][1]
    output_dir = os.path.dirname(plan[0][1]) or "."
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".sei_tf-restore-partial-", dir=output_dir)
    ok = False
    try:
        items = plan
        if progress:
            from tqdm import tqdm

            items = tqdm(plan, desc="restoring", unit="image", file=sys.stderr)
        staged = []
        for src, out in items:
            y = data.read_image(src)
            evaluate.check_channels(y, evaluate.model_channels(model), src)
            x = evaluate.restore_array(model, y)
            if not np.all(np.isfinite(x)):
                raise RestoreError(f"{src}: the model output holds NaN or Inf values (broken weights?); "
                                   "nothing was written.")
            tmp = os.path.join(staging, os.path.basename(out))
            data.write_image(tmp, x, bit_depth=bit_depth)
            staged.append((tmp, out))
        for tmp, out in staged:
            os.replace(tmp, out)
        ok = True
        return [out for _, out in staged]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok and created:
            try:
                os.rmdir(output_dir)
            except OSError:
                pass


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def define_flags():
    """Defines the command-line flags (only when run as a program, so importing is side-effect free)."""
    flags.DEFINE_string("model", None, "The trained model: RUN_DIR/model.keras written by sei_tf.train "
                        "(a run folder is accepted too), or a shipped model's name (sei-tf models).")
    flags.DEFINE_string("output", None, "Folder for the restored images (created if needed); each input "
                        "NAME.ext becomes NAME.<format> there.")
    flags.DEFINE_enum("format", "tif", list(FORMATS),
                      "tif: float32 TIFF, the network output as is (not clipped); png: 8-bit PNG; png16: "
                      "16-bit PNG (PNGs are clipped to [0, 1]); npy: float32 NumPy array, as is.")
    flags.DEFINE_boolean("overwrite", False, "Replace outputs that already exist (inputs are never "
                         "overwritten).")
    flags.DEFINE_boolean("progress", True, "Show a progress bar (on stderr).")
    flags.mark_flags_as_required(["model", "output"])


def run(inputs):
    """Runs the restoration from the flags; returns the line to print."""
    from sei_tf import evaluate

    files = list_inputs(inputs)
    plan = plan_outputs(files, FLAGS.output, FLAGS.format)
    check_existing(plan, FLAGS.overwrite)
    path = loading.model_path(FLAGS.model)
    model = loading.load_model(path)
    folders = list(dict.fromkeys(os.path.dirname(f) or "." for f in files))
    for folder in folders:
        for warning in evaluate.check_sidecar(model, folder):
            logging.warning("%s", warning)
    check_inputs(files, evaluate.model_channels(model), progress=FLAGS.progress and len(files) > 1)
    written = restore_files(model, plan, FLAGS.format, progress=FLAGS.progress)
    return (f"restored {len(written)} image(s) with {path} ({evaluate.describe_model(model)}, "
            f"{model.physics.describe()}) into {os.path.abspath(FLAGS.output)}")


def main(argv):
    import tensorflow as tf

    try:
        line = run(argv[1:])
    except tf.errors.ResourceExhaustedError as e:
        raise RestoreError(f"out of memory while restoring ({e.message.splitlines()[0]}); restore smaller "
                           "images, or use the tiled ONNX restorer (sei-tf serve-restore).") from e
    print(line)


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
