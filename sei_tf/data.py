"""Reading, writing, batching and simulating images for sei-tf.

Conventions used throughout (see also `sei_tf.physics`):

* An image is a float32 NumPy array of shape (H, W, C), C = 1 (grey) or 3 (RGB),
  with values nominally in [0, 1]. Measurements are *not* clipped: simulated
  measurements carry unclipped Gaussian noise and may hold values below 0 or
  above 1, which SURE needs.
* Sizes (height, width, patch sizes) are in pixels. For super-resolution, a
  measurement pixel covers `factor x factor` ground-truth pixels.
* Noise levels passed by users are in 8-bit units (`noise_sigma=5` means a
  standard deviation of 5/255 in [0, 1] units), like `sei_tf.physics`.

Supported files (extension, case-insensitive):

=============  =============================================================
.png           8-bit (/255) and 16-bit (/65535), grey or colour. Palette
               images become RGB; alpha is dropped (not composited).
.jpg .jpeg     8-bit via Pillow (/255). JPEG is lossy: compression artefacts
               break the Gaussian noise model of SURE, prefer PNG or TIFF.
.tif .tiff     via tifffile: uint8 (/255), uint16 (/65535), uint32
               (/(2**32 - 1)); float kept as is (not clipped).
.dcm           DICOM via pydicom, see `dicom_value_range` for the mapping.
               Files without an extension that carry the DICOM 'DICM'
               marker are read as DICOM too.
.npy           NumPy arrays (H, W) or (H, W, C): float kept as is, uint8 /255,
               uint16 /65535, bool as 0/1.
=============  =============================================================

Pixels are taken as stored: EXIF orientation tags are not applied and alpha is
not composited.

Every error about user data is a `DataError` (a `ValueError`) whose message names
the file concerned.
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

SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".npy")
SIDECAR_NAME = "sei_tf.json"
SIDECAR_FORMAT_VERSION = 1
MEASUREMENTS_DIR = "measurements"
GROUND_TRUTH_DIR = "ground_truth"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DataError(ValueError):
    """Input data that sei-tf cannot use; the message says which file and why."""


# --------------------------------------------------------------------------------------
# Listing files
# --------------------------------------------------------------------------------------

def _is_dicom_without_extension(path):
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_supported(path):
    ext = os.path.splitext(path)[1].lower()
    if ext in SUPPORTED_EXTENSIONS:
        return True
    return ext == "" and _is_dicom_without_extension(path)


def _list_folder(folder):
    images, others = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or name == SIDECAR_NAME or not os.path.isfile(path):
            continue
        (images if _is_supported(path) else others).append(name)
    if not images:
        hint = ""
        if others:
            exts = sorted({os.path.splitext(n)[1].lower() or "(no extension)" for n in others})
            hint = f" It holds {len(others)} other file(s) ({', '.join(exts)})."
        raise DataError(
            f"No images found in folder {folder}.{hint} Supported formats: "
            f"{', '.join(SUPPORTED_EXTENSIONS)} (and DICOM files without extension).")
    return [os.path.join(folder, n) for n in images]


def list_images(path_or_paths):
    """Lists image files.

    Args:
      path_or_paths: a folder (its supported files, sorted by name; hidden files,
        sub-folders and the `sei_tf.json` sidecar are ignored), a single image file,
        or a list of files and/or folders (order kept, folders expanded).

    Returns:
      A list of file paths (str).

    Raises:
      DataError: a path does not exist, a listed file has an unsupported extension,
        or no image was found.
    """
    if isinstance(path_or_paths, (str, os.PathLike)):
        items = [os.fspath(path_or_paths)]
    else:
        items = [os.fspath(p) for p in path_or_paths]
        if not items:
            raise DataError("An empty list of images was given.")
    files = []
    for item in items:
        if os.path.isdir(item):
            files.extend(_list_folder(item))
        elif os.path.isfile(item):
            if not _is_supported(item):
                raise DataError(
                    f"{item}: unsupported file type; supported formats: "
                    f"{', '.join(SUPPORTED_EXTENSIONS)}.")
            files.append(item)
        else:
            raise DataError(f"Not found: {item}")
    return files


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

def _as_hwc(arr, source):
    """Puts an array in (H, W, C) layout with C in {1, 3}; drops an alpha channel."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3:
        if arr.shape[-1] not in (1, 2, 3, 4) and arr.shape[0] in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) layout
        if arr.shape[-1] == 2:  # grey + alpha
            arr = arr[:, :, :1]
        elif arr.shape[-1] == 4:  # RGB + alpha
            arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise DataError(
            f"{source}: expected a 2-D image (H, W) or (H, W, C) with 1 or 3 channels, "
            f"got an array of shape {arr.shape}.")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"{source}: the image is empty (shape {arr.shape}).")
    return arr


def _scale_array(arr, source):
    """Maps an array's dtype to float32 values in [0, 1] units (float kept as is)."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.uint32:
        return (arr.astype(np.float64) / 4294967295.0).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise DataError(
        f"{source}: unsupported pixel type {arr.dtype} (no known scaling to [0, 1]); "
        "use uint8, uint16 or float.")


def _pil_to_array(im, source):
    """Converts an opened Pillow image to float32 (H, W, C) in [0, 1]."""
    mode = im.mode
    if mode in ("1", "LA", "La"):
        im, mode = im.convert("L"), "L"
    elif mode in ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        im, mode = im.convert("RGB"), "RGB"
    arr = np.asarray(im)
    if mode in ("L", "RGB"):
        return arr.astype(np.float32) / 255.0
    if mode.startswith("I;16"):
        return arr.astype(np.float32) / 65535.0
    if mode == "F":
        return arr.astype(np.float32)
    raise DataError(f"{source}: unsupported image mode {mode!r}.")


def _read_png(path):
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != _PNG_SIGNATURE or len(data) < 33:
        raise DataError(f"{path}: not a valid PNG file (bad signature or header).")
    bit_depth, color_type = data[24], data[25]
    with Image.open(path) as im:
        im.load()  # decodes everything: detects truncated/corrupt data and bad CRCs
        if bit_depth != 16:
            return _pil_to_array(im, path)
    # Pillow reduces 16-bit colour PNGs to 8 bits: decode 16-bit files with TF instead.
    channels = 1 if color_type in (0, 4) else 3
    arr = tf.io.decode_png(data, channels=channels, dtype=tf.uint16).numpy()
    return arr.astype(np.float32) / 65535.0


def _read_jpeg(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return _pil_to_array(im, path)


def _read_tiff(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if len(tif.series) != 1 or len(tif.pages) != 1:
            raise DataError(
                f"{path}: multi-page TIFF ({len(tif.pages)} pages); save one image per file.")
        arr = tif.asarray()
    return _scale_array(_as_hwc(arr, path), path)


def _read_npy(path):
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3):
        raise DataError(
            f"{path}: a .npy image must be (H, W) or (H, W, C) with C = 1 or 3, got shape {arr.shape}.")
    return _scale_array(_as_hwc(arr, path), path)


def dicom_value_range(path_or_dataset):
    """The range of modality values (e.g. Hounsfield units) a DICOM file can encode.

    The raw range implied by `BitsStored` and `PixelRepresentation` (0 .. 2**b - 1
    unsigned, -2**(b-1) .. 2**(b-1) - 1 signed) is passed through the modality
    transform (`RescaleSlope`/`RescaleIntercept`, or a Modality LUT).

    `read_image` maps a single-channel DICOM to `(v - lo) / (hi - lo)` where `v` is
    the modality value and `(lo, hi)` this range (or the user's `dicom_window`). The
    mapping depends only on the header, never on the pixel content, so it is
    deterministic, the same for every slice of a series, and inverted by
    `v = lo + value * (hi - lo)`. It keeps the noise level consistent across files,
    which SURE needs (a per-file min-max would change the noise level per file).

    Returns:
      (lo, hi) as floats in modality units, lo < hi.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = path_or_dataset
    if not isinstance(ds, pydicom.Dataset):
        ds = pydicom.dcmread(os.fspath(ds), stop_before_pixels=True)
    bits = int(ds.BitsStored)
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        raw = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.float64)
    else:
        raw = np.array([0, 2 ** bits - 1], dtype=np.float64)
    values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        raise DataError(f"DICOM header gives an empty value range [{lo}, {hi}].")
    return lo, hi


def _read_dicom(path, dicom_window=None):
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM file without pixel data.")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames); save one slice per file.")
    px = ds.pixel_array
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    if samples == 1:
        values = np.asarray(apply_modality_lut(px, ds), dtype=np.float64)
        if dicom_window is not None:
            lo, hi = (float(v) for v in dicom_window)
            if not hi > lo:
                raise DataError(f"dicom_window must be (low, high) with low < high, got {dicom_window}.")
        else:
            lo, hi = dicom_value_range(ds)
        arr = ((values - lo) / (hi - lo)).astype(np.float32)
    else:
        # Colour DICOM (pydicom converts YBR to RGB): scale by the stored bit depth.
        arr = (px.astype(np.float64) / (2 ** int(ds.BitsStored) - 1)).astype(np.float32)
    return _as_hwc(arr, path)


def read_image(path, dicom_window=None):
    """Reads one image file as float32 (H, W, C), C = 1 or 3, values in [0, 1] units.

    Integer formats are divided by their full scale (255, 65535); float TIFF and
    .npy values are kept as is, not clipped (measurements carry unclipped noise).
    DICOM: see `dicom_value_range`; `dicom_window=(lo, hi)` (modality units, e.g.
    Hounsfield units (-1024, 3071)) replaces the header range, useful when a
    16-bit range would squeeze the tissue values into a narrow band; values outside
    the window fall outside [0, 1] and are kept.

    Raises:
      DataError: unreadable, corrupt or truncated file, unsupported layout or
        pixel type, or NaN/Inf values; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".png":
            arr = _read_png(path)
        elif ext in (".jpg", ".jpeg"):
            arr = _read_jpeg(path)
        elif ext in (".tif", ".tiff"):
            arr = _read_tiff(path)
        elif ext == ".npy":
            arr = _read_npy(path)
        elif ext == ".dcm" or (ext == "" and _is_dicom_without_extension(path)):
            arr = _read_dicom(path, dicom_window)
        else:
            raise DataError(
                f"{path}: unsupported file type; supported formats: {', '.join(SUPPORTED_EXTENSIONS)}.")
    except DataError:
        raise
    except Exception as e:  # decoders raise many types (OSError, SyntaxError, zlib.error, ...)
        raise DataError(f"{path}: cannot read the image (corrupt or truncated file?): "
                        f"{type(e).__name__}: {e}") from e
    arr = _as_hwc(arr, path)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise DataError(f"{path}: the image holds {int(bad.sum())} NaN or Inf value(s).")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_channels(arr, channels, source):
    if channels is None:
        return
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}.")
    c = arr.shape[-1]
    if c == channels:
        return
    if c == 1:
        raise DataError(
            f"{source}: the image is greyscale (1 channel) but channels=3 (RGB) was requested. "
            "Use channels=1, or convert the file to RGB yourself; sei-tf does not convert silently.")
    identical = bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]))
    extra = " (its three channels are identical: it is a grey image stored as RGB)" if identical else ""
    raise DataError(
        f"{source}: the image has 3 channels (RGB){extra} but channels=1 (greyscale) was requested. "
        "Use channels=3, or convert the file to greyscale yourself; sei-tf does not convert silently.")


def load_images(files, channels=None, dicom_window=None):
    """Decodes images into memory.

    Args:
      files: a folder, a file, or a list of files/folders (see `list_images`); list
        items may also be already decoded arrays (H, W) or (H, W, C).
      channels: 1 or 3 to require that many channels in every image (DataError
        otherwise, no silent conversion), or None to accept what the files hold
        (all images must then agree).
      dicom_window: see `read_image`.

    Returns:
      (images, names): float32 (H, W, C) arrays and their names (file paths, or
      'array[i]' for arrays).
    """
    if isinstance(files, (str, os.PathLike)) or not any(isinstance(f, np.ndarray) for f in files):
        items = list_images(files)
    else:
        items = list(files)
        if not items:
            raise DataError("An empty list of images was given.")
    images, names = [], []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            name = f"array[{i}]"
            arr = _scale_array(_as_hwc(np.asarray(item), name), name)
            if not np.all(np.isfinite(arr)):
                raise DataError(f"{name}: the image holds NaN or Inf values.")
        else:
            name = os.fspath(item)
            if os.path.isdir(name):
                sub_imgs, sub_names = load_images(name, channels, dicom_window)
                images.extend(sub_imgs)
                names.extend(sub_names)
                continue
            arr = read_image(name, dicom_window=dicom_window)
        _check_channels(arr, channels, name)
        images.append(arr)
        names.append(name)
    if channels is None:
        counts = {a.shape[-1] for a in images}
        if len(counts) > 1:
            grey = [n for n, a in zip(names, images) if a.shape[-1] == 1][:3]
            raise DataError(
                f"The images mix greyscale and RGB (greyscale e.g. {', '.join(grey)}); "
                "pass channels=1 or 3 and make the files agree.")
    return images, names


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

def write_image(path, array, bit_depth=None):
    """Writes an image (H, W), (H, W, C) or (1, H, W, C), C = 1 or 3, values in [0, 1].

    Formats by extension:
      .tif/.tiff: float32, exact, not clipped (default); `bit_depth` 8 or 16 writes
        unsigned integers.
      .png: 8-bit (default) or 16-bit (`bit_depth=16`).
      .jpg/.jpeg: 8-bit, quality 95 (lossy).
      .npy: float32, exact.
    Integer formats clip to [0, 1] and round to the nearest level; float formats
    keep values as they are. Parent folders are created.

    Raises:
      DataError: unsupported extension/bit depth/shape, or NaN/Inf values.
    """
    path = os.fspath(path)
    a = np.asarray(array)
    while a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.dtype == np.uint8 or a.dtype == np.uint16 or a.dtype == np.bool_:
        a = _scale_array(a, path)
    a = _as_hwc(a, path).astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise DataError(f"{path}: refusing to write an image holding NaN or Inf values.")
    ext = os.path.splitext(path)[1].lower()
    allowed = {".tif": (None, 8, 16, 32), ".tiff": (None, 8, 16, 32), ".png": (None, 8, 16),
               ".jpg": (None, 8), ".jpeg": (None, 8), ".npy": (None, 32)}
    if ext not in allowed:
        raise DataError(f"{path}: cannot write {ext or 'extension-less'} files; use .tif, .png, .jpg or .npy.")
    if bit_depth not in allowed[ext]:
        raise DataError(f"{path}: bit_depth={bit_depth} is not available for {ext} "
                        f"(choose from {[b for b in allowed[ext] if b]}).")
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)

    def quantise(bits):
        dtype = np.uint8 if bits == 8 else np.uint16
        return np.round(np.clip(a, 0.0, 1.0) * float(2 ** bits - 1)).astype(dtype)

    if ext in (".tif", ".tiff"):
        import tifffile

        data = a if bit_depth in (None, 32) else quantise(bit_depth)
        if data.shape[-1] == 1:
            tifffile.imwrite(path, data[:, :, 0], photometric="minisblack")
        else:
            tifffile.imwrite(path, data, photometric="rgb")
    elif ext == ".npy":
        np.save(path, a)
    elif ext == ".png" and bit_depth == 16:
        with open(path, "wb") as f:
            f.write(tf.io.encode_png(quantise(16)).numpy())
    else:
        from PIL import Image

        q = quantise(8)
        im = Image.fromarray(q[:, :, 0] if q.shape[-1] == 1 else q)
        if ext == ".png":
            im.save(path, format="PNG")
        else:
            im.save(path, format="JPEG", quality=95)


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------

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
                        repeat=True, crops_per_image=1, dicom_window=None):
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
        patch = img[row:row + p, col:col + p]
        return tf.ensure_shape(patch, [p, p, c])

    ds = _index_dataset(len(images), crops_per_image, seed, shuffle, repeat).enumerate()
    ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def pair_files(measurement_files, ground_truth_files):
    """Pairs measurement and ground-truth files by file stem (name without extension).

    Returns:
      A list of (stem, measurement_path, ground_truth_path), sorted by stem.

    Raises:
      DataError: a stem appears twice on one side, or a file has no partner.
    """
    sides = []
    for label, files in (("measurement", measurement_files), ("ground-truth", ground_truth_files)):
        by_stem = {}
        for f in list_images(files):
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
                         dicom_window=None):
    """Batches of aligned random crops (y patch, x patch) for supervised training.

    The measurement crop is `patch_size` measurement pixels at (row, col); the
    ground-truth crop is `patch_size * factor` pixels at (row * factor, col * factor).
    Seeding, shuffling and batching as in `measurement_dataset`.

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
        xp = x[row * f:(row + p) * f, col * f:(col + p) * f]
        return yp, tf.ensure_shape(xp, [p * f, p * f, c])

    ds = _index_dataset(len(ys), crops_per_image, seed, shuffle, repeat).enumerate()
    ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------
# Simulation (the paper's protocol) and its sidecar
# --------------------------------------------------------------------------------------

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


def _physics_meta(op):
    meta = {"task": op.task}
    if op.task == "sr":
        meta["factor"] = int(op.factor)
    elif op.task == "deblur":
        meta["kernel"] = op.kernel_name
        meta["kernel_array"] = np.asarray(op.kernel, np.float64).tolist()
    else:
        raise DataError(f"Unknown physics task {op.task!r}.")
    meta["noise_sigma"] = float(op.noise_sigma)
    return meta


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
      3. crop the bottom/right to a multiple of the SR factor (1 for deblurring);
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
      ground_truth_dir: folder or list of ground-truth images.
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
    files = list_images(ground_truth_dir)
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
    factor = int(physics.factor) if physics.task == "sr" else 1
    meta = {"format_version": SIDECAR_FORMAT_VERSION, **_physics_meta(physics), "seed": int(seed),
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
            h, w = (x.shape[0] // factor) * factor, (x.shape[1] // factor) * factor
            if h < factor or w < factor:
                raise DataError(f"{f}: {x.shape[0]}x{x.shape[1]} pixels is too small for SR factor {factor}.")
            x = x[:h, :w]
            if physics.task == "deblur" and min(h, w) < max(physics.kernel.shape):
                raise DataError(f"{f}: {h}x{w} pixels is smaller than the {physics.kernel.shape[0]}x"
                                f"{physics.kernel.shape[1]} blur kernel.")
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


def read_sidecar(measurement_dir):
    """Reads `sei_tf.json` from a measurement folder (or the folder of a given file).

    Returns:
      The sidecar dictionary, or None when the folder has none. The key '_path'
      (the sidecar's path, for messages) is added to what the file holds.

    Raises:
      DataError: the sidecar is not valid JSON, lacks required keys, or comes from
        a newer format version.
    """
    measurement_dir = os.fspath(measurement_dir)
    if os.path.isfile(measurement_dir):
        measurement_dir = os.path.dirname(measurement_dir)
    path = os.path.join(measurement_dir, SIDECAR_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the sidecar: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(f"{path}: the sidecar must hold a JSON object.")
    missing = [k for k in ("format_version", "task", "noise_sigma") if k not in meta]
    if missing:
        raise DataError(f"{path}: the sidecar lacks {', '.join(missing)}.")
    if int(meta["format_version"]) > SIDECAR_FORMAT_VERSION:
        raise DataError(f"{path}: sidecar format {meta['format_version']} is newer than this sei-tf "
                        f"understands ({SIDECAR_FORMAT_VERSION}); upgrade sei-tf.")
    meta["_path"] = path
    return meta


def check_noise_level(meta, noise_sigma):
    """Reconciles a user-given noise level (8-bit units) with a sidecar.

    Returns:
      The noise level to use: the sidecar's when `noise_sigma` is None, the user's
      when there is no sidecar (`meta` None).

    Raises:
      DataError: both are given and differ (by more than 1e-6).
    """
    if meta is None:
        if noise_sigma is None:
            raise DataError("No noise level: give noise_sigma (8-bit units) or use measurements "
                            "with a sei_tf.json sidecar.")
        return float(noise_sigma)
    recorded = float(meta["noise_sigma"])
    if noise_sigma is None:
        return recorded
    if abs(float(noise_sigma) - recorded) > 1e-6:
        where = meta.get("_path", "the sidecar")
        raise DataError(
            f"noise_sigma={float(noise_sigma):g} contradicts {where}, which records noise_sigma="
            f"{recorded:g} (8-bit units) for these measurements. Drop the flag to use the recorded value.")
    return recorded


def physics_from_sidecar(meta, noise_sigma=None):
    """Rebuilds the forward operator recorded in a sidecar (via `physics.make`).

    `noise_sigma`, when given, must agree with the sidecar (`check_noise_level`).
    For deblurring, the recorded `kernel_array` is authoritative (a kernel file may
    have changed since); the recorded name is kept.
    """
    from sei_tf import physics as physics_lib

    sigma = check_noise_level(meta, noise_sigma)
    task = meta.get("task")
    try:
        if task == "sr":
            return physics_lib.make("sr", factor=int(meta["factor"]), noise_sigma=sigma)
        if task == "deblur":
            kernel = np.asarray(meta["kernel_array"], np.float32)
            op = physics_lib.make("deblur", kernel=kernel, noise_sigma=sigma)
            op.kernel_name = meta.get("kernel") or op.kernel_name
            return op
    except KeyError as e:
        raise DataError(f"The sidecar lacks {e.args[0]!r} for task {task!r}.") from e
    raise DataError(f"The sidecar names an unknown task {task!r} (expected 'sr' or 'deblur').")


# --------------------------------------------------------------------------------------
# Diagnostics for SURE
# --------------------------------------------------------------------------------------

_LAPLACE_DIFF = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
NOISE_FLOOR = 3.0  # 8-bit units: below this, texture dominates the noise estimate


def estimate_noise_sigma(image):
    """Estimates the Gaussian noise std of an image, in 8-bit units.

    Robust (median absolute deviation) version of Immerkaer's estimator: the image
    is filtered with the 3x3 difference of Laplacians [[1,-2,1],[-2,4,-2],[1,-2,1]]
    (which cancels constant, linear and most smooth content; for white noise of std
    s the output has std 6 s); sigma = median(|r|) / 0.6745 / 6, per channel, median
    over channels.

    Bias (measured on 8 scikit-image photographs resized to a shorter side of 256):
    image texture leaks into the residual, so the estimate is biased *upwards* and
    rarely below the truth (at most ~1% below on pure noise).
      * full-resolution / deblurring measurements: +0.2 to +1.4 at a true sigma of
        5 (median +0.7), +0.1 to +1.1 at 10, under +0.7 at 25; 0.4 to 3.5 on
        noise-free 8-bit photographs;
      * x4 super-resolution measurements (64-pixel shorter side, all texture):
        +0.3 to +3.8 at sigma 5 (median +1.7), +0.2 to +2.8 at 10; 0.3 to 6.5 when
        noise-free. Trust it less on few, textured SR images.
    Below about `NOISE_FLOOR` (3/255) it cannot tell noise from texture.
    """
    from scipy import ndimage

    a = np.asarray(image, np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[0] < 3 or a.shape[1] < 3:
        raise DataError(f"Noise estimation needs at least 3x3 pixels, got {a.shape[:2]}.")
    sigmas = []
    for c in range(a.shape[-1]):
        r = ndimage.correlate(a[:, :, c], _LAPLACE_DIFF, mode="reflect")[1:-1, 1:-1]
        sigmas.append(np.median(np.abs(r)) / 0.6745 / 6.0)
    return float(np.median(sigmas) * 255.0)


def diagnose(images, noise_sigma, clip_fraction=0.01, tolerance=1.5):
    """Checks measurements against SURE's assumptions; returns warnings (strings).

    Args:
      images: list of arrays (H, W, C) or file paths, or a folder.
      noise_sigma: the declared noise std in 8-bit units.
      clip_fraction: warn when more than this fraction of an image's values are
        exactly 0 or exactly 1 (clipping makes the noise non-Gaussian; SURE's
        estimate is then biased).
      tolerance: warn when the declared sigma and the median of the per-image
        estimates (`estimate_noise_sigma`) differ by more than this factor either
        way. Both are first raised to `NOISE_FLOOR`, because the estimator cannot
        resolve lower noise from texture.

    Returns:
      A list of human-readable warnings; empty when nothing looks wrong.
    """
    if isinstance(images, (str, os.PathLike)) or (
            isinstance(images, (list, tuple)) and images
            and isinstance(images[0], (str, os.PathLike))):
        images, names = load_images(images)
    else:
        if not isinstance(images, (list, tuple)):  # one array (H, W[, C]) or a batch (B, H, W, C)
            images = np.asarray(images, np.float32)
            images = list(images) if images.ndim == 4 else [images]
        images = [np.asarray(a, np.float32) for a in images]
        names = [f"image {i}" for i in range(len(images))]
    warnings = []
    for name, a in zip(names, images):
        clipped = float(np.mean((a == 0.0) | (a == 1.0)))
        if clipped > clip_fraction:
            warnings.append(
                f"{name}: {100 * clipped:.1f}% of the values are exactly 0 or 1: the measurements look "
                "clipped (saturated or quantised to [0, 1]). SURE assumes unclipped Gaussian noise; "
                "its loss will be biased. Save measurements as float TIFF without clipping if you can.")
    if images:
        estimate = float(np.median([estimate_noise_sigma(a) for a in images]))
        declared = float(noise_sigma)
        ratio = max(estimate, NOISE_FLOOR) / max(declared, NOISE_FLOOR)
        if ratio > tolerance or ratio < 1.0 / tolerance:
            warnings.append(
                f"The declared noise sigma {declared:g}/255 disagrees with the estimate {estimate:.2f}/255 "
                f"from the measurements (median over {len(images)} image(s); the estimator reads high "
                "on textured images, by about 1/255 at sigma 5 and up to 4/255 on x4 SR measurements). "
                "SURE needs the true noise level: check --noise_sigma.")
    return warnings


# --------------------------------------------------------------------------------------
# Sample ground truth
# --------------------------------------------------------------------------------------

SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right",
                "immunohistochemistry", "hubble_deep_field", "retina")
GREY_SAMPLE_NAMES = ("camera", "brick", "grass", "gravel")


def _sample(name):
    import skimage.data

    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    if name == "motorcycle_right":
        return skimage.data.stereo_motorcycle()[1]
    return getattr(skimage.data, name)()


def sample_ground_truth(output_dir, names=None):
    """Writes scikit-image's bundled photographs as 8-bit PNG files (offline).

    Args:
      output_dir: folder to write to (created; existing files of the same names
        are replaced).
      names: photograph names; default `SAMPLE_NAMES` (colour). The greyscale
        textures `GREY_SAMPLE_NAMES` are available too.

    Returns:
      The list of written paths.
    """
    names = list(SAMPLE_NAMES if names is None else names)
    known = SAMPLE_NAMES + GREY_SAMPLE_NAMES
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DataError(f"Unknown sample image(s) {', '.join(unknown)}; available: {', '.join(known)}.")
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for n in names:
        path = os.path.join(output_dir, n + ".png")
        write_image(path, _sample(n))
        paths.append(path)
    return paths
