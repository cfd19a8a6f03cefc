"""Reduced-precision helpers shared by the backbones.

A backbone built with `precision="bfloat16"` (or "float16") gets the Keras
mixed policy ("mixed_bfloat16": float32 variables, bfloat16 computation) on
itself and on every layer it creates. Its input stays float32 (the backbone's
`input_dtype` is float32, so Keras does not cast it), the non-learned skip path
(identity or bicubic upsampling of the input) is computed in float32 from that
float32 input, and the learned residual is cast to float32 before it is added,
so the output is float32 and the physics and losses after it never see the
reduced type.
"""

import keras

from sei_tf import precision as precision_lib


def take_precision(precision, kwargs):
    """The backbone's precision, from `precision` or else from a Keras `dtype` in `kwargs`.

    Removes "dtype" from `kwargs` (the backbone sets its own policy). A config
    saved before backbones had a precision carries only `dtype` (float32), so
    it loads as float32. An explicit `precision` wins over `dtype`.
    """
    dtype = kwargs.pop("dtype", None)
    if precision is not None:
        precision_lib.policy_name(precision)  # validates
        return precision
    if dtype is None:
        return "float32"
    if isinstance(dtype, dict):  # a serialised DTypePolicy
        dtype = dtype.get("config", {}).get("name", "float32")
    if isinstance(dtype, keras.dtype_policies.DTypePolicy):
        dtype = dtype.name
    return precision_lib.from_policy_name(str(dtype))


def layer_dtype(precision):
    """The `dtype` argument for a backbone's sublayers (a Keras policy name)."""
    return precision_lib.policy_name(precision)
