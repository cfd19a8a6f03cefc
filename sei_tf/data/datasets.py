"""tf.data pipelines of measurements and (measurement, ground truth) pairs.

Images are decoded once into memory (`sei_tf.data.files`) and served as float32
tensors (H, W, C) in [0, 1] units. Patch sizes are in *measurement* pixels: for
super-resolution at factor f, a measurement patch of p pixels matches a
ground-truth patch of p * f pixels. Random crops and shuffling use stateless
seeds, so a stream depends only on its seed and its files, never on TF's global
seed.

Measurement and ground-truth files are paired by file stem (name without
folder and extension).
"""

import numpy as np
import tensorflow as tf

from sei_tf import transforms

from sei_tf.data.files import (GROUND_TRUTH_DIR, MEASUREMENTS_DIR, DataError, _check_channels, _stem,
                               list_images, load_images, read_image)


def _check_positive_int(value, name):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _pack(images):
    """Concatenates images into one flat float32 tensor plus per-image offsets/sizes."""
    sizes = [int(a.size) for a in images]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    flat = tf.constant(np.concatenate([a.reshape(-1) for a in images]))
    heights = tf.constant([a.shape[0] for a in images], tf.int64)
    widths = tf.constant([a.shape[1] for a in images], tf.int64)
    return flat, tf.constant(offsets), heights, widths


def _index_dataset(num_images, crops_per_image, seed, shuffle, repeat):
    """Image indices, one pass = each image `crops_per_image` times; stateless shuffle.

    The order of pass `e` is a permutation drawn with the stateless seed
    (seed, -1 - e), independent of TF's global seed.
    """
    n = num_images * crops_per_image
    seed = tf.constant(seed, tf.int64)

    def one_pass(e):
        idx = tf.range(n, dtype=tf.int64) % num_images
        if shuffle:
            keys = tf.random.stateless_uniform([n], seed=tf.stack([seed, -1 - e]))
            idx = tf.gather(idx, tf.argsort(keys))
        return tf.data.Dataset.from_tensor_slices(idx)

    passes = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
    return passes.flat_map(one_pass)


def _crop_origin(k, seed, max_row, max_col):
    """Uniform crop origin (row, col) in [0, max] from the stateless seed (seed, k)."""
    u = tf.random.stateless_uniform([2], seed=tf.stack([tf.constant(seed, tf.int64), k]))
    row = tf.minimum(tf.cast(tf.floor(u[0] * tf.cast(max_row + 1, tf.float32)), tf.int64), max_row)
    col = tf.minimum(tf.cast(tf.floor(u[1] * tf.cast(max_col + 1, tf.float32)), tf.int64), max_col)
    return row, col


def _dihedral(patches, k, seed):
    """The same random element of the dihedral group (`transforms.dihedral`) applied to each of `patches`.

    The element (one of 8) of crop `k` is drawn from the stateless seed (seed, k)
    folded with 1, so it does not change the crop's origin. Patches are square, so
    shapes are kept.
    """
    key = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), k]), 1)
    d = tf.random.stateless_uniform([], seed=key, minval=0, maxval=8, dtype=tf.int32)
    return [transforms.dihedral(p, d) for p in patches]


def _image_at(flat, offsets, heights, widths, channels, i):
    h, w = heights[i], widths[i]
    start = offsets[i]
    return tf.reshape(flat[start:start + h * w * channels], tf.stack([h, w, channels])), h, w


def _check_batches(num_images, crops_per_image, batch_size, repeat):
    if not repeat and num_images * crops_per_image < batch_size:
        raise DataError(
            f"{num_images} image(s) x {crops_per_image} crop(s) per image give fewer patches than one "
            f"batch of {batch_size}, and incomplete batches are dropped: the dataset would be empty. "
            "Lower batch_size, raise crops_per_image, or use repeat=True.")


def measurement_dataset(files, patch_size, batch_size, channels, seed=0, factor=1, shuffle=True,
                        repeat=True, crops_per_image=1, dicom_window=None, dihedral=False):
    """Batches of random square crops of measurements, for self-supervised training.

    Images are decoded once into memory. One pass visits every image
    `crops_per_image` times (shuffled when `shuffle`), taking a uniformly random
    crop each time. Crop `k` (counted over the whole stream) is drawn with the
    stateless seed (seed, k), so the stream is identical for the same seed and
    files, whatever TF's global seed.

    Args:
      files: folder, file list or arrays (see `load_images`).
      patch_size: crop side in *measurement* pixels (for SR the low-resolution
        patch; the matching signal patch is `patch_size * factor`).
      batch_size: crops per batch; incomplete batches are dropped.
      channels: 1 or 3, checked against every image (no silent conversion).
      seed: integer seed of the crops and of the shuffling.
      factor: SR factor of the measurements (1 for deblurring); only used to
        report sizes in error messages.
      shuffle: shuffle the image order in each pass.
      repeat: repeat forever (use `steps_per_epoch` in `fit`); otherwise one pass.
      crops_per_image: crops per image per pass.
      dicom_window: see `read_image`.
      dihedral: rotate each crop by a random multiple of 90 degrees and flip it
        with probability 1/2 (data augmentation). Only valid when the physics
        commutes with these (`transforms.commutes_with_dihedral`): symmetric blur
        kernels and SR do, a motion blur does not.

    Returns:
      A `tf.data.Dataset` of float32 tensors of shape (batch_size, p, p, channels).

    Raises:
      DataError: bad arguments, unreadable files, channel mismatch, or an image
        smaller than the patch (the message names it and both sizes).
    """
    p = _check_positive_int(patch_size, "patch_size")
    batch_size = _check_positive_int(batch_size, "batch_size")
    factor = _check_positive_int(factor, "factor")
    crops_per_image = _check_positive_int(crops_per_image, "crops_per_image")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}.")
    images, names = load_images(files, channels, dicom_window)
    for name, a in zip(names, images):
        if a.shape[0] < p or a.shape[1] < p:
            sr = f" (a {p * factor}x{p * factor} signal patch at SR factor {factor})" if factor > 1 else ""
            raise DataError(
                f"{name}: the measurement is {a.shape[0]}x{a.shape[1]} pixels, smaller than the "
                f"{p}x{p} patch{sr}. Lower patch_size or remove the image.")
    _check_batches(len(images), crops_per_image, batch_size, repeat)
    flat, offsets, heights, widths = _pack(images)
    c = int(channels)

    def crop(k, i):
        img, h, w = _image_at(flat, offsets, heights, widths, c, i)
        row, col = _crop_origin(k, seed, h - p, w - p)
        patch = tf.ensure_shape(img[row:row + p, col:col + p], [p, p, c])
        return _dihedral([patch], k, seed)[0] if dihedral else patch

    ds = _index_dataset(len(images), crops_per_image, seed, shuffle, repeat).enumerate()
    ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def pair_files(measurement_files, ground_truth_files):
    """Pairs measurement and ground-truth files by file stem (name without extension).

    Either side may be a folder, files, comma-separated paths (see `list_images`),
    or an output folder of `simulate`: its `measurements/` sub-folder is used for the
    measurements, its `ground_truth/` sub-folder for the ground truth.

    Returns:
      A list of (stem, measurement_path, ground_truth_path), sorted by stem.

    Raises:
      DataError: a stem appears twice on one side, or a file has no partner.
    """
    sides = []
    for label, files, subfolder in (("measurement", measurement_files, MEASUREMENTS_DIR),
                                    ("ground-truth", ground_truth_files, GROUND_TRUTH_DIR)):
        by_stem = {}
        for f in list_images(files, subfolder):
            s = _stem(f)
            if s in by_stem:
                raise DataError(f"Two {label} files share the name {s!r}: {by_stem[s]} and {f}.")
            by_stem[s] = f
        sides.append(by_stem)
    meas, gt = sides
    no_gt = sorted(set(meas) - set(gt))
    no_meas = sorted(set(gt) - set(meas))
    if no_gt or no_meas:
        parts = []
        if no_gt:
            parts.append(f"{len(no_gt)} measurement(s) without ground truth ({', '.join(no_gt[:5])})")
        if no_meas:
            parts.append(f"{len(no_meas)} ground-truth image(s) without measurement ({', '.join(no_meas[:5])})")
        raise DataError("Files are paired by name (without extension); found " + " and ".join(parts) + ".")
    return [(s, meas[s], gt[s]) for s in sorted(meas)]


def _load_pairs(measurement_files, ground_truth_files, channels, factor, dicom_window):
    factor = _check_positive_int(factor, "factor")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}.")
    pairs = pair_files(measurement_files, ground_truth_files)
    ys, xs, stems = [], [], []
    for stem, yf, xf in pairs:
        y = read_image(yf, dicom_window=dicom_window)
        x = read_image(xf, dicom_window=dicom_window)
        _check_channels(y, channels, yf)
        _check_channels(x, channels, xf)
        check_pair_size(stem, y, x, yf, xf, factor)
        ys.append(y)
        xs.append(x)
        stems.append(stem)
    return ys, xs, stems


def check_pair_size(stem, y, x, y_file, x_file, factor):
    """Raises DataError unless the ground truth `x` is `factor` times the measurement `y` in size."""
    want = (y.shape[0] * factor, y.shape[1] * factor)
    if x.shape[:2] != want:
        rule = f"{factor} times the measurement size" if factor > 1 else "the measurement size"
        raise DataError(
            f"{stem}: the ground truth {x_file} is {x.shape[0]}x{x.shape[1]} but the measurement {y_file} is "
            f"{y.shape[0]}x{y.shape[1]}; the ground truth must be {rule} ({want[0]}x{want[1]}).")


def paired_dataset(measurement_files, ground_truth_files, channels, factor=1, dicom_window=None):
    """Full (measurement, ground truth) image pairs for evaluation.

    Files are paired by stem (see `pair_files`; the order is sorted by stem and
    `pair_files` gives the names). Each element is a tuple (y, x) of float32
    tensors of shapes (1, h, w, C) and (1, h*factor, w*factor, C): batches of one
    because sizes differ between images.

    Args:
      factor: SR factor (x must be `factor` times y's size); 1 for deblurring
        (same size).

    Raises:
      DataError: a missing partner, a size or channel mismatch, unreadable files.
    """
    ys, xs, _ = _load_pairs(measurement_files, ground_truth_files, channels, factor, dicom_window)
    c = int(channels)

    def gen():
        for y, x in zip(ys, xs):
            yield y[None], x[None]

    spec = (tf.TensorSpec([1, None, None, c], tf.float32), tf.TensorSpec([1, None, None, c], tf.float32))
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


def paired_patch_dataset(measurement_files, ground_truth_files, patch_size, batch_size, channels,
                         factor=1, seed=0, shuffle=True, repeat=True, crops_per_image=1,
                         dicom_window=None, dihedral=False):
    """Batches of aligned random crops (y patch, x patch) for supervised training.

    The measurement crop is `patch_size` measurement pixels at (row, col); the
    ground-truth crop is `patch_size * factor` pixels at (row * factor, col * factor).
    Seeding, shuffling, batching and `dihedral` (the same rotation and flip of
    both crops) as in `measurement_dataset`.

    Returns:
      A `tf.data.Dataset` of tuples (y, x) of shapes (B, p, p, C) and
      (B, p*factor, p*factor, C), float32.
    """
    p = _check_positive_int(patch_size, "patch_size")
    batch_size = _check_positive_int(batch_size, "batch_size")
    crops_per_image = _check_positive_int(crops_per_image, "crops_per_image")
    ys, xs, stems = _load_pairs(measurement_files, ground_truth_files, channels, factor, dicom_window)
    f = int(factor)
    for stem, y in zip(stems, ys):
        if y.shape[0] < p or y.shape[1] < p:
            raise DataError(f"{stem}: the measurement is {y.shape[0]}x{y.shape[1]} pixels, smaller than "
                            f"the {p}x{p} patch. Lower patch_size or remove the image.")
    _check_batches(len(ys), crops_per_image, batch_size, repeat)
    yflat, yoff, yh, yw = _pack(ys)
    xflat, xoff, _, _ = _pack(xs)
    c = int(channels)

    def crop(k, i):
        y, h, w = _image_at(yflat, yoff, yh, yw, c, i)
        x, _, _ = _image_at(xflat, xoff, yh * f, yw * f, c, i)
        row, col = _crop_origin(k, seed, h - p, w - p)
        yp = tf.ensure_shape(y[row:row + p, col:col + p], [p, p, c])
        xp = tf.ensure_shape(x[row * f:(row + p) * f, col * f:(col + p) * f], [p * f, p * f, c])
        return tuple(_dihedral([yp, xp], k, seed)) if dihedral else (yp, xp)

    ds = _index_dataset(len(ys), crops_per_image, seed, shuffle, repeat).enumerate()
    ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
