"""Restorer backbones. Each takes NHWC images of any height and width.

`build(name, upscale, channels, **sizes)` makes one by name:
- "cnn": `ResidualCNN`, fast, exact receptive field (default for CPU work);
- "swinir": `SwinIR` in the paper's configuration (embed 180, 6 stages of 6);
- "swinir_light": SwinIR with embed 60 and 4 stages of 6, for small machines.
"""

from sei_tf.models.residual_cnn import ResidualCNN
from sei_tf.models.swinir import SwinIR

BACKBONES = ("cnn", "swinir", "swinir_light")


def build(name, upscale=1, channels=3, **sizes):
    """A backbone by name; `sizes` override its default size arguments."""
    if name == "cnn":
        return ResidualCNN(upscale=upscale, channels=channels, **sizes)
    if name == "swinir":
        return SwinIR(upscale=upscale, channels=channels, **sizes)
    if name == "swinir_light":
        light = {"embed_dim": 60, "depths": (6, 6, 6, 6), "num_heads": (6, 6, 6, 6)}
        return SwinIR(upscale=upscale, channels=channels, **{**light, **sizes})
    raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.")


def tile_context(backbone):
    """Receptive-field radius (input pixels) for exact tiling, or None if global."""
    return backbone.tile_context()
