"""Forward-mode differentiation of a restorer: J_f(y) b, the response of f to a probe b.

SURE's divergence term needs b . J_f(y) b. `jvp(model, y, b)` computes J_f(y) b
exactly with `tf.autodiff.ForwardAccumulator` (one pass that carries the
tangent along with the values), instead of the finite difference
(f(y + tau b) - f(y)) / tau, which cancels digits in bfloat16 and which a network
can learn to fool at a fixed step tau.

TensorFlow derives forward-mode rules from the gradients of the gradients, and it
has no gradient for `ResizeBicubicGrad` (the gradient of a bicubic resize, used by
the backbones' bicubic skip). It is registered here: `ResizeBicubicGrad` is linear
in its incoming gradient, and its own adjoint is the bicubic resize itself.
"""

import tensorflow as tf
from tensorflow.python.framework import ops


def _resize_bicubic_grad_grad(op, grad):
    size = tf.shape(op.inputs[0])[1:3]
    resized = tf.raw_ops.ResizeBicubic(images=grad, size=size, align_corners=op.get_attr("align_corners"),
                                       half_pixel_centers=op.get_attr("half_pixel_centers"))
    return [resized, None]


try:
    ops.RegisterGradient("ResizeBicubicGrad")(_resize_bicubic_grad_grad)
except KeyError:  # a TensorFlow that has its own rule (or a second import under another name)
    pass


def jvp(model, y, b):
    """J_f(y) b: the exact change of `model(y)` along `b` (same shape as `model(y)`), float32."""
    with tf.autodiff.ForwardAccumulator(primals=y, tangents=b) as accumulator:
        out = model(y)
    return tf.cast(accumulator.jvp(out), tf.float32)
