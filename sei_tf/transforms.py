"""Image transforms for equivariant losses: scale (SEI), shift and rotation (EI).

Each transform maps a float32 NHWC batch `x` to a transformed batch, with its
random parameters drawn per batch element from a stateless `seed` (see
`sei_tf.rng`). All are differentiable, so the stop-gradient ablation can run.
"""

import math

import keras
import tensorflow as tf

from sei_tf import rng


def _reflect_index(i, n):
    """Maps integer positions `i` into [0, n) by mirror reflection (no edge repeat)."""
    period = tf.maximum(2 * (n - 1), 1)
    i = tf.math.floormod(i, period)
    return tf.where(i >= n, period - i, i)


def _gather_grid(x, rows, cols):
    """out[b, i, j] = x[b, rows[b, i], cols[b, j]] (rows: BxH', cols: BxW')."""
    x = tf.gather(x, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


@keras.saving.register_keras_serializable(package="sei_tf")
class Scale:
    """Shrinks each image by a factor drawn from `factors`, around a random centre.

    kind="padded" (default, as the reference): the shrunk image is placed at a
    random offset on the original canvas and the rest is filled by mirror
    reflection, so the shape is kept. kind="resize": returns the shrunk image
    (one factor per batch, since a batch has one shape), with sides rounded down
    to a multiple of `multiple`. Resampling is bicubic, without anti-aliasing.
    """

    def __init__(self, factors=(0.75, 0.5), kind="padded", multiple=1):
        if kind not in ("padded", "resize"):
            raise ValueError(f"Scale kind must be 'padded' or 'resize', got {kind!r}.")
        if not factors or any(not 0 < f < 1 for f in factors):
            raise ValueError(f"Scale factors must lie in (0, 1), got {factors}.")
        self.factors = tuple(float(f) for f in factors)
        self.kind = kind
        self.multiple = int(multiple)

    def _shrunk_size(self, h, w, f):
        m = self.multiple
        hs = tf.maximum(tf.cast(tf.math.round(tf.cast(h, tf.float32) * f), tf.int32) // m * m, m)
        ws = tf.maximum(tf.cast(tf.math.round(tf.cast(w, tf.float32) * f), tf.int32) // m * m, m)
        return hs, ws

    def draw_factors(self, batch, seed):
        """Index into `factors` for each element, shape (batch,)."""
        u = rng.uniform([batch], seed)
        return tf.minimum(tf.cast(u * len(self.factors), tf.int32), len(self.factors) - 1)

    def __call__(self, x, seed):
        shape = tf.shape(x)
        b, h, w = shape[0], shape[1], shape[2]
        choice = self.draw_factors(b, rng.fold(seed, 0))
        if self.kind == "resize":
            f = tf.gather(tf.constant(self.factors), choice[0])
            hs, ws = self._shrunk_size(h, w, f)
            return tf.image.resize(x, tf.stack([hs, ws]), method="bicubic")
        offsets = rng.uniform([b, 2], rng.fold(seed, 1))
        out = tf.zeros_like(x)
        for k, f in enumerate(self.factors):
            hs, ws = self._shrunk_size(h, w, f)
            small = tf.image.resize(x, tf.stack([hs, ws]), method="bicubic")
            # Random top-left corner of the shrunk image inside the canvas.
            oy = tf.cast(offsets[:, 0] * tf.cast(h - hs + 1, tf.float32), tf.int32)
            ox = tf.cast(offsets[:, 1] * tf.cast(w - ws + 1, tf.float32), tf.int32)
            rows = _reflect_index(tf.range(h)[None, :] - oy[:, None], hs)
            cols = _reflect_index(tf.range(w)[None, :] - ox[:, None], ws)
            placed = _gather_grid(small, rows, cols)
            out = tf.where(tf.equal(choice, k)[:, None, None, None], placed, out)
        return out

    def get_config(self):
        return {"factors": list(self.factors), "kind": self.kind, "multiple": self.multiple}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="sei_tf")
class Shift:
    """Integer circular shift by a random offset per element (any amount)."""

    def __call__(self, x, seed):
        shape = tf.shape(x)
        b, h, w = shape[0], shape[1], shape[2]
        u = rng.uniform([b, 2], seed)
        dy = tf.cast(u[:, 0] * tf.cast(h, tf.float32), tf.int32)
        dx = tf.cast(u[:, 1] * tf.cast(w, tf.float32), tf.int32)
        rows = tf.math.floormod(tf.range(h)[None, :] - dy[:, None], h)
        cols = tf.math.floormod(tf.range(w)[None, :] - dx[:, None], w)
        return _gather_grid(x, rows, cols)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="sei_tf")
class Rotate:
    """Rotation about the image centre by a random angle in [0, 360) degrees.

    Pixels that come from outside the image are zero. `interpolation` is "bilinear"
    (the default) or "nearest": nearest keeps every value a pixel of the input (no
    smoothing) and is what the reference's EI baseline used (deepinv's `Rotate` default).
    """

    INTERPOLATIONS = ("bilinear", "nearest")

    def __init__(self, interpolation="bilinear"):
        if interpolation not in self.INTERPOLATIONS:
            raise ValueError(f"Rotate: interpolation {interpolation!r}; choose one of {', '.join(self.INTERPOLATIONS)}.")
        self.interpolation = interpolation

    def __call__(self, x, seed):
        shape = tf.shape(x)
        b = shape[0]
        h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        theta = rng.uniform([b], seed) * (2.0 * math.pi)
        c, s = tf.cos(theta), tf.sin(theta)
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        # Maps each output pixel (col, row) to the input pixel it samples.
        transform = tf.stack(
            [c, -s, cx - c * cx + s * cy,
             s, c, cy - s * cx - c * cy,
             tf.zeros_like(c), tf.zeros_like(c)], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transform, output_shape=shape[1:3],
            fill_value=0.0, interpolation=self.interpolation.upper(), fill_mode="CONSTANT")

    def get_config(self):
        return {"interpolation": self.interpolation}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def dihedral(x, d):
    """Element `d` (0-7, an int or int32 tensor) of the dihedral group of the square.

    Rotates `x` (HWC or NHWC) by `d % 4` quarter turns, then flips it left-right when d >= 4.
    """
    x = tf.image.rot90(x, d % 4)
    return tf.cond(tf.convert_to_tensor(d) >= 4, lambda: tf.image.flip_left_right(x), lambda: x)


def commutes_with_dihedral(physics, atol=1e-4):
    """True when A(D x) = D(A x) for the 8 rotations/flips D (checked on a random image).

    Training data may then be rotated and flipped (`dihedral=` of the datasets):
    an augmented measurement is a valid measurement of the augmented image. SR
    (bicubic, on sizes that are multiples of the factor) and symmetric blurs
    commute; a motion blur does not. The test image is 16 times the upscale
    factor on a side, or larger to fit the blur kernel, and a multiple of the factor.
    """
    u = physics.upscale
    n = max(16 * u, 4 * physics.margin + 8) // u * u
    x = tf.random.stateless_uniform([1, n, n, 1], seed=[1, 2])
    y = physics.A(x)
    return all(float(tf.reduce_max(tf.abs(physics.A(dihedral(x, d)) - dihedral(y, d)))) <= atol
               for d in range(8))
