"""Restore images larger than memory: TIFF/.npy read window by window, tiled (Big)TIFF written tile by tile.

    from serving import Restorer
    from serving.large_images import open_lazy, restore_to_tiff
    r = Restorer("restorer.onnx", device="cpu")
    with open_lazy("slide.tif") as src:
        restore_to_tiff(r, src, "restored.tif", core=480)

Reading (`open_lazy`): a TIFF page stored uncompressed and contiguously is read
with `os.pread`, row by row, for each window; a tiled or stripped TIFF
(compressed or not) is read segment by segment through tifffile's own decoder
(`TiffPage.decode`), keeping a small cache of decoded segments so that
neighbouring windows do not decode a segment twice; a .npy file is
memory-mapped for each window and unmapped after it. Nothing holds the whole
image, and no mapping outlives a window (mapped file pages count as resident
memory). PNG and JPEG cannot be decoded piecewise: `open_lazy` refuses them.

Writing (`restore_to_tiff`): the restorer's exact tiling (`tiling.aligned_plan`)
puts one input core of core x core pixels behind each output TIFF tile of
core*scale pixels, and `tifffile.imwrite` takes the tiles from a generator,
so only one window and one tile are in memory. The file is written to a
temporary name and renamed when complete: an error or Ctrl-C leaves nothing.
Files over 4 GB are written as BigTIFF. Values follow `Restorer.restore`
plus `images.write_image`: the input's dtype and range, clipped; TIFF holds
uint8, uint16 and float32 (other float types are written as float32).

Memory (`MemoryModel`, used by `--max_memory`): peak resident bytes of a
streamed restoration with windows of w = core + 2*context input pixels,
C channels, scale s, input/output item sizes i/o:

    peak = base + 2 * model_file_bytes
           + a * w^2                                   (network activations)
           + w^2 * C * (i + 8) + w^2 * s^2 * C * 4     (input window and its float copy, network output)
           + core^2 * s^2 * C * (4 + 2 * o)            (clipped tile, output tile, tifffile's padded copy)
           + reader buffer                             (decoded segments kept for the next window)

`a` (bytes per input pixel) comes from `activation_bytes_per_pixel`.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from serving import images, tiling
from serving.restorer import InputError, _from_float, _kind, _to_float

#: TIFF holds these dtypes; other float types are written as float32 (as `images.encode_image` does).
TIFF_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
#: Above this many bytes of tile data the output is a BigTIFF (classic TIFF offsets are 32-bit).
BIGTIFF_ABOVE = 2**32 - 2**25
#: Resident memory of a CLI process with onnxruntime, NumPy, tifffile and a loaded session, before any tile
#: (66 MB measured for a bare session, 2026-11; the rest is Python, absl, tqdm and allocator slack).
BASE_BYTES = 150 * 2**20
#: Decoded segments above this size make a TIFF unfit for window-by-window reading.
MAX_SEGMENT_BYTES = 256 * 2**20

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class NotStreamable(images.ImageError):
    """A file that cannot be read window by window (PNG/JPEG, one huge compressed strip, a stack, ...)."""


def parse_bytes(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 512 * 2**20, '2e9' -> 2000000000 (bytes)."""
    s = str(text).strip().upper().replace(" ", "")
    i = len(s)
    while i and s[i - 1].isalpha():
        i -= 1
    number, unit = s[:i], s[i:]
    if unit not in _UNITS or not number:
        raise ValueError(f"not a memory size: {text!r} (e.g. 1GB, 800MB, 2GiB).")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 1GB, 800MB, 2GiB).") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"memory size must be positive: {text!r}.")
    return int(value)


# --------------------------------------------------------------------------
# lazy readers
# --------------------------------------------------------------------------
class LazyImage:
    """An image on disk read window by window: `shape` (H, W, C), `dtype`, `read(y0, y1, x0, x1)`.

    `squeeze` is True for greyscale files (HxW): the restored output is HxW too.
    """

    name: str
    shape: tuple
    dtype: np.dtype
    squeeze: bool

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] as a (y1-y0, x1-x0, C) array in native byte order."""
        raise NotImplementedError

    def buffer_bytes(self, window: int) -> int:
        """Bytes the reader keeps between reads of window x window pixels (for `MemoryModel`)."""
        return 0

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_lazy(path) -> LazyImage:
    """Opens a TIFF or .npy file for window-by-window reading; `NotStreamable` says why not."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        fmt = images.sniff(f.read(16))
    if fmt == "npy":
        return _NpyImage(path)
    if fmt == "tiff":
        return _open_tiff(path)
    kind = fmt.upper() if fmt else "this file"
    raise NotStreamable(f"{path}: {kind} cannot be read tile by tile; convert it to a (tiled) TIFF "
                        "to restore it in bounded memory.")


class _NpyImage(LazyImage):
    """A .npy array, memory-mapped for each read (and unmapped after it)."""

    def __init__(self, path):
        self.name = path
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.dtype.hasobject or arr.ndim not in (2, 3):
            raise NotStreamable(f"{path}: .npy array of shape {arr.shape} and dtype {arr.dtype} is not an "
                                "HxW or HxWxC image.")
        self.squeeze = arr.ndim == 2
        self.shape = arr.shape if arr.ndim == 3 else (*arr.shape, 1)
        self.dtype = arr.dtype.newbyteorder("=")
        del arr

    def read(self, y0, y1, x0, x1):
        arr = np.load(self.name, mmap_mode="r", allow_pickle=False)
        window = np.array(arr[y0:y1, x0:x1], dtype=self.dtype)
        del arr
        return window if window.ndim == 3 else window[..., None]


def _open_tiff(path):
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
    except Exception as err:  # corrupt files raise many types
        raise images.ImageError(f"{path}: could not decode TIFF data ({type(err).__name__}: {err}).") from err
    try:
        axes = "".join(a for a, n in zip(series.axes, series.shape) if n != 1 or a in "YX")
        if len(series.pages) != 1 or axes not in ("YX", "YXS", "SYX", "CYX", "YXC"):
            raise NotStreamable(f"{path}: TIFF with axes {series.axes!r} {series.shape} is not a single 2-D "
                                "image (stacks/multi-page volumes are not supported).")
        page = series.keyframe
        if page.dtype is None or page.dtype.kind not in "uf" or page.is_subsampled or page.imagedepth != 1:
            raise NotStreamable(f"{path}: this TIFF's pixel format ({page.bitspersample}-bit, compression "
                                f"{page.compression.name}) cannot be read tile by tile.")
        size = os.path.getsize(path)
        if any(o + n > size for o, n in zip(page.dataoffsets, page.databytecounts)):
            raise images.ImageError(f"{path}: truncated TIFF: its {page.imagewidth}x{page.imagelength} pixels "
                                    f"point past the end of the file ({size} bytes).")
        if page.is_contiguous and page.fillorder == 1 and page.predictor == 1:
            if page.dataoffsets[0] + page.nbytes > size:
                raise images.ImageError(f"{path}: truncated TIFF ({page.nbytes} bytes of pixels, "
                                        f"{size} in the file).")
            return _ContiguousTiff(path, tif, page)
        return _SegmentedTiff(path, tif, page)
    except images.ImageError:
        tif.close()
        raise
    except Exception as err:
        tif.close()
        raise images.ImageError(f"{path}: could not decode TIFF data ({type(err).__name__}: {err}).") from err
    except BaseException:
        tif.close()
        raise


class _TiffImage(LazyImage):
    """Shared by both TIFF readers: geometry, channel order and the alpha channel."""

    def __init__(self, path, tif, page):
        self.name, self._tif, self._page = path, tif, page
        self._separate = page.planarconfig == 2 and page.samplesperpixel > 1
        self._samples = page.samplesperpixel
        self._file_dtype = page.dtype.newbyteorder(tif.byteorder)
        self.dtype = page.dtype.newbyteorder("=")
        self.height, self.width = page.imagelength, page.imagewidth
        keep = self._samples - 1 if self._samples in (2, 4) else self._samples  # drop alpha (as images.py)
        self._keep = keep
        self.shape = (self.height, self.width, keep)
        self.squeeze = keep == 1

    def _finish(self, window):
        """(h, w, samples) -> (h, w, C) without alpha, native byte order, contiguous."""
        return np.ascontiguousarray(window[..., :self._keep], dtype=self.dtype)

    def close(self):
        self._tif.close()


class _ContiguousTiff(_TiffImage):
    """Uncompressed, contiguous TIFF data: each window row is one `os.pread` (no mapping, no cache)."""

    def __init__(self, path, tif, page):
        super().__init__(path, tif, page)
        self._offset = page.dataoffsets[0]
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, y0, y1, x0, x1):
        item = self._file_dtype.itemsize
        planes = self._samples if self._separate else 1
        per_pixel = 1 if self._separate else self._samples
        out = np.empty((planes, y1 - y0, x1 - x0, per_pixel), self._file_dtype)
        row_bytes = (x1 - x0) * per_pixel * item
        for p in range(planes):
            plane = self._offset + p * self.height * self.width * item
            for r in range(y0, y1):
                start = plane + (r * self.width + x0) * per_pixel * item
                view = memoryview(out[p, r - y0]).cast("B")
                if os.preadv(self._fd, [view], start) != row_bytes:
                    raise images.ImageError(f"{self.name}: file is truncated (row {r}).")
        window = np.moveaxis(out[..., 0], 0, -1) if self._separate else out[0]
        return self._finish(window)

    def close(self):
        os.close(self._fd)
        super().close()


class _SegmentedTiff(_TiffImage):
    """Tiled or stripped TIFF (any compression tifffile decodes): decoded segments, a few kept in a cache."""

    def __init__(self, path, tif, page):
        super().__init__(path, tif, page)
        self._tiled = page.is_tiled
        self.seg_h = page.tilelength if self._tiled else min(page.rowsperstrip, self.height)
        self.seg_w = page.tilewidth if self._tiled else self.width
        self._rows = -(-self.height // self.seg_h)
        self._cols = -(-self.width // self.seg_w)
        per_pixel = 1 if self._separate else self._samples
        self._seg_bytes = self.seg_h * self.seg_w * per_pixel * self._file_dtype.itemsize
        if self._seg_bytes > MAX_SEGMENT_BYTES:
            raise NotStreamable(
                f"{path}: stored as {'tiles' if self._tiled else 'strips'} of {self.seg_w}x{self.seg_h} pixels "
                f"({self._seg_bytes / 2**20:.0f} MB each, decoded), too large to read piecewise; rewrite it as "
                "a tiled TIFF (e.g. 512x512 tiles).")
        self._decode = page.decode
        self._decode_args = {"_fullsize": self._tiled}
        if page.compression in (6, 7, 34892, 33007):  # JPEG flavours need their tables
            self._decode_args.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        self._cache = OrderedDict()
        self._capacity = 0

    def buffer_bytes(self, window):
        segs_y = -(-window // self.seg_h) + 1
        segs_x = -(-window // self.seg_w) + 2  # one window plus the column the next window reuses
        planes = self._samples if self._separate else 1
        return min(segs_y, self._rows) * min(segs_x, self._cols) * planes * self._seg_bytes

    def _segment(self, index):
        seg = self._cache.get(index)
        if seg is not None:
            self._cache.move_to_end(index)
            return seg
        page, fh = self._page, self._tif.filehandle
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        data = None
        if offset and count:
            with fh.lock:
                fh.seek(offset)
                data = fh.read(count)
        try:
            seg, _, shape = self._decode(data, index, **self._decode_args)
        except Exception as err:  # corrupt segments raise many types
            raise images.ImageError(f"{self.name}: could not decode TIFF segment {index} "
                                    f"({type(err).__name__}: {err}).") from err
        if seg is None:  # sparse file: a missing segment reads as zeros (as tifffile does)
            seg = np.zeros((1, *shape), self._file_dtype)
        seg = seg[0]  # (length, width, samples)
        self._cache[index] = seg
        while len(self._cache) > max(1, self._capacity // max(1, self._seg_bytes)):
            self._cache.popitem(last=False)
        return seg

    def read(self, y0, y1, x0, x1):
        self._capacity = max(self._capacity, self.buffer_bytes(max(y1 - y0, x1 - x0)))
        planes = self._samples if self._separate else 1
        per_pixel = 1 if self._separate else self._samples
        out = np.empty((planes, y1 - y0, x1 - x0, per_pixel), self._file_dtype)
        for p in range(planes):
            for r in range(y0 // self.seg_h, (y1 - 1) // self.seg_h + 1):
                for c in range(x0 // self.seg_w, (x1 - 1) // self.seg_w + 1):
                    seg = self._segment((p * self._rows + r) * self._cols + c)
                    sy0, sx0 = r * self.seg_h, c * self.seg_w
                    a0, a1 = max(y0, sy0), min(y1, sy0 + seg.shape[0])
                    b0, b1 = max(x0, sx0), min(x1, sx0 + seg.shape[1])
                    out[p, a0 - y0:a1 - y0, b0 - x0:b1 - x0] = seg[a0 - sy0:a1 - sy0, b0 - sx0:b1 - sx0]
        window = np.moveaxis(out[..., 0], 0, -1) if self._separate else out[0]
        return self._finish(window)

    def close(self):
        self._cache.clear()
        super().close()


# --------------------------------------------------------------------------
# memory budget -> tile size
# --------------------------------------------------------------------------
def activation_bytes_per_pixel(metadata) -> int:
    """Network activation bytes per input pixel at the peak of repeated onnxruntime CPU runs.

    Calibrated on ResidualCNN (deblur, greyscale) with onnxruntime 1.32's CPU
    provider and default session options (memory arena and memory pattern on):
    the first run at a window size grows the peak RSS over the session's
    baseline by 268 B/px for 8 and 16 features and 532 B/px for 32 features
    (256 to 2048 pixel windows), about four float32 tensors of the features
    rounded up to onnxruntime's blocked layout of 16 channels; from the second
    run at the same size the memory pattern allocates its own block next to
    the arena and the peak doubles (539 B/px for 16 features at 1024 px), and
    stays there. Hence 2 x 4 bytes x (4 x features rounded up to 16), plus two
    tensors of C*s^2 floats for an upsampling tail and the s^2-times larger
    output. Other backbones (SwinIR) are not calibrated: 128 floats per
    feature channel, a deliberate overestimate.
    """
    config = (metadata.backbone or {}).get("config", {})
    cls = (metadata.backbone or {}).get("class", "")
    out = metadata.channels * metadata.scale**2
    if "ResidualCNN" in cls or "features" in config:
        features = int(config.get("features", 64))
        return 2 * 4 * (4 * 16 * -(-max(features, out) // 16) + 2 * out + 8)
    embed = int(config.get("embed_dim", 64))
    return 2 * 4 * (64 * embed + 2 * out)


@dataclass(frozen=True)
class MemoryModel:
    """Peak resident bytes of a streamed restoration as a function of the core size (see module doc)."""

    activation_bytes_per_pixel: int
    context: int
    scale: int
    channels: int
    in_itemsize: int
    out_itemsize: int
    fixed_bytes: int  # process baseline and model weights
    reader_bytes: object = None  # window -> bytes the reader keeps (LazyImage.buffer_bytes), or None

    def peak(self, core: int) -> int:
        w = core + 2 * self.context
        c, s = self.channels, self.scale
        total = (self.fixed_bytes + self.activation_bytes_per_pixel * w * w
                 + w * w * c * (self.in_itemsize + 8) + w * w * s * s * c * 4
                 + core * core * s * s * c * (4 + 2 * self.out_itemsize))
        if self.reader_bytes is not None:
            total += self.reader_bytes(w)
        return int(total)


def memory_model(restorer, source: LazyImage | None = None, out_dtype=None) -> MemoryModel:
    """The `MemoryModel` of `restorer` (exact tiling only) reading `source` (None: no reader buffer)."""
    if restorer.metadata.tile_context is None:
        raise tiling.TilingError("a memory budget needs a model with a known receptive field (a CNN); "
                                 "this model's is global (SwinIR): choose --tile instead.")
    in_dtype = source.dtype if source is not None else np.dtype(np.float32)
    out_dtype = np.dtype(out_dtype) if out_dtype is not None else output_dtype(in_dtype)
    return MemoryModel(
        activation_bytes_per_pixel=activation_bytes_per_pixel(restorer.metadata),
        context=restorer.metadata.tile_context, scale=restorer.scale, channels=restorer.channels,
        in_itemsize=np.dtype(in_dtype).itemsize, out_itemsize=out_dtype.itemsize,
        fixed_bytes=BASE_BYTES + 2 * os.path.getsize(restorer.model_path),
        reader_bytes=source.buffer_bytes if source is not None else None)


def tile_unit(scale: int) -> int:
    """Cores are multiples of this many input pixels, so that TIFF tiles (core*scale) are multiples of 16."""
    return 16 // math.gcd(16, int(scale))


def core_for_budget(budget_bytes: int, model: MemoryModel, max_core: int = 8192) -> int:
    """The largest core (a multiple of `tile_unit`, at most `max_core`) whose `model.peak` fits the budget."""
    unit = tile_unit(model.scale)
    if model.peak(unit) > budget_bytes:
        raise tiling.TilingError(
            f"a memory budget of {budget_bytes / 1e6:.0f} MB is too small: even {unit}-pixel tiles need "
            f"about {model.peak(unit) / 1e6:.0f} MB (of which {model.fixed_bytes / 1e6:.0f} MB is the "
            "process and the model).")
    lo, hi = 1, max(1, max_core // unit)  # in units; peak is increasing in the core
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if model.peak(mid * unit) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo * unit


def core_for_tile(tile: int, context: int, scale: int) -> int:
    """The core of a `tile`-pixel window (--tile): tile - 2*context, rounded down to `tile_unit`, at least one unit."""
    unit = tile_unit(scale)
    return max(unit, (int(tile) - 2 * context) // unit * unit)


# --------------------------------------------------------------------------
# streamed restoration
# --------------------------------------------------------------------------
def output_dtype(in_dtype) -> np.dtype:
    """The dtype of the TIFF written for an input of `in_dtype` (as `images.encode_image` does)."""
    in_dtype = np.dtype(in_dtype)
    return in_dtype if in_dtype in TIFF_DTYPES else np.dtype(np.float32)


def count_tiles(source: LazyImage, core: int) -> int:
    h, w = source.shape[:2]
    return -(-h // min(core, h)) * -(-w // min(core, w))


def restore_to_tiff(restorer, source: LazyImage, dst, *, core: int, overwrite: bool = False,
                    callback=None, bigtiff_above: int = BIGTIFF_ABOVE) -> tuple:
    """Restores `source` into a tiled TIFF at `dst`, one window at a time; returns the output shape.

    core: input pixels per tile side (a multiple of `tile_unit(scale)`; see
    `core_for_tile`, `core_for_budget`); each output TIFF tile is
    core*scale pixels square (shrunk to the image, rounded to 16, for small images).
    bigtiff_above: tile bytes above which BigTIFF is written.
    callback(): once per tile (progress bars).
    The file appears only when complete (temporary name + rename).
    """
    import tifffile

    dst = os.fspath(dst)
    context = restorer.metadata.tile_context
    if context is None:
        raise tiling.TilingError("streaming needs exact tiling (a model with a known receptive field); "
                                 "this model's is global (SwinIR).")
    h, w, c = source.shape
    restorer._check(np.empty((1, 1) if source.squeeze else (1, 1, c), source.dtype))  # channel errors
    s = restorer.scale
    unit = tile_unit(s)
    if core % unit:
        raise tiling.TilingError(f"core {core} must be a multiple of {unit} for x{s} output tiles.")
    core_y = min(core, -(-h // unit) * unit)  # small images: smaller TIFF tiles, less padding
    core_x = min(core, -(-w // unit) * unit)
    in_kind = _kind(source.dtype, "input")
    compute_dtype = np.dtype(np.float32) if source.dtype == np.float16 else source.dtype
    out_kind = _kind(compute_dtype, "output")
    file_dtype = output_dtype(source.dtype)

    def from_float(y):
        tile = _from_float(y, out_kind, compute_dtype)
        return tile.astype(source.dtype).astype(file_dtype, copy=False)  # same rounding as restore + write

    tiles = tiling.iter_aligned_tiles(
        restorer.run, source.read, h, w, core_y=core_y, core_x=core_x, context=context, scale=s,
        channels=restorer.channels, to_float=lambda a: _to_float(a, in_kind), from_float=from_float,
        callback=callback)
    shape = (h * s, w * s) if source.squeeze else (h * s, w * s, c)
    tile_shape = (core_y * s, core_x * s)
    if source.squeeze:
        tiles = (t[..., 0] for t in tiles)
    n_tiles = -(-h // core_y) * -(-w // core_x)
    tile_bytes = n_tiles * tile_shape[0] * tile_shape[1] * c * file_dtype.itemsize
    photometric = "minisblack" if c == 1 else "rgb" if c == 3 else "minisblack"
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists (use --overwrite to replace it).")
    tmp = f"{dst}.tmp-{os.getpid()}"
    try:
        tifffile.imwrite(tmp, data=tiles, shape=shape, dtype=file_dtype, tile=tile_shape,
                         photometric=photometric, planarconfig=None if c in (1, 3) else "contig",
                         bigtiff=tile_bytes > bigtiff_above, maxworkers=1)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return shape
