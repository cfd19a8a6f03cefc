"""Image files <-> NumPy arrays for serving (Pillow, tifffile, NumPy; no TensorFlow).

Arrays keep the file's own type: uint8 (8-bit PNG/JPEG/TIFF), uint16 (16-bit
PNG, grey or colour, and 16-bit TIFF), float32/float64 (float TIFF, .npy).
Greyscale is HxW, colour HxWxC. An alpha channel is dropped when reading files
(a restored image has no meaningful transparency); palette images become RGB.
Every file that `sei_tf.data.simulate` writes can be read (16-bit PNG ground
truth, float32 TIFF measurements).

16-bit PNG files are decoded by `sei_tf.data.png16`, which sei-tf uses too
(Pillow would reduce 16-bit colour to 8 bits). PNG output holds 8-bit grey/RGB
or 16-bit grey; 16-bit colour output is written as TIFF.

Broken and hostile input (files and HTTP uploads alike) raises an `ImageError`
naming the file, never another exception: empty data, unknown formats
(`UnsupportedFormat`), truncated or corrupt data, headers that claim more pixels
than the limit (`ImageTooLarge`, checked before decoding; the default limit is
SEI_TF_MAX_PIXELS or 178,956,970 pixels, see `sei_tf.data.guards`), compressed
TIFF data that inflates beyond its header's size, TIFF colour spaces without a
grey/RGB meaning (palette, CMYK, ...), pixel types other than uint8, uint16 and
float, more than 4 channels, and NaN or Inf values.
"""

from __future__ import annotations

import io
import os

import numpy as np

from sei_tf.data import guards, png16
from sei_tf.errors import SeiTfError

EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".npy": "npy"}
OUTPUT_EXTENSIONS = {"png": ".png", "tiff": ".tif", "npy": ".npy"}


class ImageError(SeiTfError, ValueError):
    """The data is not an image we can read (or write)."""


class UnsupportedFormat(ImageError):
    """Not a PNG, JPEG, TIFF or NumPy .npy file."""


class ImageTooLarge(ImageError):
    """More pixels than allowed."""


def sniff(data: bytes) -> str | None:
    """The format from the first bytes: 'png', 'jpeg', 'tiff', 'npy' or None (anything else, DICOM included)."""
    fmt = guards.sniff(data)
    return fmt if fmt in ("png", "jpeg", "tiff", "npy") else None


def read_image(path, max_pixels: int | None = None) -> np.ndarray:
    """Reads a PNG/JPEG/TIFF/.npy file into a NumPy array (see module doc and `decode_image`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, max_pixels=max_pixels, name=path)


def decode_image(data: bytes, max_pixels: int | None = None, name: str = "upload") -> np.ndarray:
    """Decodes image bytes (a file's or an upload's) into a NumPy array (see module doc).

    max_pixels: the largest image (H * W) decoded, checked from the header before
    decoding; None: the default limit (SEI_TF_MAX_PIXELS or 178,956,970 pixels,
    see `sei_tf.data.guards`); 0: no limit.

    Returns an HxW or HxWxC (C = 3) array: uint8, uint16 or float, finite.

    Raises:
      ImageError (its subclasses UnsupportedFormat, ImageTooLarge): whatever is
        wrong with the data; the message starts with `name`.
    """
    if not data:
        raise ImageError(f"{name}: the file is empty (0 bytes).")
    fmt = guards.sniff(data[:132])
    if fmt not in ("png", "jpeg", "tiff", "npy"):
        found = f" (a {guards.FORMAT_NAMES[fmt]} file)" if fmt else ""
        raise UnsupportedFormat(f"{name}: not a PNG, JPEG, TIFF or .npy image{found}.")
    try:
        limit = guards.max_pixels(max_pixels, ImageError)
        if fmt == "npy":
            arr = _decode_npy(data, limit, name)
        elif fmt == "tiff":
            arr = _decode_tiff(data, limit, name)
        elif fmt == "png":
            width, height, bit_depth = png16.read_header(data)[:3]  # checked before Pillow sees the data
            guards.check_pixels(height, width, name, limit, ImageError, ImageTooLarge)
            arr = _decode_png16(data) if bit_depth == 16 else _decode_pillow(data, fmt, limit, name)
        else:
            arr = _decode_pillow(data, fmt, limit, name)
    except ImageError:
        raise
    except MemoryError as err:
        raise ImageError(f"{name}: out of memory while decoding {fmt.upper()} data ({err}).") from None
    except Exception as err:  # truncated/corrupt files raise many types
        raise ImageError(f"{name}: could not decode {fmt.upper()} data ({type(err).__name__}: {err}).") from err
    return _checked(arr, name)


def _checked(arr, name):
    """The decoded array if it is an image the restorer can take: HxW or HxWxC (C = 1 or 3), uint8/uint16/float,
    finite."""
    if arr.dtype not in (np.uint8, np.uint16) and arr.dtype.kind != "f":
        raise ImageError(f"{name}: unsupported pixel type {arr.dtype}; use uint8, uint16 or float.")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3))):
        raise ImageError(f"{name}: expected a greyscale or RGB image (HxW or HxWxC, C = 1 or 3 after dropping "
                         f"alpha), got shape {arr.shape}.")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{name}: the image is empty (shape {arr.shape}).")
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ImageError(f"{name}: the image holds {bad} NaN or Inf value(s).")
    return arr


def _decode_npy(data, limit, name):
    buf = io.BytesIO(data)
    shape, dtype = guards.read_npy_header(buf)
    guards.check_npy_header(shape, dtype, len(data) - buf.tell(), name, limit, ImageError, ImageTooLarge)
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.ndim == 4:  # (1, H, W, C)
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # grey+alpha, RGBA: drop alpha
        arr = arr[..., :-1]
    return np.ascontiguousarray(arr)


def _decode_tiff(data, limit, name):
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        guards.check_tiff(tif, name, limit, ImageError, ImageTooLarge, max_pages=4)  # 4: planar RGBA
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        keep = [i for i, (a, n) in enumerate(zip(axes, shape)) if n != 1 or a in "YX"]
        axes = "".join(axes[i] for i in keep)
        shape = tuple(shape[i] for i in keep)
        if axes not in ("YX", "YXS", "SYX", "CYX", "YXC"):
            raise ImageError(f"{name}: TIFF with axes {series.axes!r} {series.shape} is not a single 2-D image "
                             "(stacks/multi-page volumes are not supported).")
        arr = series.asarray().reshape(shape)
    if axes in ("SYX", "CYX"):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # grey+alpha, RGBA
        arr = arr[..., :-1]
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def _decode_png16(data):
    arr = png16.decode(data)  # (H, W, C) uint16, C = 1 to 4
    if arr.shape[-1] in (2, 4):  # grey+alpha, RGBA: drop alpha
        arr = arr[..., :-1]
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _decode_pillow(data, fmt, limit, name):
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # Pillow's own limit, see `sei_tf.data.guards`
        raise ImageTooLarge(f"{name}: {err} Pillow refuses PNG/JPEG images this large; use TIFF.") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: Pillow cannot read this {fmt.upper()} header (corrupt file?).") from None
    with im:
        w, h = im.size
        guards.check_pixels(h, w, name, limit, ImageError, ImageTooLarge)
        im.load()
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "PA":
            im = im.convert("RGBA")
        elif mode == "1":
            im = im.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        arr = np.array(im)
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # LA, RGBA: drop alpha
        arr = arr[..., :-1]
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def _is_grey(a):
    return a.ndim == 2 or a.shape[-1] == 1


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    """PNG (uint8, or uint16 greyscale), TIFF (uint8/uint16/float32) or .npy bytes."""
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, array, allow_pickle=False)
    elif fmt == "tiff":
        import tifffile

        if array.dtype not in (np.uint8, np.uint16, np.float32):
            array = array.astype(np.float32)
        photometric = "minisblack" if _is_grey(array) else "rgb" if array.shape[-1] == 3 else "minisblack"
        planar = None if _is_grey(array) or array.shape[-1] == 3 else "contig"
        tifffile.imwrite(buf, array, photometric=photometric, planarconfig=planar)
    elif fmt == "png":
        from PIL import Image

        a = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
        if a.dtype == np.uint16 and a.ndim == 2:
            Image.fromarray(a).save(buf, format="PNG")
        elif a.dtype == np.uint8 and (a.ndim == 2 or a.shape[-1] in (3, 4)):
            Image.fromarray(a).save(buf, format="PNG")
        else:
            raise ImageError(f"PNG cannot hold a {a.dtype} image of shape {array.shape} "
                             "(PNG holds 8-bit grey/RGB or 16-bit grey): use TIFF.")
    else:
        raise ImageError(f"unknown output format {fmt!r} (png, tiff or npy).")
    return buf.getvalue()


def write_image(path, array: np.ndarray, fmt: str | None = None, overwrite: bool = False) -> None:
    """Writes atomically (temporary file + rename); refuses to replace a file unless `overwrite`."""
    path = os.fspath(path)
    if fmt is None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in EXTENSIONS or EXTENSIONS[ext] == "jpeg":
            raise ImageError(f"{path}: cannot tell the output format from {ext!r} (use .png, .tif, .npy).")
        fmt = EXTENSIONS[ext]
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists (use --overwrite to replace it).")
    data = encode_image(array, fmt)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
