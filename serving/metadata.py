"""The metadata that `export/to_onnx.py` writes into a restorer's ONNX file.

Stored as ONNX `metadata_props` (string key -> string value), read back with
onnxruntime's `session.get_modelmeta().custom_metadata_map` (no `onnx` or
TensorFlow import needed). Structured values (backbone, training, kernel,
physics) are JSON strings.

Format 1 is read as written by every sei-tf version so far. Keys were only ever
added to it (0.2 added `physics`, `operator` and `noise`, and writes the
objective's loss terms into `training`), so a reader ignores keys it does not
know and treats the added ones as optional: files written by sei-tf 0.1 still
load. The number changes only when an existing key changes meaning.
"""

from __future__ import annotations

import dataclasses
import json

from sei_tf.errors import SeiTfError

# Marker key: its presence says "this ONNX file is a sei-tf restorer".
FORMAT_KEY = "sei_tf_format"
FORMAT_VERSION = "1"

# Every key the exporter writes; `REQUIRED` must be present for serving.
KEYS = (
    FORMAT_KEY,
    "sei_tf_version",
    "task",               # 'sr', 'deblur' or 'unknown' (a bare backbone was exported)
    "scale_factor",       # output size / input size (int, 1 for deblurring)
    "kernel",             # blur kernel name ('gaussian:2', ...) or 'none'
    "kernel_array",       # JSON 2-D list of the PSF, or 'null'
    "noise_sigma",        # Gaussian noise std the model was trained for, 8-bit units (sigma * 255), or 'unknown'
    "noise",              # the noise model in words, e.g. 'gaussian sigma 5/255' or 'poisson gain 0.01 (...)' (from 0.2)
    "operator",           # the forward operator in words, e.g. 'sr x2', 'blur gaussian:2' (from 0.2)
    "physics",            # JSON of sei_tf.physics.serialize(op): rebuilds the physics with TensorFlow
                          # installed (sei_tf.physics.deserialize); 'null' for a bare backbone (from 0.2)
    "channels",           # image channels (1 grey, 3 RGB)
    "layout",             # 'NHWC'
    "value_range",        # '[0, 1]'
    "dtype",              # I/O element type: 'float32'
    "input_name",
    "output_name",
    "backbone",           # JSON {"class": ..., "module": ..., "config": {...}}
    "method",             # training method: 'sei', 'sure', ...
    "training",           # JSON: {"method", "objective" (sei_tf.objectives.serialize), "objective_summary",
                          # "seed"}; sei-tf 0.1 wrote {"method", "alpha", "stop_gradient", ...}
    "tile_context",       # receptive-field radius in input pixels, or 'global'
    "tile_align",         # blended tiles start at multiples of this (SwinIR window size)
    "precision",          # 'fp32', 'fp16' (weights) or 'int8' (static QDQ); I/O stays float32
    "parity_max_abs_error",  # measured at export time against the Keras model
    "parity_tolerance",
    "parity_image",       # what the parity check ran on
    "trained_precision",  # what the backbone computed in during training ('float32', 'bfloat16', ...)
    # int8 exports only (export/int8.py); the parity_* keys then describe the fp32 graph it was quantised from:
    "quantization",              # JSON: format, weight and activation types, tool
    "int8_calibration_images",   # measurement images the activation ranges were calibrated on
    "int8_calibration_crops",    # crops cut from them (one calibration batch each)
    "int8_holdback_images",      # measurement images held back from calibration to check the int8 graph
    "int8_psnr_vs_fp32_db",      # worst held-back PSNR (dB) of the int8 output against the fp32 output
    "int8_psnr_vs_fp32_mean_db",
    "int8_threshold_db",         # the export refused files below this agreement
)
INT8_KEYS = KEYS[KEYS.index("quantization"):]
REQUIRED = (FORMAT_KEY, "sei_tf_version", "task", "scale_factor", "channels", "layout",
            "value_range", "dtype", "input_name", "output_name", "tile_context")

GLOBAL_CONTEXT = "global"


class MetadataError(SeiTfError, ValueError):
    """The ONNX file carries no (or broken) sei-tf metadata."""


@dataclasses.dataclass(frozen=True)
class RestorerMetadata:
    """Typed view of a restorer's metadata; `raw` keeps every string as stored."""

    task: str
    scale: int
    channels: int
    tile_context: int | None  # None: global receptive field (blend tiles)
    tile_align: int
    kernel: str
    noise_sigma: float | None
    layout: str
    value_range: tuple
    dtype: str
    input_name: str
    output_name: str
    backbone: dict
    method: str
    precision: str
    version: str
    physics: dict | None  # sei_tf.physics.serialize(op) as stored; None for 0.1 files and bare backbones
    raw: dict

    @classmethod
    def from_props(cls, props: dict, source: str = "model") -> "RestorerMetadata":
        props = dict(props or {})
        if FORMAT_KEY not in props:
            raise MetadataError(
                f"{source} has no sei-tf metadata (metadata_props key {FORMAT_KEY!r} missing): "
                "it was not exported with export/to_onnx.py. Export the trained model with "
                "`python export/to_onnx.py --model RUN_DIR/model.keras --output restorer.onnx`.")
        if props[FORMAT_KEY] != FORMAT_VERSION:
            raise MetadataError(f"{source}: unsupported sei-tf metadata format "
                                f"{props[FORMAT_KEY]!r} (this version reads {FORMAT_VERSION!r}).")
        missing = [k for k in REQUIRED if k not in props]
        if missing:
            raise MetadataError(f"{source}: sei-tf metadata is incomplete, missing {', '.join(missing)}.")
        try:
            scale = int(props["scale_factor"])
            channels = int(props["channels"])
            ctx = props["tile_context"]
            tile_context = None if ctx == GLOBAL_CONTEXT else int(ctx)
            tile_align = int(props.get("tile_align", "1"))
            value_range = tuple(float(v) for v in json.loads(props["value_range"]))
            backbone = json.loads(props.get("backbone", "{}"))
            noise = props.get("noise_sigma", "")
            noise_sigma = float(noise) if noise not in ("", "unknown") else None
            physics = json.loads(props.get("physics", "null"))
            if physics is not None and not isinstance(physics, dict):
                raise ValueError(f"physics is a {type(physics).__name__}, expected a JSON object")
        except (ValueError, TypeError) as err:
            raise MetadataError(f"{source}: malformed sei-tf metadata: {err}") from err
        if scale < 1 or channels < 1 or tile_align < 1 or (tile_context is not None and tile_context < 0):
            raise MetadataError(f"{source}: malformed sei-tf metadata (scale {scale}, "
                                f"channels {channels}, tile_context {ctx}).")
        if props["layout"] != "NHWC":
            raise MetadataError(f"{source}: layout {props['layout']!r} is not supported (NHWC only).")
        return cls(task=props["task"], scale=scale, channels=channels, tile_context=tile_context,
                   tile_align=tile_align,
                   kernel=props.get("kernel", "none"), noise_sigma=noise_sigma,
                   layout=props["layout"], value_range=value_range, dtype=props["dtype"],
                   input_name=props["input_name"], output_name=props["output_name"],
                   backbone=backbone, method=props.get("method", "unknown"),
                   precision=props.get("precision", "fp32"), version=props["sei_tf_version"],
                   physics=physics, raw=props)

    def as_dict(self) -> dict:
        """JSON-friendly summary (used by the HTTP service's /metadata)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "raw"}
        out["value_range"] = list(self.value_range)
        out["tile_context"] = GLOBAL_CONTEXT if self.tile_context is None else self.tile_context
        for key in ("operator", "noise", "training", "parity_max_abs_error", "parity_tolerance", "parity_image",
                    *INT8_KEYS):
            if key in self.raw:
                value = self.raw[key]
                if key in ("training", "quantization"):
                    try:
                        value = json.loads(value)
                    except ValueError:
                        pass
                out[key] = value
        return out
