"""Restore image files with an exported restorer.

    python -m serving.restore --model restorer.onnx INPUT... --output DIR [--tile 512 | --max_memory 1GB] [--device auto]

Each INPUT (PNG, JPEG, TIFF or .npy; folders are expanded to the images they
hold) is written to DIR/<name><ext> in the input's dtype and range: PNG stays
PNG, JPEG becomes PNG (lossless), TIFF stays TIFF, .npy stays .npy; `--format`
forces png, tiff or npy. Inputs are never overwritten: an output path equal to
an input is refused, and so is an existing output unless --overwrite. Outputs
are written atomically (temporary file, then rename).

Huge images: a TIFF (or .npy) input written as TIFF by a model with a known
receptive field (CNN) is streamed: read window by window and written as a
tiled (Big)TIFF tile by tile (`serving.large_images`), so memory does not
grow with the image. `--max_memory 1GB` picks the tile size for a memory
budget instead of `--tile`. Other inputs are decoded whole (about 90 bytes
per input pixel for RGB x2) and refused above `--max_pixels`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

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
    flags.DEFINE_string("max_memory", None, "Memory budget (e.g. 1GB, 800MB, 2GiB) that picks the tile size "
                        "of streamed images (instead of --tile); see serving.large_images.MemoryModel.", **fv)
    flags.DEFINE_integer("max_pixels", 40_000_000, "Refuse images that must be decoded whole (PNG, JPEG, "
                         "non-streamable TIFF, non-TIFF output) above this many pixels (0: no limit).", **fv)
    flags.DEFINE_bool("stream", True, "Stream TIFF/.npy inputs written as TIFF (bounded memory); "
                      "--nostream decodes every image whole.", **fv)
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


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (kill, a job scheduler) raises SystemExit, so that the output being written is removed
    (its temporary file) as on Ctrl-C; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv):
    """Restores every INPUT (argv[1:]) into --output; returns 1 when some images failed."""
    with _terminate_as_exit():
        return _main(argv)


def _main(argv):
    if len(argv) < 2:
        raise app.UsageError("give at least one INPUT image or folder")
    files = _expand(argv[1:])
    if os.path.exists(FLAGS.output) and not os.path.isdir(FLAGS.output):
        raise CommandError(f"--output {FLAGS.output} is a file, not a folder")
    plan = plan_outputs(files, FLAGS.output, FLAGS.format, FLAGS.overwrite)

    from tqdm import tqdm

    from serving import large_images
    from serving.restorer import InputError, Restorer

    budget = None
    if FLAGS.max_memory is not None:
        if FLAGS["tile"].present:
            raise CommandError("give --tile or --max_memory, not both")
        try:
            budget = large_images.parse_bytes(FLAGS.max_memory)
        except ValueError as err:
            raise CommandError(f"--max_memory: {err}") from None
    restorer = Restorer(FLAGS.model, device=FLAGS.device, tile=FLAGS.tile or None, overlap=FLAGS.overlap,
                        threads=FLAGS.threads, gpu=providers.from_flags(FLAGS))
    os.makedirs(FLAGS.output, exist_ok=True)
    failures = 0
    bar = tqdm(total=len(plan), unit="image", disable=FLAGS.quiet, file=sys.stderr)
    for src, dst, fmt in plan:
        bar.set_postfix_str(os.path.basename(src))
        try:
            source, why_whole = _open_streamed(src, fmt, restorer, large_images)
            if source is not None:
                with source:
                    shape = _restore_streamed(restorer, source, dst, budget, bar, large_images, tqdm)
                bar.write(f"{src} -> {dst} ({shape[1]}x{shape[0]} {large_images.output_dtype(source.dtype)}, "
                          "tiled TIFF)")
            else:
                image = _read_whole(src, why_whole)
                tile = _tile_for_budget(restorer, budget, large_images) if budget else restorer.tile
                out = restorer.restore(image, tile=tile)
                if fmt == "png" and out.dtype != "uint8" and not (out.dtype == "uint16" and out.ndim == 2):
                    raise images.ImageError(f"PNG cannot hold this {out.dtype} "
                                            f"{'colour' if out.ndim == 3 else ''} image: use --format tiff or npy")
                images.write_image(dst, out, fmt, overwrite=FLAGS.overwrite)
                bar.write(f"{src} -> {dst} ({out.shape[1]}x{out.shape[0]} {out.dtype})")
        except (OSError, images.ImageError, InputError) as err:
            failures += 1
            message = str(err)  # the readers' errors already start with the file's path
            bar.write(f"error: {message}" if message.startswith(str(src)) else f"error: {src}: {message}")
        bar.update(1)
    bar.close()
    if failures:
        print(f"{failures} of {len(plan)} images failed", file=sys.stderr)
        return 1
    return 0


def _open_streamed(src, fmt, restorer, large_images):
    """(LazyImage, None) when `src` is streamed, else (None, why it is decoded whole)."""
    if not FLAGS.stream:
        return None, "--nostream"
    if fmt != "tiff":
        return None, "only TIFF output is streamed: use --format tiff"
    if not restorer.exact_tiling:
        return None, "this model's receptive field is global (SwinIR), so it cannot be streamed"
    if not FLAGS.tile and FLAGS.max_memory is None:
        return None, "--tile 0 restores whole images"
    try:
        return large_images.open_lazy(src), None
    except large_images.NotStreamable as err:
        return None, str(err).removeprefix(f"{src}: ")


def _read_whole(src, why_whole):
    """Decodes `src` whole, refusing it (from its header) above --max_pixels, with the reason it is not streamed."""
    try:
        return images.read_image(src, max_pixels=FLAGS.max_pixels)  # 0: no limit
    except images.ImageTooLarge as err:
        raise images.ImageTooLarge(f"{str(err).removeprefix(f'{src}: ')} Images read whole must stay under "
                                   f"--max_pixels ({why_whole}). A tiled TIFF input written as TIFF is "
                                   "restored in bounded memory; or raise --max_pixels.") from None


def _tile_for_budget(restorer, budget, large_images, source=None):
    model = large_images.memory_model(restorer, source)
    return large_images.core_for_budget(budget, model) + 2 * restorer.metadata.tile_context


def _restore_streamed(restorer, source, dst, budget, bar, large_images, tqdm):
    """Streams `source` into the tiled TIFF `dst` with a progress bar of tiles; returns the output shape."""
    ctx = restorer.metadata.tile_context
    if budget:
        core = large_images.core_for_budget(budget, large_images.memory_model(restorer, source))
    else:
        core = large_images.core_for_tile(FLAGS.tile, ctx, restorer.scale)
    n_tiles = large_images.count_tiles(source, core)
    peak = large_images.memory_model(restorer, source).peak(core)
    bar.write(f"{source.name}: {source.shape[1]}x{source.shape[0]}, streamed in {n_tiles} tiles of {core} px "
              f"(+{ctx} px context each side), estimated peak memory {peak / 1e6:.0f} MB")
    with tqdm(total=n_tiles, unit="tile", leave=False, position=1, disable=FLAGS.quiet, file=sys.stderr) as tiles:
        return large_images.restore_to_tiff(restorer, source, dst, core=core, overwrite=FLAGS.overwrite,
                                            callback=lambda: tiles.update(1))


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
