"""Simulating measurements from ground-truth images, as the paper does (`simulate`).

Sizes are in pixels; noise levels in 8-bit units (5 means 5/255), like
`sei_tf.physics`. Every image's noise comes from a stateless seed derived from the
run's seed and the file's name (`noise_seed`), so results do not depend on the
other files or on TF's global seed. Ground truth is written as 16-bit PNG,
measurements as float32 TIFF (unclipped, unquantised), with the sidecar
`measurements/sei_tf.json` (`sei_tf.data.sidecar`).
"""

import json
import os
import shutil
import sys
import tempfile
import zlib

import numpy as np
import tensorflow as tf
from absl import logging

from sei_tf.data.files import (GROUND_TRUTH_DIR, MEASUREMENTS_DIR, SIDECAR_NAME, DataError, _stem, list_images,
                               read_image, write_image)
from sei_tf.data.sidecar import SIDECAR_FORMAT_VERSION, physics_meta
from sei_tf.errors import PhysicsError


def noise_seed(seed, stem):
    """The stateless noise seed of one simulated image: (seed, crc32(stem)).

    `stem` is the file name without folder and extension (e.g. 'astronaut'),
    encoded as UTF-8; CRC-32 as an unsigned 32-bit integer. The seed depends on
    the name, not on the position in the folder, so adding or removing other
    images never changes an image's noise.
    """
    return (int(seed), zlib.crc32(str(stem).encode("utf-8")) & 0xFFFFFFFF)


def _convert_channels(x, channels):
    """Explicit conversion for `simulate`: grey -> RGB by repetition, RGB -> grey by
    ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B, the Y used for PSNR-Y)."""
    if channels is None or x.shape[-1] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=-1)
    w = np.array([0.299, 0.587, 0.114], np.float32)
    return (x @ w)[:, :, None].astype(np.float32)


def resize_shorter_side(x, shorter_side):
    """Bicubic, anti-aliased resize so that min(H, W) == shorter_side, clipped to [0, 1].

    The longer side is rounded to the nearest pixel. `shorter_side` 0 or None:
    only the clip to [0, 1] is applied.
    """
    x = np.asarray(x, np.float32)
    if shorter_side:
        h, w = x.shape[:2]
        s = float(shorter_side) / min(h, w)
        size = (int(shorter_side), max(1, int(round(w * s)))) if h <= w else \
            (max(1, int(round(h * s))), int(shorter_side))
        if size != (h, w):
            x = tf.image.resize(x[None], size, method="bicubic", antialias=True)[0].numpy()
    return np.clip(x, 0.0, 1.0)


def _progress(items, enabled, desc):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return _log_progress(items, desc)
    return tqdm(items, desc=desc, unit="image", file=sys.stderr)


def _log_progress(items, desc):
    for i, item in enumerate(items):
        logging.info("%s %d/%d: %s", desc, i + 1, len(items), item)
        yield item


def _is_inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def simulate(ground_truth_dir, output_dir, physics, shorter_side=256, seed=0, overwrite=False,
             progress=True, channels=None, dicom_window=None):
    """Simulates measurements from ground-truth images, as the paper does.

    For each ground-truth image (sorted by name):
      1. read it (see `read_image`), convert to `channels` if given (grey -> RGB by
         repetition, RGB -> grey by BT.601 luma; None keeps the files' channels,
         which must then agree);
      2. resize so the shorter side is `shorter_side` pixels (bicubic, anti-aliased;
         0/None: no resize), clip to [0, 1];
      3. crop the bottom/right to the size the physics takes (`fit_signal_size`: a
         multiple of the SR factor; refused when smaller than a blur kernel);
      4. quantise to 16 bits (the ground truth written is exactly the one used);
      5. measure `y = A x + e` with the stateless noise seed `noise_seed(seed, stem)`
         = (seed, crc32(stem)).
    Writes `output_dir/measurements/<stem>.tif` (float32, unclipped, unquantised),
    `output_dir/ground_truth/<stem>.png` (16-bit) and the sidecar
    `output_dir/measurements/sei_tf.json`.

    Nothing partial is left on failure: results are written to a temporary sibling
    folder and moved into place at the end. An existing non-empty `output_dir` is
    refused unless `overwrite`, which replaces only its `measurements/` and
    `ground_truth/` sub-folders (other files are kept).

    Args:
      ground_truth_dir: folder, list or comma-separated string of ground-truth images
        (see `list_images`; an earlier output folder stands for its `ground_truth/`).
      output_dir: output folder.
      physics: an operator from `sei_tf.physics` (e.g. `physics.make('sr', 4)`).
      shorter_side: target shorter side in pixels; 0/None keeps the size.
      seed: integer noise seed.
      overwrite: replace the results of a previous run.
      progress: show a progress bar (tqdm on stderr).
      channels: None (keep), 1 or 3.
      dicom_window: see `read_image`.

    Returns:
      The sidecar dictionary that was written.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None (keep), got {channels!r}.")
    if shorter_side is not None and (int(shorter_side) != shorter_side or shorter_side < 0):
        raise DataError(f"shorter_side must be a non-negative integer (0 = no resize), got {shorter_side!r}.")
    if int(seed) != seed:
        raise DataError(f"seed must be an integer, got {seed!r}.")
    files = list_images(ground_truth_dir, GROUND_TRUTH_DIR)
    if os.path.isfile(output_dir):
        raise DataError(f"The output {output_dir} is a file, not a folder.")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        entries = sorted(os.listdir(output_dir))
        raise DataError(
            f"The output folder {output_dir} is not empty ({', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}); choose another folder or pass overwrite=True "
            "(--overwrite) to replace its measurements/ and ground_truth/ folders.")
    for f in files:
        for sub in (MEASUREMENTS_DIR, GROUND_TRUTH_DIR):
            if _is_inside(f, os.path.join(output_dir, sub)):
                raise DataError(f"The ground truth {f} lies inside the output folder that would be "
                                "replaced; choose another output folder.")
    stems = {}
    for f in files:
        s = _stem(f)
        if s in stems:
            raise DataError(f"Two ground-truth files share the name {s!r}: {stems[s]} and {f}.")
        stems[s] = f
    meta = {"format_version": SIDECAR_FORMAT_VERSION, **physics_meta(physics), "seed": int(seed),
            "shorter_side": int(shorter_side or 0), "noise_seed_rule": "(seed, crc32(utf-8 stem))"}

    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(output_dir)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    try:
        mdir = os.path.join(staging, MEASUREMENTS_DIR)
        gdir = os.path.join(staging, GROUND_TRUTH_DIR)
        os.makedirs(mdir)
        os.makedirs(gdir)
        written, seen_channels = [], set()
        for f in _progress(files, progress, "simulating"):
            stem = _stem(f)
            x = _convert_channels(read_image(f, dicom_window=dicom_window), channels)
            seen_channels.add(x.shape[-1])
            if len(seen_channels) > 1:
                raise DataError(f"{f}: the ground truth mixes greyscale and RGB images; pass channels=1 or 3.")
            x = resize_shorter_side(x, shorter_side)
            try:
                h, w = physics.fit_signal_size(x.shape[0], x.shape[1], source=f)
            except PhysicsError as e:
                raise DataError(str(e)) from e
            x = x[:h, :w]
            x = np.round(x * 65535.0) / 65535.0  # exactly what the 16-bit PNG stores
            y = physics(tf.constant(x[None], tf.float32),
                        seed=tf.constant(noise_seed(seed, stem), tf.int64))[0].numpy()
            write_image(os.path.join(mdir, stem + ".tif"), y)
            write_image(os.path.join(gdir, stem + ".png"), x, bit_depth=16)
            written.append(stem + ".tif")
        meta["channels"] = int(seen_channels.pop())
        meta["files"] = written
        with open(os.path.join(mdir, SIDECAR_NAME), "w") as fh:
            json.dump(meta, fh, indent=2)
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def _move_into_place(staging, output_dir):
    if not os.path.exists(output_dir):
        os.rename(staging, output_dir)
        return
    parent, name = os.path.split(output_dir)
    trash = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
    moved = []
    try:
        for sub in (MEASUREMENTS_DIR, GROUND_TRUTH_DIR):
            if os.path.lexists(os.path.join(output_dir, sub)):
                os.rename(os.path.join(output_dir, sub), os.path.join(trash, sub))
                moved.append(sub)
        for sub in (MEASUREMENTS_DIR, GROUND_TRUTH_DIR):
            os.rename(os.path.join(staging, sub), os.path.join(output_dir, sub))
    except BaseException:
        for sub in moved:  # put the previous results back
            if not os.path.exists(os.path.join(output_dir, sub)):
                os.rename(os.path.join(trash, sub), os.path.join(output_dir, sub))
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
