"""Forward models `y = A x + e` of the imaging instrument.

Images are float32 NHWC tensors with values in [0, 1]. The noise level is given
in 8-bit units (`noise_sigma=5` means a standard deviation of 5/255) and stored
as `sigma` in [0, 1] units. Every operator serialises with `get_config`, so a
saved model records the instrument it was trained for.
"""

import keras
import tensorflow as tf

from sei_tf import kernels as kernels_lib
from sei_tf import rng


class Physics:
    """Base class: a linear operator `A`, its adjoint and Gaussian noise."""

    task = None

    def __init__(self, noise_sigma=5.0):
        if noise_sigma < 0:
            raise ValueError(f"noise_sigma must be >= 0 (8-bit units), got {noise_sigma}.")
        self.noise_sigma = float(noise_sigma)

    @property
    def sigma(self):
        """Noise standard deviation in [0, 1] units."""
        return self.noise_sigma / 255.0

    @property
    def margin(self):
        """Border width (measurement pixels) excluded from SURE; 0 when none."""
        return 0

    def A(self, x):
        raise NotImplementedError

    def signal_shape(self, y_shape):
        """Shape of `x` (a tensor) for a measurement of shape `y_shape`."""
        raise NotImplementedError

    def A_adjoint(self, y):
        """Adjoint `A^T y`, computed as the exact vector-Jacobian product of `A`."""
        x = tf.zeros(self.signal_shape(tf.shape(y)), dtype=y.dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            ax = self.A(x)
        return tape.gradient(ax, x, output_gradients=y)

    def noise(self, shape, seed):
        """Gaussian noise of std `sigma`; `seed` is a stateless seed (2 ints)."""
        return self.sigma * rng.normal(shape, seed)

    def __call__(self, x, seed):
        """Simulates a measurement: `A x` plus fresh noise."""
        ax = self.A(x)
        return ax + self.noise(tf.shape(ax), seed)

    def baseline(self, y):
        """The non-learned reconstruction the paper compares against."""
        raise NotImplementedError

    def describe(self):
        """A short human-readable name, e.g. 'sr x4' or 'blur gaussian:2'."""
        raise NotImplementedError

    def get_config(self):
        return {"noise_sigma": self.noise_sigma}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="sei_tf")
class SuperResolution(Physics):
    """Anti-aliased bicubic downsampling by an integer `factor` (2, 3 or 4).

    Signal height and width must be multiples of `factor`.
    """

    task = "sr"

    def __init__(self, factor=2, noise_sigma=5.0):
        super().__init__(noise_sigma)
        if int(factor) != factor or factor < 1:
            raise ValueError(f"SR factor must be a positive integer, got {factor}.")
        self.factor = int(factor)

    def A(self, x):
        s = tf.shape(x)
        size = tf.stack([s[1] // self.factor, s[2] // self.factor])
        return tf.image.resize(x, size, method="bicubic", antialias=True)

    def signal_shape(self, y_shape):
        return tf.stack([y_shape[0], y_shape[1] * self.factor, y_shape[2] * self.factor, y_shape[3]])

    def baseline(self, y):
        s = tf.shape(y)
        size = tf.stack([s[1] * self.factor, s[2] * self.factor])
        return tf.image.resize(y, size, method="bicubic")

    def describe(self):
        return f"sr x{self.factor}"

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="sei_tf")
class Blur(Physics):
    """Convolution with a point-spread function, circular boundary.

    `kernel` is a 2-D array (odd sizes, non-negative; normalised to sum 1) or a
    spec string: 'gaussian:SIGMA', 'box:RADIUS' or a path to a PSF file.
    """

    task = "deblur"

    def __init__(self, kernel="gaussian:2", noise_sigma=5.0, kernel_name=None):
        super().__init__(noise_sigma)
        if isinstance(kernel, str):
            kernel_name = kernel_name or kernel
            kernel = kernels_lib.from_spec(kernel)
        self.kernel = kernels_lib.validate(kernel)
        self.kernel_name = kernel_name or f"custom {self.kernel.shape[0]}x{self.kernel.shape[1]}"

    @property
    def margin(self):
        return (max(self.kernel.shape) - 1) // 2

    def A(self, x):
        kh, kw = self.kernel.shape
        ph, pw = kh // 2, kw // 2
        x = _wrap_pad(x, ph, pw)
        channels = x.shape[-1]
        # depthwise_conv2d correlates; flipping the PSF makes it a true convolution.
        k = tf.constant(self.kernel[::-1, ::-1].copy())
        k = tf.tile(k[:, :, None, None], [1, 1, channels, 1])
        return tf.nn.depthwise_conv2d(x, k, strides=[1, 1, 1, 1], padding="VALID")

    def signal_shape(self, y_shape):
        return y_shape

    def baseline(self, y):
        return y

    def describe(self):
        return f"blur {self.kernel_name}"

    def get_config(self):
        return {**super().get_config(), "kernel": self.kernel.tolist(), "kernel_name": self.kernel_name}


def _wrap_pad(x, ph, pw):
    """Circular padding of `ph` rows and `pw` columns on each side."""
    if ph:
        x = tf.concat([x[:, -ph:], x, x[:, :ph]], axis=1)
    if pw:
        x = tf.concat([x[:, :, -pw:], x, x[:, :, :pw]], axis=2)
    return x


def make(task, factor=None, kernel=None, noise_sigma=5.0):
    """Builds an operator from plain settings (as used by the CLIs and sidecars)."""
    if task == "sr":
        return SuperResolution(factor=factor or 2, noise_sigma=noise_sigma)
    if task == "deblur":
        return Blur(kernel=kernel if kernel is not None else "gaussian:2", noise_sigma=noise_sigma)
    raise ValueError(f"Unknown task {task!r}: use 'sr' or 'deblur'.")


def serialize(physics):
    return keras.saving.serialize_keras_object(physics)


def deserialize(config):
    return keras.saving.deserialize_keras_object(config)
