"""Noise models of the instrument: how a measurement `y` scatters around `A x`.

A noise model is held by the physics (`sei_tf.physics`). It draws noise with a
stateless seed (`sei_tf.rng`), serialises with `get_config`, and names the SURE
estimator that is unbiased for it (`sure_estimator`, a key of
`sei_tf.losses.SURE_ESTIMATORS`).

Units: images are in [0, 1]. Noise levels given by users are in 8-bit units, as
everywhere in sei-tf: `Gaussian(sigma=5)` has a standard deviation of 5/255.
"""

import keras
import tensorflow as tf

from sei_tf import rng
from sei_tf.errors import PhysicsError


class Noise:
    """Base class. `sample(ax, seed)` returns a noisy measurement around `ax`."""

    sure_estimator = None

    def sample(self, ax, seed):
        raise NotImplementedError

    def describe(self):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package="sei_tf")
class Gaussian(Noise):
    """Additive white Gaussian noise: `y = A x + e`, `e ~ N(0, std^2)`.

    `sigma` is in 8-bit units (5 means 5/255); `std` is the same in [0, 1] units.
    """

    sure_estimator = "gaussian"

    def __init__(self, sigma=5.0):
        sigma = float(sigma)
        if not sigma >= 0:  # also refuses NaN
            raise PhysicsError(f"The Gaussian noise sigma must be >= 0 (8-bit units), got {sigma}.")
        self.sigma = sigma

    @property
    def std(self):
        """Standard deviation in [0, 1] units."""
        return self.sigma / 255.0

    @property
    def variance(self):
        """Variance in [0, 1] units squared."""
        return self.std ** 2

    def sample(self, ax, seed):
        return ax + self.std * rng.normal(tf.shape(ax), seed)

    def describe(self):
        return f"gaussian sigma {self.sigma:g}/255"

    def get_config(self):
        return {"sigma": self.sigma}


def serialize(noise):
    return keras.saving.serialize_keras_object(noise)


def deserialize(config):
    """A noise model from `serialize`'s output, a plain number (Gaussian sigma) or a Noise."""
    if isinstance(config, Noise):
        return config
    if isinstance(config, (int, float)):
        return Gaussian(config)
    return keras.saving.deserialize_keras_object(config)
