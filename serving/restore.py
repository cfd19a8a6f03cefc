"""Restore image files with an exported restorer.

    python -m serving.restore --model restorer.onnx INPUT... --output DIR [--tile 512] [--device auto]

Each INPUT (PNG, JPEG, TIFF or .npy; folders are expanded to the images they
hold) is written to DIR/<name><ext> in the input's dtype and range: PNG stays
PNG, JPEG becomes PNG (lossless), TIFF stays TIFF, .npy stays .npy; `--format`
forces png, tiff or npy. Inputs are never overwritten: an output path equal to
an input is refused, and so is an existing output unless --overwrite. Outputs
are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from sei_tf import cli
from sei_tf.errors import SeiTfError
from serving import images, providers

FLAGS = flags.FLAGS


class CommandError(SeiTfError, ValueError):
    """Inputs or outputs the command refuses (missing input, unsupported file, an output that exists)."""


def define_flags(flag_values=FLAGS):
    """Defines the command-line flags (only when run as a program: importing has no side effects)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "Exported restorer (.onnx).", **fv)
    flags.DEFINE_string("output", None, "Output folder (created if missing).", **fv)
    flags.DEFINE_enum("device", "auto", ["auto", "cuda", "cpu"],
                      "auto: TensorRT, then CUDA, then CPU; cuda fails unless a GPU provider loads.", **fv)
    flags.DEFINE_integer("tile", 512, "Tile size in input pixels (0: the whole image at once).", **fv)
    flags.DEFINE_integer("overlap", None, "Blend overlap in input pixels for global backbones (SwinIR); "
                         "default tile/8, at least 32.", **fv)
    flags.DEFINE_enum("format", "auto", ["auto", "png", "tiff", "npy"],
                      "Output format; auto keeps PNG, TIFF and .npy, and writes JPEG as PNG.", **fv)
    flags.DEFINE_bool("overwrite", False, "Replace existing outputs (an input is never overwritten).", **fv)
    flags.DEFINE_integer("threads", None, "onnxruntime intra-op threads (default: onnxruntime's).", **fv)
    flags.DEFINE_bool("quiet", False, "No progress bar.", **fv)
    providers.define_flags(flag_values)
    flags.mark_flags_as_required(["model", "output"], flag_values=flag_values)


def _expand(inputs):
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if os.path.splitext(f)[1].lower() in images.EXTENSIONS)
            if not found:
                raise CommandError(f"folder {item} holds no PNG/JPEG/TIFF/.npy image")
            files.extend(found)
        elif os.path.isfile(item):
            if os.path.splitext(item)[1].lower() not in images.EXTENSIONS:
                raise CommandError(f"{item}: unsupported extension (use .png, .jpg, .jpeg, .tif, .tiff, .npy)")
            files.append(item)
        else:
            raise CommandError(f"input not found: {item}")
    return files


def plan_outputs(files, out_dir, fmt, overwrite):
    """[(input, output, output format or None for auto)]; refuses clobbering an input."""
    inputs_real = {os.path.realpath(f) for f in files}
    plan, seen = [], {}
    for f in files:
        stem, ext = os.path.splitext(os.path.basename(f))
        in_fmt = images.EXTENSIONS[ext.lower()]
        if fmt != "auto":
            out_fmt = fmt
        elif in_fmt == "jpeg":
            out_fmt = "png"  # lossless; JPEGs are 8-bit
        else:
            out_fmt = in_fmt
        out_ext = images.OUTPUT_EXTENSIONS[out_fmt]
        if out_fmt == in_fmt and in_fmt in ("png", "tiff"):
            out_ext = ext  # keep .tiff/.TIF spelling
        out = os.path.join(out_dir, stem + out_ext)
        real = os.path.realpath(out)
        if real in inputs_real:
            raise CommandError(f"output {out} would overwrite input {f}: choose another --output folder")
        if real in seen:
            raise CommandError(f"{f} and {seen[real]} would both be written to {out}")
        seen[real] = f
        if os.path.exists(out) and not overwrite:
            raise CommandError(f"{out} exists (use --overwrite to replace it)")
        plan.append((f, out, out_fmt))
    return plan


def main(argv):
    """Restores every INPUT (argv[1:]) into --output; returns 1 when some images failed."""
    if len(argv) < 2:
        raise app.UsageError("give at least one INPUT image or folder")
    files = _expand(argv[1:])
    if os.path.exists(FLAGS.output) and not os.path.isdir(FLAGS.output):
        raise CommandError(f"--output {FLAGS.output} is a file, not a folder")
    plan = plan_outputs(files, FLAGS.output, FLAGS.format, FLAGS.overwrite)

    from tqdm import tqdm

    from serving.restorer import InputError, Restorer

    restorer = Restorer(FLAGS.model, device=FLAGS.device, tile=FLAGS.tile or None, overlap=FLAGS.overlap,
                        threads=FLAGS.threads, gpu=providers.from_flags(FLAGS))
    os.makedirs(FLAGS.output, exist_ok=True)
    failures = 0
    bar = tqdm(total=len(plan), unit="image", disable=FLAGS.quiet, file=sys.stderr)
    for src, dst, fmt in plan:
        bar.set_postfix_str(os.path.basename(src))
        try:
            image = images.read_image(src)
            out = restorer.restore(image)
            if fmt == "png" and out.dtype != "uint8" and not (out.dtype == "uint16" and out.ndim == 2):
                raise images.ImageError(f"PNG cannot hold this {out.dtype} {'colour' if out.ndim == 3 else ''} "
                                        "image: use --format tiff or npy")
            images.write_image(dst, out, fmt, overwrite=FLAGS.overwrite)
            bar.write(f"{src} -> {dst} ({out.shape[1]}x{out.shape[0]} {out.dtype})")
        except (OSError, images.ImageError, InputError) as err:
            failures += 1
            bar.write(f"error: {src}: {err}")
        bar.update(1)
    bar.close()
    if failures:
        print(f"{failures} of {len(plan)} images failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
