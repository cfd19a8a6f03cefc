"""Checks that keep the image readers safe from broken and hostile files (no TensorFlow).

Both readers use them: `sei_tf.data.files` (training, simulation, restoration) and
`serving.images` (the batch restorer and HTTP uploads). They run on a file's
header, before anything large is allocated or decompressed:

- `sniff`: the format from the first bytes, so a PNG named .tif is reported as such;
- `max_pixels` / `check_pixels`: the pixel-count limit. A small file can claim a
  huge image (a "decompression bomb": a 60-byte PNG header of 100000 x 100000
  pixels asks for 10 GB); it is refused from its header;
- `check_tiff`: a TIFF's size, photometric interpretation and compressed segments
  (each must inflate to no more than the size its header gives);
- `check_npy_header`: a .npy header's pixel type, shape and data size.

The pixel limit is `DEFAULT_MAX_PIXELS` = 178,956,970 pixels (about 13400 x 13400),
the size above which Pillow itself refuses to open a file (2 x its default
`PIL.Image.MAX_IMAGE_PIXELS`). A float32 RGB image of that size takes 2.1 GB. Set
the environment variable SEI_TF_MAX_PIXELS (an integer; 0 = no limit) to change it
for every command, or pass `max_pixels=` to the readers (0 = no limit).
Pillow keeps its own limit on PNG and JPEG files whatever this setting says: it
warns (`DecompressionBombWarning`) above `PIL.Image.MAX_IMAGE_PIXELS` (89,478,485)
and refuses above twice that; larger images must be TIFF (or raise
`PIL.Image.MAX_IMAGE_PIXELS` in your own code).

Errors: every check takes the exception class to raise (`DataError` for the
training readers, `ImageError`/`ImageTooLarge` for serving), so each reader keeps
its one error type; messages start with the file name.
"""

import lzma
import math
import os
import zlib

import numpy as np

from sei_tf.errors import SeiTfError

DEFAULT_MAX_PIXELS = 178_956_970  # = 2 * PIL.Image.MAX_IMAGE_PIXELS's default: where Pillow refuses
MAX_PIXELS_ENV = "SEI_TF_MAX_PIXELS"

FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "npy": "NumPy .npy", "dicom": "DICOM"}

# TIFF photometric interpretations whose samples are not grey or RGB values.
_PHOTOMETRIC_REFUSED = {0: "min-is-white (inverted grey)", 3: "palette (indexed colour)", 4: "transparency mask",
                        5: "CMYK (separated)", 8: "CIELAB", 9: "ICCLAB", 10: "ITULAB"}
_YCBCR, _JPEG = 6, (6, 7, 33007, 34892)  # photometric YCbCr; the TIFF compressions that are JPEG
# TIFF compressions whose decoders (Python's zlib and lzma, tifffile's PackBits) allocate
# whatever the stream inflates to: their segments are inflated with a bound first.
_DEFLATE, _DEFLATE_OLD, _LZMA, _PACKBITS = 8, 32946, 34925, 32773


def sniff(head):
    """The format of a file from its first bytes (132 are enough): 'png', 'jpeg',
    'tiff', 'npy', 'dicom' (the 'DICM' marker after the 128-byte preamble) or None.

    DICOM comes first: its preamble may hold another format's header (DICOM-TIFF
    dual-format files; pydicom's CT_small.dcm starts with a TIFF header).
    """
    head = bytes(head[:132])
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    return None


def max_pixels(override=None, error=SeiTfError):
    """The largest image a reader decodes, in pixels (H * W), or None for no limit.

    `override` (an argument of the reader) wins; else the environment variable
    SEI_TF_MAX_PIXELS; else DEFAULT_MAX_PIXELS. 0 means no limit. A value that
    is not a non-negative integer raises `error`.
    """
    value = override
    if value is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise error(f"{MAX_PIXELS_ENV}={text!r} is not an integer number of pixels (0: no limit).") from None
    try:
        valid = not isinstance(value, bool) and int(value) == value and value >= 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise error(f"max_pixels must be a non-negative integer (0: no limit), got {value!r}.")
    return int(value) or None


def check_pixels(height, width, source, limit, error, too_large=None):
    """Raises `error` when a `height` x `width` image is empty, `too_large` (default `error`)
    when it has more than `limit` pixels (None: no limit)."""
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise error(f"{source}: the image is empty ({width} x {height} pixels).")
    if limit is not None and height * width > limit:
        raise (too_large or error)(
            f"{source}: {width} x {height} = {height * width:,} pixels exceeds the limit of {limit:,} pixels "
            f"(a corrupt or hostile header?). If the image is real, raise the limit (max_pixels, or "
            f"{MAX_PIXELS_ENV} in the environment; 0 = no limit).")


def check_tiff(tif, source, limit, error, too_large=None, max_pages=1):
    """Checks every page of the first series of an open `tifffile.TiffFile` before it is decoded.

    Refuses (with `error`): no image, more than `max_pages` pages (checked by
    walking at most `max_pages` + 1 IFDs: a file can chain millions), more pixels
    than `limit` (with `too_large`, default `error`), samples that are not grey/RGB
    values (palette, CMYK, min-is-white, Lab), and compressed segments that inflate
    to more bytes than the header's size allows (a zlib/LZMA/PackBits bomb, or a
    corrupt stream).
    """
    try:
        tif.pages[max_pages]
    except IndexError:
        pass
    else:
        raise error(f"{source}: a TIFF of more than {max_pages} page(s) (a stack or a multi-page file); save "
                    "one image per file.")
    if not tif.pages or not tif.series:
        raise error(f"{source}: the TIFF holds no image (corrupt file?).")
    for page in tif.series[0].pages:
        if page is None:
            continue
        key = page.keyframe  # the page itself, or the page whose tags a TiffFrame shares
        check_pixels(key.imagelength, key.imagewidth * max(1, key.imagedepth), source, limit, error, too_large)
        photometric = int(key.photometric)
        if photometric == _YCBCR and int(key.compression) not in _JPEG:  # only JPEG decoders give RGB
            raise error(f"{source}: YCbCr TIFF without JPEG compression; save it as greyscale or RGB.")
        if photometric in _PHOTOMETRIC_REFUSED:
            raise error(f"{source}: {_PHOTOMETRIC_REFUSED[photometric]} TIFF; save it as greyscale or RGB.")
        if int(key.compression) in (_DEFLATE, _DEFLATE_OLD, _LZMA, _PACKBITS):
            _check_segments(tif, key, page.dataoffsets, page.databytecounts, source, error)


def _check_segments(tif, key, offsets, counts, source, error):
    """Inflates each compressed segment with a bound: at most the segment's size in the header (`key`'s tags)."""
    bytes_per_sample = math.ceil(int(key.bitspersample) / 8)
    expected = int(np.prod(key.chunks)) * bytes_per_sample  # one strip or tile, uncompressed
    compression = int(key.compression)
    fh = tif.filehandle
    for offset, count in zip(offsets, counts):
        if count == 0:
            continue
        fh.seek(offset)
        data = fh.read(min(int(count), fh.size))
        if compression == _PACKBITS:
            size = _packbits_size(data, expected + 1)
        else:
            try:
                if compression == _LZMA:
                    size = len(lzma.LZMADecompressor().decompress(data, max_length=expected + 1))
                else:
                    size = len(zlib.decompressobj().decompress(data, expected + 1))
            except (zlib.error, lzma.LZMAError) as e:
                raise error(f"{source}: corrupt compressed TIFF data ({e}).") from None
        if size > expected:
            raise error(f"{source}: a compressed TIFF segment inflates to more than the {expected:,} bytes its "
                        "header allows (a decompression bomb, or a corrupt file).")


def _packbits_size(data, stop):
    """The length PackBits data decodes to, counted up to `stop` (no output is built)."""
    size, i, n = 0, 0, len(data)
    while i < n and size < stop:
        header = data[i]
        if header < 128:  # a literal run of header + 1 bytes
            size += header + 1
            i += header + 2
        elif header > 128:  # the next byte repeated 257 - header times
            size += 257 - header
            i += 2
        else:  # 128: no operation
            i += 1
    return size


def read_npy_header(fp):
    """(shape, dtype) from the header of a .npy file open at its start; leaves `fp` at the data."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    return shape, dtype


def check_npy_header(shape, dtype, data_bytes, source, limit, error, too_large=None):
    """Checks a .npy header (from `numpy.lib.format`) before the array is read.

    `data_bytes`: the bytes that follow the header. Refuses object and structured
    dtypes (they are never unpickled), shapes other than (H, W) and (H, W, C) (a
    leading 1 is allowed), more pixels than `limit`, and a file shorter than its
    header says (truncated) before allocating the array.
    """
    if dtype.hasobject or dtype.fields is not None:
        raise error(f"{source}: the .npy file holds Python objects or records ({dtype}); only numeric arrays "
                    "are images.")
    dims = tuple(shape[1:]) if len(shape) == 4 and shape[0] == 1 else tuple(shape)
    if len(dims) not in (2, 3):
        raise error(f"{source}: a .npy image must be (H, W) or (H, W, C), got shape {tuple(shape)}.")
    if len(dims) == 3 and dims[2] not in (1, 2, 3, 4):
        raise error(f"{source}: a .npy image has 1 or 3 channels (2 or 4 with alpha), got shape {tuple(shape)}.")
    check_pixels(dims[0], dims[1], source, limit, error, too_large)
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if data_bytes < needed:
        raise error(f"{source}: truncated .npy file: its header needs {needed:,} bytes of data, it holds "
                    f"{data_bytes:,}.")
