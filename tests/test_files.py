"""Tests of sei_tf.data.files and sei_tf.data.png16 that need no TensorFlow, and of
serving reading what sei_tf writes."""

import io
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from sei_tf import data
from sei_tf.data import png16
from serving import images as serving_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def _random16(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)


def _smooth16(h, w, channels):
    """Gradients plus a little noise: every PNG filter has something to predict."""
    yy, xx = np.mgrid[0:h, 0:w]
    planes = [(yy * 700 + xx * 300 + c * 5000 + _random16((h, w), c) % 50) % 65536 for c in range(channels)]
    return np.stack(planes, axis=-1).astype(np.uint16)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filtered_rows(a):
    """PNG rows of a uint16 (h, w, C) image, row i using filter type i % 5."""
    h, w, channels = a.shape
    x = a.astype(">u2").view(np.uint8).reshape(h, w, 2 * channels).astype(np.int64)
    p = np.zeros((h + 1, w + 1, 2 * channels), np.int64)
    p[1:, 1:] = x
    left, up, up_left = p[1:, :-1], p[:-1, 1:], p[:-1, :-1]
    predictors = [np.zeros_like(x), left, up, (left + up) // 2, _paeth(left, up, up_left)]
    rows = [np.concatenate([[i % 5], ((x[i] - predictors[i % 5][i]) & 0xFF).ravel()]) for i in range(h)]
    return np.array(rows, np.uint8).tobytes()


def _png_file(a, interlaced=False):
    """A 16-bit PNG built by hand: all five row filters, optionally Adam7-interlaced."""
    h, w, channels = a.shape
    if interlaced:
        raw = b"".join(_filtered_rows(a[r::dr, c::dc]) for r, c, dr, dc in ADAM7 if r < h and c < w)
    else:
        raw = _filtered_rows(a)
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (png16.SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, int(interlaced)))
            + chunk(b"tEXt", b"Comment\x00ancillary chunks are skipped")
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _pillow(png_bytes):
    with Image.open(io.BytesIO(png_bytes)) as im:
        im.load()
        return np.asarray(im)


# ------------------------------------------------------------------ no TensorFlow

def test_importing_data_and_files_does_not_import_tensorflow():
    code = ("import sys; import sei_tf.data, sei_tf.data.files, serving.images; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "import sei_tf.data as d; d.read_image; d.write_image; d.read_sidecar; d.diagnose; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported by a name'; print('ok')")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_tensorflow_names_still_load_on_first_use():
    assert callable(data.simulate) and callable(data.measurement_dataset) and callable(data.pair_files)
    assert "simulate" in dir(data)
    with pytest.raises(AttributeError, match="no_such_name"):
        data.no_such_name


# ------------------------------------------------------------------ 16-bit PNG

@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_round_trip_is_exact_and_readable_by_pillow(channels):
    a = _random16((9, 13, channels), seed=channels)
    blob = png16.encode(a)
    back = png16.decode(blob)
    assert back.dtype == np.uint16 and back.shape == a.shape
    np.testing.assert_array_equal(back, a)
    # Another decoder agrees (Pillow keeps 16-bit grey, and the high byte of colour).
    if channels == 1:
        np.testing.assert_array_equal(_pillow(blob), a[..., 0])
    elif channels == 3:
        np.testing.assert_array_equal(_pillow(blob), (a >> 8).astype(np.uint8))


@pytest.mark.parametrize("interlaced", [False, True])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png16_decodes_every_filter_and_interlacing(channels, interlaced):
    a = _smooth16(21, 19, channels)  # odd sizes: Adam7 passes of unequal sizes
    blob = _png_file(a, interlaced)
    if channels == 1:  # the hand-made file is valid: Pillow reads it back exactly
        np.testing.assert_array_equal(_pillow(blob), a[..., 0])
    np.testing.assert_array_equal(png16.decode(blob), a)


def test_png16_tiny_interlaced_image_skips_empty_passes():
    a = _random16((1, 2, 3))
    np.testing.assert_array_equal(png16.decode(_png_file(a, interlaced=True)), a)


def test_png16_reads_16bit_grey_written_by_pillow(tmp_path):
    a = _smooth16(30, 40, 1)[..., 0]
    Image.fromarray(a).save(tmp_path / "g.png")
    np.testing.assert_array_equal(png16.decode((tmp_path / "g.png").read_bytes())[..., 0], a)


def test_png16_refuses_corrupt_truncated_and_8bit_files():
    blob = png16.encode(_random16((8, 8, 3)))
    with pytest.raises(ValueError, match="CRC"):
        png16.decode(blob[:40] + bytes([blob[40] ^ 1]) + blob[41:])
    with pytest.raises(ValueError, match="truncated"):
        png16.decode(blob[:-20])
    with pytest.raises(ValueError, match="not a PNG"):
        png16.decode(b"GIF89a" + blob[6:])
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="bit depth 8"):
        png16.decode(buf.getvalue())
    with pytest.raises(ValueError, match="uint16"):
        png16.encode(np.zeros((4, 4, 3), np.uint8))


def test_read_image_names_a_corrupt_16bit_png(tmp_path):
    data.write_image(tmp_path / "x.png", np.full((8, 8, 3), 0.5, np.float32), bit_depth=16)
    blob = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(blob[:-30])
    with pytest.raises(data.DataError, match="cut.png"):
        data.read_image(tmp_path / "cut.png")


def test_read_image_16bit_alpha_dropped(tmp_path):
    a = _random16((6, 7, 4), seed=3)
    (tmp_path / "rgba.png").write_bytes(_png_file(a))
    np.testing.assert_array_equal(data.read_image(tmp_path / "rgba.png"), a[..., :3] / np.float32(65535))
    (tmp_path / "la.png").write_bytes(_png_file(a[..., :2]))
    np.testing.assert_array_equal(data.read_image(tmp_path / "la.png"), a[..., :1] / np.float32(65535))


def test_png16_files_are_read_exactly_by_libpng():
    import tensorflow as tf  # TensorFlow's PNG decoder is libpng

    for channels in (1, 3):
        a = _random16((11, 17, channels), seed=channels)
        np.testing.assert_array_equal(tf.io.decode_png(png16.encode(a), dtype=tf.uint16).numpy(), a)
    # And the other way: libpng's files (adaptive filters) are decoded exactly.
    a = _smooth16(33, 45, 3)
    np.testing.assert_array_equal(png16.decode(tf.io.encode_png(a).numpy()), a)


def test_reads_the_ground_truth_that_sei_tf_0_1_wrote_with_tensorflow():
    import tensorflow as tf

    path = os.path.join(REPO, "tests", "fixtures", "v0_1", "sim_blur", "ground_truth", "a.png")
    with open(path, "rb") as f:
        stored = tf.io.decode_png(f.read(), dtype=tf.uint16).numpy()
    assert stored.shape[-1] == 3
    np.testing.assert_array_equal(data.read_image(path), stored / np.float32(65535))
    np.testing.assert_array_equal(serving_images.read_image(path), stored)


# ------------------------------------------------------------------ serving reads what sei_tf writes

@pytest.mark.parametrize("channels", [1, 3])
def test_serving_reads_16bit_png_written_by_sei_tf_exactly(tmp_path, channels):
    a = np.random.default_rng(channels).random((10, 14, channels)).astype(np.float32)
    data.write_image(tmp_path / "x.png", a, bit_depth=16)
    got = serving_images.read_image(tmp_path / "x.png")
    expected = np.round(a * 65535).astype(np.uint16)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, expected[..., 0] if channels == 1 else expected)
    # And sei_tf reads back the same values.
    np.testing.assert_array_equal(data.read_image(tmp_path / "x.png"), expected / np.float32(65535))


def test_serving_reads_16bit_rgba_png_without_alpha():
    a = _random16((5, 6, 4), seed=5)
    np.testing.assert_array_equal(serving_images.decode_image(_png_file(a)), a[..., :3])


def test_serving_checks_16bit_png_size_before_decoding():
    blob = png16.encode(_random16((8, 8, 3)))
    huge = bytearray(blob)
    huge[16:24] = struct.pack(">II", 100000, 100000)  # header claims 10^10 pixels; CRC now wrong
    with pytest.raises(serving_images.ImageTooLarge):
        serving_images.decode_image(bytes(huge), max_pixels=10**6)
    with pytest.raises(serving_images.ImageTooLarge):
        serving_images.decode_image(blob, max_pixels=63)
    assert serving_images.decode_image(blob, max_pixels=64).shape == (8, 8, 3)
    with pytest.raises(serving_images.ImageError, match="could not decode PNG"):
        serving_images.decode_image(blob[:-20])
