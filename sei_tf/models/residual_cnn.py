"""A fast residual CNN backbone (EDSR-style) for CPU-scale training.

Why a residual CNN rather than a U-Net: every layer is a 3x3 convolution at the
input resolution, so it takes any height and width without padding, its
receptive field is known exactly (one pixel per convolution), which makes
tiled inference bit-exact, and super-resolution only needs a pixel shuffle at
the end. The network predicts a residual over the non-learned reconstruction
(bicubic upsampling for SR, the input itself for deblurring).

Reduced precision (`precision="bfloat16"` or "float16"): the convolutions
compute in the reduced type, the skip path (identity / bicubic) stays float32,
computed from the float32 input, and the output is float32. The skip carries
most of the change between f(y) and f(y + tau b) in SURE's divergence probe,
so computing it in bfloat16 would round that difference to a few bfloat16
steps (see benchmarks/sure_bf16.py).

Initialisation (`init`, see `INITS`): how the convolutions' weights start. The
tail (last convolution) is zero in every case, so f(y) starts as the skip.
The default is "torch" (PyTorch's Conv2d default, as in the PyTorch EDSR/SwinIR
code the paper builds on), chosen by benchmarks/init_choice.py at the quality
benchmark's budget (results/init_choice.md): it beat Keras's Glorot default in
every cell, by 0.32 dB with SEI and 0.31 dB supervised on SR x2 (2 seeds), 0.34
and 0.15 dB on Gaussian blur s2 (1 seed) of validation PSNR;
"torch_zero_branch" was within noise of it; "he_normal" blew up in its first
steps and ended below the non-learned baseline. Without normalisation the
residual blocks add up: on uniform noise in [0, 1], the tail's input starts at
std 0.40 with "torch", 0.90 with Glorot and 61 with He (x1.7 per block).
Models saved before the option existed were trained with "glorot_uniform"; they
load with their own weights whatever the default.
"""

import keras
import tensorflow as tf

from sei_tf.errors import SeiTfError
from sei_tf.models import initializers, mixed

# `init` name -> what it does to every convolution but the zero tail. fan_in = 3*3*in_channels.
INITS = {
    "glorot_uniform": "Keras's default: kernel U(+-sqrt(6/(fan_in+fan_out))), bias 0",
    "torch": "PyTorch's Conv2d default: kernel and bias U(+-1/sqrt(fan_in)) (kernel variance 1/(3 fan_in))",
    "he_normal": "kernel N(0, 2/fan_in) truncated at 2 std, bias 0",
    "torch_zero_branch": "as 'torch', but the second convolution of each residual block is zero "
                         "(kernel and bias), so every block starts as the identity",
}
DEFAULT_INIT = "torch"


def conv_initializers(init, fan_in):
    """(kernel_initializer, bias_initializer) of a 3x3 convolution with `fan_in` = 9 * in_channels."""
    if init == "glorot_uniform":
        return "glorot_uniform", "zeros"
    if init in ("torch", "torch_zero_branch"):
        return initializers.torch_conv(fan_in)
    if init == "he_normal":
        return "he_normal", "zeros"
    raise SeiTfError(f"ResidualCNN: unknown init {init!r}; choose one of {', '.join(INITS)}.")


@keras.saving.register_keras_serializable(package="sei_tf")
class ResidualCNN(keras.Model):
    """f: y (N, H, W, C) in [0, 1] -> x (N, H*upscale, W*upscale, C), float32 in and out.

    `features` channels, `num_blocks` residual blocks of two 3x3 convolutions.
    `precision` ("float32", "bfloat16", "float16") is the type the convolutions
    compute in; the weights are float32 in every case. `init` (a key of `INITS`)
    is how the convolutions start; a saved config without it loads (its weights
    replace the initial ones anyway).
    """

    def __init__(self, upscale=1, channels=3, features=32, num_blocks=8, precision=None, init=DEFAULT_INIT,
                 **kwargs):
        precision = mixed.take_precision(precision, kwargs)
        dtype = mixed.layer_dtype(precision)
        super().__init__(dtype=dtype, **kwargs)
        self.precision = precision
        self.upscale = int(upscale)
        self.channels = int(channels)
        self.features = int(features)
        self.num_blocks = int(num_blocks)
        if init not in INITS:
            raise SeiTfError(f"ResidualCNN: unknown init {init!r}; choose one of {', '.join(INITS)}.")
        self.init = init

        def conv(n, in_channels, activation=None, name=None, zero=False):
            kernel, bias = ("zeros", "zeros") if zero else conv_initializers(init, 9 * in_channels)
            return keras.layers.Conv2D(n, 3, padding="same", activation=activation, name=name,
                                       kernel_initializer=kernel, bias_initializer=bias, dtype=dtype)

        f = self.features
        self.head = conv(f, self.channels, name="head")
        zero_branch = init == "torch_zero_branch"
        self.blocks = [
            (conv(f, f, "relu", name=f"block{i}_a"), conv(f, f, name=f"block{i}_b", zero=zero_branch))
            for i in range(self.num_blocks)
        ]
        self.body = conv(f, f, name="body")
        # Zero-initialised, so training starts from the non-learned reconstruction.
        self.tail = conv(self.channels * self.upscale**2, f, name="tail", zero=True)

    @property
    def input_dtype(self):
        """Inputs are cast to float32 (not to the compute type): the skip path needs them exact."""
        return "float32"

    def skip(self, y):
        """The non-learned reconstruction in float32: `y` itself, or its bicubic upsampling."""
        if self.upscale == 1:
            return y
        s = tf.shape(y)
        return tf.image.resize(y, tf.stack([s[1] * self.upscale, s[2] * self.upscale]), method="bicubic")

    def residual(self, y):
        """The learned correction at the output resolution, in the compute type."""
        features = self.head(y)
        h = features
        for conv_a, conv_b in self.blocks:
            h = h + conv_b(conv_a(h))
        h = self.body(h) + features
        out = self.tail(h)
        if self.upscale == 1:
            return out
        return tf.nn.depth_to_space(out, self.upscale)

    def call(self, y):
        y = tf.cast(y, tf.float32)
        return self.skip(y) + tf.cast(self.residual(y), tf.float32)

    def tile_context(self):
        """Receptive-field radius in input pixels: tiles need this much context."""
        convs = 2 * self.num_blocks + 3
        bicubic = 2 if self.upscale > 1 else 0
        return max(convs, bicubic)

    def get_config(self):
        return {**super().get_config(), "upscale": self.upscale, "channels": self.channels,
                "features": self.features, "num_blocks": self.num_blocks,
                "precision": self.precision, "init": self.init}
