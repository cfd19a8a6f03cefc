"""Which floating-point type the backbone computes in (`train --precision`).

Only the backbone's layers run in a reduced type; the physics, the noise, SURE,
the equivariance target and every loss stay float32, and the backbone's output
is float32 (see `sei_tf.models`). This module only decides the type and names
the matching Keras dtype policy: it never sets the global Keras policy, which
would also make the physics and losses compute in the reduced type.

- `resolve(name)` turns a user choice ("auto", "float32", "bfloat16",
  "float16") into one of `PRECISIONS` plus a sentence for the log.
- `policy_name(precision)` is the Keras dtype-policy name for it: variables
  stay float32, layers compute in the reduced type.

"auto" picks bfloat16 where the hardware computes it natively: every visible
GPU has compute capability >= 8.0 (Ampere and newer), or, with no GPU, the CPU
has AMX-BF16 (`amx_bf16` in /proc/cpuinfo). Anything else gets float32.
"""

PRECISIONS = ("float32", "bfloat16", "float16")
CHOICES = ("auto",) + PRECISIONS

_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

# GPUs compute bfloat16 natively from compute capability 8.0 (Ampere) on.
MIN_BF16_CAPABILITY = (8, 0)


def policy_name(precision):
    """Keras dtype-policy name for `precision` ("float32" | "mixed_bfloat16" | "mixed_float16")."""
    if precision not in _POLICIES:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    return _POLICIES[precision]


def from_policy_name(name):
    """Inverse of `policy_name`: "mixed_bfloat16" -> "bfloat16"; a plain "float32" -> "float32"."""
    for precision, policy in _POLICIES.items():
        if name in (policy, precision):
            return precision
    raise ValueError(f"No precision for dtype policy {name!r}; "
                     f"expected one of {', '.join(_POLICIES.values())}.")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags (a set of strings, e.g. {"avx2", "amx_bf16"}); empty if unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def gpu_capabilities():
    """Compute capability (major, minor) of each GPU TensorFlow sees; [] without GPUs.

    A GPU whose capability TensorFlow cannot report counts as (0, 0).
    """
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001 - a driver that cannot report: treat as unknown
            details = {}
        capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
    return capabilities


def _describe_capabilities(capabilities):
    return ", ".join(f"{major}.{minor}" for major, minor in capabilities)


def resolve(name="auto", flags=None, gpus=None):
    """Returns `(precision, reason)`: the precision to train in and a sentence for the log.

    `name` is one of `CHOICES`. `flags` (a set of CPU flag strings) and `gpus`
    (a list of (major, minor) compute capabilities) describe the machine; left
    as None they are read from /proc/cpuinfo and from TensorFlow, so tests can
    pass a machine of their choice.
    """
    name = str(name).lower()
    if name not in CHOICES:
        raise ValueError(f"Unknown precision {name!r}; choose one of {', '.join(CHOICES)}.")
    if gpus is None:
        gpus = gpu_capabilities()
    gpus = [tuple(int(v) for v in g) for g in gpus]

    native_bf16, where = _native_bfloat16(gpus, flags)
    if name == "auto":
        if native_bf16:
            return "bfloat16", f"auto: bfloat16, because {where}."
        return "float32", f"auto: float32, because {where}."
    if name == "float32":
        return "float32", "float32, as requested."
    if name == "bfloat16":
        if native_bf16:
            return "bfloat16", f"bfloat16, as requested ({where})."
        return "bfloat16", (f"bfloat16, as requested, but {where}: expect it to be emulated "
                            "and slower than float32.")
    if gpus:
        return "float16", (f"float16, as requested (GPU compute capability {_describe_capabilities(gpus)}); "
                           "training needs loss scaling.")
    return "float16", "float16, as requested, on CPU: expect it to be emulated and slower than float32."


def _native_bfloat16(gpus, flags):
    """(whether bfloat16 runs natively here, a clause saying why)."""
    if gpus:
        need = f"{MIN_BF16_CAPABILITY[0]}.{MIN_BF16_CAPABILITY[1]}"
        have = _describe_capabilities(gpus)
        if all(g >= MIN_BF16_CAPABILITY for g in gpus):
            return True, f"the GPU compute capability {have} is >= {need}"
        return False, f"the GPU compute capability {have} is below {need}"
    if flags is None:
        flags = cpu_flags()
    if "amx_bf16" in flags:
        return True, "there is no GPU and the CPU has AMX-BF16"
    return False, "there is no GPU and the CPU has no AMX-BF16"


def policy(precision):
    """A Keras `DTypePolicy` for `precision` (float32 variables, reduced-type computation)."""
    import keras

    return keras.dtype_policies.DTypePolicy(policy_name(precision))

