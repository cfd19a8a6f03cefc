"""Tests of sei_tf.data: file formats, errors, datasets, sidecars, diagnostics."""

import json
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from sei_tf import data, transforms
from sei_tf.data import DataError


def _smooth_rgb(h=24, w=32):
    """A smooth colour image (JPEG-friendly), values in [0.1, 0.9]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([0.1 + 0.8 * yy / (h - 1), 0.1 + 0.8 * xx / (w - 1),
                     0.5 + 0.3 * np.sin(xx / 5.0) * np.cos(yy / 7.0)], axis=-1).astype(np.float32)


def _random(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _q(a, levels):
    return (np.round(np.clip(a, 0, 1) * levels) / levels).astype(np.float32)


# ------------------------------------------------------------------ listing

def test_list_images_sorted_and_filtered(tmp_path):
    for name in ["b.png", "a.tif", "c.npy", ".hidden.png", "notes.txt", data.SIDECAR_NAME]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    files = data.list_images(tmp_path)
    assert [os.path.basename(f) for f in files] == ["a.tif", "b.png", "c.npy"]
    # A list keeps its order.
    files = data.list_images([tmp_path / "c.npy", tmp_path / "a.tif"])
    assert [os.path.basename(f) for f in files] == ["c.npy", "a.tif"]


def test_list_images_empty_folder_names_folder_and_formats(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError) as e:
        data.list_images(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and ".png" in msg and ".dcm" in msg and ".txt" in msg


def test_list_images_missing_and_unsupported(tmp_path):
    with pytest.raises(DataError, match="Not found"):
        data.list_images([tmp_path / "nope.png"])
    (tmp_path / "x.bmp").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported"):
        data.list_images([tmp_path / "x.bmp"])


def test_list_images_comma_separated_string(tmp_path):
    for name in ["a.png", "b.tif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "c.npy").write_bytes(b"x")
    a, b, c = str(tmp_path / "a.png"), str(tmp_path / "b.tif"), str(tmp_path / "d1" / "c.npy")
    assert data.list_images(f"{b},{a},") == [b, a]  # order kept, empty parts dropped
    assert data.list_images(f"{tmp_path / 'd1'},{a}") == [c, a]  # folders expanded
    assert data.pair_files(f"{a},{c}", f"{c},{a}") == [("a", a, a), ("c", c, c)]
    # An existing path is one path, even with a comma in its name.
    odd = tmp_path / "x,y"
    odd.mkdir()
    (odd / "e.png").write_bytes(b"x")
    assert data.list_images(str(odd)) == [str(odd / "e.png")]
    with pytest.raises(DataError, match="Not found: .*nope.png"):
        data.list_images(f"{a},{tmp_path / 'nope.png'}")
    with pytest.raises(DataError, match="empty list"):
        data.list_images(",")


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("name,array,bit_depth,levels", [
    ("rgb8.png", _random((9, 13, 3)), None, 255),
    ("grey8.png", _random((9, 13, 1)), 8, 255),
    ("rgb16.png", _random((9, 13, 3)), 16, 65535),
    ("grey16.png", _random((9, 13, 1)), 16, 65535),
    ("rgb8.tif", _random((9, 13, 3)), 8, 255),
    ("grey16.tiff", _random((9, 13, 1)), 16, 65535),
    ("float.tif", _random((9, 13, 3)) * 3 - 1, None, None),  # unclipped values kept
    ("float_grey.tif", _random((9, 13, 1)) - 0.5, 32, None),
    ("array.npy", _random((9, 13, 3)) * 2 - 0.5, None, None),
])
def test_write_read_round_trip(tmp_path, name, array, bit_depth, levels):
    path = tmp_path / name
    data.write_image(path, array, bit_depth=bit_depth)
    back = data.read_image(path)
    assert back.dtype == np.float32 and back.shape == array.shape
    expected = array if levels is None else _q(array, levels)
    np.testing.assert_array_equal(back, expected)


def test_16bit_png_keeps_16bit_precision(tmp_path):
    # Values between 8-bit levels: an 8-bit decode (Pillow's RGB mode) would lose them.
    a = np.full((4, 5, 3), 1000.0 / 65535.0, np.float32)
    a[0, 0] = [1.0 / 65535, 2.0 / 65535, 3.0 / 65535]
    data.write_image(tmp_path / "x.png", a, bit_depth=16)
    np.testing.assert_array_equal(data.read_image(tmp_path / "x.png"), a)


def test_jpeg_round_trip_is_approximate(tmp_path):
    a = _smooth_rgb()
    data.write_image(tmp_path / "x.jpg", a)
    back = data.read_image(tmp_path / "x.jpg")
    assert back.shape == a.shape
    assert np.abs(back - a).mean() < 0.01 and np.abs(back - a).max() < 0.08


def test_write_batch_of_one_and_clipping(tmp_path):
    a = _random((1, 6, 7, 3)) * 2 - 0.5
    data.write_image(tmp_path / "x.png", a)
    np.testing.assert_array_equal(data.read_image(tmp_path / "x.png"), _q(a[0], 255))


def test_pillow_and_tifffile_files(tmp_path):
    rng = np.random.default_rng(1)
    # 16-bit greyscale PNG written by Pillow.
    g16 = rng.integers(0, 65536, (7, 8), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(data.read_image(tmp_path / "g16.png")[..., 0], g16 / np.float32(65535))
    # RGBA -> RGB (alpha dropped).
    rgba = rng.integers(0, 256, (7, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(data.read_image(tmp_path / "rgba.png"), rgba[..., :3] / np.float32(255))
    # Palette -> RGB.
    pal = Image.fromarray(rgba[..., :3], "RGB").convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(tmp_path / "pal.png")
    expected = np.asarray(pal.convert("RGB")) / np.float32(255)
    np.testing.assert_array_equal(data.read_image(tmp_path / "pal.png"), expected)
    # TIFF integer and float files written by tifffile directly.
    u16 = rng.integers(0, 65536, (7, 8, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "u16.tif", u16, photometric="rgb")
    np.testing.assert_array_equal(data.read_image(tmp_path / "u16.tif"), u16 / np.float32(65535))
    u8 = rng.integers(0, 256, (7, 8), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "u8.tif", u8)
    np.testing.assert_array_equal(data.read_image(tmp_path / "u8.tif")[..., 0], u8 / np.float32(255))
    f32 = rng.normal(0.5, 1.0, (7, 8)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f32.tif", f32)
    np.testing.assert_array_equal(data.read_image(tmp_path / "f32.tif")[..., 0], f32)
    # .npy integer scaling and 2-D layout.
    np.save(tmp_path / "u16.npy", u16)
    np.testing.assert_array_equal(data.read_image(tmp_path / "u16.npy"), u16 / np.float32(65535))
    np.save(tmp_path / "f.npy", f32.astype(np.float64))
    np.testing.assert_array_equal(data.read_image(tmp_path / "f.npy")[..., 0], f32)


def _ct_with_rescale(path, slope, intercept, bits_stored=None):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if bits_stored:  # unsigned, fewer bits (CT_small's values 128..2191 fit in 12 bits)
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = raw.astype(np.uint16).tobytes()
    ds.save_as(path)
    return raw


def test_dicom_round_trip_with_rescale(tmp_path):
    path = tmp_path / "ct.dcm"
    raw = _ct_with_rescale(path, slope=2.5, intercept=-3000)
    lo, hi = data.dicom_value_range(path)
    # CT_small stores signed 16-bit values: raw range [-32768, 32767].
    assert (lo, hi) == (-32768 * 2.5 - 3000, 32767 * 2.5 - 3000)
    x = data.read_image(path)
    assert x.shape == (128, 128, 1) and x.dtype == np.float32
    modality = raw * 2.5 - 3000
    np.testing.assert_allclose(x[..., 0], (modality - lo) / (hi - lo), atol=1e-7)
    # Documented inverse: v = lo + x (hi - lo) recovers the modality values (HU).
    np.testing.assert_allclose(lo + x[..., 0].astype(np.float64) * (hi - lo), modality, atol=0.01)
    # A window in modality units replaces the header range; values outside are kept.
    w = data.read_image(path, dicom_window=(-1024, 3071))
    np.testing.assert_allclose(w[..., 0], (modality + 1024) / 4095, atol=1e-6)
    assert w.min() < 0  # this file's modified intercept pushes some values below -1024


def test_dicom_bits_stored_and_extensionless(tmp_path):
    path = tmp_path / "slice0001"  # DICOM folders often have no extensions
    raw = _ct_with_rescale(path, slope=1, intercept=-1024, bits_stored=12)
    assert data.list_images(tmp_path) == [str(path)]
    x = data.read_image(path)
    assert data.dicom_value_range(path) == (-1024.0, 3071.0)  # unsigned 12 bits, HU
    np.testing.assert_allclose(x[..., 0], raw / 4095, atol=1e-6)


# ------------------------------------------------------------------ errors

def test_corrupt_and_truncated_png(tmp_path):
    data.write_image(tmp_path / "ok.png", _random((32, 32, 3)))
    blob = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(blob[: len(blob) // 2])
    mid = len(blob) // 2
    (tmp_path / "corrupt.png").write_bytes(blob[:mid] + bytes(200) + blob[mid + 200:])
    (tmp_path / "garbage.png").write_bytes(b"definitely not an image" * 4)
    for name in ["truncated.png", "corrupt.png", "garbage.png"]:
        with pytest.raises(DataError) as e:
            data.read_image(tmp_path / name)
        assert name in str(e.value)


def test_truncated_tiff_npy_dicom(tmp_path):
    data.write_image(tmp_path / "ok.tif", _random((32, 32, 3)))
    blob = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(blob[: len(blob) // 2])
    np.save(tmp_path / "ok.npy", _random((32, 32)))
    blob = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(blob[: len(blob) // 2])
    _ct_with_rescale(tmp_path / "ok.dcm", 1, -1024)
    blob = (tmp_path / "ok.dcm").read_bytes()
    (tmp_path / "t.dcm").write_bytes(blob[:-5000])
    (tmp_path / "g.dcm").write_bytes(b"nope" * 100)
    for name in ["t.tif", "t.npy", "t.dcm", "g.dcm"]:
        with pytest.raises(DataError) as e:
            data.read_image(tmp_path / name)
        assert name in str(e.value)


def test_nan_and_inf_rejected(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((8, 8), np.nan, np.float32))
    with pytest.raises(DataError, match="nan.npy.*NaN"):
        data.read_image(tmp_path / "nan.npy")
    a = _random((8, 8))
    a[3, 3] = np.inf
    tifffile.imwrite(tmp_path / "inf.tif", a)
    with pytest.raises(DataError, match="inf.tif.*NaN or Inf"):
        data.read_image(tmp_path / "inf.tif")
    with pytest.raises(DataError, match="NaN"):
        data.write_image(tmp_path / "out.tif", a)


def test_write_errors(tmp_path):
    with pytest.raises(DataError, match="bit_depth"):
        data.write_image(tmp_path / "x.jpg", _random((4, 4)), bit_depth=16)
    with pytest.raises(DataError, match=".bmp"):
        data.write_image(tmp_path / "x.bmp", _random((4, 4)))
    with pytest.raises(DataError, match="shape"):
        data.write_image(tmp_path / "x.png", _random((4, 4, 2, 2)))


def test_channel_mismatch_is_an_error(tmp_path):
    data.write_image(tmp_path / "grey.png", _random((16, 16, 1)))
    with pytest.raises(DataError, match="grey.png.*greyscale.*channels=3"):
        data.load_images(tmp_path / "grey.png", channels=3)
    data.write_image(tmp_path / "rgb.png", _random((16, 16, 3)))
    with pytest.raises(DataError, match="rgb.png.*3 channels.*channels=1"):
        data.load_images([tmp_path / "rgb.png"], channels=1)
    # A grey picture stored as RGB is still refused, with a hint.
    data.write_image(tmp_path / "greyrgb.png", np.repeat(_random((16, 16, 1)), 3, axis=-1))
    with pytest.raises(DataError, match="identical"):
        data.load_images([tmp_path / "greyrgb.png"], channels=1)
    # channels=None refuses mixed folders.
    with pytest.raises(DataError, match="mix"):
        data.load_images([tmp_path / "grey.png", tmp_path / "rgb.png"])
    with pytest.raises(DataError, match="greyscale"):
        data.measurement_dataset(tmp_path / "grey.png", 8, 1, channels=3)


# ------------------------------------------------------------------ datasets

def _labelled_images(n=5, c=3):
    """Image i holds i*10000 + position: a crop tells its image and origin."""
    images = []
    for i in range(n):
        h, w = 20 + i, 24 + 2 * i
        base = (i * 10000 + np.arange(h * w, dtype=np.float32).reshape(h, w))
        images.append(np.repeat(base[:, :, None], c, axis=-1).astype(np.float32))
    return images


def _locate(patch, images):
    v = float(patch[0, 0, 0])
    i = int(v // 10000)
    pos = int(v - i * 10000)
    row, col = divmod(pos, images[i].shape[1])
    return i, row, col


def test_measurement_dataset_shapes_crops_and_drop_remainder():
    images = _labelled_images()
    ds = data.measurement_dataset(images, patch_size=8, batch_size=2, channels=3, repeat=False)
    assert tuple(ds.element_spec.shape) == (2, 8, 8, 3)
    batches = [b.numpy() for b in ds]
    assert len(batches) == 2  # 5 crops -> 2 batches of 2, the last one dropped
    seen = []
    for b in batches:
        assert b.dtype == np.float32 and b.shape == (2, 8, 8, 3)
        for patch in b:
            i, row, col = _locate(patch, images)
            np.testing.assert_array_equal(patch, images[i][row:row + 8, col:col + 8])
            seen.append(i)
    assert len(set(seen)) == 4  # one pass visits distinct images


def test_measurement_dataset_covers_every_image_per_pass():
    images = _labelled_images()
    ds = data.measurement_dataset(images, 8, 1, 3, seed=3, repeat=False, crops_per_image=2)
    seen = sorted(_locate(b[0], images)[0] for b in ds.as_numpy_iterator())
    assert seen == sorted(list(range(5)) * 2)


def test_measurement_dataset_is_deterministic():
    images = _labelled_images()

    def first(seed, n=6):
        ds = data.measurement_dataset(images, 8, 3, 3, seed=seed)
        return np.stack([b for _, b in zip(range(n), ds.as_numpy_iterator())])

    np.testing.assert_array_equal(first(7), first(7))
    assert not np.array_equal(first(7), first(8))
    # Crops vary over the stream: not the same crop every pass.
    stream = first(7, n=20)
    assert len({tuple(_locate(p, images)) for p in stream.reshape(-1, 8, 8, 3)}) > 20


def test_measurement_dataset_from_files_and_too_small(tmp_path):
    data.write_image(tmp_path / "a.tif", _random((20, 30, 1)))
    data.write_image(tmp_path / "b.tif", _random((12, 30, 1)))
    ds = data.measurement_dataset(tmp_path, 12, 2, channels=1, repeat=False)
    assert [b.shape for b in ds.as_numpy_iterator()] == [(2, 12, 12, 1)]
    with pytest.raises(DataError) as e:
        data.measurement_dataset(tmp_path, 16, 2, channels=1, factor=4)
    msg = str(e.value)
    assert "b.tif" in msg and "12x30" in msg and "16x16" in msg and "64x64" in msg
    with pytest.raises(DataError, match="empty"):
        data.measurement_dataset(tmp_path, 8, 4, channels=1, repeat=False)


def _write_pairs(folder, factor, n=3, c=3):
    (folder / "y").mkdir()
    (folder / "x").mkdir()
    xs = []
    for i in range(n):
        x = _random((16 * factor + 4 * i * factor, 20 * factor, c), seed=i)
        np.save(folder / "x" / f"img{i}.npy", x)
        np.save(folder / "y" / f"img{i}.npy", x[::factor, ::factor])
        xs.append(x)
    return folder / "y", folder / "x", xs


def test_paired_dataset(tmp_path):
    ydir, xdir, xs = _write_pairs(tmp_path, factor=2)
    stems = [s for s, _, _ in data.pair_files(ydir, xdir)]
    assert stems == ["img0", "img1", "img2"]
    pairs = list(data.paired_dataset(ydir, xdir, channels=3, factor=2).as_numpy_iterator())
    assert len(pairs) == 3
    for (y, x), x_true in zip(pairs, xs):
        assert y.shape == (1, x_true.shape[0] // 2, x_true.shape[1] // 2, 3)
        np.testing.assert_array_equal(x[0], x_true)
    # Deblurring pairs must have the same size.
    with pytest.raises(DataError, match="must be the measurement size"):
        data.paired_dataset(ydir, xdir, channels=3, factor=1)
    with pytest.raises(DataError, match="3 times"):
        data.paired_dataset(ydir, xdir, channels=3, factor=3)


def test_paired_dataset_missing_partner(tmp_path):
    ydir, xdir, _ = _write_pairs(tmp_path, factor=2)
    os.remove(xdir / "img1.npy")
    with pytest.raises(DataError, match="without ground truth.*img1"):
        data.paired_dataset(ydir, xdir, channels=3, factor=2)


def test_paired_patch_dataset_is_aligned(tmp_path):
    ydir, xdir, _ = _write_pairs(tmp_path, factor=3, c=1)
    ds = data.paired_patch_dataset(ydir, xdir, patch_size=6, batch_size=2, channels=1, factor=3, seed=1)
    assert tuple(ds.element_spec[0].shape) == (2, 6, 6, 1)
    assert tuple(ds.element_spec[1].shape) == (2, 18, 18, 1)
    for y, x in ds.take(3).as_numpy_iterator():
        np.testing.assert_array_equal(y, x[:, ::3, ::3])
    again = next(iter(data.paired_patch_dataset(ydir, xdir, 6, 2, 1, factor=3, seed=1)))
    first = next(iter(ds))
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())


# ------------------------------------------------------------------ sidecar

def test_sidecar_and_noise_level(tmp_path):
    assert data.read_sidecar(tmp_path) is None
    (tmp_path / data.SIDECAR_NAME).write_text("{not json")
    with pytest.raises(DataError, match="sidecar"):
        data.read_sidecar(tmp_path)
    meta = {"format_version": 1, "task": "sr", "factor": 3, "noise_sigma": 5.0}
    (tmp_path / data.SIDECAR_NAME).write_text(json.dumps(meta))
    meta = data.read_sidecar(tmp_path)
    assert data.check_noise_level(meta, None) == 5.0
    assert data.check_noise_level(meta, 5) == 5.0
    with pytest.raises(DataError, match="noise_sigma=25 contradicts.*sei_tf.json.*sigma 5/255"):
        data.check_noise_level(meta, 25)
    with pytest.raises(DataError, match="contradicts"):
        data.physics_from_sidecar(meta, noise_sigma=10)
    op = data.physics_from_sidecar(meta)
    assert op.task == "sr" and op.factor == 3 and op.noise_sigma == 5.0
    assert data.check_noise_level(None, 2) == 2.0
    (tmp_path / data.SIDECAR_NAME).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(DataError, match="newer"):
        data.read_sidecar(tmp_path)


# ------------------------------------------------------------------ diagnostics

@pytest.fixture(scope="module")
def camera_crop():
    import skimage.data

    return (skimage.data.camera()[96:352, 96:352] / 255.0).astype(np.float32)[:, :, None]


def test_noise_estimate_on_a_real_photo(camera_crop):
    rng = np.random.default_rng(0)
    for sigma in (5.0, 10.0, 25.0):
        noisy = camera_crop + rng.normal(0, sigma / 255, camera_crop.shape).astype(np.float32)
        est = data.estimate_noise_sigma(noisy)
        # Texture biases the estimate upwards (documented), never far below the truth.
        assert 0.95 * sigma <= est <= 1.3 * sigma + 0.5, (sigma, est)


def test_noise_estimate_is_biased_up_on_sr_measurements():
    # A x4 SR measurement of a textured photo (64 px): texture reads as noise.
    import skimage.data

    from sei_tf import physics

    x = data.resize_shorter_side(skimage.data.astronaut() / np.float32(255), 256)
    op = physics.make("sr", factor=4, noise_sigma=5)
    y = op(x[None], seed=[0, 1])[0].numpy()
    est = data.estimate_noise_sigma(y)
    assert 5.5 < est < 10.0, est  # documented: up to ~+4/255 at sigma 5
    assert data.estimate_noise_sigma(op.A(x[None])[0].numpy()) > 3.0  # even without noise


def test_diagnose_noise_level(camera_crop):
    noisy = camera_crop + np.random.default_rng(1).normal(0, 10 / 255, camera_crop.shape).astype(np.float32)
    assert data.diagnose([noisy], 10) == []
    assert data.diagnose(noisy, 10) == []  # a single array is accepted too
    assert any("noise sigma 25" in w for w in data.diagnose([noisy], 25))
    assert any("noise sigma 0" in w for w in data.diagnose([noisy], 0))
    # A clean 8-bit photo declared noise-free raises nothing (estimate below the floor).
    assert data.diagnose([camera_crop], 0) == []


def test_diagnose_tells_the_noise_model(camera_crop):
    # Simulated blur (Gaussian PSF 2 px) measurements of the photo, Gaussian or Poisson-Gaussian noise.
    from scipy import ndimage

    z = 0.05 + 0.9 * ndimage.gaussian_filter(camera_crop[:, :, 0], 2.0, mode="wrap")[:, :, None]
    rng = np.random.default_rng(4)
    gaussian = z + rng.normal(0, 8 / 255, z.shape)
    result, sentence = data.noise_model([gaussian])
    assert result["model"] == "gaussian" and "Gaussian noise of sigma" in sentence, sentence
    assert abs(result["sigma"] - 8) < 1
    assert data.diagnose([gaussian], 8) == []
    assert any("look like Gaussian" in w for w in data.diagnose([gaussian], 8, noise_model_name="poisson_gaussian"))

    photon = 0.01 * rng.poisson(z / 0.01) + rng.normal(0, 2 / 255, z.shape)  # gain 0.01, sigma 2
    result, sentence = data.noise_model([photon])
    assert result["model"] == "poisson_gaussian" and "rises with the signal" in sentence, sentence
    assert result["gain"] == pytest.approx(0.01, rel=0.2)
    assert "--noise poisson_gaussian:gain=" in sentence
    # Declared Gaussian (today's default): a warning naming the model; declared Poisson-Gaussian: none.
    assert any("look like Poisson-Gaussian" in w for w in data.diagnose([photon], 15))
    assert not any("Poisson-Gaussian" in w for w in data.diagnose([photon], 15, noise_model_name="poisson_gaussian"))

    # Too little data: it says it cannot tell.
    assert data.noise_model([camera_crop[:8, :8]])[0] is None
    assert "cannot be told" in data.noise_model([camera_crop[:8, :8]])[1]


def test_diagnose_clipping(camera_crop, tmp_path):
    noisy = camera_crop + np.random.default_rng(2).normal(0, 5 / 255, camera_crop.shape).astype(np.float32)
    assert not any("clipped" in w for w in data.diagnose([noisy], 5))
    clipped = np.clip(noisy * 1.3 - 0.1, 0, 1)
    warnings = data.diagnose([clipped], 5)
    assert any("clipped" in w for w in warnings)
    data.write_image(tmp_path / "c.tif", clipped)
    assert any("c.tif" in w and "clipped" in w for w in data.diagnose(tmp_path, 5))


def test_sample_ground_truth(tmp_path):
    paths = data.sample_ground_truth(tmp_path, names=["chelsea", "camera"])
    assert [os.path.basename(p) for p in paths] == ["chelsea.png", "camera.png"]
    assert data.read_image(paths[0]).shape == (300, 451, 3)
    assert data.read_image(paths[1]).shape == (512, 512, 1)
    with pytest.raises(DataError, match="Unknown sample"):
        data.sample_ground_truth(tmp_path, names=["lena"])


def test_dihedral_augmentation_rotates_and_flips_the_crops_it_would_take_anyway():
    images = _labelled_images()
    plain = np.stack([b for _, b in zip(range(12), data.measurement_dataset(images, 8, 2, 3, seed=5).as_numpy_iterator())])
    aug = np.stack([b for _, b in zip(range(12), data.measurement_dataset(images, 8, 2, 3, seed=5, dihedral=True)
                                       .as_numpy_iterator())])
    used = set()
    for p, a in zip(plain.reshape(-1, 8, 8, 3), aug.reshape(-1, 8, 8, 3)):
        matches = [d for d in range(8) if np.array_equal(transforms.dihedral(p, d).numpy(), a)]
        assert matches, "an augmented crop is a rotation/flip of the crop taken without augmentation"
        used.add(matches[0])
    assert len(used) >= 6  # 24 crops: (almost) every element of the group is drawn


def test_paired_dihedral_augmentation_transforms_measurement_and_truth_alike(tmp_path):
    from sei_tf import physics

    op = physics.SuperResolution(2, noise_sigma=0.0)
    for k, name in enumerate("abc"):
        x = np.random.default_rng(k).random((40, 48, 3)).astype(np.float32)
        data.write_image(tmp_path / "x" / f"{name}.tif", x)
        data.write_image(tmp_path / "y" / f"{name}.tif", op.A(x[None])[0].numpy())
    ds = data.paired_patch_dataset(str(tmp_path / "y"), str(tmp_path / "x"), 8, 2, 3, factor=2, seed=1,
                                   dihedral=True)
    for y, x in [b for _, b in zip(range(6), ds.as_numpy_iterator())]:
        # Interior only: the crop of the measurement saw the image around the truth's crop.
        np.testing.assert_allclose(op.A(x).numpy()[:, 2:-2, 2:-2], y[:, 2:-2, 2:-2], atol=2e-3)
