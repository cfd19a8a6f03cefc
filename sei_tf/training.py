"""Older name of `sei_tf.sei_model` (version 0.1), kept so that existing imports and saved
models that name this module keep working. New code imports `sei_tf.sei_model`."""

from sei_tf.sei_model import PRESET_OPTIONS, DelayedLinearDecay, SEIModel  # noqa: F401
