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

import argparse
import os
import sys

from serving import images


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m serving.restore", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--model", required=True, help="exported restorer (.onnx)")
    p.add_argument("--output", required=True, help="output folder (created if missing)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--tile", type=int, default=512, help="tile size in input pixels (0: whole image)")
    p.add_argument("--overlap", type=int, default=None, help="blend overlap for global backbones (SwinIR)")
    p.add_argument("--format", default="auto", choices=("auto", "png", "tiff", "npy"))
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _expand(inputs):
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if os.path.splitext(f)[1].lower() in images.EXTENSIONS)
            if not found:
                raise SystemExit(f"error: folder {item} holds no PNG/JPEG/TIFF/.npy image")
            files.extend(found)
        elif os.path.isfile(item):
            if os.path.splitext(item)[1].lower() not in images.EXTENSIONS:
                raise SystemExit(f"error: {item}: unsupported extension (use .png, .jpg, .jpeg, .tif, .tiff, .npy)")
            files.append(item)
        else:
            raise SystemExit(f"error: input not found: {item}")
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
            raise SystemExit(f"error: output {out} would overwrite input {f}: choose another --output folder")
        if real in seen:
            raise SystemExit(f"error: {f} and {seen[real]} would both be written to {out}")
        seen[real] = f
        if os.path.exists(out) and not overwrite:
            raise SystemExit(f"error: {out} exists (use --overwrite to replace it)")
        plan.append((f, out, out_fmt))
    return plan


def main(argv=None):
    args = _parse(argv)
    files = _expand(args.inputs)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise SystemExit(f"error: --output {args.output} is a file, not a folder")
    plan = plan_outputs(files, args.output, args.format, args.overwrite)

    from tqdm import tqdm

    from serving.restorer import InputError, Restorer, RestorerError

    try:
        restorer = Restorer(args.model, device=args.device, tile=args.tile or None, overlap=args.overlap,
                            threads=args.threads)
    except (RestorerError, ValueError) as err:
        raise SystemExit(f"error: {err}")
    os.makedirs(args.output, exist_ok=True)
    failures = 0
    bar = tqdm(total=len(plan), unit="image", disable=args.quiet, file=sys.stderr)
    for src, dst, fmt in plan:
        bar.set_postfix_str(os.path.basename(src))
        try:
            image = images.read_image(src)
            out = restorer.restore(image)
            if fmt == "png" and out.dtype != "uint8" and not (out.dtype == "uint16" and out.ndim == 2):
                raise images.ImageError(f"PNG cannot hold this {out.dtype} {'colour' if out.ndim == 3 else ''} "
                                        "image: use --format tiff or npy")
            images.write_image(dst, out, fmt, overwrite=args.overwrite)
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
    sys.exit(main())
