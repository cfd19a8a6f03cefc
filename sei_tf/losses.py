"""Loss terms. Every term has one call signature and returns one value per example.

    term(x_net, y, physics, model, seed, x=None) -> shape (B,)

- `x_net`: the restorer's output `f(y)` for this batch (float32 NHWC);
- `y`: the measurements;
- `physics`: the instrument (`sei_tf.physics`), which holds the noise model;
- `model`: the restorer `f`, a callable (for the terms that run it again);
- `seed`: a stateless seed (two int32) from which the term derives its random draws;
- `x`: ground truth, only for the supervised term.

Values are mean squared errors in [0, 1] intensity units. A term also has a
`name` (the column in logs) and a `weight` (its factor in the objective, see
`sei_tf.objectives`). Terms serialise with `get_config`.
"""

import keras
import tensorflow as tf

from sei_tf import rng
from sei_tf.errors import SeiTfError


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


class LossTerm:
    """Base class: a named, weighted term of the training objective."""

    default_name = None

    def __init__(self, name=None, weight=1.0):
        self.name = name or self.default_name
        self.weight = float(weight)

    def __call__(self, x_net, y, physics, model, seed, x=None):
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name, "weight": self.weight}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# --- Stein's unbiased risk estimate -----------------------------------------------------

def sure_mask(y, physics):
    """(mask, m): the measurement values SURE uses, and how many there are per example.

    The mask is 0 on the border of width `physics.margin` ("partial SURE", for blur
    on patches) and on values the noise model marks as saturated
    (`Noise.unsaturated`, e.g. 0 or 1 in an 8-bit file); `m` has shape (B,).
    """
    shape = tf.shape(y)
    mask = interior_mask(shape, physics.margin) * tf.ones_like(y)
    unsaturated = physics.noise.unsaturated(y)
    if unsaturated is not None:
        mask = mask * unsaturated
    return mask, tf.maximum(tf.reduce_sum(mask, axis=[1, 2, 3]), 1.0)


def _rademacher(shape, seed):
    """Independent +-1 draws with probability 1/2 each."""
    return tf.sign(rng.uniform(shape, seed) - 0.5)


# The step of SURE's divergence probe in the SEI paper (method.md), [0, 1] intensity units.
METHOD_TAU = 0.01
# sei-tf's default step. A probe y + tau b adds tau^2 to the input's noise variance: at
# 0.01 that is 26% for Gaussian noise of 5/255, and more in the dark parts of photon-counting
# measurements, enough for restorers to learn to recognise probed inputs and answer them
# differently; SURE then collapsed in long runs (benchmarks/results/probe_noise_level*.md).
DEFAULT_TAU = 0.001


def probe_response(x_net, y, b, physics, model, tau):
    """(A f(y + tau b) - A f(y)) / tau: how A f moves along the probe b (one more restorer pass)."""
    return (physics.A(model(y + tau * b)) - physics.A(x_net)) / tau


def sure_gaussian(x_net, y, physics, model, seed, tau):
    """SURE for Gaussian noise, in the measurement domain (one Monte-Carlo probe).

        b ~ N(0, I) on the mask,  div = sum(b * (A f(y + tau b) - A f(y))) / tau
        SURE = ||A f(y) - y||^2 / m - sigma^2 + 2 sigma^2 div / m

    It estimates ||A f(y) - A x||^2 / m without bias. The sums run over the
    `sure_mask` (m values): `physics.margin` > 0 leaves a border out of the
    residual and the probe ("partial SURE", for blur on patches).
    """
    mask, m = sure_mask(y, physics)
    b = rng.normal(tf.shape(y), seed) * mask
    ax1 = physics.A(x_net)
    residual = tf.reduce_sum(tf.square((ax1 - y) * mask), axis=[1, 2, 3]) / m
    divergence = tf.reduce_sum(b * probe_response(x_net, y, b, physics, model, tau), axis=[1, 2, 3])
    var = physics.noise.gaussian_variance
    return residual - var + 2.0 * var * divergence / m


def _sure_photon_counting(x_net, y, physics, model, seed, tau):
    """The Poisson-Gaussian estimate below for the noise's `gain` and `gaussian_variance`."""
    gain, var = physics.noise.gain, physics.noise.gaussian_variance
    mask, m = sure_mask(y, physics)
    b = _rademacher(tf.shape(y), seed) * mask
    ax1 = physics.A(x_net)
    residual = tf.reduce_sum(tf.square((ax1 - y) * mask), axis=[1, 2, 3]) / m
    counts = gain * tf.reduce_sum(y * mask, axis=[1, 2, 3]) / m
    response = probe_response(x_net, y, b, physics, model, tau)
    divergence = tf.reduce_sum(b * (gain * y + var) * response, axis=[1, 2, 3])
    return residual - counts - var + 2.0 * divergence / m


def sure_poisson(x_net, y, physics, model, seed, tau):
    """PURE, the Poisson unbiased risk estimate, in the measurement domain (one probe).

    For `y = g Poisson(z / g)` with `z = max(A x, 0)` and h(y) = A f(y) (Le Montagner
    et al., 2014), with b = +-1 (Rademacher) on the `sure_mask` of m values:

        PURE = ||h(y) - y||^2 / m - g sum(y) / m + (2 g / (m tau)) sum(b * y * (h(y + tau b) - h(y)))

    It rests on E[z_i h_i(y)] = E[y_i h_i(y - g e_i)] and approximates
    h_i(y) - h_i(y - g e_i) by g dh_i/dy_i (exact when f is affine), so it estimates
    ||h(y) - z||^2 / m without bias up to O(g^2) curvature terms. g is the gain
    (signal units per photon); values are in [0, 1] units.
    """
    return _sure_photon_counting(x_net, y, physics, model, seed, tau)


def sure_poisson_gaussian(x_net, y, physics, model, seed, tau):
    """PG-URE, the mixed Poisson-Gaussian unbiased risk estimate, in the measurement domain.

    For `y = g Poisson(z / g) + N(0, s^2)` with `z = max(A x, 0)`, h(y) = A f(y)
    (Le Montagner et al., 2014), b = +-1 on the `sure_mask` of m values:

        PG-URE = ||h(y) - y||^2 / m - g sum(y) / m - s^2
                 + (2 / (m tau)) sum(b * (g y + s^2) * (h(y + tau b) - h(y)))

    It estimates ||h(y) - z||^2 / m without bias when f is affine. The paper's
    further term -2 g s^2 sum(d^2 h_i / dy_i^2) / m is left out (as DeepInverse's
    `SurePGLoss` does by default): it vanishes for piecewise-linear restorers
    (ReLU networks, almost everywhere) and costs two more restorer passes.
    g is the gain (signal units per photon), s = sigma/255; [0, 1] units.
    """
    return _sure_photon_counting(x_net, y, physics, model, seed, tau)


def check_tau(tau):
    """`tau` as a float; raises SeiTfError unless it is > 0."""
    tau = float(tau)
    if not tau > 0:
        raise SeiTfError(f"The divergence step tau must be > 0, got {tau}.")
    return tau


# Noise models name their estimator (`Noise.sure_estimator`) by a key of this table.
SURE_ESTIMATORS = {"gaussian": sure_gaussian, "poisson": sure_poisson,
                   "poisson_gaussian": sure_poisson_gaussian}


@keras.saving.register_keras_serializable(package="sei_tf")
class SURE(LossTerm):
    """Stein's unbiased risk estimate, with the estimator that fits the physics' noise model.

    `tau` is the step of the Monte-Carlo divergence (in [0, 1] intensity units;
    DEFAULT_TAU = 0.001, a tenth of the paper's METHOD_TAU).
    """

    default_name = "sure"

    def __init__(self, tau=DEFAULT_TAU, name=None, weight=1.0):
        super().__init__(name, weight)
        self.tau = check_tau(tau)

    def __call__(self, x_net, y, physics, model, seed, x=None):
        key = physics.noise.sure_estimator
        if key not in SURE_ESTIMATORS:
            raise SeiTfError(f"No SURE estimator for {physics.noise.describe()}.")
        return SURE_ESTIMATORS[key](x_net, y, physics, model, seed, self.tau)

    def get_config(self):
        return {**super().get_config(), "tau": self.tau}


# --- equivariance -----------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="sei_tf")
class Equivariance(LossTerm):
    """||f(A T(x1) + e') - T(x1)||^2 / n with x1 = f(y): f must commute with `transform`.

    With `stop_gradient=True` (the paper's choice) the target T(x1) is a constant,
    so gradients flow only through the second pass f(y2).
    """

    default_name = "ei"

    def __init__(self, transform, stop_gradient=True, name=None, weight=1.0):
        super().__init__(name, weight)
        if isinstance(transform, dict):
            transform = keras.saving.deserialize_keras_object(transform)
        self.transform = transform
        self.stop_gradient = bool(stop_gradient)

    def __call__(self, x_net, y, physics, model, seed, x=None):
        x2 = self.transform(x_net, rng.fold(seed, 0))
        if self.stop_gradient:
            x2 = tf.stop_gradient(x2)
        y2 = physics(x2, rng.fold(seed, 1))
        x3 = model(y2)
        return _mean_per_example(tf.square(x3 - x2))

    def get_config(self):
        return {**super().get_config(), "transform": keras.saving.serialize_keras_object(self.transform),
                "stop_gradient": self.stop_gradient}


# --- baselines --------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="sei_tf")
class Supervised(LossTerm):
    """||f(y) - x||^2 / n against ground truth `x` (the upper reference)."""

    default_name = "supervised"
    needs_ground_truth = True

    def __call__(self, x_net, y, physics, model, seed, x=None):
        if x is None:
            raise SeiTfError("The supervised loss needs (measurement, ground truth) pairs.")
        return _mean_per_example(tf.square(x_net - x))


@keras.saving.register_keras_serializable(package="sei_tf")
class SimulatedSupervised(Equivariance):
    """||f(A T(x) + e') - T(x)||^2 / n: `Equivariance`'s second pass, started from the ground truth `x`.

    Where SEI transforms its own estimate f(y), this term transforms the ground
    truth (e.g. with SEI's `transforms.Scale`), simulates a fresh measurement of
    it and asks the restorer to recover the transformed image: supervised
    training with the data augmentation that SEI's second pass sees.
    """

    default_name = "supervised_sim"
    needs_ground_truth = True

    def __init__(self, transform, name=None, weight=1.0):
        super().__init__(transform, stop_gradient=True, name=name, weight=weight)

    def __call__(self, x_net, y, physics, model, seed, x=None):
        if x is None:
            raise SeiTfError("The simulated supervised loss needs (measurement, ground truth) pairs.")
        return super().__call__(x, y, physics, model, seed)

    def get_config(self):
        config = super().get_config()
        del config["stop_gradient"]  # always True: the target is data
        return config


@keras.saving.register_keras_serializable(package="sei_tf")
class CSS(LossTerm):
    """CSS baseline: ||f(A y + e') - y||^2 / n, the measurement as target of its re-degraded copy."""

    default_name = "css"

    def __call__(self, x_net, y, physics, model, seed, x=None):
        y_tilde = physics(y, seed)
        return _mean_per_example(tf.square(model(y_tilde) - y))
