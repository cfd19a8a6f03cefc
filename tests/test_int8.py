"""int8 export (export/int8.py via export/onnx_export.py) and serving an int8 restorer.

A tiny random-init cnn and a few synthetic measurement images (smooth random
fields, written as PNG and read back with the project's readers).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from export import int8, onnx_export, random_models  # noqa: E402
from serving import Restorer  # noqa: E402

N_IMAGES, HOLDBACK = 5, 2


def _smooth_field(rng, size):
    """A smooth random RGB image in [0, 1]: low-resolution noise upsampled bicubically, plus fine noise."""
    low = rng.random((size // 8, size // 8, 3))
    img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float32)
    return np.clip(img / 255 + rng.normal(0, 0.02, img.shape), 0, 1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    cal = tmp / "measurements"
    cal.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(np.rint(_smooth_field(rng, 72) * 255).astype(np.uint8)).save(cal / f"m{i}.png")
    keras_path = random_models.make_model(tmp / "sr.keras", "cnn_tiny", "sr", scale=2)
    fp32 = tmp / "fp32.onnx"
    onnx_export.export(keras_path, fp32, log=lambda *_: None)
    out = tmp / "int8.onnx"
    report = onnx_export.export(keras_path, out, log=lambda *_: None, int8_calibration=str(cal),
                                int8_options={"holdback": HOLDBACK, "threshold_db": 20.0, "crop": 32})
    return {"tmp": tmp, "cal": cal, "keras": keras_path, "fp32": str(fp32), "int8": str(out), "report": report}


def _session(path):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_int8_graph_is_quantised_and_keeps_metadata(setup):
    model = onnx.load(setup["int8"])
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = {i.name: i for i in model.graph.initializer}
    int8_weights = [w for w in weights.values() if w.data_type == onnx.TensorProto.INT8 and len(w.dims) == 4]
    assert int8_weights, "no int8 convolution weights"
    # per-channel: the weights' DequantizeLinear has one scale per output channel
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in
                   {w.name for w in int8_weights}]
    assert all(len(weights[n.input[1]].dims) == 1 and weights[n.input[1]].dims[0] > 1 for n in per_channel)

    props = {p.key: p.value for p in model.metadata_props}
    fp32_props = {p.key: p.value for p in onnx.load(setup["fp32"]).metadata_props}
    for key, value in fp32_props.items():  # every fp32 key is kept; only precision changes
        if key != "precision":
            assert props[key] == value, key
    assert props["precision"] == "int8" and fp32_props["precision"] == "fp32"
    assert props["int8_calibration_images"] == str(N_IMAGES - HOLDBACK)
    assert props["int8_holdback_images"] == str(HOLDBACK)
    assert int(props["int8_calibration_crops"]) == (N_IMAGES - HOLDBACK) * int8.DEFAULT_CROPS_PER_IMAGE
    assert float(props["int8_threshold_db"]) == 20.0


def test_recorded_agreement_is_the_measured_one(setup):
    """The metadata's PSNR(int8, fp32) is recomputed here from the held-back files and both graphs."""
    from sei_tf import data

    props = {p.key: p.value for p in onnx.load(setup["int8"]).metadata_props}
    names = sorted(os.listdir(setup["cal"]))[-HOLDBACK:]
    fp32, q8 = _session(setup["fp32"]), _session(setup["int8"])
    scores = []
    for name in names:
        x = data.read_image(os.path.join(setup["cal"], name))[None]
        a = fp32.run(None, {"input": x})[0]
        b = q8.run(None, {"input": x})[0]
        mse = np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2)
        scores.append(10 * np.log10(1 / mse))
    print(f"tiny random cnn: int8 vs fp32 PSNR {scores} dB")
    assert float(props["int8_psnr_vs_fp32_db"]) == pytest.approx(min(scores), abs=0.01)
    assert float(props["int8_psnr_vs_fp32_mean_db"]) == pytest.approx(np.mean(scores), abs=0.01)
    assert min(scores) >= 20.0


def test_refusal_writes_nothing_and_keeps_older_file(setup, tmp_path):
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"older file")
    with pytest.raises(int8.Int8Error) as err:
        onnx_export.export(setup["keras"], out, log=lambda *_: None, int8_calibration=str(setup["cal"]),
                           int8_options={"holdback": HOLDBACK, "threshold_db": 200.0, "crop": 32})
    message = str(err.value)
    assert "200 dB" in message and "dB on the worst held-back image" in message and "no file written" in message
    assert out.read_bytes() == b"older file"
    assert sorted(os.listdir(tmp_path)) == ["int8.onnx"]  # no temporary file left


def test_too_few_calibration_images(setup, tmp_path):
    with pytest.raises(int8.Int8Error, match="at least 3 measurement images"):
        onnx_export.export(setup["keras"], tmp_path / "x.onnx", log=lambda *_: None,
                           int8_calibration=[str(setup["cal"] / "m0.png"), str(setup["cal"] / "m1.png")],
                           int8_options={"holdback": 2})
    assert not os.listdir(tmp_path)


def test_split_and_crops():
    cal, held = int8.split_calibration(["c.png", "a.png", "e.png", "b.png", "d.png"], 2)
    assert cal == [1, 3, 0] and held == [4, 2]  # a, b, c | d, e
    image = np.arange(100 * 70 * 1, dtype=np.float32).reshape(100, 70, 1)
    crops = int8.grid_crops(image, 32, 4)
    assert len(crops) == 4 and all(c.shape == (32, 32, 1) for c in crops)
    assert len({float(c[0, 0, 0]) for c in crops}) == 4  # distinct windows
    assert int8.grid_crops(image[:20], 32, 4)[0].shape == (20, 32, 1)


def test_restorer_runs_int8_and_reports_precision(setup):
    r8, r32 = Restorer(setup["int8"], device="cpu", tile=None), Restorer(setup["fp32"], device="cpu", tile=None)
    assert r8.precision == "int8" and r32.precision == "fp32" and "precision=int8" in repr(r8)
    assert r8.metadata.as_dict()["int8_holdback_images"] == str(HOLDBACK)
    x = _smooth_field(np.random.default_rng(1), 64)
    y8, y32 = r8.restore(x), r32.restore(x)
    assert y8.shape == (128, 128, 3) == y32.shape
    psnr = 10 * np.log10(1 / np.mean((y8.astype(np.float64) - y32) ** 2))
    print(f"Restorer int8 vs fp32 on an unseen image: {psnr:.2f} dB")
    assert psnr > 20


@pytest.mark.parametrize("tile", [24, 40])
def test_int8_tiles_equal_whole_image(setup, tile):
    """Static per-tensor activation scales: exact tiling stays bit-exact for the int8 graph."""
    r = Restorer(setup["int8"], device="cpu", tile=None)
    x = _smooth_field(np.random.default_rng(2), 80)[:77, :71]
    whole = r.restore(x, tile=None)
    tiled = r.restore(x, tile=tile)
    assert r.tiles_for(77, 71, tile=tile) > 1
    print(f"int8 tile {tile}: max abs difference to the whole image {np.max(np.abs(tiled - whole)):.3g}")
    np.testing.assert_array_equal(tiled, whole)


@pytest.mark.slow
def test_cli_int8_refusal_and_usage_error(setup, tmp_path):
    """`sei-tf export --int8`: below the threshold one `error:` line with the measured value, exit 1, no file."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "int8.onnx"
    base = [sys.executable, "-m", "export.to_onnx", "--model", setup["keras"], "--output", str(out)]
    proc = subprocess.run(base + ["--int8"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 1 and "--int8 needs --calibration" in proc.stderr.strip().splitlines()[-1]
    proc = subprocess.run(base + ["--int8", "--calibration", str(setup["cal"]), "--calibration_crop", "32",
                                  "--int8_threshold", "200"], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert last.startswith("error: int8 output disagrees with fp32: PSNR ") and "threshold 200 dB" in last
    assert "Traceback" not in proc.stderr and not os.listdir(tmp_path)
