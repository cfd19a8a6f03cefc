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
"""

from __future__ import annotations

import io
import os

import numpy as np

from sei_tf.data import png16
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
    """The format from the first bytes: 'png', 'jpeg', 'tiff', 'npy' or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    return None


def read_image(path, max_pixels: int | None = None) -> np.ndarray:
    """Reads a PNG/JPEG/TIFF/.npy file into a NumPy array (see module doc)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, max_pixels=max_pixels, name=path)


def decode_image(data: bytes, max_pixels: int | None = None, name: str = "upload") -> np.ndarray:
    """Decodes image bytes; the pixel limit is checked from the header first."""
    fmt = sniff(data[:16])
    if fmt is None:
        raise UnsupportedFormat(f"{name}: not a PNG, JPEG, TIFF or .npy image.")
    try:
        if fmt == "npy":
            return _decode_npy(data, max_pixels, name)
        if fmt == "tiff":
            return _decode_tiff(data, max_pixels, name)
        if fmt == "png" and png16.read_header(data)[2] == 16:
            return _decode_png16(data, max_pixels, name)
        return _decode_pillow(data, fmt, max_pixels, name)
    except ImageError:
        raise
    except Exception as err:  # truncated/corrupt files raise many types
        raise ImageError(f"{name}: could not decode {fmt.upper()} data ({type(err).__name__}: {err}).") from err


def _check_pixels(h, w, max_pixels, name):
    if max_pixels is not None and h * w > max_pixels:
        raise ImageTooLarge(f"{name}: {w}x{h} = {h * w} pixels exceeds the limit of {max_pixels}.")


def _decode_npy(data, max_pixels, name):
    buf = io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(buf)
    if dtype.hasobject:
        raise ImageError(f"{name}: .npy holds Python objects; only numeric arrays are accepted.")
    if len(shape) not in (2, 3):
        raise ImageError(f"{name}: .npy array has shape {shape}; expected HxW or HxWxC.")
    _check_pixels(shape[0], shape[1], max_pixels, name)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _decode_tiff(data, max_pixels, name):
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        keep = [i for i, (a, n) in enumerate(zip(axes, shape)) if n != 1 or a in "YX"]
        axes = "".join(axes[i] for i in keep)
        shape = tuple(shape[i] for i in keep)
        if axes not in ("YX", "YXS", "SYX", "CYX", "YXC"):
            raise ImageError(f"{name}: TIFF with axes {series.axes!r} {series.shape} is not a single 2-D image "
                             "(stacks/multi-page volumes are not supported).")
        h, w = shape[axes.index("Y")], shape[axes.index("X")]
        _check_pixels(h, w, max_pixels, name)
        arr = series.asarray().reshape(shape)
    if axes in ("SYX", "CYX"):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # grey+alpha, RGBA
        arr = arr[..., :-1]
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def _decode_png16(data, max_pixels, name):
    width, height, _, _, _ = png16.read_header(data)
    _check_pixels(height, width, max_pixels, name)
    arr = png16.decode(data)  # (H, W, C) uint16, C = 1 to 4
    if arr.shape[-1] in (2, 4):  # grey+alpha, RGBA: drop alpha
        arr = arr[..., :-1]
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _decode_pillow(data, fmt, max_pixels, name):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        _check_pixels(h, w, max_pixels, name)
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
