"""serving.large_images and the streamed path of `python -m serving.restore`: huge images in bounded memory.

Models: a small greyscale deblurring CNN built here with onnx.helper (three
3x3 convolutions, receptive-field radius 3, random weights: no TensorFlow,
built in milliseconds) and the committed sei-tf 0.1 export
(tests/fixtures/v0_1/sr2_sei.onnx: ResidualCNN, RGB, SR x2, context 5).
Images are 300x500 with TIFF tiles and restorer tiles far smaller than the
image, so every path crosses many tile borders.
"""

import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import onnx
import pytest
import tifffile
from absl import flags
from onnx import TensorProto, helper
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from serving import Restorer, images, large_images, restore as restore_cli, tiling  # noqa: E402

SR2_RGB = os.path.join(ROOT, "tests", "fixtures", "v0_1", "sr2_sei.onnx")
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def write_grey_deblur_onnx(path, features=8, seed=0):
    """y -> y + conv(relu(conv(relu(conv(y))))): a random-weight 3x3 CNN (context 3) with sei-tf metadata."""
    rng = np.random.default_rng(seed)
    shapes = [(features, 1, 3, 3), (features, features, 3, 3), (1, features, 3, 3)]
    inits = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, s, rng.normal(0, 0.3, s).astype(np.float32).ravel())
             for i, s in enumerate(shapes)]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Transpose", ["input"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w0"], ["c0"], **conv), helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], **conv), helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], **conv),
        helper.make_node("Add", ["x", "c2"], ["y"]),
        helper.make_node("Transpose", ["y"], ["output"], perm=[0, 2, 3, 1]),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "height", "width", 1])
          for n in ("input", "output")]
    model = helper.make_model(helper.make_graph(nodes, "grey_deblur", io[:1], io[1:], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    props = {"sei_tf_format": "1", "sei_tf_version": "test", "task": "deblur", "scale_factor": "1",
             "channels": "1", "layout": "NHWC", "value_range": "[0, 1]", "dtype": "float32",
             "input_name": "input", "output_name": "output", "tile_context": "3",
             "backbone": json.dumps({"class": "ResidualCNN", "config": {"features": features}})}
    onnx.helper.set_model_props(model, props)
    onnx.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    path = write_grey_deblur_onnx(tmp_path_factory.mktemp("model") / "grey_deblur.onnx")
    return Restorer(path, device="cpu", tile=None)


@pytest.fixture(scope="module")
def rgb_sr2():
    return Restorer(SR2_RGB, device="cpu", tile=None)


def grey_image(dtype=np.uint8, shape=(300, 500)):
    """A smooth pattern plus noise (stateless seed), scaled to `dtype`'s range."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    rng = np.random.default_rng(1)
    v = 0.5 + 0.3 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0, 0.1, shape)
    v = np.clip(v, 0, 1)
    if dtype == np.uint8:
        return np.rint(v * 255).astype(np.uint8)
    if dtype == np.uint16:
        return np.rint(v * 65535).astype(np.uint16)
    return v.astype(dtype)


def stream(restorer, src, dst, core, **kwargs):
    with large_images.open_lazy(src) as source:
        return large_images.restore_to_tiff(restorer, source, dst, core=core, **kwargs)


# --------------------------------------------------------------------------
# streamed == whole image, for every way a TIFF can store the pixels
# --------------------------------------------------------------------------
GREY_LAYOUTS = {
    "contiguous": dict(),
    "tiled_zlib": dict(tile=(32, 48), compression="zlib"),
    "strips_zlib": dict(rowsperstrip=7, compression="zlib"),
    "tiled_bigendian": dict(tile=(64, 64), byteorder=">"),
}


@pytest.mark.parametrize("layout", sorted(GREY_LAYOUTS))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_streamed_equals_whole_image_grey(grey, tmp_path, layout, dtype):
    image = grey_image(dtype)
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, image, **GREY_LAYOUTS[layout])
    core = 48  # windows of 54 px: 7 x 11 tiles
    assert stream(grey, src, dst, core) == image.shape
    out = tifffile.imread(dst)
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out, grey.restore(image))  # bit-exact
    with tifffile.TiffFile(dst) as tif:
        page = tif.pages.first
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (48, 48) and not tif.is_bigtiff
        assert len(page.dataoffsets) == 7 * 11
    assert set(os.listdir(tmp_path)) == {"in.tif", "out.tif"}  # no temporary file left


def test_streamed_npy_and_float64(grey, tmp_path):
    image = grey_image(np.float64)
    np.save(tmp_path / "in.npy", image)
    stream(grey, tmp_path / "in.npy", tmp_path / "out.tif", 32)
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.dtype == np.float32  # TIFF holds float32, as images.write_image writes it
    np.testing.assert_array_equal(out, grey.restore(image).astype(np.float32))


@pytest.mark.parametrize("layout", ["contig_tiled", "separate_planes", "rgba_contiguous"])
def test_streamed_equals_whole_image_rgb_sr_x2(rgb_sr2, tmp_path, layout):
    """The real exported ResidualCNN (SR x2, context 5): TIFF tiles of core*2 output pixels."""
    g = grey_image(shape=(150, 250))
    rgb = np.stack([g, np.roll(g, 40, 1), g[::-1]], -1)
    src = tmp_path / "in.tif"
    if layout == "contig_tiled":
        tifffile.imwrite(src, rgb, photometric="rgb", tile=(48, 32), compression="zlib")
    elif layout == "separate_planes":
        tifffile.imwrite(src, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate",
                         rowsperstrip=16)
    else:  # alpha is dropped, as images.read_image drops it
        tifffile.imwrite(src, np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], -1), photometric="rgb",
                         extrasamples=["unassalpha"])
    stream(rgb_sr2, src, tmp_path / "out.tif", 40)
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == (300, 500, 3)
    np.testing.assert_array_equal(out, rgb_sr2.restore(rgb))
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert (tif.pages.first.tilelength, tif.pages.first.tilewidth) == (80, 80)
        assert tif.pages.first.photometric == tifffile.PHOTOMETRIC.RGB


def test_aligned_plan_covers_cores_with_context():
    for n, core, ctx in [(500, 48, 3), (300, 40, 5), (47, 48, 3), (48, 16, 0), (1, 16, 5)]:
        plan = tiling.aligned_plan(n, core, ctx)
        assert [c0 for _, _, c0, _ in plan] == list(range(0, n, core)) and plan[-1][3] == n
        for ws, we, c0, c1 in plan:
            assert we - ws == min(n, core + 2 * ctx)  # constant window size
            assert 0 <= ws and we <= n and (ws <= c0 - ctx or ws == 0) and (we >= c1 + ctx or we == n)


# --------------------------------------------------------------------------
# BigTIFF, refusal of formats read whole, atomic output
# --------------------------------------------------------------------------
def test_bigtiff_when_needed(grey, tmp_path):
    image = grey_image()
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(64, 64))
    stream(grey, tmp_path / "in.tif", tmp_path / "classic.tif", 64)
    stream(grey, tmp_path / "in.tif", tmp_path / "big.tif", 64, bigtiff_above=100_000)  # ~ 330 kB of tiles
    with tifffile.TiffFile(tmp_path / "classic.tif") as a, tifffile.TiffFile(tmp_path / "big.tif") as b:
        assert not a.is_bigtiff and b.is_bigtiff
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "big.tif"), grey.restore(image))
    # A BigTIFF input streams too (restored again: the deblur model is 1 -> 1 channel).
    stream(grey, tmp_path / "big.tif", tmp_path / "twice.tif", 64)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "twice.tif"), grey.restore(grey.restore(image)))


def test_not_streamable_files(tmp_path, monkeypatch):
    image = grey_image()
    Image.fromarray(image).save(tmp_path / "a.png")
    with pytest.raises(large_images.NotStreamable, match="PNG cannot be read tile by tile.*TIFF"):
        large_images.open_lazy(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image, image]))
    with pytest.raises(large_images.NotStreamable, match="not a single 2-D image"):
        large_images.open_lazy(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "one_strip.tif", image, compression="zlib", rowsperstrip=300)
    monkeypatch.setattr(large_images, "MAX_SEGMENT_BYTES", 100_000)  # 150 kB strip
    with pytest.raises(large_images.NotStreamable, match="too large to read piecewise.*tiled TIFF"):
        large_images.open_lazy(tmp_path / "one_strip.tif")


def test_broken_tiffs_give_clear_errors(tmp_path):
    image = grey_image()
    tifffile.imwrite(tmp_path / "c.tif", image)
    tifffile.imwrite(tmp_path / "t.tif", image, tile=(32, 32))
    for name in ("c.tif", "t.tif"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[:len(data) // 2])  # pixels past the end of the file
        with pytest.raises(images.ImageError, match=f"cut_{name}: truncated TIFF"):
            large_images.open_lazy(tmp_path / f"cut_{name}")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 40)  # TIFF magic, garbage header
    with pytest.raises(images.ImageError, match="junk.tif: could not decode TIFF"):
        large_images.open_lazy(tmp_path / "junk.tif")


def run_restore(args):
    """`python -m serving.restore ARGS` in this process (private FlagValues); returns main's status."""
    flag_values = flags.FlagValues()
    restore_cli.define_flags(flag_values)
    argv = flag_values(["serving.restore", *args])
    with mock.patch.object(restore_cli, "FLAGS", flag_values):
        return restore_cli.main(argv)


def test_cli_refuses_large_png_streams_large_tiff(grey, tmp_path, capsys):
    image = grey_image()  # 150000 pixels
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(image).save(src / "a.png")
    tifffile.imwrite(src / "b.tif", image, tile=(32, 32), compression="zlib")
    out = tmp_path / "out"
    rc = run_restore(["--model", grey.model_path, str(src), "--output", str(out), "--max_pixels", "100000",
                      "--tile", "64", "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 1
    assert "a.png: 500 x 300 = 150,000 pixels exceeds the limit of 100,000" in printed
    assert "tiled TIFF input written as TIFF is restored in bounded memory" in printed
    assert sorted(os.listdir(out)) == ["b.tif"]  # nothing partial for the PNG; the TIFF was streamed
    assert "streamed in 77 tiles of 48 px" in printed
    np.testing.assert_array_equal(tifffile.imread(out / "b.tif"), grey.restore(image))
    # The same TIFF written as .npy must be decoded whole: refused, with the hint to write TIFF.
    rc = run_restore(["--model", grey.model_path, str(src / "b.tif"), "--output", str(tmp_path / "o2"),
                      "--format", "npy", "--max_pixels", "100000", "--quiet"])
    assert rc == 1 and "use --format tiff" in capsys.readouterr().out
    assert os.listdir(tmp_path / "o2") == []


def test_error_mid_stream_leaves_no_file(grey, tmp_path):
    image = grey_image()
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(32, 32), compression="zlib")
    data = bytearray((tmp_path / "in.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "in.tif") as tif:  # corrupt the last tile's compressed bytes
        offset, count = tif.pages.first.dataoffsets[-1], tif.pages.first.databytecounts[-1]
    data[offset:offset + count] = b"\x00" * count
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(images.ImageError, match="bad.tif: could not decode TIFF segment"):
        stream(grey, tmp_path / "bad.tif", tmp_path / "out" / "bad.tif", 32)
    assert os.listdir(tmp_path / "out") == []
    # Ctrl-C after a few tiles: nothing is left either.
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream(grey, tmp_path / "in.tif", tmp_path / "out" / "in.tif", 32, callback=interrupt)
    assert os.listdir(tmp_path / "out") == []
    # An existing output is kept unless overwrite.
    (tmp_path / "out" / "in.tif").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        stream(grey, tmp_path / "in.tif", tmp_path / "out" / "in.tif", 32)
    assert (tmp_path / "out" / "in.tif").read_bytes() == b"keep"


@pytest.mark.slow
def test_cli_interrupted_process_leaves_no_file(grey, tmp_path):
    """A real process interrupted by SIGINT (Ctrl-C) or SIGTERM mid-stream: no output, no temporary file."""
    image = grey_image(shape=(600, 1000))
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(32, 32))
    out = tmp_path / "out"
    # Ctrl-C's default handler even where the parent ignores SIGINT (a shell's background job does).
    code = ("import sys, signal, os\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from serving import tiling\n"
            "orig = tiling._run_checked\n"
            "n = [0]\n"
            "def slow(*a):\n"
            "    n[0] += 1\n"
            "    if n[0] == 20: os.kill(os.getpid(), signal.SIGINT)\n"
            "    return orig(*a)\n"
            "tiling._run_checked = slow\n"
            "from sei_tf import cli\n"
            "import serving.restore as m\n"
            "cli.run(m, argv=['restore'] + sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", code, "--model", grey.model_path, str(tmp_path / "in.tif"),
                           "--output", str(out), "--tile", "38", "--quiet"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in proc.stderr
    assert os.listdir(out) == []
    # SIGTERM (kill): the same.
    proc = subprocess.run([sys.executable, "-c", code.replace("SIGINT", "SIGTERM"), "--model", grey.model_path,
                           str(tmp_path / "in.tif"), "--output", str(out), "--tile", "38", "--quiet"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert proc.returncode == 128 + 15, proc.stderr[-2000:]
    assert os.listdir(out) == []


# --------------------------------------------------------------------------
# memory budget -> tile size
# --------------------------------------------------------------------------
def test_parse_bytes():
    assert large_images.parse_bytes("1GB") == 10**9
    assert large_images.parse_bytes("512MiB") == 512 * 2**20
    assert large_images.parse_bytes(" 1.5 gb ") == 1_500_000_000
    assert large_images.parse_bytes("4096") == 4096
    for bad in ("", "GB", "1XB", "-1GB", "nan", "0"):
        with pytest.raises(ValueError):
            large_images.parse_bytes(bad)


@pytest.mark.parametrize("restorer_name", ["grey", "rgb_sr2"])
def test_budget_to_tile_is_monotone_and_respected(request, tmp_path, restorer_name):
    restorer = request.getfixturevalue(restorer_name)
    c = restorer.channels
    image = grey_image() if c == 1 else np.stack([grey_image(shape=(150, 250))] * 3, -1)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(32, 32))
    with large_images.open_lazy(tmp_path / "in.tif") as source:
        model = large_images.memory_model(restorer, source)
        unit = large_images.tile_unit(restorer.scale)
        cores = []
        for budget in np.geomspace(300e6, 8e9, 40).astype(int):
            core = large_images.core_for_budget(int(budget), model)
            assert core % unit == 0 and model.peak(core) <= budget  # respected
            assert core == 8192 or model.peak(core + unit) > budget  # the largest that fits
            cores.append(core)
        assert cores == sorted(cores) and cores[-1] > cores[0]  # monotone, and the budget matters
        with pytest.raises(tiling.TilingError, match="too small"):
            large_images.core_for_budget(model.fixed_bytes, model)
    # The peak grows with the core and with the activations per pixel.
    assert model.peak(2 * unit) > model.peak(unit)


def test_cli_max_memory_picks_the_tile(grey, tmp_path, capsys):
    image = grey_image()
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(32, 32))
    model_path = grey.model_path
    assert run_restore(["--model", model_path, str(tmp_path / "in.tif"), "--output", str(tmp_path / "a"),
                        "--max_memory", "170MB", "--quiet"]) == 0
    printed = capsys.readouterr().out
    with large_images.open_lazy(tmp_path / "in.tif") as source:
        core = large_images.core_for_budget(170 * 10**6, large_images.memory_model(grey, source))
    assert f"tiles of {core} px" in printed and core < 300  # a real choice, smaller than the image
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a" / "in.tif"), grey.restore(image))
    with pytest.raises(restore_cli.CommandError, match="--tile or --max_memory, not both"):
        run_restore(["--model", model_path, str(tmp_path / "in.tif"), "--output", str(tmp_path / "b"),
                     "--max_memory", "1GB", "--tile", "64"])
    with pytest.raises(restore_cli.CommandError, match="not a memory size"):
        run_restore(["--model", model_path, str(tmp_path / "in.tif"), "--output", str(tmp_path / "b"),
                     "--max_memory", "lots"])
    with pytest.raises(tiling.TilingError, match="too small"):
        run_restore(["--model", model_path, str(tmp_path / "in.tif"), "--output", str(tmp_path / "b"),
                     "--max_memory", "10MB"])
