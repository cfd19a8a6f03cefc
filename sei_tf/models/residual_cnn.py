"""A fast residual CNN backbone (EDSR-style) for CPU-scale training.

Why a residual CNN rather than a U-Net: every layer is a 3x3 convolution at the
input resolution, so it takes any height and width without padding, its
receptive field is known exactly (one pixel per convolution), which makes
tiled inference bit-exact, and super-resolution only needs a pixel shuffle at
the end. The network predicts a residual over the non-learned reconstruction
(bicubic upsampling for SR, the input itself for deblurring).
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="sei_tf")
class ResidualCNN(keras.Model):
    """f: y (N, H, W, C) in [0, 1] -> x (N, H*upscale, W*upscale, C).

    `features` channels, `num_blocks` residual blocks of two 3x3 convolutions.
    """

    def __init__(self, upscale=1, channels=3, features=32, num_blocks=8, **kwargs):
        super().__init__(**kwargs)
        self.upscale = int(upscale)
        self.channels = int(channels)
        self.features = int(features)
        self.num_blocks = int(num_blocks)

        def conv(n, activation=None, name=None, init="glorot_uniform"):
            return keras.layers.Conv2D(n, 3, padding="same", activation=activation, name=name,
                                       kernel_initializer=init)

        self.head = conv(self.features, name="head")
        self.blocks = [
            (conv(self.features, "relu", name=f"block{i}_a"), conv(self.features, name=f"block{i}_b"))
            for i in range(self.num_blocks)
        ]
        self.body = conv(self.features, name="body")
        # Zero-initialised, so training starts from the non-learned reconstruction.
        self.tail = conv(self.channels * self.upscale**2, name="tail", init="zeros")

    def call(self, y):
        features = self.head(y)
        h = features
        for conv_a, conv_b in self.blocks:
            h = h + conv_b(conv_a(h))
        h = self.body(h) + features
        out = self.tail(h)
        if self.upscale == 1:
            return y + out
        s = tf.shape(y)
        skip = tf.image.resize(y, tf.stack([s[1] * self.upscale, s[2] * self.upscale]), method="bicubic")
        return skip + tf.nn.depth_to_space(out, self.upscale)

    def tile_context(self):
        """Receptive-field radius in input pixels: tiles need this much context."""
        convs = 2 * self.num_blocks + 3
        bicubic = 2 if self.upscale > 1 else 0
        return max(convs, bicubic)

    def get_config(self):
        return {**super().get_config(), "upscale": self.upscale, "channels": self.channels,
                "features": self.features, "num_blocks": self.num_blocks}
