"""TensorFlow's bicubic upsampling, rebuilt from ops that convert exactly to ONNX.

Why: `tf.image.resize(method="bicubic")` (the ResizeBicubic kernel) samples
its cubic weights from a 1024-entry table, so the sub-pixel offset is rounded
to 1/1024. tf2onnx maps it to ONNX `Resize` (cubic, a=-0.5, half-pixel,
exclude_outside=1), which uses the exact offset. For factors 2 and 4 the
offsets (1/4, 3/8, ...) are multiples of 1/1024 and both agree to ~3e-7; for
x3 (offsets 1/3, 2/3) they differ by up to ~6e-4, above the export's 1e-4
parity tolerance.

`upsample(x, s)` reproduces the TF kernel for an integer factor `s`: per axis
and per output phase, a weighted sum of 5 shifted slices of the zero-padded
input (weights read from the same table) divided by the same sum over ones
(TF renormalises the weights of taps that fall outside the image); the phases
are then interleaved. Separable, translation invariant (so exact tiling still
holds), and it converts to plain Pad/Slice/Mul/Add/Div/Concat/Reshape (a
Conv2D-based version was mis-converted by tf2onnx's layout rewrites).

`exact_bicubic(factor)` patches `tf.image.resize` while the backbone is traced
for export, only for factors whose offsets are not multiples of 1/1024. The
parity check against the Keras model guards the patch (a bicubic resize that
is not an upsampling by `factor` changes the output shape and fails it).
"""

from __future__ import annotations

import contextlib

import numpy as np

TABLE_SIZE = 1024
KEYS_A = -0.5  # half_pixel_centers=True uses Keys' cubic with a = -0.5


def needs_exact_bicubic(factor: int) -> bool:
    """True when ONNX's exact cubic weights differ from TF's tabulated ones."""
    return factor > 1 and TABLE_SIZE % (2 * factor) != 0


def _coeffs(i):
    x = i / TABLE_SIZE
    near = ((KEYS_A + 2) * x - (KEYS_A + 3)) * x * x + 1
    x1 = x + 1.0
    far = ((KEYS_A * x1 - 5 * KEYS_A) * x1 + 8 * KEYS_A) * x1 - 4 * KEYS_A
    return np.float32(near), np.float32(far)


def phase_weights(factor: int) -> np.ndarray:
    """(5, factor) float32: the taps at input offsets -2..+2 for each output phase."""
    scale = np.float32(1.0) / np.float32(factor)
    weights = np.zeros((5, factor), np.float32)
    for p in range(factor):
        loc_f = (np.float32(p) + np.float32(0.5)) * scale - np.float32(0.5)
        loc = int(np.floor(loc_f))
        offset = int(np.rint(np.float32(loc_f - np.float32(loc)) * np.float32(TABLE_SIZE)))
        near0, far0 = _coeffs(offset)
        near1, far1 = _coeffs(TABLE_SIZE - offset)
        start = loc + 1  # taps loc-1 .. loc+2 relative to the input pixel, window -2..+2
        weights[start:start + 4, p] = (far0, near0, near1, far1)
    return weights


def upsample(x, factor: int):
    """Bicubic upsampling of NHWC `x` by an integer factor, equal to TF's kernel."""
    import tensorflow as tf

    weights = phase_weights(factor)

    def along(t, axis):
        shape = tf.shape(t)
        n = shape[axis]
        pad = [[0, 0]] * 4
        pad[axis] = [2, 2]
        ones_shape = [1, 1, 1, 1]
        ones_shape[axis] = n
        padded = tf.pad(t, pad)
        ones = tf.pad(tf.ones(tf.stack(ones_shape), t.dtype), pad)

        def tap(v, k):
            index = [slice(None)] * 4
            index[axis] = slice(k, k + n)
            return v[tuple(index)]

        taps = [tap(padded, k) for k in range(5)]
        ones_taps = [tap(ones, k) for k in range(5)]
        phases = []
        for p in range(factor):
            ks = [k for k in range(5) if weights[k, p] != 0.0]
            num = tf.add_n([float(weights[k, p]) * taps[k] for k in ks])
            den = tf.add_n([float(weights[k, p]) * ones_taps[k] for k in ks])  # TF renormalises at borders
            phases.append(num / den)
        y = tf.stack(phases, axis=axis + 1)
        out_shape = [shape[0], shape[1], shape[2], shape[3]]
        out_shape[axis] = n * factor
        return tf.reshape(y, tf.stack(out_shape))

    return along(along(x, 1), 2)


@contextlib.contextmanager
def exact_bicubic(factor: int):
    """Within the block, bicubic `tf.image.resize` calls become `upsample(x, factor)`."""
    import tensorflow as tf

    if not needs_exact_bicubic(factor):
        yield
        return
    original = tf.image.resize

    def resize(images, size, method="bilinear", preserve_aspect_ratio=False, antialias=False, name=None):
        if str(getattr(method, "value", method)) == "bicubic" and not antialias and not preserve_aspect_ratio:
            return upsample(images, factor)
        return original(images, size, method=method, preserve_aspect_ratio=preserve_aspect_ratio,
                        antialias=antialias, name=name)

    tf.image.resize = resize
    try:
        yield
    finally:
        tf.image.resize = original
