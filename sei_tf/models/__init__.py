"""Restorer backbones. Each takes NHWC float32 images of any height and width.

`build(name, upscale, channels, precision, **sizes)` makes one by name:
- "cnn": `ResidualCNN`, fast, exact receptive field (default for CPU work);
- "swinir": `SwinIR` in the paper's configuration (embed 180, 6 stages of 6);
- "swinir_light": SwinIR with embed 60 and 4 stages of 6, for small machines.

`precision` ("float32", "bfloat16", "float16"; see `sei_tf.precision`) is the
type the backbone's layers compute in. Weights, input and output are float32
in every case, so the physics and the losses never see the reduced type.
`as_float32(backbone)` copies a reduced-precision backbone to float32 (for
export: tf2onnx has no bfloat16 and would map it to float16).
"""

from sei_tf.models.residual_cnn import ResidualCNN
from sei_tf.models.swinir import SwinIR

BACKBONES = ("cnn", "swinir", "swinir_light")


def build(name, upscale=1, channels=3, precision="float32", **sizes):
    """A backbone by name computing in `precision`; `sizes` override its default size arguments."""
    if name == "cnn":
        return ResidualCNN(upscale=upscale, channels=channels, precision=precision, **sizes)
    if name == "swinir":
        return SwinIR(upscale=upscale, channels=channels, precision=precision, **sizes)
    if name == "swinir_light":
        light = {"embed_dim": 60, "depths": (6, 6, 6, 6), "num_heads": (6, 6, 6, 6)}
        return SwinIR(upscale=upscale, channels=channels, precision=precision, **{**light, **sizes})
    raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.")


def precision_of(backbone):
    """The precision a backbone computes in ("float32" for one without a `precision` attribute)."""
    return getattr(backbone, "precision", "float32")


def as_float32(backbone):
    """A float32 copy of `backbone` with the same (float32) weights; `backbone` itself is unchanged.

    Builds `backbone` first if it has not been called yet. A float32 backbone
    is copied too, so the result never shares variables with the argument.
    """
    if not backbone.built:
        _build(backbone)
    config = {**backbone.get_config(), "precision": "float32"}
    config.pop("dtype", None)
    copy = type(backbone).from_config(config)
    _build(copy)
    copy.set_weights(backbone.get_weights())
    return copy


def _build(backbone):
    """Creates the variables of `backbone` (a tiny float32 forward pass)."""
    import tensorflow as tf

    backbone(tf.zeros([1, 8, 8, backbone.channels], tf.float32))


def tile_context(backbone):
    """Receptive-field radius (input pixels) for exact tiling, or None if global."""
    return backbone.tile_context()
