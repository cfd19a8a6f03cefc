"""Lay out a Triton Inference Server model repository for an exported restorer.

    DIR/<name>/config.pbtxt
    DIR/<name>/1/model.onnx

`config.pbtxt` follows Triton's ModelConfig schema (protobuf text format):
platform "onnxruntime_onnx", `max_batch_size` (batch dimension implicit when
> 0), one input and one output with names and data types read from the ONNX
graph and dynamic spatial dims (-1). The sei-tf metadata is copied into
`parameters` (string values) so a client can read the task and scale factor.
Needs only `onnx` (no TensorFlow).
"""

from __future__ import annotations

import json
import os
import re
import shutil

from sei_tf.errors import SeiTfError

# ONNX TensorProto element type -> Triton DataType.
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                  6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                  11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
PLATFORM = "onnxruntime_onnx"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class TritonError(SeiTfError, RuntimeError):
    """The repository cannot be written (bad name or batch size, invalid ONNX file, existing files)."""


def _tensor_spec(value, batched: bool):
    t = value.type.tensor_type
    if t.elem_type not in ONNX_TO_TRITON:
        raise TritonError(f"{value.name}: ONNX element type {t.elem_type} has no Triton equivalent.")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    if batched:
        if not dims or dims[0] != -1:
            raise TritonError(f"{value.name}: max_batch_size > 0 needs a dynamic leading batch dim, got {dims}.")
        dims = dims[1:]
    return {"name": value.name, "data_type": ONNX_TO_TRITON[t.elem_type], "dims": dims}


def _quote(s: str) -> str:
    return json.dumps(str(s), ensure_ascii=False)  # a JSON string is a valid text-format string


def config_pbtxt(model_proto, name: str, max_batch_size: int) -> str:
    """The config.pbtxt text for `model_proto` (an onnx.ModelProto)."""
    batched = max_batch_size > 0
    graph = model_proto.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [_tensor_spec(v, batched) for v in graph.input if v.name not in initializers]
    outputs = [_tensor_spec(v, batched) for v in graph.output]
    props = {p.key: p.value for p in model_proto.metadata_props}
    lines = [f"name: {_quote(name)}", f"platform: {_quote(PLATFORM)}", f"max_batch_size: {int(max_batch_size)}"]
    layout = props.get("layout", "")
    for key, specs in (("input", inputs), ("output", outputs)):
        lines.append(f"{key} [")
        for i, spec in enumerate(specs):
            fields = [f"    name: {_quote(spec['name'])}", f"    data_type: {spec['data_type']}"]
            # FORMAT_NHWC: 3 non-batch dims (H, W, C); inputs only (ModelOutput has no format).
            if key == "input" and layout == "NHWC" and len(spec["dims"]) == 3:
                fields.append("    format: FORMAT_NHWC")
            fields.append(f"    dims: [ {', '.join(str(d) for d in spec['dims'])} ]")
            lines.append("  {\n" + "\n".join(fields) + "\n  }" + ("," if i + 1 < len(specs) else ""))
        lines.append("]")
    for key in sorted(props):
        lines.append(f"parameters {{\n  key: {_quote('sei_tf.' + key)}\n  value {{ string_value: {_quote(props[key])} }}\n}}")
    return "\n".join(lines) + "\n"


def write_repository(onnx_path, repository, name: str = "sei_restorer", max_batch_size: int = 8,
                     version: int = 1, overwrite: bool = False) -> dict:
    """Writes DIR/<name>/config.pbtxt and DIR/<name>/<version>/model.onnx; returns their paths."""
    import onnx

    if not _NAME.match(name):
        raise TritonError(f"model name {name!r}: use letters, digits, '_', '-', '.'.")
    if max_batch_size < 0:
        raise TritonError("max_batch_size must be >= 0 (0 disables batching).")
    onnx_path = os.fspath(onnx_path)
    if not os.path.isfile(onnx_path):
        raise TritonError(f"ONNX file not found: {onnx_path}")
    try:
        model = onnx.load(onnx_path)
        onnx.checker.check_model(model)
    except Exception as err:
        raise TritonError(f"{onnx_path} is not a valid ONNX model: {err}") from err
    text = config_pbtxt(model, name, max_batch_size)
    model_dir = os.path.join(os.fspath(repository), name)
    config = os.path.join(model_dir, "config.pbtxt")
    target = os.path.join(model_dir, str(int(version)), "model.onnx")
    for path in (config, target):
        if os.path.exists(path) and not overwrite:
            raise TritonError(f"{path} exists (use --overwrite to replace it).")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(onnx_path, target + ".tmp")
    os.replace(target + ".tmp", target)
    with open(config + ".tmp", "w") as f:
        f.write(text)
    os.replace(config + ".tmp", config)
    return {"config": config, "model": target, "text": text}
