"""Listing, reading and writing image files (no TensorFlow).

An image in memory is a float32 NumPy array (H, W, C), C = 1 (grey) or 3 (RGB),
values nominally in [0, 1] and not clipped (measurements carry unclipped noise).
Sizes are in pixels.

Supported files (extension, case-insensitive):

=============  =============================================================
.png           8-bit (/255) and 16-bit (/65535), grey or colour. Palette
               images become RGB; alpha is dropped (not composited).
               16-bit files are decoded by `sei_tf.data.png16`.
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

Every error about user data is a `DataError` (a `SeiTfError` and a `ValueError`)
whose message names the file concerned. Broken and hostile files are refused
before they are decoded (see `sei_tf.data.guards`): content that does not match
the extension, headers that claim more pixels than the limit (SEI_TF_MAX_PIXELS,
default 178,956,970), compressed TIFF data that inflates beyond its header's size,
and pixel types or TIFF colour spaces that have no grey/RGB meaning.
"""

import io
import os

import numpy as np
from absl import logging

from sei_tf.data import guards, png16
from sei_tf.errors import SeiTfError

SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".npy")
SIDECAR_NAME = "sei_tf.json"  # the physics of a measurement folder, see `sei_tf.data.sidecar`
MEASUREMENTS_DIR = "measurements"  # the two sub-folders that `sei_tf.data.simulate` writes
GROUND_TRUTH_DIR = "ground_truth"


class DataError(SeiTfError, ValueError):
    """Input data that sei-tf cannot use; the message says which file and why.

    A `SeiTfError` (the command-line tools print it as one line) and a `ValueError`.
    """


# --------------------------------------------------------------------------------------
# Listing
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


def _folder_files(folder):
    """(image names, other names) of a folder's files, sorted; hidden files, sub-folders
    and the sidecar are left out."""
    images, others = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or name == SIDECAR_NAME or not os.path.isfile(path):
            continue
        (images if _is_supported(path) else others).append(name)
    return images, others


def simulation_subfolder(folder, subfolder=MEASUREMENTS_DIR):
    """`folder/subfolder` when `folder` is an output folder of `sei_tf.data.simulate`, else None.

    Such a folder holds the sub-folders `measurements/` and `ground_truth/` and no
    image file of its own. `subfolder` is MEASUREMENTS_DIR or GROUND_TRUTH_DIR; None
    always gives None.
    """
    if subfolder is None or not os.path.isdir(folder):
        return None
    if not all(os.path.isdir(os.path.join(folder, sub)) for sub in (MEASUREMENTS_DIR, GROUND_TRUTH_DIR)):
        return None
    if _folder_files(folder)[0]:
        return None
    return os.path.join(folder, subfolder)


def _list_folder(folder, subfolder):
    images, others = _folder_files(folder)
    if not images:
        inner = simulation_subfolder(folder, subfolder)
        if inner is not None:
            logging.info("%s is an output folder of sei_tf.simulate: using the images in %s", folder, inner)
            return _list_folder(inner, None)
        hint = ""
        if others:
            exts = sorted({os.path.splitext(n)[1].lower() or "(no extension)" for n in others})
            hint = f" It holds {len(others)} other file(s) ({', '.join(exts)})."
        raise DataError(
            f"No images found in folder {folder}.{hint} Supported formats: "
            f"{', '.join(SUPPORTED_EXTENSIONS)} (and DICOM files without extension).")
    return [os.path.join(folder, n) for n in images]


def split_paths(path_or_paths):
    """Turns a path, a comma-separated string of paths, or a list of paths into a list.

    The one rule for strings (command-line flags): a string that names an existing
    file or folder is that one path, even when it holds commas; any other string
    is split at its commas, empty parts dropped ('a.png,b.png' and 'dir1,dir2,' name
    two paths each). A path-like object is one path; a list or tuple is kept as is.
    """
    if isinstance(path_or_paths, os.PathLike):
        return [os.fspath(path_or_paths)]
    if isinstance(path_or_paths, str):
        if "," in path_or_paths and not os.path.exists(path_or_paths):
            return [p for p in path_or_paths.split(",") if p]
        return [path_or_paths]
    return [os.fspath(p) for p in path_or_paths]


def list_images(path_or_paths, subfolder=MEASUREMENTS_DIR):
    """Lists image files.

    Args:
      path_or_paths: a folder (its supported files, sorted by name; hidden files,
        sub-folders and the `sei_tf.json` sidecar are ignored), a single image file,
        a list of files and/or folders (order kept, folders expanded), or a string
        of comma-separated paths (see `split_paths` for the rule).
      subfolder: a folder written by `sei_tf.data.simulate` (it holds
        `measurements/` and `ground_truth/` and no image of its own) is replaced by
        this sub-folder, with a log line: MEASUREMENTS_DIR (default) or
        GROUND_TRUTH_DIR; None lists such a folder as it is (no image found).

    Returns:
      A list of file paths (str).

    Raises:
      DataError: a path does not exist, a listed file has an unsupported extension,
        or no image was found.
    """
    items = split_paths(path_or_paths)
    if not items:
        raise DataError("An empty list of images was given.")
    files = []
    for item in items:
        if os.path.isdir(item):
            files.extend(_list_folder(item, subfolder))
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
    """The file name without folder and extension: what pairs and seeds files."""
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


def _read_png(path, limit):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != png16.SIGNATURE or len(data) < 33 or data[12:16] != b"IHDR":
        raise DataError(f"{path}: not a valid PNG file (bad signature or header).")
    width, height, bit_depth = png16.read_header(data)[:3]
    guards.check_pixels(height, width, path, limit, DataError)
    if bit_depth == 16:  # Pillow would reduce 16-bit colour to 8 bits
        return _scale_array(_as_hwc(png16.decode(data), path), path)
    return _read_pillow(io.BytesIO(data), path, limit)


def _read_pillow(fp, path, limit):
    """PNG (8 bits or fewer) and JPEG through Pillow: the size is checked before decoding."""
    from PIL import Image

    try:
        im = Image.open(fp)
    except Image.DecompressionBombError as e:  # Pillow's own limit, see `sei_tf.data.guards`
        raise DataError(f"{path}: {e} Pillow refuses PNG/JPEG files this large; use TIFF.") from None
    with im:
        guards.check_pixels(im.size[1], im.size[0], path, limit, DataError)
        im.load()  # decodes everything: detects truncated/corrupt data and bad CRCs
        return _pil_to_array(im, path)


def _read_tiff(path, limit):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        guards.check_tiff(tif, path, limit, DataError)  # one page
        arr = tif.asarray()
    return _scale_array(_as_hwc(arr, path), path)


def _read_npy(path, limit):
    with open(path, "rb") as f:
        shape, dtype = guards.read_npy_header(f)
        guards.check_npy_header(shape, dtype, os.fstat(f.fileno()).st_size - f.tell(), path, limit, DataError)
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


def _read_dicom(path, dicom_window=None, limit=None):
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM file without pixel data.")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames); save one slice per file.")
    guards.check_pixels(int(ds.Rows), int(ds.Columns), path, limit, DataError)
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


_EXTENSION_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
                      ".npy": "npy", ".dcm": "dicom", "": "dicom"}


def _check_content(path, ext):
    """Refuses an empty file, and content of another format than its extension says."""
    with open(path, "rb") as f:
        head = f.read(132)
    if not head:
        raise DataError(f"{path}: the file is empty (0 bytes).")
    expected, found = _EXTENSION_FORMATS.get(ext), guards.sniff(head)
    if expected is None or found == expected:
        return
    if found is not None:
        raise DataError(f"{path}: the file holds {guards.FORMAT_NAMES[found]} data, but its extension {ext!r} "
                        f"says {guards.FORMAT_NAMES[expected]}; rename it.")
    if expected != "dicom":  # DICOM files without the 128-byte preamble exist; pydicom decides
        raise DataError(f"{path}: not a {guards.FORMAT_NAMES[expected]} file (its first bytes are "
                        f"{head[:8]!r}): corrupt, or not an image.")


def read_image(path, dicom_window=None, max_pixels=None):
    """Reads one image file as float32 (H, W, C), C = 1 or 3, values in [0, 1] units.

    Integer formats are divided by their full scale (255, 65535); float TIFF and
    .npy values are kept as is, not clipped (measurements carry unclipped noise).
    DICOM: see `dicom_value_range`; `dicom_window=(lo, hi)` (modality units, e.g.
    Hounsfield units (-1024, 3071)) replaces the header range, useful when a
    16-bit range would squeeze the tissue values into a narrow band; values outside
    the window fall outside [0, 1] and are kept.

    `max_pixels`: the largest image (H * W) decoded, checked from the header
    before decoding; None: SEI_TF_MAX_PIXELS or 178,956,970 (see
    `sei_tf.data.guards`); 0: no limit.

    Raises:
      DataError: empty, unreadable, corrupt or truncated file, content that does
        not match the extension, more pixels than `max_pixels`, unsupported layout
        or pixel type, or NaN/Inf values; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        limit = guards.max_pixels(max_pixels, DataError)
        if ext in _EXTENSION_FORMATS:
            _check_content(path, ext)
        if ext == ".png":
            arr = _read_png(path, limit)
        elif ext in (".jpg", ".jpeg"):
            arr = _read_pillow(path, path, limit)
        elif ext in (".tif", ".tiff"):
            arr = _read_tiff(path, limit)
        elif ext == ".npy":
            arr = _read_npy(path, limit)
        elif ext == ".dcm" or (ext == "" and _is_dicom_without_extension(path)):
            arr = _read_dicom(path, dicom_window, limit)
        else:
            raise DataError(
                f"{path}: unsupported file type; supported formats: {', '.join(SUPPORTED_EXTENSIONS)}.")
    except SeiTfError:
        raise
    except MemoryError as e:
        raise DataError(f"{path}: out of memory while decoding ({e}); the image is too large for this "
                        "machine, or its header is corrupt.") from None
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
            f.write(png16.encode(quantise(16)))
    else:
        from PIL import Image

        q = quantise(8)
        im = Image.fromarray(q[:, :, 0] if q.shape[-1] == 1 else q)
        if ext == ".png":
            im.save(path, format="PNG")
        else:
            im.save(path, format="JPEG", quality=95)

