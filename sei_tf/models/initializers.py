"""Weight initialisers shared by the backbones.

`torch_conv(fan_in)` is PyTorch's default for nn.Conv2d (and nn.Linear): kernel
and bias both uniform in +-1/sqrt(fan_in), fan_in = kernel_h * kernel_w *
in_channels. For the kernel that is kaiming_uniform(a=sqrt(5)): variance
1/(3 fan_in), i.e. Keras's VarianceScaling(scale=1/3, mode="fan_in",
distribution="uniform"), which draws U(+-sqrt(3 * scale / fan_in)). Keras's
own default (Glorot-uniform kernel, zero bias) starts the convolutions about
1.7x larger in standard deviation (3x in variance at fan_in = fan_out) with no
bias; benchmarks/results/init_choice.md measures what that costs.
"""

import keras


def torch_conv(fan_in):
    """(kernel_initializer, bias_initializer) as PyTorch initialises a layer with `fan_in` inputs."""
    bound = float(fan_in) ** -0.5
    return (keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform"),
            keras.initializers.RandomUniform(-bound, bound))
