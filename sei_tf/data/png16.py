"""16-bit PNG files <-> uint16 NumPy arrays, with zlib and NumPy only (no TensorFlow).

Pillow reduces 16-bit colour PNGs to 8 bits, so sei-tf reads and writes 16-bit
PNGs itself. Every 16-bit PNG layout is handled: grey, grey + alpha, RGB and
RGBA, interlaced (Adam7) or not, with any of the five PNG row filters.

Arrays are uint16, shape (H, W, C), values 0..65535 as stored; C is 1 (grey),
2 (grey + alpha), 3 (RGB) or 4 (RGBA). Ancillary chunks (gamma, colour profile,
transparency, text, ...) are ignored when reading and never written.

Errors are `ValueError`s; callers add the file name.
"""

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"

# PNG colour type <-> channels, for the colour types that allow 16 bits per sample.
_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}
_COLOUR_TYPE = {c: t for t, c in _CHANNELS.items()}

# Adam7 passes: (first row, first column, row step, column step).
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def read_header(data):
    """(width, height, bit_depth, colour_type, interlace) from the IHDR chunk of PNG bytes.

    Reads the first 29 bytes only, so a pixel limit can be checked before decoding.
    """
    if data[:8] != SIGNATURE or len(data) < 29 or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file (bad signature or header)")
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, bit_depth, colour_type, interlace


def _chunks(data):
    """Yields (type, body) for every chunk up to IEND, checking lengths and CRCs."""
    pos = len(SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise ValueError("truncated file (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"truncated {kind!r} chunk")
        body = data[pos + 8:end]
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"CRC error in the {kind!r} chunk (corrupt file)")
        yield kind, body
        if kind == b"IEND":
            return
        pos = end + 4


def _paeth(a, b, c):
    """The PNG Paeth predictor of arrays of left (a), above (b) and above-left (c) bytes."""
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(rows, bpp):
    """Undoes the PNG row filters: uint8 (h, 1 + w * bpp) rows -> uint8 (h, w, bpp) bytes.

    A byte's predictor uses the decoded bytes to its left, above and above-left
    (one pixel = `bpp` bytes apart), so pixels on one anti-diagonal (row + column
    constant) only depend on earlier anti-diagonals: they are decoded together.
    """
    h = rows.shape[0]
    kinds = rows[:, 0]
    if kinds.max(initial=0) > 4:
        raise ValueError(f"unknown row filter type {kinds.max()}")
    filtered = rows[:, 1:].reshape(h, -1, bpp)
    w = filtered.shape[1]
    out = np.zeros((h + 1, w + 1, bpp), np.uint8)  # row 0 and column 0: the zeros outside the image
    for diagonal in range(h + w - 1):
        r = np.arange(max(0, diagonal - w + 1), min(h, diagonal + 1))
        c = diagonal - r
        left, above, above_left = (out[r + 1, c].astype(np.int16), out[r, c + 1].astype(np.int16),
                                   out[r, c].astype(np.int16))
        kind = kinds[r][:, None]
        predictor = np.select(
            [kind == 1, kind == 2, kind == 3, kind == 4],
            [left, above, (left + above) // 2, _paeth(left, above, above_left)], 0)
        out[r + 1, c + 1] = (filtered[r, c] + predictor) & 0xFF
    return out[1:, 1:]


def decode(data):
    """Decodes the bytes of a 16-bit PNG file into a uint16 array (H, W, C).

    Raises:
      ValueError: not a PNG, not 16 bits per sample, or a corrupt or truncated file.
    """
    width, height, bit_depth, colour_type, interlace = read_header(data)
    if bit_depth != 16 or colour_type not in _CHANNELS:
        raise ValueError(f"not a 16-bit grey or colour PNG (bit depth {bit_depth}, colour type {colour_type})")
    if interlace not in (0, 1) or width < 1 or height < 1:
        raise ValueError(f"invalid header ({width}x{height}, interlace method {interlace})")
    idat = []
    for kind, body in _chunks(data):
        if kind == b"IDAT":
            idat.append(body)
        elif kind[:1].isupper() and kind not in (b"IHDR", b"PLTE", b"IEND"):  # upper case: critical
            raise ValueError(f"unknown critical chunk {kind!r}")
    channels = _CHANNELS[colour_type]
    bpp = 2 * channels  # bytes per pixel
    passes = []  # (first row, first column, row step, column step, rows, columns) of the non-empty passes
    for row0, col0, row_step, col_step in _ADAM7 if interlace else ((0, 0, 1, 1),):
        h, w = -(-(height - row0) // row_step), -(-(width - col0) // col_step)
        if h > 0 and w > 0:  # a pass that holds no pixel of a small image is absent from the data
            passes.append((row0, col0, row_step, col_step, h, w))
    expected = sum(h * (1 + w * bpp) for *_, h, w in passes)
    # Inflate at most one byte more than the header allows: a small stream that inflates
    # to gigabytes (a decompression bomb) is refused without being inflated.
    inflater = zlib.decompressobj()
    raw = inflater.decompress(b"".join(idat), expected + 1)
    if len(raw) > expected:
        raise ValueError("the image data is longer than the header says (corrupt file?)")
    if len(raw) < expected:
        raise ValueError("the image data is shorter than the header says (truncated file?)")
    pixels = np.zeros((height, width, bpp), np.uint8)
    offset = 0
    for row0, col0, row_step, col_step, h, w in passes:
        size = h * (1 + w * bpp)
        rows = np.frombuffer(raw, np.uint8, size, offset).reshape(h, 1 + w * bpp)
        pixels[row0::row_step, col0::col_step] = _unfilter(rows, bpp)
        offset += size
    return pixels.view(">u2").astype(np.uint16)


def encode(array):
    """The bytes of a 16-bit PNG file holding a uint16 array (H, W) or (H, W, C), C in 1..4.

    Not interlaced; every row uses the Paeth filter; zlib level 6.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint16 or a.ndim != 3 or a.shape[-1] not in _COLOUR_TYPE or 0 in a.shape:
        raise ValueError(f"a 16-bit PNG holds uint16 (H, W, C) with C in 1..4, got {a.dtype} {a.shape}")
    h, w, channels = a.shape
    x = a.astype(">u2").view(np.uint8).reshape(h, w, 2 * channels).astype(np.int16)
    padded = np.zeros((h + 1, w + 1, 2 * channels), np.int16)
    padded[1:, 1:] = x
    filtered = (x - _paeth(padded[1:, :-1], padded[:-1, 1:], padded[:-1, :-1])) & 0xFF
    rows = np.concatenate([np.full((h, 1), 4, np.uint8), filtered.astype(np.uint8).reshape(h, -1)], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 16, _COLOUR_TYPE[channels], 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
