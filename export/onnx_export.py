"""Export a trained sei-tf restorer (the backbone only, no physics) to ONNX.

`export(model_path, output, opset=18, fp16=False)`:

1. loads `RUN_DIR/model.keras` (an `SEIModel`, or a bare backbone) with
   `sei_tf.loading.load_any`;
2. converts `backbone(x)` with tf2onnx from a `tf.function` whose input
   signature is `(None, None, None, C)` float32, so batch, height and width
   stay dynamic; tf2onnx's `unk__NN` dimension names are renamed to
   `batch`, `height`, `width` (`out_height`, `out_width` on the output when
   the model upsamples); the graph's input and output are named `input`
   and `output`;
3. writes `metadata_props` (see `serving/metadata.py`), all derived from the
   model's physics object (`summary()`, `upscale`, `serialize`) and objective;
4. runs `onnx.checker` and a parity check against the Keras model on a crop
   of a real photograph (scikit-image's astronaut) plus a batch of two at
   another size (checks the dynamic dimensions), and refuses to write the
   file when the max abs error is above the tolerance (1e-4 for fp32,
   `FP16_TOLERANCE` for fp16 weights);
5. writes to a temporary file next to `output` and renames it at the end, so
   a failed export leaves no file behind (and never clobbers an older one).

`--fp16` converts the weights to float16 with onnxconverter-common (optional
dependency: a clear error when missing) and keeps float32 inputs/outputs.
`--int8 --calibration DIR` quantises the checked fp32 graph to static int8
(`export.int8`) and refuses to write it when it disagrees with fp32 on
held-back measurements.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from sei_tf import loading
from sei_tf.errors import SeiTfError
from serving import metadata as md

DEFAULT_OPSET = 18  # the highest opset tf2onnx 1.17 converts to
FP32_TOLERANCE = 1e-4
# fp16 weights and activations: ~3 significant digits; errors of a few 1e-3
# on [0, 1] images are expected (less than one 8-bit grey level is 3.9e-3).
FP16_TOLERANCE = 2e-2
INPUT_NAME = "input"
OUTPUT_NAME = "output"
CONVERT_ATTEMPTS = 5  # tf2onnx conversions tried before a graph with a wrong rank is refused (see convert)
PARITY_IMAGE = "skimage.data.astronaut()[150:211, 170:217] (61x47 crop), converted to the model's channels"
# RGB -> grey for 1-channel models: ITU-R BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B on [0, 1]
# values (full range, as `sei_tf.simulate` converts ground truth to greyscale; sei_tf.metrics'
# PSNR-Y uses the same weights scaled to the studio range [16, 235] / 255).
BT601_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


class ExportError(SeiTfError, RuntimeError):
    """The export failed; no output file was written."""


def parity_image(channels: int) -> np.ndarray:
    """A real photograph crop (61x47, odd sizes) as float32 HxWxC in [0, 1]."""
    from skimage import data as skdata

    rgb = skdata.astronaut()[150:211, 170:217].astype(np.float32) / 255.0
    return to_channels(rgb, channels)


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """RGB float image in [0, 1] -> `channels` channels (1: BT.601 luma; 3: as is; else cycled)."""
    if channels == 3:
        return np.ascontiguousarray(rgb)
    if channels == 1:
        grey = rgb @ BT601_LUMA
        return grey[..., None].astype(np.float32)
    return np.ascontiguousarray(rgb[..., [i % 3 for i in range(channels)]])


def build_metadata(backbone, sei_model, precision: str) -> dict:
    """The metadata_props of the exported restorer (all values are strings).

    Everything about the instrument comes from the physics object: the flat,
    human-readable keys from `physics.summary()` and `upscale` (the keys that
    serving and sei-tf 0.1 readers know), and the whole description as
    `physics` (JSON of `sei_tf.physics.serialize`). A bare backbone (no
    physics) gets task 'unknown', no kernel, noise 'unknown' and physics 'null'.
    """
    import keras

    import sei_tf
    from sei_tf import objectives, physics as physics_lib

    op = getattr(sei_model, "physics", None)
    summary = op.summary() if op is not None else {"task": "unknown", "upscale": int(backbone.upscale)}
    if int(summary["upscale"]) != int(backbone.upscale):
        raise ExportError(f"the physics ({op.describe()}) has upscale {summary['upscale']} but the backbone "
                          f"upscales by {backbone.upscale}.")
    noise_sigma = getattr(op, "noise_sigma", None)
    ctx = backbone.tile_context() if hasattr(backbone, "tile_context") else None
    serialized = keras.saving.serialize_keras_object(backbone)
    backbone_info = {"class": type(backbone).__name__, "module": type(backbone).__module__,
                     "config": serialized.get("config", {})}
    training = {}
    if sei_model is not None:
        training = {"method": sei_model.method, "objective": objectives.serialize(sei_model.objective),
                    "objective_summary": objectives.describe(sei_model.objective), "seed": sei_model.seed}
    return {
        md.FORMAT_KEY: md.FORMAT_VERSION,
        "sei_tf_version": sei_tf.__version__,
        "task": str(summary["task"]),
        "scale_factor": str(int(summary["upscale"])),
        "kernel": str(summary.get("kernel", "none")),
        "kernel_array": json.dumps(summary.get("kernel_array"), default=_json_default),
        "noise_sigma": "unknown" if noise_sigma is None else str(float(noise_sigma)),
        "noise": str(summary.get("noise", "unknown")),
        "operator": str(summary.get("operator", "unknown")),
        "physics": json.dumps(physics_lib.serialize(op) if op is not None else None, default=_json_default),
        "channels": str(int(backbone.channels)),
        "layout": "NHWC",
        "value_range": json.dumps([0.0, 1.0]),
        "dtype": "float32",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "backbone": json.dumps(backbone_info, default=_json_default),
        "method": training.get("method", "unknown"),
        "training": json.dumps(training, default=_json_default),
        "tile_context": md.GLOBAL_CONTEXT if ctx is None else str(int(ctx)),
        # Windowed attention repeats with the window size: blended tiles align to it.
        "tile_align": str(int(getattr(backbone, "window_size", 1) or 1)),
        "precision": precision,
    }


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray, tuple, set)):
        return list(obj)
    return str(obj)


def convert(backbone, opset: int = DEFAULT_OPSET):
    """tf2onnx conversion of `backbone` with dynamic N, H, W; returns a ModelProto."""
    import tensorflow as tf
    import tf2onnx

    channels = int(backbone.channels)
    spec = (tf.TensorSpec([None, None, None, channels], tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=spec)
    def restorer(x):
        return backbone(x, training=False)

    from export.tf_bicubic import exact_bicubic

    # tf2onnx 1.17 is not deterministic here: 3 of 62 conversions of a tiny 1-channel cnn came
    # out with an extra leading axis on the output, (1, N, H, W, 1), values right. Such a graph
    # is converted again; rename_io refuses one that stays wrong.
    for _ in range(CONVERT_ATTEMPTS):
        try:
            # x3 bicubic: rebuild TF's tabulated kernel from convolutions (see tf_bicubic).
            with exact_bicubic(int(backbone.upscale)):
                model_proto, _ = tf2onnx.convert.from_function(restorer, input_signature=spec, opset=opset)
        except Exception as err:
            raise ExportError(f"tf2onnx could not convert {type(backbone).__name__} at opset {opset}: {err}") from err
        if all(_rank(v) == 4 for v in (*model_proto.graph.input, *model_proto.graph.output)):
            break
    rename_io(model_proto, upsamples=int(backbone.upscale) > 1)
    return model_proto


def _rank(value):
    """Rank of a graph input or output (its declared shape)."""
    return len(value.type.tensor_type.shape.dim)


def rename_io(model_proto, upsamples: bool):
    """Names the graph's input/output `input`/`output` and their dynamic dims."""
    graph = model_proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"expected one graph input and one output, got {len(graph.input)} and {len(graph.output)} "
                          "(a tf.constant captured from outside the traced function becomes an extra input).")
    renames = {graph.input[0].name: INPUT_NAME, graph.output[0].name: OUTPUT_NAME}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)

    dim_names = {}
    in_names = ("batch", "height", "width")
    out_names = ("batch", "out_height", "out_width") if upsamples else in_names
    for value, names in ((graph.input[0], in_names), (graph.output[0], out_names)):
        if _rank(value) != 4:
            raise ExportError(f"{value.name} has rank {_rank(value)}, expected NHWC (rank 4).")
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims[:3], names):
            if dim.HasField("dim_value"):
                raise ExportError(f"{value.name} has a fixed dimension {dim.dim_value}; expected dynamic.")
            dim_names.setdefault(dim.dim_param, name)
            dim.dim_param = name
    # Keep intermediate shapes consistent with the renamed dims.
    for value in graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dim_names:
                dim.dim_param = dim_names[dim.dim_param]


def _float16_module():
    try:
        from onnxconverter_common import float16
    except ImportError as err:
        raise ExportError("--fp16 needs the optional package onnxconverter-common "
                          "(pip install onnxconverter-common); it is not installed.") from err
    return float16


def to_fp16(model_proto):
    """float16 weights with float32 I/O, via onnxconverter-common (optional)."""
    float16 = _float16_module()
    # Kept in float32: cubic Resize (float32-only kernels on CPU) and every Cast
    # (shape/mask arithmetic: the converter retypes Cast(to=float) to float16
    # and the graph then fails to load, e.g. in SwinIR's attention mask).
    casts = [node.name for node in model_proto.graph.node if node.op_type == "Cast"]
    try:
        return float16.convert_float_to_float16(
            model_proto, keep_io_types=True, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, "Resize"],
            node_block_list=casts)
    except Exception as err:
        raise ExportError(f"float16 conversion failed: {err}") from err


def parity(model_bytes: bytes, backbone, channels: int):
    """Max abs error between onnxruntime (CPU) and Keras on a real photo crop.

    Also runs a batch of two at another odd size, to check the dynamic dims.
    """
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportError(f"onnxruntime cannot load the converted model: {err}") from err
    photo = parity_image(channels)[None]
    rng = np.random.default_rng(0)
    batch2 = np.concatenate([photo[:, 5:28, 7:38], rng.random((1, 23, 31, channels), np.float32)])
    errors = []
    for x in (photo, batch2):
        ref = np.asarray(backbone(x, training=False))
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape} != Keras output shape {ref.shape} for input {x.shape}.")
        errors.append(float(np.max(np.abs(got.astype(np.float64) - ref))))
    return errors[0], max(errors)


def export(model_path, output, opset: int = DEFAULT_OPSET, fp16: bool = False,
           tolerance: float | None = None, log=print, int8_calibration=None, int8_options=None) -> dict:
    """Exports `model_path` (.keras file or run folder) to `output` (.onnx); returns a report dict.

    int8_calibration: measurements (folder, file or list) to calibrate a static int8
    graph on (`export.int8`); the fp32 graph is checked against Keras first, then the
    int8 graph against the fp32 one on held-back images. `int8_options`: keyword
    arguments of `export.int8.quantize` (holdback, threshold_db, crop, crops_per_image).

    Raises `sei_tf.loading.ModelError` when the model is missing or unreadable, and
    `ExportError` when anything else fails, including a parity error (max abs error
    on [0, 1] images) above `tolerance` (default 1e-4, or `FP16_TOLERANCE` for fp16),
    and `export.int8.Int8Error` when the int8 graph agrees with fp32 below its threshold.
    All are `SeiTfError`s; no file is written in any of these cases.
    """
    import onnx

    from sei_tf import models

    output = os.fspath(output)
    if fp16 and int8_calibration is not None:
        raise ExportError("choose one of --fp16 and --int8, not both.")
    if tolerance is None:
        tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    if fp16:
        _float16_module()  # the clear error comes before the slow conversion
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise ExportError(f"output folder does not exist: {out_dir}")

    backbone, sei_model = loading.load_any(model_path)
    trained_precision = models.precision_of(backbone)
    if trained_precision != "float32":
        # tf2onnx has no bfloat16 (it would write float16 silently): convert a float32 copy.
        log(f"the model computes in {trained_precision}; exporting a float32 copy of its (float32) weights")
        backbone = models.as_float32(backbone)
    channels = int(backbone.channels)
    model_proto = convert(backbone, opset)
    if fp16:
        model_proto = to_fp16(model_proto)
    props = build_metadata(backbone, sei_model, "fp16" if fp16 else "fp32")
    props["trained_precision"] = trained_precision

    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejected the converted model: {err}") from err

    photo_error, max_error = parity(model_proto.SerializeToString(), backbone, channels)
    log(f"parity vs Keras on {PARITY_IMAGE}: max abs error {photo_error:.3g} "
        f"(all checks {max_error:.3g}; tolerance {tolerance:g}, {'fp16' if fp16 else 'fp32'})")
    if not np.isfinite(max_error) or max_error > tolerance:
        raise ExportError(f"parity check failed: max abs error {max_error:.3g} > tolerance {tolerance:g}; "
                          f"no file written to {output}.")
    props.update({"parity_max_abs_error": f"{max_error:.6g}", "parity_tolerance": f"{tolerance:g}",
                  "parity_image": PARITY_IMAGE})
    int8_report = None
    if int8_calibration is not None:
        from export import int8

        model_proto, int8_report = int8.quantize(model_proto, int8_calibration, channels, INPUT_NAME, OUTPUT_NAME,
                                                 log=log, **(int8_options or {}))
        props.update(int8.metadata(int8_report))  # parity_* keep describing the fp32 graph it came from
        try:
            onnx.checker.check_model(model_proto)
        except onnx.checker.ValidationError as err:
            raise ExportError(f"onnx.checker rejected the int8 model: {err}") from err
    onnx.helper.set_model_props(model_proto, props)
    model_proto.doc_string = (f"sei-tf restorer ({props['task']} x{props['scale_factor']}, "
                              f"{json.loads(props['backbone'])['class']}, {props['precision']}): NHWC float32 in [0, 1]")
    # Metadata written after the checks: re-validate the final proto cheaply.
    md.RestorerMetadata.from_props(props, source=output)

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model_proto.SerializeToString())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; keep the usual file mode
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {"output": output, "parity_max_abs_error": max_error, "photo_max_abs_error": photo_error,
            "tolerance": tolerance, "opset": opset, "metadata": props,
            "bytes": os.path.getsize(output), "int8": int8_report}
