"""Noise models of the instrument: how a measurement `y` scatters around `A x`.

A noise model is held by the physics (`sei_tf.physics`). It draws noise with a
stateless seed (`sei_tf.rng`), serialises with `get_config`, and names the SURE
estimator that is unbiased for it (`sure_estimator`, a key of
`sei_tf.losses.SURE_ESTIMATORS`).

Units: images and measurements are in [0, 1] (1 = full scale).

- `Gaussian(sigma)`: `y = A x + N(0, (sigma/255)^2)`; `sigma` is in 8-bit units, as
  everywhere in sei-tf (`Gaussian(sigma=5)` has a standard deviation of 5/255).
- `Poisson(gain)`: `y = gain * Poisson(A x / gain)`, so `E[y] = A x` and
  `Var[y | A x] = gain * A x`. `gain` is in signal units per photon: full scale
  (1.0) is `1/gain` photons, and `gain=0.01` means 100 photons at full scale.
- `PoissonGaussian(gain, sigma)`: `y = gain * Poisson(A x / gain) + N(0, (sigma/255)^2)`,
  `Var[y | A x] = gain * A x + (sigma/255)^2`.

These are DeepInverse's `PoissonNoise(gain)` and `PoissonGaussianNoise(gain, sigma)`
(with `clip_positive=True`), except that sigma is in 8-bit units here.
A blur of a non-negative image can ring slightly below 0: the Poisson rate is
`max(A x, 0) / gain`, so such pixels (and zero counts) draw 0 photons.

`Quantized(noise, bits)` adds what an integer file does to any of them: values
clipped to [0, 1] and rounded to `2**bits - 1` levels.

On the command line a noise model is a spec string (`parse_spec`):
`gaussian:sigma=5`, `poisson:gain=0.01`, `poisson_gaussian:gain=0.01,sigma=2`,
optionally with `,bits=8` for 8-bit files.
"""

import json

import keras
import tensorflow as tf

from sei_tf import rng
from sei_tf.errors import PhysicsError


class Noise:
    """Base class. `sample(ax, seed)` returns a noisy measurement around `ax`.

    The SURE estimators read two numbers from a noise model, both in [0, 1] units:
    `gain` (the Poisson part, `Var` grows by `gain * A x`; 0 without one) and
    `gaussian_variance` (the signal-independent part, `std^2`).
    """

    sure_estimator = None
    gain = 0.0
    gaussian_variance = 0.0

    def sample(self, ax, seed):
        raise NotImplementedError

    def unsaturated(self, y):
        """1 where `y` carries information SURE can use, 0 where it is saturated; None: everywhere."""
        return None

    def describe(self):
        raise NotImplementedError

    def spec(self):
        """The spec string that `parse_spec` turns back into this noise model."""
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, json.dumps(self.get_config(), sort_keys=True)))


def _check_sigma(sigma, what):
    sigma = float(sigma)
    if not sigma >= 0:  # also refuses NaN
        raise PhysicsError(f"The {what} noise sigma must be >= 0 (8-bit units), got {sigma}.")
    if sigma == float("inf"):
        raise PhysicsError(f"The {what} noise sigma must be finite (8-bit units), got {sigma}.")
    return sigma


def _check_gain(gain, what):
    gain = float(gain)
    if not 0 < gain < float("inf"):  # also refuses NaN
        raise PhysicsError(f"The {what} gain must be > 0 (signal units per photon; 0.01 = 100 photons at "
                           f"full scale), got {gain}.")
    return gain


def _photons(ax, gain, seed):
    """`gain * Poisson(max(ax, 0) / gain)`: photon counts in signal units (negative rates count 0).

    Counts have no gradient; like additive noise, the draw passes the gradient of its
    mean (dy/d(A x) = 1), which training without stop-gradient needs.
    """
    counts = gain * rng.poisson(tf.maximum(ax, 0.0) / gain, seed)
    return ax + tf.stop_gradient(counts - ax)


@keras.saving.register_keras_serializable(package="sei_tf")
class Gaussian(Noise):
    """Additive white Gaussian noise: `y = A x + e`, `e ~ N(0, std^2)`.

    `sigma` is in 8-bit units (5 means 5/255); `std` is the same in [0, 1] units.
    """

    sure_estimator = "gaussian"

    def __init__(self, sigma=5.0):
        self.sigma = _check_sigma(sigma, "Gaussian")

    @property
    def std(self):
        """Standard deviation in [0, 1] units."""
        return self.sigma / 255.0

    @property
    def variance(self):
        """Variance in [0, 1] units squared."""
        return self.std ** 2

    gaussian_variance = variance

    def sample(self, ax, seed):
        return ax + self.std * rng.normal(tf.shape(ax), seed)

    def describe(self):
        return f"gaussian sigma {self.sigma:g}/255"

    def spec(self):
        return f"gaussian:sigma={self.sigma:g}"

    def get_config(self):
        return {"sigma": self.sigma}


@keras.saving.register_keras_serializable(package="sei_tf")
class Poisson(Noise):
    """Photon-counting noise: `y = gain * Poisson(A x / gain)`.

    `E[y] = A x` and `Var[y | A x] = gain * A x` ([0, 1] units). `gain` is the
    signal per photon: full scale (1.0) is `1/gain` photons (gain 0.01: 100
    photons, a relative noise of 10% at full scale). The rate is clipped at 0:
    pixels where `A x <= 0` count no photon.
    """

    sure_estimator = "poisson"

    def __init__(self, gain=0.01):
        self.gain = _check_gain(gain, "Poisson")

    def variance_at(self, ax):
        """`Var[y | A x] = gain * max(A x, 0)`, in [0, 1] units squared."""
        return self.gain * tf.maximum(ax, 0.0)

    def sample(self, ax, seed):
        return _photons(ax, self.gain, seed)

    def describe(self):
        return f"poisson gain {self.gain:g} ({1 / self.gain:.4g} photons at full scale)"

    def spec(self):
        return f"poisson:gain={self.gain:g}"

    def get_config(self):
        return {"gain": self.gain}


@keras.saving.register_keras_serializable(package="sei_tf")
class PoissonGaussian(Noise):
    """Photon counts plus read-out noise: `y = gain * Poisson(A x / gain) + N(0, std^2)`.

    `Var[y | A x] = gain * A x + std^2` ([0, 1] units); `gain` as in `Poisson`
    (signal per photon), `sigma` in 8-bit units as in `Gaussian` (std = sigma/255).
    """

    sure_estimator = "poisson_gaussian"

    def __init__(self, gain=0.01, sigma=2.0):
        self.gain = _check_gain(gain, "Poisson-Gaussian")
        self.sigma = _check_sigma(sigma, "Poisson-Gaussian")

    @property
    def std(self):
        """Standard deviation of the Gaussian part, in [0, 1] units."""
        return self.sigma / 255.0

    @property
    def gaussian_variance(self):
        return self.std ** 2

    def variance_at(self, ax):
        """`Var[y | A x] = gain * max(A x, 0) + std^2`, in [0, 1] units squared."""
        return self.gain * tf.maximum(ax, 0.0) + self.gaussian_variance

    def sample(self, ax, seed):
        photons = _photons(ax, self.gain, rng.fold(seed, 0))
        return photons + self.std * rng.normal(tf.shape(ax), rng.fold(seed, 1))

    def describe(self):
        return (f"poisson-gaussian gain {self.gain:g} ({1 / self.gain:.4g} photons at full scale), "
                f"sigma {self.sigma:g}/255")

    def spec(self):
        return f"poisson_gaussian:gain={self.gain:g},sigma={self.sigma:g}"

    def get_config(self):
        return {"gain": self.gain, "sigma": self.sigma}


@keras.saving.register_keras_serializable(package="sei_tf")
class Quantized(Noise):
    """What an integer file does to a measurement: `y = round(clip(y0, 0, 1) * L) / L`, `L = 2**bits - 1`.

    `y0` is drawn by the wrapped noise model (`noise`). Rounding adds a variance of
    `LSB^2 / 12` (LSB = 1/L), counted in `gaussian_variance`; clipping loses what
    lies beyond [0, 1], so `unsaturated` marks the values at 0 or 1, which SURE leaves out.
    """

    def __init__(self, noise, bits=8):
        self.noise = deserialize(noise)
        if isinstance(self.noise, Quantized):
            raise PhysicsError("The noise is quantised twice; give `bits` once.")
        if int(bits) != bits or not 1 <= bits <= 16:
            raise PhysicsError(f"bits must be an integer from 1 to 16 (8 for PNG/JPEG files), got {bits}.")
        self.bits = int(bits)

    @property
    def levels(self):
        return 2 ** self.bits - 1

    @property
    def sure_estimator(self):
        return self.noise.sure_estimator

    @property
    def gain(self):
        return self.noise.gain

    @property
    def gaussian_variance(self):
        return self.noise.gaussian_variance + (1.0 / self.levels) ** 2 / 12.0

    def sample(self, ax, seed):
        y = tf.clip_by_value(self.noise.sample(ax, seed), 0.0, 1.0)
        return tf.round(y * self.levels) / self.levels

    def unsaturated(self, y):
        half = 0.5 / self.levels
        return tf.cast(tf.logical_and(y > half, y < 1.0 - half), tf.float32)

    def describe(self):
        return f"{self.noise.describe()}, {self.bits}-bit clipped"

    def spec(self):
        return f"{self.noise.spec()},bits={self.bits}"

    def get_config(self):
        return {"noise": serialize(self.noise), "bits": self.bits}


def serialize(noise):
    return keras.saving.serialize_keras_object(noise)


def deserialize(config):
    """A noise model from `serialize`'s output, a plain number (Gaussian sigma), a spec string or a Noise."""
    if isinstance(config, Noise):
        return config
    if isinstance(config, (int, float)):
        return Gaussian(config)
    if isinstance(config, str):
        return parse_spec(config)
    return keras.saving.deserialize_keras_object(config)


# --- spec strings -----------------------------------------------------------------------

# Spec name -> (class, its parameters). `bits` (an integer file) goes with any of them.
KINDS = {"gaussian": (Gaussian, ("sigma",)), "poisson": (Poisson, ("gain",)),
         "poisson_gaussian": (PoissonGaussian, ("gain", "sigma"))}
AUTO = "auto"  # `train --noise auto`: the noise estimated from the measurements (sei_tf.noise_estimation)


def is_auto(text):
    """Whether a `--noise` value asks for the noise to be estimated from the measurements."""
    return isinstance(text, str) and text.strip().lower() == AUTO


def parse_spec(text):
    """The noise model a spec string names, e.g. 'poisson_gaussian:gain=0.01,sigma=2'.

    Form: `KIND:NAME=VALUE,...` with KIND one of `KINDS` and every parameter of that
    kind given once (sigma in 8-bit units, gain in signal units per photon);
    `bits=8` adds 8-bit clipping and rounding (`Quantized`). Raises PhysicsError
    naming the bad part.
    """
    if not isinstance(text, str):
        raise PhysicsError(f"A noise spec must be a string like 'gaussian:sigma=5', got {text!r}.")
    text = text.strip()
    if text.lower() == AUTO:
        raise PhysicsError("--noise auto estimates the noise from measurements: only `train` takes it. Here "
                           "give the noise model and its level, e.g. --noise gaussian:sigma=5 or "
                           "--noise poisson_gaussian:gain=0.01,sigma=2.")
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise PhysicsError(f"Unknown noise model {kind!r} in {text!r}: use one of {', '.join(KINDS)} "
                           "(e.g. 'poisson:gain=0.01').")
    cls, names = KINDS[kind]
    allowed = names + ("bits",)
    values = {}
    for part in rest.split(",") if rest.strip() else []:
        name, eq, value = (p.strip() for p in part.partition("="))
        if not eq or not name or not value:
            raise PhysicsError(f"{part.strip()!r} in noise spec {text!r} is not NAME=VALUE.")
        if name not in allowed:
            raise PhysicsError(f"{name!r} in noise spec {text!r} is not a parameter of {kind} noise "
                               f"(it takes {', '.join(allowed)}).")
        if name in values:
            raise PhysicsError(f"{name!r} is given twice in noise spec {text!r}.")
        try:
            values[name] = int(value) if name == "bits" else float(value)
        except ValueError:
            raise PhysicsError(f"{name}={value!r} in noise spec {text!r} is not a number.") from None
    missing = [n for n in names if n not in values]
    if missing:
        example = ",".join(f"{n}={'0.01' if n == 'gain' else '5'}" for n in names)
        raise PhysicsError(f"The noise spec {text!r} lacks {', '.join(missing)} (write {kind}:{example}).")
    bits = values.pop("bits", None)
    noise = cls(**values)
    return noise if bits is None else Quantized(noise, bits)
