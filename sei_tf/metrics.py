"""Image quality metrics with the paper's protocol.

Outputs are clamped to [0, 1] and quantised to 8 bits; PSNR (dB) and SSIM are
computed on the luma channel (ITU-R BT.601 Y, as in the super-resolution
literature, range [16, 235]/255) with data range 1, or on all channels with
`luma=False`. Functions take float NHWC batches and return one value per image.
"""

import tensorflow as tf


def quantize(x):
    """Clamps to [0, 1] and rounds to the nearest 8-bit level."""
    return tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0) / 255.0


def to_luma(x):
    """BT.601 luma of an RGB batch in [0, 1]; a 1-channel batch is returned as is."""
    if x.shape[-1] == 1:
        return x
    weights = tf.constant([65.481, 128.553, 24.966], dtype=x.dtype) / 255.0
    return 16.0 / 255.0 + tf.reduce_sum(x * weights, axis=-1, keepdims=True)


def _prepare(x_hat, x, luma):
    x_hat, x = quantize(tf.cast(x_hat, tf.float32)), quantize(tf.cast(x, tf.float32))
    if luma:
        x_hat, x = to_luma(x_hat), to_luma(x)
    return x_hat, x


def psnr(x_hat, x, luma=True):
    """Peak signal-to-noise ratio in dB, per image (capped at 120 dB for identical images)."""
    x_hat, x = _prepare(x_hat, x, luma)
    mse = tf.reduce_mean(tf.square(x_hat - x), axis=[1, 2, 3])
    return 10.0 * tf.math.log(1.0 / tf.maximum(mse, 1e-12)) / tf.math.log(10.0)


def ssim(x_hat, x, luma=True):
    """Structural similarity (Gaussian window 11, sigma 1.5), per image."""
    x_hat, x = _prepare(x_hat, x, luma)
    return tf.image.ssim(x_hat, x, max_val=1.0)
