"""Forward models `y = A x + e` of the imaging instrument.

The physics object is the one description of the instrument in sei-tf. It knows
the linear operator `A` (and its adjoint), the noise model (`sei_tf.noise`), how
much larger the signal is than the measurement (`upscale`), the non-learned
reconstruction the paper compares against (`baseline`), which image sizes fit
(`fit_signal_size`, `check_measurement_size`) and whether two descriptions differ
(`differences`, `is_compatible`). No other module branches on the kind of task.

Images are float32 NHWC tensors with values in [0, 1]. Every operator serialises
with `get_config`, so a saved model, a sidecar and an ONNX file record the
instrument they were made for.
"""

import keras
import numpy as np
import tensorflow as tf

from sei_tf import kernels as kernels_lib
from sei_tf import noise as noise_lib
from sei_tf.errors import PhysicsError


class Physics:
    """Base class: a linear operator `A`, its adjoint and a noise model.

    `noise` is a `sei_tf.noise.Noise`, its serialised form, a spec string
    ('poisson:gain=0.01', see `sei_tf.noise.parse_spec`) or a number (the
    Gaussian sigma in 8-bit units); `noise_sigma` is the older spelling of that
    number. The default is Gaussian noise of 5/255.
    """

    task = None  # short name stored in files for people and older readers
    settings = ()  # constructor arguments that a command line sets (see `from_flags`)

    def __init__(self, noise_sigma=None, noise=None):
        if noise is not None and noise_sigma is not None:
            raise PhysicsError("Give the noise as `noise` or as `noise_sigma`, not both.")
        if noise is None:
            noise = 5.0 if noise_sigma is None else noise_sigma
        self.noise = noise_lib.deserialize(noise)

    # --- what the instrument does -------------------------------------------------------

    @property
    def upscale(self):
        """Signal side length / measurement side length (1 when both are the same size)."""
        return 1

    @property
    def margin(self):
        """Border width (measurement pixels) that patches do not model well; excluded from SURE."""
        return 0

    def A(self, x):
        raise NotImplementedError

    def A_adjoint(self, y):
        """Adjoint `A^T y`, computed as the exact vector-Jacobian product of `A`."""
        x = tf.zeros(self.signal_shape(tf.shape(y)), dtype=y.dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            ax = self.A(x)
        return tape.gradient(ax, x, output_gradients=y)

    def __call__(self, x, seed):
        """Simulates a measurement: `A x` plus fresh noise; `seed` is a stateless seed."""
        return self.noise.sample(self.A(x), seed)

    def signal_shape(self, y_shape):
        """Shape of `x` (a tensor) for a measurement of shape `y_shape`."""
        u = self.upscale
        return tf.stack([y_shape[0], y_shape[1] * u, y_shape[2] * u, y_shape[3]])

    def baseline(self, y):
        """The non-learned reconstruction the paper compares against."""
        raise NotImplementedError

    baseline_name = "baseline"  # what `baseline` is, for tables

    # --- which sizes fit ------------------------------------------------------------------

    def fit_signal_size(self, height, width, source="image"):
        """The largest (height, width) <= the given one that `A` accepts: crop the signal to it.

        Raises PhysicsError when the image is too small for the instrument.
        """
        u = self.upscale
        h, w = (int(height) // u) * u, (int(width) // u) * u
        if h < u or w < u:
            raise PhysicsError(f"{source}: {height}x{width} pixels is too small for {self.describe()}.")
        return h, w

    def check_measurement_size(self, height, width, source="measurement"):
        """Raises PhysicsError when a measurement (or training patch) is too small to use."""
        if min(height, width) <= 2 * self.margin:
            raise PhysicsError(
                f"{source}: {height}x{width} pixels leaves no interior once the SURE margin of "
                f"{self.margin} pixels ({self.describe()}) is removed on each side; it must be larger "
                f"than {2 * self.margin} pixels.")

    # --- naming and comparing -----------------------------------------------------------

    @property
    def noise_sigma(self):
        """Gaussian noise level in 8-bit units, or None for other noise models."""
        return self.noise.sigma if type(self.noise) is noise_lib.Gaussian else None

    def describe(self):
        """A short human-readable name, e.g. 'sr x4, gaussian sigma 5/255'."""
        return f"{self.describe_operator()}, {self.noise.describe()}"

    def describe_operator(self):
        raise NotImplementedError

    def summary(self):
        """Flat, human-readable facts for file metadata: task, upscale, operator, noise."""
        return {"task": self.task, "upscale": self.upscale, "operator": self.describe_operator(),
                "noise": self.noise.describe()}

    def differences(self, other):
        """What differs between two descriptions, as sentences (empty: the same instrument)."""
        if type(self) is not type(other):
            return [f"the operator: {self.describe_operator()} vs {other.describe_operator()}"]
        out = self._operator_differences(other)
        if self.noise != other.noise:
            out.append(f"the noise: {self.noise.describe()} vs {other.noise.describe()}")
        return out

    def _operator_differences(self, other):
        a, b = self.get_config(), other.get_config()
        a.pop("noise"), b.pop("noise")
        return [] if a == b else [f"the operator: {self.describe_operator()} vs {other.describe_operator()}"]

    def is_compatible(self, other):
        """True when a restorer made for `self` can restore `other`'s measurements.

        That needs the same kind of operator and the same upscale; the kernel and
        the noise may differ (the restorer then works outside what it was trained for).
        """
        return type(self) is type(other) and self.upscale == other.upscale

    def get_config(self):
        return {"noise": noise_lib.serialize(self.noise)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="sei_tf")
class SuperResolution(Physics):
    """Anti-aliased bicubic downsampling by an integer `factor` (2, 3 or 4).

    Signal height and width must be multiples of `factor`.
    """

    task = "sr"
    settings = ("factor",)  # what a command line sets (see `from_flags`)

    def __init__(self, factor=2, noise_sigma=None, noise=None):
        super().__init__(noise_sigma, noise)
        if int(factor) != factor or factor < 1:
            raise PhysicsError(f"The SR factor must be a positive integer, got {factor}.")
        self.factor = int(factor)

    @property
    def upscale(self):
        return self.factor

    def A(self, x):
        s = tf.shape(x)
        size = tf.stack([s[1] // self.factor, s[2] // self.factor])
        return tf.image.resize(x, size, method="bicubic", antialias=True)

    @property
    def baseline_name(self):
        return f"bicubic x{self.factor}"

    def baseline(self, y):
        s = tf.shape(y)
        size = tf.stack([s[1] * self.factor, s[2] * self.factor])
        return tf.image.resize(y, size, method="bicubic")

    def describe_operator(self):
        return f"sr x{self.factor}"

    def summary(self):
        return {**super().summary(), "factor": self.factor}

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="sei_tf")
class Blur(Physics):
    """Convolution with a point-spread function, circular boundary.

    `kernel` is a 2-D array (odd sizes, non-negative; normalised to sum 1) or a
    spec string: 'gaussian:SIGMA', 'box:RADIUS' or a path to a PSF file.
    """

    task = "deblur"
    baseline_name = "blurred input"
    settings = ("kernel",)

    def __init__(self, kernel="gaussian:2", noise_sigma=None, kernel_name=None, noise=None):
        super().__init__(noise_sigma, noise)
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
        x = _wrap_pad(x, kh // 2, kw // 2)
        channels = x.shape[-1]
        # depthwise_conv2d correlates; flipping the PSF makes it a true convolution.
        k = tf.constant(self.kernel[::-1, ::-1].copy(), dtype=x.dtype)
        k = tf.tile(k[:, :, None, None], [1, 1, channels, 1])
        return tf.nn.depthwise_conv2d(x, k, strides=[1, 1, 1, 1], padding="VALID")

    def baseline(self, y):
        return y

    def fit_signal_size(self, height, width, source="image"):
        kh, kw = self.kernel.shape
        if height < kh or width < kw:
            raise PhysicsError(f"{source}: {height}x{width} pixels is smaller than the {kh}x{kw} blur kernel "
                               f"({self.kernel_name}).")
        return int(height), int(width)

    def check_measurement_size(self, height, width, source="measurement"):
        kh, kw = self.kernel.shape
        if min(height, width) <= 2 * self.margin:
            raise PhysicsError(
                f"{source}: {height}x{width} pixels is too small for the {kh}x{kw} blur kernel "
                f"({self.kernel_name}): SURE leaves out a border of {self.margin} pixels on each side, "
                f"so the side must be larger than {2 * self.margin} pixels.")

    def describe_operator(self):
        return f"blur {self.kernel_name}"

    def summary(self):
        return {**super().summary(), "kernel": self.kernel_name, "kernel_array": self.kernel.tolist()}

    def _operator_differences(self, other):
        same = self.kernel.shape == other.kernel.shape and np.allclose(self.kernel, other.kernel, atol=1e-6)
        return [] if same else [f"the blur kernel: {self.kernel_name} vs {other.kernel_name}"]

    def get_config(self):
        return {**super().get_config(), "kernel": self.kernel.tolist(), "kernel_name": self.kernel_name}


def _wrap_pad(x, ph, pw):
    """Circular padding of `ph` rows and `pw` columns on each side."""
    if ph:
        x = tf.concat([x[:, -ph:], x, x[:, :ph]], axis=1)
    if pw:
        x = tf.concat([x[:, :, -pw:], x, x[:, :, :pw]], axis=2)
    return x


# --- building and storing ---------------------------------------------------------------

TASKS = {"sr": SuperResolution, "deblur": Blur}


def make(task, factor=None, kernel=None, noise_sigma=None, noise=None):
    """Builds an operator from plain settings; settings that do not apply to `task` are ignored."""
    if task not in TASKS:
        raise PhysicsError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    cls = TASKS[task]
    settings = {k: v for k, v in (("factor", factor), ("kernel", kernel)) if v is not None and k in cls.settings}
    return cls(noise_sigma=noise_sigma, noise=noise, **settings)


def from_flags(task=None, noise_sigma=None, like=None, noise=None, **settings):
    """The physics that command-line flags describe; what they leave unset comes from `like`.

    `task` names the operator (see TASKS); `settings` are its flags (`factor`,
    `kernel`), None when not given; `noise` is the noise model (a spec string such
    as 'poisson_gaussian:gain=0.01,sigma=2', or a `sei_tf.noise.Noise`) and
    `noise_sigma` the Gaussian noise level in 8-bit units (the older flag; given
    with `noise`, both must describe the same Gaussian noise). With `like` (say,
    the physics recorded in a sidecar), the task, the operator settings (when
    none is given) and the noise default to its own. Compare the result with
    `like.differences(...)` to find contradictions.
    """
    if task is None and like is None:
        raise PhysicsError(f"Give the task (one of {', '.join(TASKS)}).")
    if task is not None and task not in TASKS:
        raise PhysicsError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    cls = TASKS[task] if task is not None else type(like)
    given = {k: v for k, v in settings.items() if v is not None}
    wrong = sorted(set(given) - set(cls.settings))
    if wrong:
        raise PhysicsError(f"--{wrong[0]} does not apply to task {cls.task!r} (it takes "
                           f"{', '.join('--' + k for k in cls.settings)}).")
    kwargs = dict(given)
    if not given and type(like) is cls:
        kwargs = {k: v for k, v in like.get_config().items() if k != "noise"}
    kwargs["noise"] = _noise_from_flags(noise, noise_sigma, like)
    return cls(**kwargs)


def _noise_from_flags(noise, noise_sigma, like):
    """The noise model of `from_flags`: --noise, else --noise_sigma, else `like`'s."""
    if noise is not None:
        noise = noise_lib.deserialize(noise)
        if noise_sigma is not None and noise != noise_lib.Gaussian(noise_sigma):
            raise PhysicsError(f"--noise {noise.spec()} and --noise_sigma {float(noise_sigma):g} disagree; "
                               "give one of them.")
        return noise
    if noise_sigma is not None:
        return noise_lib.Gaussian(noise_sigma)
    if like is not None:
        return like.noise
    raise PhysicsError("Give the noise model and its noise level (--noise, e.g. gaussian:sigma=5 or "
                       "poisson:gain=0.01, or --noise_sigma in 8-bit units): SURE needs it.")


def serialize(physics):
    """A JSON-friendly dict that `deserialize` turns back into the same physics."""
    return keras.saving.serialize_keras_object(physics)


def deserialize(config):
    """The physics from `serialize`'s output (configs without `noise` hold `noise_sigma`)."""
    if isinstance(config, Physics):
        return config
    try:
        op = keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError, KeyError) as err:
        raise PhysicsError(f"Cannot rebuild the physics from {str(config)[:200]}: {err}") from err
    if not isinstance(op, Physics):
        raise PhysicsError(f"{str(config)[:200]} does not describe a sei-tf physics.")
    return op


def from_legacy(meta):
    """The physics from the flat keys of sidecar format 1 and ONNX metadata format 1.

    `meta` holds `task`, `noise_sigma` and `factor` (sr) or `kernel_array` and
    `kernel` (deblur); `kernel_array` wins over a kernel name, since a PSF file
    may have changed since.
    """
    task = meta.get("task")
    try:
        if task == "deblur":
            return Blur(np.asarray(meta["kernel_array"], np.float32), noise_sigma=float(meta["noise_sigma"]),
                        kernel_name=meta.get("kernel"))
        return make(task, factor=int(meta["factor"]) if task == "sr" else None,
                    noise_sigma=float(meta["noise_sigma"]))
    except KeyError as err:
        raise PhysicsError(f"The description of task {task!r} lacks {err.args[0]!r}.") from err
