"""Broken and hostile input, for every reader.

Readers: the training/simulation/restoration reader `sei_tf.data.files.read_image`
(files on disk, by extension), serving's `serving.images.read_image` (files) and
`serving.images.decode_image` (bytes, as an HTTP upload hands them over); the
corpus also goes through the HTTP service itself (4xx, never 5xx).

- The corpus (tests/fixtures/bad_inputs/, written by its make_corpus.py): every
  file gets the outcome make_corpus.py records for it, either a sane image or the
  reader's one error type (`DataError`; serving: `ImageError`) naming the file;
  never another exception. The bombs are refused from their header, with little
  memory traced (tracemalloc sees NumPy's and zlib's buffers).
- The pixel limit: its default, SEI_TF_MAX_PIXELS, the `max_pixels` argument,
  0 = no limit, and Pillow's own limit on PNG/JPEG.
- Property-based fuzzing (hypothesis): byte flips, overwrites, insertions and
  truncations of valid small files of each format, fed to every reader, must
  decode to a sane array or raise the reader's error, within a per-case deadline.
  The fast run is derandomised (the same cases in every run); the `slow` one draws
  ten times as many, at random.
- No partial output: `sei_tf.simulate`, `sei_tf.restore` and `serving.restore`
  on a folder holding a bad file leave nothing behind for it.

Each test adds its outcomes (decoded / clear error / other) to a table printed at
the end of the module.
"""

import collections
import datetime
import importlib.util
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sei_tf.data import files, guards
from sei_tf.data.files import DataError
from serving import images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "fixtures", "bad_inputs")
_spec = importlib.util.spec_from_file_location("make_corpus", os.path.join(CORPUS, "make_corpus.py"))
make_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_corpus)

EXPECTED = make_corpus.expected()
READERS = ("train", "serving file", "serving upload")
FUZZ_LIMIT = 1 << 20  # pixels: fuzzed headers may claim anything; the default limit is tested on the corpus
OUTCOMES = collections.defaultdict(collections.Counter)  # (test, reader) -> {decoded, clear error, other}


@pytest.fixture(scope="module", autouse=True)
def outcome_table(request):
    """Prints how many cases each test tried and their outcomes, after the module's tests."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not OUTCOMES:
        return
    lines = [f"{'hostile input: cases':34s} {'reader':15s} {'tried':>6s} {'decoded':>8s} {'clear error':>12s} "
             f"{'other':>6s}"]
    for (test, reader), c in sorted(OUTCOMES.items()):
        lines.append(f"{test:34s} {reader:15s} {sum(c.values()):6d} {c['decoded']:8d} {c['clear error']:12d} "
                     f"{c['other']:6d}")
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


def _read(reader, path, data=None, max_pixels=None):
    """One reader on one file (or its bytes): the decoded array, or the exception raised."""
    try:
        if reader == "train":
            return files.read_image(path, max_pixels=max_pixels)
        if reader == "serving file":
            return images.read_image(path, max_pixels=max_pixels)
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        return images.decode_image(data, max_pixels=max_pixels, name="upload:" + os.path.basename(path))
    except Exception as e:  # noqa: BLE001 (classified by the caller)
        return e


def _classify(reader, result, path):
    """'decoded' (a sane image), 'clear error' (the reader's error naming the file) or 'other'."""
    name = path if reader != "serving upload" else "upload:" + os.path.basename(path)
    if isinstance(result, Exception):
        error = DataError if reader == "train" else images.ImageError
        ok = isinstance(result, error) and str(result).startswith(name)
        return "clear error" if ok else "other"
    if reader == "train":
        sane = (result.dtype == np.float32 and result.ndim == 3 and result.shape[-1] in (1, 3)
                and min(result.shape[:2]) >= 1 and np.all(np.isfinite(result)))
    else:
        sane = ((result.dtype in (np.uint8, np.uint16) or result.dtype.kind == "f")
                and (result.ndim == 2 or (result.ndim == 3 and result.shape[-1] in (1, 3)))
                and min(result.shape[:2]) >= 1 and (result.dtype.kind != "f" or np.all(np.isfinite(result))))
    return "decoded" if sane else "other"


# --------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------

def test_corpus_is_what_make_corpus_writes():
    on_disk = sorted(n for n in os.listdir(CORPUS) if n != "make_corpus.py" and not n.startswith("__"))
    assert on_disk == sorted(EXPECTED)
    for name, (data, _) in make_corpus.bad_files().items():
        with open(os.path.join(CORPUS, name), "rb") as f:
            assert f.read() == data, f"{name} is stale: run python tests/fixtures/bad_inputs/make_corpus.py"
        assert len(data) <= 20_000, name  # a few KB each


def _expected_outcome(name, reader):
    outcome = EXPECTED[name]
    if reader != "train" and name.endswith(".dcm") and outcome == "decode":
        return "clear error"  # serving reads PNG, JPEG, TIFF and .npy only
    if outcome == "serving-decodes":
        return "clear error" if reader == "train" else "decoded"
    return {"decode": "decoded", "error": "clear error"}[outcome]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file(name, reader):
    path = os.path.join(CORPUS, name)
    result = _read(reader, path)
    outcome = _classify(reader, result, path)
    OUTCOMES[("corpus", reader)][outcome] += 1
    assert outcome == _expected_outcome(name, reader), f"{name}: {result!r}"


def test_corpus_messages_say_what_is_wrong():
    """A few messages checked in full: the user can act on them."""
    def message(name, reader="train"):
        return str(_read(reader, os.path.join(CORPUS, name)))

    assert "the file is empty (0 bytes)" in message("empty.tif")
    assert "the file is empty (0 bytes)" in message("empty.png", "serving upload")
    assert "holds PNG data, but its extension '.tif' says TIFF; rename it" in message("png_named.tif")
    assert "not a PNG, JPEG, TIFF or .npy image (a DICOM file)" in message("ok_ct.dcm", "serving upload")
    assert "100000 x 100000 = 10,000,000,000 pixels exceeds the limit of 178,956,970" in message("bomb.tif")
    assert "SEI_TF_MAX_PIXELS" in message("bomb16.png", "serving file")
    assert "inflates to more than the 64 bytes its header allows" in message("deflate_bomb.tif", "serving upload")
    assert "longer than the header says" in message("zlib_bomb16.png")
    assert "1 NaN or Inf value(s)" in message("nan_float32.tif")
    assert "1 NaN or Inf value(s)" in message("inf.npy", "serving file")
    assert "CMYK (separated) TIFF" in message("cmyk.tif", "serving upload")
    assert "unsupported pixel type int32" in message("int32.tif", "serving file")
    assert "truncated .npy file" in message("truncated_float32.npy")


TOO_LARGE = ("bomb.png", "bomb16.png", "bomb.jpg", "bomb.tif", "bomb.npy", "bomb_rgb.npy", "bomb.dcm")


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name", TOO_LARGE + ("deflate_bomb.tif", "packbits_bomb.tif", "zlib_bomb16.png",
                                              "many_pages.tif"))
def test_bombs_are_refused_before_allocating(name, reader):
    """10-gigapixel headers, 16 MB zlib streams, 64 chained pages: refused with under 4 MB traced
    (an 8-bit 10-gigapixel image is 10 GB)."""
    if reader != "train" and name.endswith(".dcm"):
        pytest.skip("serving does not read DICOM")
    path = os.path.join(CORPUS, name)
    with open(path, "rb") as f:
        data = f.read()
    tracemalloc.start()
    try:
        result = _read(reader, path, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert _classify(reader, result, path) == "clear error", result
    if reader != "train" and name in TOO_LARGE:
        assert isinstance(result, images.ImageTooLarge), result  # HTTP answers 413
    assert peak < 4 * 2**20, f"{name}: {peak / 2**20:.1f} MB traced"


def test_corpus_over_http():
    """Every corpus file uploaded to the HTTP service: 200 for a decodable image (422 when its channels do
    not fit the model), else a 4xx whose message names the upload; never a 5xx."""
    from fastapi.testclient import TestClient

    from serving import Restorer
    from serving.http import create_app

    restorer = Restorer(os.path.join(ROOT, "tests", "fixtures", "v0_1", "sr2_sei.onnx"), device="cpu")
    with TestClient(create_app(restorer)) as client:
        for name in sorted(EXPECTED):
            with open(os.path.join(CORPUS, name), "rb") as f:
                response = client.post("/restore", files={"file": (name, f.read())})
            if _expected_outcome(name, "serving upload") == "decoded":
                outcome = "decoded" if response.status_code in (200, 422) else "other"
            else:  # serving.http answers an empty upload itself ("empty upload")
                ok = 400 <= response.status_code < 500 and (name in response.text or name.startswith("empty."))
                outcome = "clear error" if ok else "other"
            OUTCOMES[("corpus", "HTTP upload")][outcome] += 1
            assert outcome != "other", f"{name}: {response.status_code} {response.text[:300]}"


# --------------------------------------------------------------------------------------
# The pixel limit
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ok_rgb8.png", "ok_grey16.png", "ok_rgb.jpg", "ok_float32.tif", "ok_float32.npy",
                                  "ok_ct.dcm"])
def test_pixel_limit_is_exact_and_overridable(name, monkeypatch):
    path = os.path.join(CORPUS, name)
    pixels = 8 * 8 if name.endswith(".dcm") else 12 * 16
    readers = ("train",) if name.endswith(".dcm") else READERS
    for reader in readers:
        assert _classify(reader, _read(reader, path, max_pixels=pixels), path) == "decoded"
        refused = _read(reader, path, max_pixels=pixels - 1)
        assert _classify(reader, refused, path) == "clear error"
        assert f"exceeds the limit of {pixels - 1:,} pixels" in str(refused)
        if reader != "train":
            assert isinstance(refused, images.ImageTooLarge)
        monkeypatch.setenv(guards.MAX_PIXELS_ENV, str(pixels - 1))
        assert "exceeds the limit" in str(_read(reader, path))  # the environment sets the default
        assert _classify(reader, _read(reader, path, max_pixels=pixels), path) == "decoded"  # the argument wins
        monkeypatch.setenv(guards.MAX_PIXELS_ENV, "0")  # no limit
        assert _classify(reader, _read(reader, path), path) == "decoded"
        monkeypatch.delenv(guards.MAX_PIXELS_ENV)


def test_pixel_limit_setting():
    assert guards.max_pixels() == guards.DEFAULT_MAX_PIXELS == 178_956_970
    from PIL import Image

    assert guards.DEFAULT_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS  # where Pillow refuses
    assert guards.max_pixels(0) is None and guards.max_pixels(5) == 5
    with pytest.raises(guards.SeiTfError, match="non-negative integer"):
        guards.max_pixels(-1)


def test_bad_pixel_limit_in_the_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(guards.MAX_PIXELS_ENV, "lots")
    path = os.path.join(CORPUS, "ok_rgb8.png")
    for reader in READERS:
        error = _read(reader, path)
        assert isinstance(error, DataError if reader == "train" else images.ImageError), error
        assert "SEI_TF_MAX_PIXELS='lots' is not an integer" in str(error)


@pytest.mark.parametrize("reader", READERS)
def test_pillow_keeps_its_own_limit_on_jpeg(reader):
    """With no sei-tf limit, Pillow still refuses a JPEG over 2 x PIL.Image.MAX_IMAGE_PIXELS: a clear error."""
    path = os.path.join(CORPUS, "bomb.jpg")
    error = _read(reader, path, max_pixels=0)
    assert _classify(reader, error, path) == "clear error"
    assert "Pillow refuses PNG/JPEG" in str(error) and "use TIFF" in str(error)


# --------------------------------------------------------------------------------------
# Property-based fuzzing
# --------------------------------------------------------------------------------------

SEEDS = {name: data for name, data in make_corpus.valid_files().items()}
SEED_NAMES = sorted(SEEDS)


@st.composite
def mutated_files(draw):
    """(seed name, mutated bytes): a valid small file with flipped, overwritten, inserted or cut bytes."""
    name = draw(st.sampled_from(SEED_NAMES))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "header", "insert", "truncate"]))
        n = len(data)
        if n == 0:
            break
        pos = draw(st.integers(0, n - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
        elif kind == "header":  # sizes, offsets and counts live in the first bytes
            pos = draw(st.integers(0, min(n, 160) - 1))
            data[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                                      b"\x00\x01\x86\xa0", b"\x80\x00\x00\x00"]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            data = data[:pos]
    if name.endswith(".png") and draw(st.booleans()):
        data = _fix_png_crcs(bytes(data))  # so that the decoders read past the CRC checks
    return name, bytes(data)


def _fix_png_crcs(data):
    """PNG bytes with every complete chunk's CRC recomputed (the rest kept as it is)."""
    out, pos = bytearray(data), 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        out[end:end + 4] = struct.pack(">I", zlib.crc32(data[pos + 4:end]))
        pos = end + 4
    return bytes(out)


def _fuzz_once(case, tmp_path_factory, test):
    name, data = case
    folder = tmp_path_factory.mktemp("fuzz", numbered=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    outcomes = {}
    for reader in READERS:
        result = _read(reader, path, data, max_pixels=FUZZ_LIMIT)
        outcome = _classify(reader, result, path)
        OUTCOMES[(test, reader)][outcome] += 1
        outcomes[reader] = (outcome, result)
    os.remove(path)
    bad = {r: repr(res)[:300] for r, (o, res) in outcomes.items() if o == "other"}
    assert not bad, f"{name} ({len(data)} bytes): {bad}"


@settings(max_examples=100, deadline=datetime.timedelta(seconds=5), derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutated_files())
def test_fuzz_mutations(case, tmp_path_factory):
    _fuzz_once(case, tmp_path_factory, "fuzz (100, derandomised)")


@pytest.mark.slow
@pytest.mark.long  # minutes: not in the default run (pytest -m long)
@settings(max_examples=2000, deadline=datetime.timedelta(seconds=5), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutated_files())
def test_fuzz_mutations_long(case, tmp_path_factory):
    _fuzz_once(case, tmp_path_factory, "fuzz (2000, random)")


# --------------------------------------------------------------------------------------
# No partial output
# --------------------------------------------------------------------------------------

def _listing(folder):
    """Every path under `folder`, hidden ones included."""
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _folder_with_a_bad_file(tmp_path, bad, channels=3, size=32):
    """good_a.png, then `bad` (a corpus file), then good_z.png: the bad file is read in the middle."""
    from PIL import Image

    folder = tmp_path / "inputs"
    folder.mkdir()
    rgb = (np.random.default_rng(0).random((size, size, channels)) * 255).astype(np.uint8)
    for stem in ("good_a", "good_z"):
        Image.fromarray(rgb[..., 0] if channels == 1 else rgb).save(folder / f"{stem}.png")
    with open(os.path.join(CORPUS, bad), "rb") as src, open(folder / bad, "wb") as dst:
        dst.write(src.read())
    return folder


@pytest.mark.slow  # TensorFlow or a subprocess
@pytest.mark.parametrize("bad", ["truncated_rgb8.png", "bomb.png", "png_named.tif"])
def test_simulate_leaves_nothing_on_a_bad_file(tmp_path, bad):
    from sei_tf import data, physics

    folder = _folder_with_a_bad_file(tmp_path, bad)
    before = _listing(tmp_path)
    with pytest.raises(DataError, match=bad.replace(".", r"\.")):
        data.simulate(folder, tmp_path / "out", physics.make("sr", factor=2, noise_sigma=5), shorter_side=0,
                      progress=False)
    assert not (tmp_path / "out").exists()
    assert _listing(tmp_path) == before  # no staging folder left either


@pytest.mark.slow  # TensorFlow or a subprocess
@pytest.mark.parametrize("bad", ["nan_float32.tif", "zlib_bomb16.png"])
def test_restore_leaves_nothing_on_a_bad_file(tmp_path, bad):
    """sei_tf.restore checks every input first; restore_files on its own is all or nothing too."""
    from sei_tf import evaluate, loading, restore

    model = loading.load_model(os.path.join(ROOT, "tests", "fixtures", "v0_1", "blur_sure.keras"))
    folder = _folder_with_a_bad_file(tmp_path, bad, channels=evaluate.model_channels(model))
    inputs = sorted(str(p) for p in folder.iterdir())
    out = tmp_path / "restored"
    with pytest.raises(DataError, match=bad.replace(".", r"\.")):
        restore.check_inputs(inputs, evaluate.model_channels(model))
    plan = restore.plan_outputs(inputs, str(out), "tif")
    with pytest.raises(DataError, match=bad.replace(".", r"\.")):
        restore.restore_files(model, plan, "tif")
    assert not out.exists()


@pytest.mark.slow  # a subprocess
def test_serving_restore_writes_the_good_files_and_nothing_for_the_bad(tmp_path):
    """serving.restore restores image by image: the bad inputs are reported (exit 1) and get no output file."""
    from PIL import Image

    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.fromarray((np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)).save(folder / "good.png")
    bad = ["truncated_rgb8.png", "bomb16.png", "nan_float32.tif", "deflate_bomb.tif", "empty.jpg", "text_named.png"]
    for name in bad:
        with open(os.path.join(CORPUS, name), "rb") as src, open(folder / name, "wb") as dst:
            dst.write(src.read())
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "serving.restore", "--model",
                           os.path.join(ROOT, "tests", "fixtures", "v0_1", "sr2_sei.onnx"), str(folder),
                           "--output", str(out), "--quiet", "--tile", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    assert f"{len(bad)} of {len(bad) + 1} images failed" in log
    for name in bad:
        assert f"error: {folder / name}: " in log, log  # the file named once
        assert f"{folder / name}: {folder / name}" not in log, log
    assert _listing(out) == ["good.png"]  # no temporary file, nothing for the bad inputs
    restored = images.read_image(out / "good.png")
    assert restored.shape == (48, 48, 3) and restored.dtype == np.uint8


def test_png16_inflates_no_more_than_the_header_allows():
    """The 16-bit PNG decoder stops inflating one byte past the expected size (zlib_bomb16: 16 MB of zeros)."""
    from sei_tf.data import png16

    with open(os.path.join(CORPUS, "zlib_bomb16.png"), "rb") as f:
        data = f.read()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="longer than the header says"):
            png16.decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    # And an honest file still round-trips.
    a = (np.arange(12 * 16 * 3) * 331 % 65536).astype(np.uint16).reshape(12, 16, 3)
    np.testing.assert_array_equal(png16.decode(png16.encode(a)), a)
