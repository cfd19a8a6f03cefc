"""UNSURE: Stein's unbiased risk estimate when the noise level is unknown, learned with the network.

Tachella, Davies & Jacques (2024), "UNSURE: self-supervised learning with unknown
noise level and Stein's unbiased risk estimate". Gaussian SURE (`sei_tf.losses.sure_gaussian`)
needs the noise variance v = (sigma/255)^2:

    SURE(f; v) = ||A f(y) - y||^2 / m - v + 2 v div / m,  div = sum(b * (A f(y + tau b) - A f(y))) / tau

UNSURE treats v as a Lagrange multiplier of the constraint E[div] = 0 (zero expected
divergence of y -> A f(y)) and solves the saddle point

    min over f  max over v  of  E ||A f(y) - y||^2 / m + 2 v E[div] / m

by gradient *descent* on the network and gradient *ascent* on v:

    v <- v + step_size * d(loss)/dv = v + step_size * mean over the batch of 2 div / m.

When the network's output depends too much on its own input pixel (div > 0, e.g. near
the identity) v rises, which penalises the divergence more. At the saddle point v is
E[y_i (y_i - (A f(y))_i)] of a zero-divergence estimator: the noise variance plus the
part of the signal that the pixel's neighbours do not predict (tests/test_unsure.py
checks it on a linear denoiser where that part is known). It is therefore biased up
where the restorer cannot predict the signal well (fine texture, short training).

Plain gradient ascent against Adam's descent oscillates around the saddle point
before settling (a damped cycle over a few hundred steps at the default step); the
learned sigma is logged each epoch so that this can be watched. The logged value, `residual - v + 2 v div / m`, is then
SURE's estimate of the measurement-domain error, as for known noise. The update is
plain gradient ascent (no momentum), one step per training step, after the network's.

The learned variance is a Keras variable of the term (`variance`, non-trainable, in
[0, 1] units squared; not clamped, so the ascent can come back from below 0). `SEIModel`
tracks the variables of its terms, so the variance is saved with the weights
(model.keras, BackupAndRestore), restored on resume, and logged each epoch as
`<name>_sigma` (8-bit units, 255 sqrt(max(v, 0))).

`LearnedNoiseEquivariance` is the SEI equivariance term whose fresh noise has that
learned variance, so that the "sei_unsure" objective (`sei_tf.objectives`) uses no
given noise level anywhere.
"""

import keras
import tensorflow as tf

from sei_tf import losses, rng
from sei_tf.errors import SeiTfError
from sei_tf.losses import DEFAULT_TAU, Equivariance, LossTerm, check_tau, interior_mask


@keras.saving.register_keras_serializable(package="sei_tf")
class UNSURE(LossTerm):
    """SURE with a learned noise variance (Gaussian noise of unknown sigma).

    Args:
      tau: step of the Monte-Carlo divergence ([0, 1] intensity units).
      step_size: gradient-ascent step on the variance per training step
        (variance units per unit of 2 div / m; DeepInverse's default is 1e-4).
      initial_sigma: the variance's starting value, as a sigma in 8-bit units.
    """

    default_name = "unsure"

    def __init__(self, tau=DEFAULT_TAU, step_size=1e-4, initial_sigma=0.0, name=None, weight=1.0):
        super().__init__(name, weight)
        self.tau = check_tau(tau)
        self.step_size = float(step_size)
        self.initial_sigma = float(initial_sigma)
        # "sum": under tf.distribute each replica adds its part of the batch's gradient.
        self.variance = keras.Variable((self.initial_sigma / 255.0) ** 2, dtype="float32", trainable=False,
                                       aggregation="sum", name=f"{self.name}_variance")

    @property
    def variables(self):
        """The term's state: what SEIModel tracks, saves and restores."""
        return [self.variance]

    @property
    def ascent_variables(self):
        """What SEIModel maximises the objective over (it calls `ascend` with their gradients)."""
        return [self.variance]

    @property
    def sigma(self):
        """The learned noise std in 8-bit units (a scalar tensor)."""
        return 255.0 * tf.sqrt(tf.maximum(tf.convert_to_tensor(self.variance), 0.0))

    def __call__(self, x_net, y, physics, model, seed, x=None):
        shape = tf.shape(y)
        mask = interior_mask(shape, physics.margin)
        m = tf.reduce_sum(mask) * tf.cast(shape[3], tf.float32)
        b = rng.normal(shape, seed) * mask
        ax1 = physics.A(x_net)
        residual = tf.reduce_sum(tf.square((ax1 - y) * mask), axis=[1, 2, 3]) / m
        response = losses.probe_response(x_net, y, b, physics, model, self.tau)
        divergence = tf.reduce_sum(b * response, axis=[1, 2, 3])
        v = tf.convert_to_tensor(self.variance)
        # d/dv of this is 2 div / m (the ascent direction); `- v` only makes the value SURE's.
        return residual + 2.0 * v * divergence / m - tf.stop_gradient(v)

    def ascend(self, gradients):
        """One ascent step, given [d(objective)/d(variance)] for this (replica's part of the) batch."""
        self.variance.assign_add(self.step_size * gradients[0])

    def logs(self):
        """Per-epoch values for the training log: the learned sigma (8-bit units)."""
        return {f"{self.name}_sigma": self.sigma}

    def get_config(self):
        return {**super().get_config(), "tau": self.tau, "step_size": self.step_size,
                "initial_sigma": self.initial_sigma}


@keras.saving.register_keras_serializable(package="sei_tf")
class LearnedNoiseEquivariance(Equivariance):
    """`losses.Equivariance` whose fresh noise e' has the variance an UNSURE term learns.

        y2 = A x2 + sqrt(max(v, 0)) * n,  n ~ N(0, I),  v: the variance of the term named `source`

    so that the SEI objective needs no noise level at all ("sei_unsure"). `SEIModel`
    calls `bind(objective)` to link it to that term.
    """

    def __init__(self, transform, stop_gradient=True, source="unsure", name=None, weight=1.0):
        super().__init__(transform, stop_gradient, name, weight)
        self.source = source
        self._source_term = None

    def bind(self, terms):
        found = [t for t in terms if t.name == self.source and hasattr(t, "variance")]
        if not found:
            raise SeiTfError(f"Term {self.name!r} draws its noise from an UNSURE term named {self.source!r}; "
                             f"the objective has {[t.name for t in terms]}.")
        self._source_term = found[0]

    def __call__(self, x_net, y, physics, model, seed, x=None):
        if self._source_term is None:
            raise SeiTfError(f"Term {self.name!r} is not bound to its UNSURE term; SEIModel binds it.")
        x2 = self.transform(x_net, rng.fold(seed, 0))
        if self.stop_gradient:
            x2 = tf.stop_gradient(x2)
        ax2 = physics.A(x2)
        std = tf.sqrt(tf.maximum(tf.stop_gradient(tf.convert_to_tensor(self._source_term.variance)), 0.0))
        y2 = ax2 + std * rng.normal(tf.shape(ax2), rng.fold(seed, 1))
        x3 = model(y2)
        return tf.reduce_mean(tf.square(x3 - x2), axis=[1, 2, 3])

    def get_config(self):
        return {**super().get_config(), "source": self.source}
