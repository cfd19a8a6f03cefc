"""Training losses. Each returns one value per batch element, shape (B,).

Values are mean squared errors in [0, 1] intensity units. `restorer` is the
network f (y -> x); `physics` an operator of `sei_tf.physics`; `seed` a
stateless seed (two int32) from which all random draws are derived.
"""

import tensorflow as tf

from sei_tf import rng


def _mean_per_example(t):
    return tf.reduce_mean(t, axis=[1, 2, 3])


def interior_mask(shape, margin):
    """1 inside, 0 on a border of width `margin` pixels; shape (1, H, W, 1)."""
    h, w = shape[1], shape[2]
    rows = tf.range(h)
    cols = tf.range(w)
    inside_r = tf.logical_and(rows >= margin, rows < h - margin)
    inside_c = tf.logical_and(cols >= margin, cols < w - margin)
    mask = tf.logical_and(inside_r[:, None], inside_c[None, :])
    return tf.cast(mask, tf.float32)[None, :, :, None]


class SURELoss:
    """Stein's unbiased estimate of the measurement-domain error ||A f(y) - A x||^2 / m.

    Divergence by Monte-Carlo with one Gaussian probe `b` and step `tau`.
    `margin` > 0 excludes a border from the residual and the probe ("partial
    SURE", used for blur with a circular model on patches). The `-sigma^2`
    constant is kept so the value estimates the error, not just its gradient.
    """

    def __init__(self, tau=0.01, margin=0):
        self.tau = float(tau)
        self.margin = int(margin)

    def __call__(self, y, x1, restorer, physics, seed):
        shape = tf.shape(y)
        mask = interior_mask(shape, self.margin)
        m = tf.reduce_sum(mask) * tf.cast(shape[3], tf.float32)
        b = rng.normal(shape, seed) * mask
        ax1 = physics.A(x1)
        ax1_probe = physics.A(restorer(y + self.tau * b))
        residual = tf.reduce_sum(tf.square((ax1 - y) * mask), axis=[1, 2, 3]) / m
        divergence = tf.reduce_sum(b * (ax1_probe - ax1), axis=[1, 2, 3]) / self.tau
        var = physics.sigma ** 2
        return residual - var + 2.0 * var * divergence / m


class EquivarianceLoss:
    """||f(A T(x1) + e') - T(x1)||^2 / n: the restorer must commute with `transform`.

    With `stop_gradient=True` (the paper's choice) the target T(x1) is a
    constant, so gradients flow only through the second pass f(y2).
    """

    def __init__(self, transform, stop_gradient=True):
        self.transform = transform
        self.stop_gradient = bool(stop_gradient)

    def __call__(self, x1, restorer, physics, seed):
        x2 = self.transform(x1, rng.fold(seed, 0))
        if self.stop_gradient:
            x2 = tf.stop_gradient(x2)
        y2 = physics(x2, rng.fold(seed, 1))
        x3 = restorer(y2)
        return _mean_per_example(tf.square(x3 - x2))


def supervised_loss(x_hat, x):
    """Plain MSE against ground truth (the upper reference)."""
    return _mean_per_example(tf.square(x_hat - x))


def css_loss(y, restorer, physics, seed):
    """CSS baseline: the measurement is the target of its own re-degraded copy A y + e'."""
    y_tilde = physics(y, seed)
    return _mean_per_example(tf.square(restorer(y_tilde) - y))
