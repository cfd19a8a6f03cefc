"""SwinIR image restorer (Liang et al., ICCV-W 2021, "classical SR" variant).

Architecture (written from the paper's description):

    x ──► pad to a multiple of the window (reflect) ──► conv3x3 (shallow features F0)
      ──► LayerNorm (patch-embedding norm)
      ──► K residual Swin transformer blocks (RSTB)
            RSTB(x) = x + conv3x3(STL_d(...STL_1(x)))
            STL: x = x + W-MSA(LN(x))   (regular / shifted windows alternate)
                 x = x + MLP(LN(x))     (Linear-GELU-Linear, hidden = mlp_ratio*C)
      ──► LayerNorm ──► conv3x3 ──► + F0                     ("1conv" residual)
      ──► reconstruction
            upscale == 1 : out = x_pad + conv3x3(features)   (global residual)
            upscale  > 1 : conv3x3(64) + LeakyReLU(0.01)
                           [conv3x3(4*64) + depth_to_space(2)] * log2(upscale)
                           or conv3x3(9*64) + depth_to_space(3) for upscale 3
                           conv3x3(channels)
      ──► crop to (H*upscale, W*upscale)

Design notes
------------
* Spatial dimensions are fully dynamic.  The image is padded (reflection) up
  to a multiple of ``window_size`` inside ``call``; the shifted-window
  attention mask is built in-graph from the padded size, once per forward
  pass, and shared by every shifted block.
* Padding is done with ``tf.gather`` on reflected indices.  Whenever
  ``tf.pad(mode="REFLECT")`` is valid (pad <= size-1) the result is identical
  to it; for images smaller than the pad (e.g. 3 px with window 8) the
  reflection simply continues (triangle wave), so there is no size limit and
  no data-dependent branch in the graph.
* The cyclic shift is ``tf.roll`` (tf2onnx writes it as Slice + Concat; in
  TensorFlow its gradient is a roll back, 10-30x cheaper on CPU than the
  gradient of a slice + concat), the window (un)partitioning reshape/transpose,
  and the relative position bias a ``tf.gather`` on a constant index:
  everything converts with tf2onnx (opset 18) and runs without XLA.
* No mean subtraction, no drop-path/dropout.
* The attention mask uses -100 for forbidden token pairs, as in the reference
  implementation (exp(-100) underflows to ~0 after softmax).
* Reduced precision (``precision="bfloat16"`` or ``"float16"``): every
  convolution and dense layer computes in the reduced type with float32
  weights; the LayerNorms, the attention softmax (with its relative position
  bias and mask), the residual stream of the transformer blocks and, for
  ``upscale == 1``, the global identity skip stay float32, and the output is
  float32.  The input is taken as float32 (not cast to the reduced type).
* SwinIR has a global receptive field (through the shifted windows and
  depth), so :meth:`SwinIR.tile_context` returns ``None``: tiled inference
  must use overlapping tiles with blending, not a fixed context margin.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import keras

from sei_tf.models import initializers, mixed

__all__ = [
    "SwinIR",
    "WindowAttention",
    "SwinTransformerBlock",
    "ResidualSwinTransformerBlock",
    "relative_position_index",
    "reflect_pad_to_multiple",
    "window_partition",
    "window_reverse",
    "shifted_window_attention_mask",
    "MASK_VALUE",
]

# Value added to the attention logits of token pairs that must not attend to
# each other in shifted windows (same value as the reference implementation).
MASK_VALUE = -100.0

_LN_EPS = 1e-5  # PyTorch nn.LayerNorm default, as in the reference model.


def _dense_init():
    """Linear layers: truncated normal, std 0.02, zero bias (the reference's `_init_weights`)."""
    return keras.initializers.TruncatedNormal(stddev=0.02)


def _conv(filters, in_channels, **kwargs):
    """A 3x3 "same" convolution initialised as the reference's nn.Conv2d (PyTorch's default:
    kernel and bias U(+-1/sqrt(9 * in_channels)); its `_init_weights` leaves convolutions alone)."""
    kernel, bias = initializers.torch_conv(9 * in_channels)
    return keras.layers.Conv2D(filters, 3, padding="same", kernel_initializer=kernel, bias_initializer=bias,
                               **kwargs)


# --------------------------------------------------------------------------
# Pure tensor helpers (graph friendly, dynamic shapes)
# --------------------------------------------------------------------------
def relative_position_index(window_size: int) -> np.ndarray:
    """Index into the ((2w-1)^2, heads) bias table for every token pair.

    Returns an int32 array of shape (w*w, w*w); entry [i, j] identifies the
    relative offset (dy, dx) between token i and token j of a window, both
    tokens enumerated in row-major order.
    """
    w = int(window_size)
    ys, xs = np.meshgrid(np.arange(w), np.arange(w), indexing="ij")
    coords = np.stack([ys.reshape(-1), xs.reshape(-1)])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N), in [-(w-1), w-1]
    rel = rel + (w - 1)  # shift to [0, 2w-2]
    return (rel[0] * (2 * w - 1) + rel[1]).astype(np.int32)


def _reflect_indices(n, target):
    """Indices 0..target-1 into an axis of length ``n`` (reflect, no edge repeat)."""
    i = tf.range(target)
    period = tf.maximum(2 * n - 2, 1)
    j = tf.math.floormod(i, period)
    return tf.where(j < n, j, period - j)


def reflect_pad_to_multiple(x, multiple: int):
    """Reflect-pad NHWC ``x`` at the bottom/right to a multiple of ``multiple``.

    Returns ``(x_padded, h, w)`` where ``h``, ``w`` are the original (dynamic)
    spatial sizes.
    """
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    hp = (h + multiple - 1) // multiple * multiple
    wp = (w + multiple - 1) // multiple * multiple
    x = tf.gather(x, _reflect_indices(h, hp), axis=1)
    x = tf.gather(x, _reflect_indices(w, wp), axis=2)
    return x, h, w


def window_partition(x, window_size: int):
    """(B, H, W, C) -> (B * nW, w*w, C); H, W multiples of the window."""
    ws = int(window_size)
    shape = tf.shape(x)
    h, w = shape[1], shape[2]
    c = x.shape[-1] if x.shape[-1] is not None else shape[3]
    x = tf.reshape(x, [-1, h // ws, ws, w // ws, ws, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [-1, ws * ws, c])


def window_reverse(windows, window_size: int, h, w):
    """(B * nW, w*w, C) -> (B, H, W, C); inverse of :func:`window_partition`."""
    ws = int(window_size)
    c = windows.shape[-1] if windows.shape[-1] is not None else tf.shape(windows)[2]
    x = tf.reshape(windows, [-1, h // ws, w // ws, ws, ws, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [-1, h, w, c])


def _gelu(x):
    """Exact (erf) GELU.  Written with Erf: tf.nn.gelu uses Erfc, which
    tf2onnx cannot convert."""
    return 0.5 * x * (1.0 + tf.math.erf(x * tf.cast(0.7071067811865476, x.dtype)))


def _roll_hw(x, shift: int):
    """Cyclic roll of axes 1 and 2 by a static ``shift``: out[i] = in[i - shift] (torch.roll semantics)."""
    if shift == 0:
        return x
    return tf.roll(x, shift=[shift, shift], axis=[1, 2])


def _split_qkv(qkv, n, heads, head_dim):
    """(B*nW, N, 3*C) -> q, k, v, each (B*nW, heads, N, head_dim).

    tf.unstack, not qkv[0], qkv[1], qkv[2]: the gradient of three strided slices
    writes three zero-filled copies of the whole tensor; unstack's is one stack
    (the window attention's forward + backward ran 1.8x faster on CPU).
    """
    qkv = tf.reshape(qkv, [-1, n, 3, heads, head_dim])
    return tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]), axis=0)


def shifted_window_attention_mask(h, w, window_size: int, shift_size: int,
                                  dtype=tf.float32):
    """Additive attention mask for shifted windows, shape (nW, N, N).

    ``h`` and ``w`` are the (possibly dynamic) padded sizes, multiples of
    ``window_size``.  After the cyclic shift by ``-shift_size``, the image is
    split into 3 x 3 regions (rows: [0, h-ws), [h-ws, h-s), [h-s, h); same for
    columns).  Tokens of the same window that come from different regions were
    not neighbours in the original image and get ``MASK_VALUE``; others get 0.
    """
    ws, s = int(window_size), int(shift_size)

    def region(n):
        i = tf.range(n)
        return (tf.cast(i >= n - ws, tf.int32)
                + tf.cast(i >= n - s, tf.int32))

    ids = region(h)[:, None] * 3 + region(w)[None, :]  # (h, w)
    win = window_partition(ids[None, :, :, None], ws)[..., 0]  # (nW, N)
    different = tf.not_equal(win[:, None, :], win[:, :, None])  # (nW, N, N)
    return tf.where(different,
                    tf.constant(MASK_VALUE, dtype),
                    tf.constant(0.0, dtype))


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------
class WindowAttention(keras.layers.Layer):
    """Window multi-head self-attention with a relative position bias table."""

    def __init__(self, dim, num_heads, window_size, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"dim={dim} not divisible by num_heads={num_heads}")
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        self.head_dim = self.dim // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = keras.layers.Dense(3 * self.dim, kernel_initializer=_dense_init(),
                                      name="qkv", dtype=self.dtype_policy)
        self.proj = keras.layers.Dense(self.dim, kernel_initializer=_dense_init(),
                                       name="proj", dtype=self.dtype_policy)
        self._rel_index = relative_position_index(self.window_size).reshape(-1)

    def build(self, input_shape=None):
        if self.built:
            return
        ws = self.window_size
        self.relative_position_bias_table = self.add_weight(
            name="relative_position_bias_table",
            shape=((2 * ws - 1) ** 2, self.num_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            trainable=True,
            autocast=False,  # read as float32: it is added to float32 logits
        )
        self.qkv.build((None, ws * ws, self.dim))
        self.proj.build((None, ws * ws, self.dim))
        self.built = True

    def relative_position_bias(self):
        """(heads, N, N) float32 bias gathered from the table."""
        n = self.window_size ** 2
        bias = tf.gather(self.relative_position_bias_table,
                         tf.constant(self._rel_index))  # (N*N, heads)
        bias = tf.reshape(bias, [n, n, self.num_heads])
        return tf.transpose(bias, [2, 0, 1])

    def call(self, x, attn_mask=None):
        # x: (B*nW, N, C)
        n = self.window_size ** 2
        heads, hd = self.num_heads, self.head_dim
        q, k, v = _split_qkv(self.qkv(x), n, heads, hd)
        attn = tf.matmul(q * tf.cast(self.scale, q.dtype), k, transpose_b=True)
        # Bias, mask and softmax in float32: in bfloat16 the logits (|.| ~ 10)
        # would be rounded to ~0.06 and the masked ones (~ -100) to 0.5.
        attn = tf.cast(attn, tf.float32)
        attn = attn + tf.cast(self.relative_position_bias(), tf.float32)[None]
        if attn_mask is not None:  # (nW, N, N)
            nw = tf.shape(attn_mask)[0]
            attn = tf.reshape(attn, [-1, nw, heads, n, n])
            attn = attn + tf.cast(attn_mask, tf.float32)[None, :, None]
            attn = tf.reshape(attn, [-1, heads, n, n])
        attn = tf.cast(tf.nn.softmax(attn, axis=-1), v.dtype)
        out = tf.matmul(attn, v)  # (B*nW, heads, N, hd)
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [-1, n, self.dim])
        return self.proj(out)


class SwinTransformerBlock(keras.layers.Layer):
    """Swin transformer layer (STL) operating on NHWC maps (H, W % window == 0).

    The residual stream (input and output) is float32 whatever the policy;
    the attention and the MLP compute in the policy's compute type.
    """

    def __init__(self, dim, num_heads, window_size, shift_size=0, mlp_ratio=2.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.window_size = int(window_size)
        self.shift_size = int(shift_size)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        hidden = int(self.dim * mlp_ratio)
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=_LN_EPS, name="norm1",
                                                     dtype="float32")
        self.attn = WindowAttention(self.dim, num_heads, self.window_size, name="attn",
                                    dtype=policy)
        self.norm2 = keras.layers.LayerNormalization(epsilon=_LN_EPS, name="norm2",
                                                     dtype="float32")
        self.fc1 = keras.layers.Dense(hidden, kernel_initializer=_dense_init(), name="fc1",
                                      dtype=policy)
        self.fc2 = keras.layers.Dense(self.dim, kernel_initializer=_dense_init(), name="fc2",
                                      dtype=policy)

    @property
    def input_dtype(self):
        """The residual stream is float32; sublayers cast to their compute type."""
        return "float32"

    def build(self, input_shape=None):
        if self.built:
            return
        tok = (None, None, None, self.dim)
        self.norm1.build(tok)
        self.attn.build()
        self.norm2.build(tok)
        self.fc1.build(tok)
        self.fc2.build((None, None, None, self.fc1.units))
        self.built = True

    def call(self, x, attn_mask=None):
        shape = tf.shape(x)
        h, w = shape[1], shape[2]
        y = self.norm1(x)
        y = _roll_hw(y, -self.shift_size)
        y = window_partition(y, self.window_size)
        y = self.attn(y, attn_mask=attn_mask if self.shift_size > 0 else None)
        y = window_reverse(y, self.window_size, h, w)
        y = _roll_hw(y, self.shift_size)
        x = x + tf.cast(y, x.dtype)
        y = self.fc1(self.norm2(x))
        y = _gelu(y)
        return x + tf.cast(self.fc2(y), x.dtype)


class ResidualSwinTransformerBlock(keras.layers.Layer):
    """RSTB: ``depth`` STLs (regular/shifted alternating) + conv3x3 + residual.

    Float32 in and out (the residual stream); the conv computes in the policy's type.
    """

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio=2.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.blocks = [
            SwinTransformerBlock(
                dim, num_heads, window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio, name=f"stl_{i}", dtype=self.dtype_policy)
            for i in range(int(depth))
        ]
        self.conv = _conv(self.dim, self.dim, name="conv", dtype=self.dtype_policy)

    @property
    def input_dtype(self):
        """The residual stream is float32; sublayers cast to their compute type."""
        return "float32"

    def build(self, input_shape=None):
        if self.built:
            return
        for blk in self.blocks:
            blk.build()
        self.conv.build((None, None, None, self.dim))
        self.built = True

    def call(self, x, attn_mask=None):
        y = x
        for blk in self.blocks:
            y = blk(y, attn_mask=attn_mask)
        return x + tf.cast(self.conv(y), x.dtype)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
def _upsample_factors(upscale: int):
    if upscale == 1:
        return []
    if upscale == 3:
        return [3]
    if upscale >= 2 and (upscale & (upscale - 1)) == 0:
        return [2] * int(round(math.log2(upscale)))
    raise ValueError(f"upscale must be 1, 3 or a power of 2, got {upscale}")


@keras.saving.register_keras_serializable(package="sei_tf")
class SwinIR(keras.Model):
    """SwinIR restorer for NHWC float images of any height/width.

    Args:
        upscale: 1 (restoration: output = input + residual), 3, or a power of 2
            (pixel-shuffle upsampler).
        channels: image channels (input and output).
        embed_dim: transformer feature width.
        depths: number of Swin layers in each RSTB.
        num_heads: attention heads in each RSTB.
        window_size: attention window side; the shift is ``window_size // 2``.
        mlp_ratio: MLP hidden width / embed_dim.
        precision: "float32", "bfloat16" or "float16": the type the convolutions
            and dense layers compute in (weights are float32 in every case);
            input and output are float32.

    Paper "classical SR" config: embed_dim=180, depths=num_heads=(6,)*6,
    window_size=8, mlp_ratio=2.  Light CPU config: embed_dim=60,
    depths=num_heads=(6, 6, 6, 6).
    """

    # Global receptive field: no finite context margin for tiled inference.
    receptive_field = None

    def __init__(self, upscale=1, channels=3, embed_dim=180,
                 depths=(6, 6, 6, 6, 6, 6), num_heads=(6, 6, 6, 6, 6, 6),
                 window_size=8, mlp_ratio=2.0, precision=None, **kwargs):
        precision = mixed.take_precision(precision, kwargs)
        policy = mixed.layer_dtype(precision)
        super().__init__(dtype=policy, **kwargs)
        self.precision = precision
        depths = [int(d) for d in depths]
        num_heads = [int(h) for h in num_heads]
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads must have the same length")
        if int(window_size) < 1:
            raise ValueError("window_size must be >= 1")
        self.upscale = int(upscale)
        self.channels = int(channels)
        self.embed_dim = int(embed_dim)
        self.depths = depths
        self.num_heads = num_heads
        self.window_size = int(window_size)
        self.mlp_ratio = float(mlp_ratio)
        self.shift_size = self.window_size // 2
        self._factors = _upsample_factors(self.upscale)

        def conv(filters, in_channels, name):
            return _conv(filters, in_channels, name=name, dtype=policy)

        self.conv_first = conv(self.embed_dim, self.channels, "conv_first")
        self.patch_norm = keras.layers.LayerNormalization(epsilon=_LN_EPS,
                                                          name="patch_norm", dtype="float32")
        self.stages = [
            ResidualSwinTransformerBlock(self.embed_dim, d, h, self.window_size,
                                         self.mlp_ratio, name=f"rstb_{i}", dtype=policy)
            for i, (d, h) in enumerate(zip(depths, num_heads))
        ]
        self.norm = keras.layers.LayerNormalization(epsilon=_LN_EPS, name="norm",
                                                    dtype="float32")
        self.conv_after_body = conv(self.embed_dim, self.embed_dim, "conv_after_body")
        if self.upscale > 1:
            self.num_feat = 64
            self.conv_before_upsample = conv(self.num_feat, self.embed_dim, "conv_before_upsample")
            self.upsample_convs = [
                conv(r * r * self.num_feat, self.num_feat, f"upsample_conv_{i}")
                for i, r in enumerate(self._factors)
            ]
        self.conv_last = conv(self.channels, self.num_feat if self.upscale > 1 else self.embed_dim,
                              "conv_last")

    # -- keras plumbing ----------------------------------------------------
    def get_config(self):
        try:
            config = super().get_config()
        except NotImplementedError:  # pragma: no cover - defensive
            config = {"name": self.name, "trainable": self.trainable}
        config.update({
            "upscale": self.upscale,
            "channels": self.channels,
            "embed_dim": self.embed_dim,
            "depths": list(self.depths),
            "num_heads": list(self.num_heads),
            "window_size": self.window_size,
            "mlp_ratio": self.mlp_ratio,
            "precision": self.precision,
        })
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def build(self, input_shape=None):
        if self.built:
            return
        if input_shape is not None and input_shape[-1] not in (None, self.channels):
            raise ValueError(f"expected {self.channels} input channels, "
                             f"got shape {input_shape}")
        img = (None, None, None, self.channels)
        feat = (None, None, None, self.embed_dim)
        self.conv_first.build(img)
        self.patch_norm.build(feat)
        for stage in self.stages:
            stage.build(feat)
        self.norm.build(feat)
        self.conv_after_body.build(feat)
        if self.upscale > 1:
            self.conv_before_upsample.build(feat)
            nf = (None, None, None, self.num_feat)
            for c in self.upsample_convs:
                c.build(nf)
            self.conv_last.build(nf)
        else:
            self.conv_last.build(feat)
        self.built = True

    def compute_output_shape(self, input_shape):
        def up(d):
            return None if d is None else d * self.upscale
        return (input_shape[0], up(input_shape[1]), up(input_shape[2]), self.channels)

    @property
    def input_dtype(self):
        """Inputs are cast to float32 (not to the compute type): the identity skip needs them exact."""
        return "float32"

    def tile_context(self):
        """Context margin (pixels) needed for exact tiling: None = global.

        Serving code must use overlapping tiles with blending for SwinIR.
        """
        return None

    # -- forward -----------------------------------------------------------
    def attention_mask(self, h, w):
        """Shifted-window mask (float32) for a padded (h, w) map; shape (nW, N, N)."""
        return shifted_window_attention_mask(h, w, self.window_size, self.shift_size,
                                             dtype=tf.float32)

    def call(self, inputs, training=None):
        x = tf.cast(inputs, tf.float32)
        xp, h, w = reflect_pad_to_multiple(x, self.window_size)
        pshape = tf.shape(xp)
        mask = self.attention_mask(pshape[1], pshape[2])

        shallow = self.conv_first(xp)
        y = self.patch_norm(shallow)
        for stage in self.stages:
            y = stage(y, attn_mask=mask)
        y = self.norm(y)
        y = self.conv_after_body(y) + shallow

        if self.upscale == 1:
            out = xp + tf.cast(self.conv_last(y), tf.float32)
        else:
            y = tf.nn.leaky_relu(self.conv_before_upsample(y), alpha=0.01)
            for c, r in zip(self.upsample_convs, self._factors):
                y = tf.nn.depth_to_space(c(y), r)
            out = tf.cast(self.conv_last(y), tf.float32)
        return out[:, : h * self.upscale, : w * self.upscale, :]
