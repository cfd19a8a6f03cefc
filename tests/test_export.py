"""ONNX export (export/onnx_export.py, export/to_onnx.py) and the Triton layout (export/triton.py).

Tiny random-init models (CPU, seconds).
"""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import json  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

import sei_tf  # noqa: E402
from export import onnx_export, random_models, triton  # noqa: E402
from serving.metadata import RestorerMetadata  # noqa: E402


ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("keras")
    return {
        "cnn_sr": random_models.make_model(d / "cnn_sr.keras", "cnn_tiny", "sr", scale=2),
        "cnn_deblur": random_models.make_model(d / "cnn_deblur.keras", "cnn_tiny", "deblur", kernel="gaussian:1.5",
                                               noise_sigma=3.0, method="sure"),
        "cnn_grey_x3": random_models.make_model(d / "cnn_grey.keras", "cnn_tiny", "sr", scale=3, channels=1),
    }


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _leftovers(folder):
    return [f for f in os.listdir(folder) if f.startswith(".tmp-") or f.endswith(".tmp")]


def test_export_cnn_sr_parity_and_dims(models, tmp_path):
    out = tmp_path / "cnn_sr.onnx"
    report = onnx_export.export(models["cnn_sr"], out)
    print(f"cnn sr x2 parity max abs error: {report['parity_max_abs_error']:.3g}")
    assert report["parity_max_abs_error"] < 1e-4
    assert out.exists() and not _leftovers(tmp_path)
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert _dims(model.graph.input[0]) == ["batch", "height", "width", 3]
    assert _dims(model.graph.output[0]) == ["batch", "out_height", "out_width", 3]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    # Dynamic batch, height and width really are dynamic.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 8, 8, 3), (3, 13, 29, 3)]:
        y = session.run(None, {"input": np.random.rand(*shape).astype(np.float32)})[0]
        assert y.shape == (shape[0], shape[1] * 2, shape[2] * 2, 3)


def test_metadata_round_trip(models, tmp_path):
    import keras

    from sei_tf import objectives, physics

    out = tmp_path / "deblur.onnx"
    onnx_export.export(models["cnn_deblur"], out)
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    # Read back the way serving does (onnxruntime, no onnx/TF needed).
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map == props
    meta = RestorerMetadata.from_props(props)
    saved = keras.saving.load_model(models["cnn_deblur"], compile=False)
    assert meta.task == "deblur" and meta.scale == 1 and meta.channels == 3
    assert meta.kernel == "gaussian:1.5"
    np.testing.assert_allclose(np.array(json.loads(props["kernel_array"])), saved.physics.kernel)
    assert meta.noise_sigma == 3.0
    assert meta.method == "sure"
    # The whole physics and objective travel with the file and rebuild what was trained.
    rebuilt = physics.deserialize(json.loads(props["physics"]))
    assert rebuilt.differences(saved.physics) == [] and meta.physics == physics.serialize(saved.physics)
    assert props["operator"] == "blur gaussian:1.5" and props["noise"] == saved.physics.noise.describe()
    training = json.loads(props["training"])
    assert training["method"] == "sure" and training["seed"] == saved.seed
    assert training["objective"] == objectives.serialize(saved.objective)
    assert training["objective_summary"] == "sure"
    assert meta.tile_context == saved.backbone.tile_context() == 5
    assert meta.tile_align == 1
    assert meta.layout == "NHWC" and meta.value_range == (0.0, 1.0) and meta.dtype == "float32"
    assert meta.backbone["class"] == "ResidualCNN"
    assert meta.backbone["config"]["features"] == 8 and meta.backbone["config"]["num_blocks"] == 1
    assert meta.version == sei_tf.__version__
    assert meta.precision == "fp32"
    assert float(props["parity_max_abs_error"]) < 1e-4 and "astronaut" in props["parity_image"]
    assert _dims(onnx.load(out).graph.output[0]) == ["batch", "height", "width", 3]


@pytest.mark.slow
def test_export_swinir_parity(tmp_path):
    keras_path = random_models.make_model(tmp_path / "swinir.keras", "swinir_tiny", "sr", scale=2)
    out = tmp_path / "swinir.onnx"
    report = onnx_export.export(keras_path, out)
    print(f"swinir tiny sr x2 parity max abs error: {report['parity_max_abs_error']:.3g}")
    assert report["parity_max_abs_error"] < 1e-4
    meta = RestorerMetadata.from_props(report["metadata"])
    assert meta.tile_context is None and meta.raw["tile_context"] == "global"
    assert meta.tile_align == 4 and meta.backbone["class"] == "SwinIR"
    model = onnx.load(out)
    assert _dims(model.graph.input[0]) == ["batch", "height", "width", 3]


def test_metadata_of_a_bare_backbone():
    """No physics: the descriptive keys say so, and the file still loads in serving."""
    import sei_tf.models

    backbone = sei_tf.models.build("cnn", upscale=3, channels=1, features=8, num_blocks=1)
    props = onnx_export.build_metadata(backbone, None, "fp32")
    assert (props["task"], props["scale_factor"], props["kernel"], props["noise_sigma"]) == ("unknown", "3", "none",
                                                                                            "unknown")
    assert props["physics"] == "null" and props["kernel_array"] == "null" and props["training"] == "{}"
    meta = RestorerMetadata.from_props(props)
    assert meta.scale == 3 and meta.physics is None and meta.noise_sigma is None


def test_parity_image_grey_is_bt601_luma():
    """1-channel models are checked on the BT.601 luma of the photo, as simulate makes grey data."""
    rgb = np.eye(3, dtype=np.float32)[None]  # one red, one green, one blue pixel
    np.testing.assert_allclose(onnx_export.to_channels(rgb, 1)[0, :, 0], [0.299, 0.587, 0.114], rtol=1e-6)
    grey = onnx_export.parity_image(1)
    rgb = onnx_export.parity_image(3)
    assert grey.shape == (61, 47, 1) and grey.dtype == np.float32
    np.testing.assert_allclose(grey[..., 0], 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2],
                               atol=1e-6)


@pytest.mark.slow
def test_cli_export_greyscale(models, tmp_path):
    """`python export/to_onnx.py` as the README writes it, from another folder and without PYTHONPATH:
    the script finds its package because sei-tf is installed (pip install -e)."""
    out = tmp_path / "grey.onnx"
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_onnx.py"), "--model",
                           models["cnn_grey_x3"], "--output", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max abs error" in proc.stdout and "sr x3" in proc.stdout
    meta = RestorerMetadata.from_props({p.key: p.value for p in onnx.load(out).metadata_props})
    assert meta.channels == 1 and meta.scale == 3 and meta.task == "sr"


@pytest.mark.slow
def test_cli_missing_model_fails_cleanly(tmp_path):
    """`python -m export.to_onnx`: a user error is one `error:` line and exit status 1, no traceback."""
    out = tmp_path / "x.onnx"
    proc = subprocess.run([sys.executable, "-m", "export.to_onnx", "--model", str(tmp_path / "nope.keras"),
                           "--output", str(out)], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: Model not found: {tmp_path / 'nope.keras'}"
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_conversion_with_an_extra_output_axis_is_converted_again(models, tmp_path, monkeypatch):
    """tf2onnx sometimes returns the output as (1, N, H, W, C): convert retries, then refuses."""
    import tf2onnx

    real = tf2onnx.convert.from_function
    calls = []

    def flaky(*args, **kwargs):
        model_proto, storage = real(*args, **kwargs)
        calls.append(1)
        if len(calls) <= flaky.bad_calls:  # the bug, imitated: a leading axis of size 1 on the output
            dims = model_proto.graph.output[0].type.tensor_type.shape.dim
            dims.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
        return model_proto, storage

    monkeypatch.setattr(tf2onnx.convert, "from_function", flaky)
    import keras

    backbone = keras.saving.load_model(models["cnn_deblur"], compile=False).backbone
    flaky.bad_calls = 2
    proto = onnx_export.convert(backbone)
    assert len(calls) == 3 and len(_dims(proto.graph.output[0])) == 4
    calls.clear()
    flaky.bad_calls = onnx_export.CONVERT_ATTEMPTS
    with pytest.raises(onnx_export.ExportError, match="rank 5"):
        onnx_export.convert(backbone)
    assert len(calls) == onnx_export.CONVERT_ATTEMPTS


def test_parity_failure_leaves_no_file(models, tmp_path, monkeypatch):
    out = tmp_path / "bad.onnx"
    out.write_bytes(b"previous export")  # an older file must survive a failed export
    monkeypatch.setattr(onnx_export, "parity", lambda *a, **k: (0.25, 0.25))
    with pytest.raises(onnx_export.ExportError, match="parity check failed: max abs error 0.25"):
        onnx_export.export(models["cnn_sr"], out)
    assert out.read_bytes() == b"previous export"
    assert not _leftovers(tmp_path)
    out.unlink()
    monkeypatch.undo()
    # A real parity error is never exactly zero at tolerance 0: fails the same way.
    with pytest.raises(onnx_export.ExportError, match="parity check failed"):
        onnx_export.export(models["cnn_sr"], out, tolerance=0.0)
    assert not out.exists() and not _leftovers(tmp_path)


def test_fp16(models, tmp_path):
    out = tmp_path / "fp16.onnx"
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError:
        with pytest.raises(onnx_export.ExportError, match="onnxconverter-common"):
            onnx_export.export(models["cnn_sr"], out, fp16=True)
        assert not out.exists()
        return
    report = onnx_export.export(models["cnn_sr"], out, fp16=True)
    print(f"cnn fp16 parity max abs error: {report['parity_max_abs_error']:.3g} "
          f"(tolerance {onnx_export.FP16_TOLERANCE})")
    assert report["parity_max_abs_error"] < onnx_export.FP16_TOLERANCE
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "fp16"


# --------------------------------------------------------------------------
# Triton model repository, checked against Triton's ModelConfig schema
# --------------------------------------------------------------------------
def _model_config_class():
    """The documented subset of Triton's ModelConfig protobuf (model_config.proto).

    Built from the field numbers and enums of triton-inference-server/common
    protobuf/model_config.proto (tritonclient is not installed offline). Text
    format parsing with it is strict: an unknown field, a wrong type or an
    unknown enum value is an error.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="sei_test_model_config.proto", package="inference",
                                             syntax="proto3")
    dt = fdp.enum_type.add(name="DataType")
    for i, n in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
                           "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16",
                           "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):
        dt.value.add(name=n, number=i)

    def field(msg, name, number, ftype, label=F.LABEL_OPTIONAL, type_name=None):
        f = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name

    inp = fdp.message_type.add(name="ModelInput")
    fmt = inp.enum_type.add(name="Format")
    for i, n in enumerate(["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"]):
        fmt.value.add(name=n, number=i)
    field(inp, "name", 1, F.TYPE_STRING)
    field(inp, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
    field(inp, "format", 3, F.TYPE_ENUM, type_name=".inference.ModelInput.Format")
    field(inp, "dims", 4, F.TYPE_INT64, F.LABEL_REPEATED)
    field(inp, "optional", 8, F.TYPE_BOOL)
    out = fdp.message_type.add(name="ModelOutput")
    field(out, "name", 1, F.TYPE_STRING)
    field(out, "data_type", 2, F.TYPE_ENUM, type_name=".inference.DataType")
    field(out, "dims", 3, F.TYPE_INT64, F.LABEL_REPEATED)
    param = fdp.message_type.add(name="ModelParameter")
    field(param, "string_value", 1, F.TYPE_STRING)
    cfg = fdp.message_type.add(name="ModelConfig")
    field(cfg, "name", 1, F.TYPE_STRING)
    field(cfg, "platform", 2, F.TYPE_STRING)
    field(cfg, "backend", 17, F.TYPE_STRING)
    field(cfg, "max_batch_size", 4, F.TYPE_INT32)
    field(cfg, "input", 5, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".inference.ModelInput")
    field(cfg, "output", 6, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".inference.ModelOutput")
    entry = cfg.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, F.TYPE_STRING)
    field(entry, "value", 2, F.TYPE_MESSAGE, type_name=".inference.ModelParameter")
    field(cfg, "parameters", 14, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".inference.ModelConfig.ParametersEntry")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def test_triton_repository(models, tmp_path):
    from google.protobuf import text_format

    onnx_path = tmp_path / "cnn.onnx"
    onnx_export.export(models["cnn_sr"], onnx_path, log=lambda *_: None)
    repo = tmp_path / "repo"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "export", "to_triton.py"), "--onnx", str(onnx_path),
                           "--repository", str(repo), "--max_batch_size", "4"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (repo / "sei_restorer" / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    config = _model_config_class()()
    text_format.Parse((repo / "sei_restorer" / "config.pbtxt").read_text(), config)  # strict schema check
    assert config.name == "sei_restorer"  # must match the folder name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4
    model = onnx.load(onnx_path)
    fp32 = config.DESCRIPTOR.file.pool.FindEnumTypeByName("inference.DataType").values_by_name["TYPE_FP32"].number
    nhwc = config.DESCRIPTOR.file.pool.FindEnumTypeByName(
        "inference.ModelInput.Format").values_by_name["FORMAT_NHWC"].number
    assert [i.name for i in config.input] == [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in config.output] == [o.name for o in model.graph.output] == ["output"]
    assert config.input[0].data_type == config.output[0].data_type == fp32
    assert config.input[0].format == nhwc
    # batch dim implicit (max_batch_size > 0): dims are H, W, C with dynamic H, W.
    assert list(config.input[0].dims) == [-1, -1, 3] and list(config.output[0].dims) == [-1, -1, 3]
    assert config.parameters["sei_tf.scale_factor"].string_value == "2"
    assert config.parameters["sei_tf.task"].string_value == "sr"

    # Without batching the batch dim is listed, and an existing repository is not overwritten.
    with pytest.raises(triton.TritonError, match="exists"):
        triton.write_repository(onnx_path, repo, max_batch_size=0)
    text = triton.write_repository(onnx_path, repo, max_batch_size=0, overwrite=True)["text"]
    config0 = _model_config_class()()
    text_format.Parse(text, config0)
    assert config0.max_batch_size == 0 and list(config0.input[0].dims) == [-1, -1, -1, 3]
    with pytest.raises(triton.TritonError, match="not a valid ONNX"):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not onnx")
        triton.write_repository(bad, tmp_path / "repo2")


def test_tf_bicubic_matches_tensorflow():
    """x3 bicubic is rebuilt for export: it must equal TF's tabulated kernel."""
    import tensorflow as tf

    from export import tf_bicubic

    assert not tf_bicubic.needs_exact_bicubic(2) and not tf_bicubic.needs_exact_bicubic(4)
    assert tf_bicubic.needs_exact_bicubic(3)
    x = np.random.default_rng(0).random((2, 11, 7, 3), np.float32)
    for s in (2, 3, 4):
        ref = tf.image.resize(x, [11 * s, 7 * s], method="bicubic").numpy()
        assert np.abs(tf_bicubic.upsample(x, s).numpy() - ref).max() < 1e-6
