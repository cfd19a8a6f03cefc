"""serving/: Restorer (metadata, devices, dtypes, exact and blended tiling) and the CLI.

Models are tiny random-init restorers exported once per module (TensorFlow is
used here only to make them; serving itself must not import it).
"""

import os
import subprocess
import sys
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import tifffile  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data as skdata  # noqa: E402

from absl import flags  # noqa: E402

from sei_tf.errors import SeiTfError  # noqa: E402
from serving import DeviceError, InputError, MetadataError, ModelFileError, Restorer, RestorerError  # noqa: E402
from serving import images, providers, restore as restore_cli, tiling  # noqa: E402
from serving.providers import GpuOptions, ProviderOptionsError  # noqa: E402


ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
V0_1 = os.path.join(ROOT, "tests", "fixtures", "v0_1")


def _export(tmp, name, *args, **kwargs):
    from export import onnx_export, random_models

    keras_path = random_models.make_model(tmp / f"{name}.keras", *args, **kwargs)
    out = tmp / f"{name}.onnx"
    onnx_export.export(keras_path, out, log=lambda *_: None)
    return str(out)


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    models = {
        "sr": _export(tmp, "sr", "cnn_tiny", "sr", scale=2),
        "deblur": _export(tmp, "deblur", "cnn_tiny", "deblur", kernel="gaussian:2"),
        "grey_x3": _export(tmp, "grey_x3", "cnn_tiny", "sr", scale=3, channels=1),
    }
    models["swinir"] = _export(tmp, "swinir", "swinir_tiny", "sr", scale=2)
    return models


def photo(channels=3):
    """A real photograph of odd size 389x517 (rows x cols): skimage's coffee (400x600)."""
    rgb = np.ascontiguousarray(skdata.coffee()[:389, :517])
    if channels == 1:  # luminance, uint8 HxW
        return np.rint(rgb @ np.array([0.2125, 0.7154, 0.0721])).astype(np.uint8)
    return rgb


@pytest.mark.slow
# --------------------------------------------------------------------------
# import hygiene
# --------------------------------------------------------------------------
def test_serving_does_not_import_tensorflow(onnx_models):
    code = ("import sys, numpy as np; import serving, serving.restore, serving.http, serving.tiling; "
            f"r = serving.Restorer({onnx_models['sr']!r}, device='cpu'); "
            "r.restore(np.zeros((5, 7, 3), np.uint8)); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]; "
            "assert not bad, bad; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


# --------------------------------------------------------------------------
# metadata, bad model files, devices
# --------------------------------------------------------------------------
def test_metadata_read_by_restorer(onnx_models):
    r = Restorer(onnx_models["sr"], device="cpu")
    assert (r.task, r.scale, r.channels) == ("sr", 2, 3)
    assert r.metadata.tile_context == 5 and r.exact_tiling
    assert r.providers == ["CPUExecutionProvider"]
    d = Restorer(onnx_models["deblur"], device="cpu")
    assert (d.task, d.scale, d.metadata.kernel) == ("deblur", 1, "gaussian:2")
    if "swinir" in onnx_models:
        s = Restorer(onnx_models["swinir"], device="cpu")
        assert s.metadata.tile_context is None and not s.exact_tiling and s.metadata.tile_align == 4


def test_corrupt_truncated_and_missing_model(onnx_models, tmp_path):
    data = open(onnx_models["sr"], "rb").read()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 this is not a protobuf" * 10)
    for path in (truncated, garbage):
        with pytest.raises(ModelFileError, match="corrupt or truncated"):
            Restorer(path, device="cpu")
    with pytest.raises(ModelFileError, match="not found"):
        Restorer(tmp_path / "missing.onnx")


def test_model_without_metadata(onnx_models, tmp_path):
    model = onnx.load(onnx_models["sr"])
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, bare)
    with pytest.raises(RestorerError, match="no sei-tf metadata.*export/to_onnx.py"):
        Restorer(bare, device="cpu")
    # Broken metadata is just as clear.
    model = onnx.load(onnx_models["sr"])
    for p in model.metadata_props:
        if p.key == "scale_factor":
            p.value = "two"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    with pytest.raises(RestorerError, match="malformed sei-tf metadata"):
        Restorer(broken, device="cpu")


def test_v0_1_onnx_file_still_serves():
    """An ONNX file written by sei-tf 0.1 (metadata format 1, no `physics` key, the old
    `training` keys) loads and restores what the 0.1 Keras model predicted."""
    r = Restorer(os.path.join(V0_1, "sr2_sei.onnx"), device="cpu", tile=None)
    assert (r.task, r.scale, r.channels, r.metadata.version) == ("sr", 2, 3, "0.1.0")
    assert r.metadata.physics is None and r.metadata.noise_sigma == 5.0 and r.metadata.method == "sei"
    assert r.metadata.as_dict()["training"]["alpha"] == 0.5
    y = np.load(os.path.join(V0_1, "sr2_sei_input.npy"))
    expected = np.load(os.path.join(V0_1, "sr2_sei_output.npy"))  # Keras 0.1, unclipped
    np.testing.assert_allclose(r.run(y), expected, atol=1e-4)
    np.testing.assert_allclose(r.restore(y[0]), np.clip(expected[0], 0, 1), atol=1e-4)


def test_errors_are_sei_tf_errors(onnx_models, tmp_path):
    """User errors are SeiTfErrors (one-line CLI messages) and keep their older base classes."""
    for cls, base in ((RestorerError, RuntimeError), (ModelFileError, RuntimeError), (DeviceError, RuntimeError),
                      (InputError, ValueError), (MetadataError, ValueError), (tiling.TilingError, ValueError),
                      (restore_cli.CommandError, ValueError)):
        assert issubclass(cls, SeiTfError) and issubclass(cls, base), cls
    with pytest.raises(tiling.TilingError, match="too small for this model"):
        Restorer(onnx_models["sr"], device="cpu", tile=4)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has a CUDA provider")
def test_cuda_request_on_cpu_machine_raises(onnx_models):
    with pytest.raises(DeviceError, match="device='cuda'.*no GPU provider"):
        Restorer(onnx_models["sr"], device="cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        Restorer(onnx_models["sr"], device="tpu")


def test_cuda_provider_that_fails_to_load_raises(onnx_models, monkeypatch):
    """onnxruntime falls back to CPU with only a warning: we check get_providers()."""
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if HAS_CUDA:
        pytest.skip("a real CUDA provider would load here")
    with pytest.raises(DeviceError, match="loaded only"):
        Restorer(onnx_models["sr"], device="cuda")


@pytest.mark.skipif(not HAS_CUDA, reason="IO binding path needs onnxruntime-gpu and a CUDA GPU")
def test_cuda_iobinding_matches_cpu(onnx_models):
    gpu = Restorer(onnx_models["sr"], device="cuda", tile=64)
    cpu = Restorer(onnx_models["sr"], device="cpu", tile=64)
    assert gpu.on_gpu
    x = photo()[:100, :90].astype(np.float32) / 255
    np.testing.assert_allclose(gpu.restore(x), cpu.restore(x), atol=1e-4)


def test_gpu_provider_options_reach_the_session(onnx_models, monkeypatch, tmp_path):
    """The CUDA/TensorRT options the Restorer builds are the ones InferenceSession receives.

    Without a GPU, onnxruntime's session.get_provider_options() lists only the
    providers it loaded (CPU), so this checks the arguments handed to the session.
    """
    real_session, calls = ort.InferenceSession, []

    def recording_session(path, sess_options=None, providers=None, provider_options=None):
        calls.append({"providers": providers, "provider_options": provider_options})
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    gpu = GpuOptions(cudnn_conv_algo_search="EXHAUSTIVE", trt_opt_side=256, trt_cache=str(tmp_path),
                     trt_fp16=True, device_id=1)
    r = Restorer(onnx_models["grey_x3"], device="auto", tile=512, gpu=gpu)
    session_call = calls[-1]
    assert session_call["providers"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt, cuda, cpu = session_call["provider_options"]
    assert r.provider_options == session_call["provider_options"]
    assert trt["trt_profile_min_shapes"] == "input:1x32x32x1"  # 1 channel: read from the model
    assert trt["trt_profile_opt_shapes"] == "input:1x256x256x1"
    assert trt["trt_profile_max_shapes"] == "input:1x512x512x1"  # the tile
    assert trt["trt_fp16_enable"] == "1" and trt["device_id"] == "1"
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_engine_cache_path"] == str(tmp_path)
    assert cuda == {"device_id": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    assert cpu == {}
    # default: HEURISTIC (EXHAUSTIVE re-searches for every new input shape, onnxruntime #12880), no fp16
    Restorer(onnx_models["sr"], device="auto", tile=128)
    trt, cuda, _ = calls[-1]["provider_options"]
    assert cuda["cudnn_conv_algo_search"] == "HEURISTIC" and trt["trt_fp16_enable"] == "0"
    assert "trt_engine_cache_enable" not in trt and trt["trt_profile_max_shapes"] == "input:1x128x128x3"
    with pytest.raises(ProviderOptionsError, match="without a tile"):
        Restorer(onnx_models["sr"], device="auto", tile=None)
    cpu_only = Restorer(onnx_models["sr"], device="cpu", gpu=gpu)
    assert calls[-1]["providers"] == ["CPUExecutionProvider"] and cpu_only.provider_options == [{}]


def test_gpu_flags_build_gpu_options():
    fv = flags.FlagValues()
    providers.define_flags(fv)
    fv(["prog", "--cudnn_conv_algo_search=DEFAULT", "--trt_max_side=2048", "--trt_cache=/tmp/engines", "--trt_fp16"])
    assert providers.from_flags(fv) == GpuOptions(cudnn_conv_algo_search="DEFAULT", trt_max_side=2048,
                                                  trt_cache="/tmp/engines", trt_fp16=True)
    with pytest.raises(ProviderOptionsError, match="min <= opt <= max"):
        providers.provider_options(["TensorrtExecutionProvider"], GpuOptions(trt_min_side=600), 512, 3)
    with pytest.raises(ProviderOptionsError, match="HEURISTIC, EXHAUSTIVE, DEFAULT"):
        GpuOptions(cudnn_conv_algo_search="FAST")


def test_spinning_default_follows_the_cores(onnx_models, monkeypatch):
    """Spinning is off unless the intra-op threads leave some of the process's cores free."""
    from serving import restorer as restorer_module

    monkeypatch.setattr(restorer_module, "usable_cores", lambda: 4)
    assert restorer_module.default_spinning(None) is False  # onnxruntime's pool takes every core
    assert restorer_module.default_spinning(4) is False
    assert restorer_module.default_spinning(2) is True
    assert Restorer(onnx_models["sr"], device="cpu").spinning is False
    assert Restorer(onnx_models["sr"], device="cpu", threads=1).spinning is True
    assert Restorer(onnx_models["sr"], device="cpu", spinning=None).spinning is None  # onnxruntime's own default


# --------------------------------------------------------------------------
# tiling
# --------------------------------------------------------------------------
def test_exact_plan_properties():
    for n, tile, ctx in [(517, 64, 5), (389, 97, 13), (50, 64, 5), (200, 11, 5), (64, 64, 5)]:
        plan = tiling.exact_plan(n, tile, ctx)
        assert plan[0][2] == 0 and plan[-1][3] == n
        for (ws, we, c0, c1), nxt in zip(plan, plan[1:] + [None]):
            assert we - ws == min(n, tile)  # constant window size
            assert 0 <= ws <= c0 < c1 <= we <= n
            assert c0 - ws >= ctx or ws == 0  # enough context, or the image border
            assert we - c1 >= ctx or we == n
            if nxt:
                assert nxt[2] == c1  # cores partition the image
    with pytest.raises(ValueError, match="twice the receptive-field radius"):
        tiling.exact_plan(100, 10, 5)


@pytest.mark.parametrize("model, tiles", [("sr", (64, 97)), ("deblur", (64, 97)), ("grey_x3", (40,))])
def test_tiling_is_bit_exact(onnx_models, model, tiles):
    r = Restorer(onnx_models[model], device="cpu", tile=None)
    img = photo(r.channels)  # HxW for the greyscale model
    x = img.astype(np.float32) / 255
    whole_f = r.restore(x)
    whole_u8 = np.rint(whole_f * 255).astype(np.uint8)  # the uint8 path, computed from whole-image floats
    assert whole_f.shape[:2] == (389 * r.scale, 517 * r.scale)
    for i, tile in enumerate(tiles):
        assert r.tiles_for(389, 517, tile=tile) > 4
        np.testing.assert_array_equal(r.restore(x, tile=tile), whole_f)
        if i == 0:
            np.testing.assert_array_equal(r.restore(img, tile=tile), whole_u8)


def test_tile_context_is_tight(onnx_models):
    """One pixel less context than the exported radius breaks exactness (so the test above can fail)."""
    import dataclasses

    r = Restorer(onnx_models["sr"], device="cpu", tile=None)
    x = photo()[:150, :170].astype(np.float32) / 255
    whole = r.restore(x)
    np.testing.assert_array_equal(r.restore(x, tile=40), whole)
    r.metadata = dataclasses.replace(r.metadata, tile_context=r.metadata.tile_context - 1)
    assert not np.array_equal(r.restore(x, tile=40), whole)


def test_swinir_blended_tiles_seam_error(onnx_models):
    """Global receptive field: blended tiles differ from whole-image inference; measure by how much."""
    r = Restorer(onnx_models["swinir"], device="cpu", tile=None)
    x = photo()[:201, :263].astype(np.float32) / 255  # odd-sized crop of the real photo
    whole = r.restore(x)
    report = []
    for tile, overlap in [(64, 16), (96, 32)]:
        tiled = r.restore(x, tile=tile, overlap=overlap)
        err = np.abs(tiled - whole)
        psnr = 10 * np.log10(1.0 / max(float(np.mean(err ** 2)), 1e-20))
        report.append((tile, overlap, r.tiles_for(201, 263, tile=tile, overlap=overlap), float(err.max()),
                       float(err.mean()), psnr))
    for tile, overlap, n, mx, mean, psnr in report:
        print(f"\nSwinIR tiny (random init) seam error, 263x201 photo crop, x2, tile {tile} overlap {overlap} "
              f"({n} tiles): max {mx:.2e}, mean {mean:.2e}, PSNR vs whole image {psnr:.1f} dB")
    assert report[0][3] < 0.1 and report[0][5] > 50
    assert report[1][3] < 1e-3 and report[1][3] <= report[0][3]  # more overlap, smaller seams
    # Cross-fade weights sum to one along an axis.
    plan = tiling.blend_plan(517, 96, 32, align=4)
    total = np.zeros(517 * 2, np.float32)
    for i, (s, e) in enumerate(plan):
        assert s % 4 == 0
        total[s * 2:e * 2] += tiling.blend_weights(plan, i, 2)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


# --------------------------------------------------------------------------
# dtypes, layouts, channels
# --------------------------------------------------------------------------
def test_dtype_and_range_round_trips(onnx_models):
    r = Restorer(onnx_models["sr"], device="cpu", tile=48)
    img8 = photo()[:37, :45]
    ref = r.restore(img8.astype(np.float32) / 255)  # float32 in [0, 1]
    assert ref.dtype == np.float32 and ref.shape == (74, 90, 3) and 0 <= ref.min() and ref.max() <= 1

    out8 = r.restore(img8)
    assert out8.dtype == np.uint8 and out8.shape == (74, 90, 3)
    np.testing.assert_array_equal(out8, np.rint(ref * 255).astype(np.uint8))

    img16 = img8.astype(np.uint16) * 257
    out16 = r.restore(img16)
    assert out16.dtype == np.uint16
    ref16 = r.restore(img16.astype(np.float32) / 65535)
    np.testing.assert_array_equal(out16, np.rint(ref16 * 65535).astype(np.uint16))
    assert out16.max() > 255  # really 16-bit range, not 8-bit

    out64 = r.restore(img8.astype(np.float64) / 255)
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, ref, atol=1e-6)
    out_half = r.restore((img8 / 255).astype(np.float16))
    assert out_half.dtype == np.float16 and out_half.shape == (74, 90, 3)
    assert r.restore(img16, dtype=np.uint8).dtype == np.uint8  # explicit output dtype


def test_greyscale_layouts(onnx_models):
    r = Restorer(onnx_models["grey_x3"], device="cpu")
    grey = photo(1)[:20, :31]
    out = r.restore(grey)
    assert out.shape == (60, 93) and out.dtype == np.uint8  # HxW stays HxW
    out1 = r.restore(grey[..., None])
    assert out1.shape == (60, 93, 1)
    np.testing.assert_array_equal(out1[..., 0], out)


def test_channel_and_dtype_errors(onnx_models):
    rgb = Restorer(onnx_models["sr"], device="cpu")
    grey = Restorer(onnx_models["grey_x3"], device="cpu")
    with pytest.raises(InputError, match="greyscale image .* 3-channel"):
        rgb.restore(np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="4 channels .*RGBA"):
        rgb.restore(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(InputError, match="3 channels .* 1-channel"):
        grey.restore(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match="unsupported input dtype int32"):
        rgb.restore(np.zeros((10, 10, 3), np.int32))
    with pytest.raises(InputError, match="HxW or HxWxC"):
        rgb.restore(np.zeros((1, 10, 10, 3), np.uint8))


def test_file_inputs(onnx_models, tmp_path):
    r = Restorer(onnx_models["sr"], device="cpu")
    g = Restorer(onnx_models["grey_x3"], device="cpu")
    img8 = photo()[:21, :30]
    Image.fromarray(img8).save(tmp_path / "a.png")
    Image.fromarray(img8).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(np.dstack([img8, np.full(img8.shape[:2], 255, np.uint8)])).save(tmp_path / "rgba.png")
    tifffile.imwrite(tmp_path / "a16.tif", img8.astype(np.uint16) * 257, photometric="rgb")
    np.save(tmp_path / "a.npy", img8.astype(np.float32) / 255)
    Image.fromarray(photo(1)[:21, :30].astype(np.uint16) * 257).save(tmp_path / "g16.png")

    np.testing.assert_array_equal(r.restore(str(tmp_path / "a.png")), r.restore(img8))
    assert r.restore(tmp_path / "a.jpg").dtype == np.uint8
    np.testing.assert_array_equal(r.restore(tmp_path / "rgba.png"), r.restore(img8))  # alpha dropped
    out16 = r.restore(tmp_path / "a16.tif")
    assert out16.dtype == np.uint16 and out16.shape == (42, 60, 3)
    assert r.restore(tmp_path / "a.npy").dtype == np.float32
    g16 = g.restore(tmp_path / "g16.png")
    assert g16.dtype == np.uint16 and g16.shape == (63, 90)
    with pytest.raises(InputError, match="greyscale"):
        r.restore(tmp_path / "g16.png")
    (tmp_path / "junk.png").write_bytes(b"hello")
    with pytest.raises(images.UnsupportedFormat):
        r.restore(tmp_path / "junk.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:200])
    with pytest.raises(images.ImageError, match="could not decode"):
        r.restore(tmp_path / "cut.png")


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def run_restore(args):
    """`python -m serving.restore ARGS`, in this process: flags parsed into a private FlagValues
    (so other tools' flags never clash), then `main`; returns main's status."""
    flag_values = flags.FlagValues()
    restore_cli.define_flags(flag_values)
    argv = flag_values(["serving.restore", *args])
    with mock.patch.object(restore_cli, "FLAGS", flag_values):
        return restore_cli.main(argv)


def test_cli_restores_and_never_overwrites(onnx_models, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    img8 = photo()[:25, :33]
    Image.fromarray(img8).save(src / "a.png")
    Image.fromarray(img8).save(src / "b.jpg")
    tifffile.imwrite(src / "c.tif", img8.astype(np.uint16) * 257, photometric="rgb")
    out = tmp_path / "out"
    model = onnx_models["sr"]

    assert run_restore(["--model", model, str(src), "--output", str(out), "--tile", "16", "--quiet"]) == 0
    a = np.asarray(Image.open(out / "a.png"))
    np.testing.assert_array_equal(a, Restorer(model, device="cpu").restore(img8))
    assert np.asarray(Image.open(out / "b.png")).shape == (50, 66, 3)  # JPEG -> PNG
    c = tifffile.imread(out / "c.tif")
    assert c.dtype == np.uint16 and c.shape == (50, 66, 3)

    # Existing outputs are refused without --overwrite (nothing is touched).
    before = (out / "a.png").stat().st_mtime_ns
    with pytest.raises(restore_cli.CommandError, match="exists .*--overwrite"):
        run_restore(["--model", model, str(src / "a.png"), "--output", str(out)])
    assert (out / "a.png").stat().st_mtime_ns == before
    assert run_restore(["--model", model, str(src / "a.png"), "--output", str(out), "--overwrite",
                        "--quiet"]) == 0
    # Output path == input path is refused even with --overwrite.
    with pytest.raises(restore_cli.CommandError, match="would overwrite input"):
        run_restore(["--model", model, str(src / "a.png"), "--output", str(src), "--overwrite"])
    assert np.array_equal(np.asarray(Image.open(src / "a.png")), img8)
    # Two inputs that map to one output, missing inputs, bad extensions, a corrupt model.
    Image.fromarray(img8).save(src / "a.jpeg")
    with pytest.raises(restore_cli.CommandError, match="would both be written"):
        run_restore(["--model", model, str(src / "a.png"), str(src / "a.jpeg"), "--output", str(tmp_path / "o2")])
    with pytest.raises(restore_cli.CommandError, match="input not found"):
        run_restore(["--model", model, str(src / "nope.png"), "--output", str(out)])
    (src / "notes.txt").write_text("x")
    with pytest.raises(restore_cli.CommandError, match="unsupported extension"):
        run_restore(["--model", model, str(src / "notes.txt"), "--output", str(out)])
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        run_restore(["--model", str(bad_model), str(src / "a.png"), "--output", str(tmp_path / "o3")])
    # A file that fails to decode is reported, the others still written, exit code 1.
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    rc = run_restore(["--model", model, str(src / "broken.png"), str(src / "b.jpg"), "--output",
                      str(tmp_path / "o4"), "--quiet"])
    assert rc == 1 and (tmp_path / "o4" / "b.png").exists() and not (tmp_path / "o4" / "broken.png").exists()
    assert "error:" in capsys.readouterr().out


def test_cli_module_entry_point_with_progress_bar(onnx_models, tmp_path):
    Image.fromarray(photo()[:20, :24]).save(tmp_path / "x.png")
    proc = subprocess.run([sys.executable, "-m", "serving.restore", "--model", onnx_models["sr"],
                           str(tmp_path / "x.png"), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "100%" in proc.stderr  # tqdm progress bar
    assert (tmp_path / "out" / "x.png").exists()
    # A user error: one `error:` line, exit status 1, no traceback, nothing written.
    proc = subprocess.run([sys.executable, "-m", "serving.restore", "--model", onnx_models["sr"],
                           str(tmp_path / "x.png"), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'out' / 'x.png'} exists (use --overwrite to replace it)"]
