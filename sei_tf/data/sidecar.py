"""The sidecar `sei_tf.json`: the physics recorded next to a folder of measurements.

`sei_tf.data.simulate` writes it into `measurements/`; training and evaluation read
it so that the physics is not retyped. It holds a JSON object with at least
`format_version`, `task` ('sr' or 'deblur') and `noise_sigma` (8-bit units: 5 means
5/255), plus `factor` (SR) or `kernel` and `kernel_array` (deblurring), and what
`simulate` adds (`seed`, `shorter_side`, `channels`, `files`, ...).
"""

import json
import os

import numpy as np

from sei_tf.data.files import MEASUREMENTS_DIR, SIDECAR_NAME, DataError, simulation_subfolder

SIDECAR_FORMAT_VERSION = 1


def physics_meta(op):
    """The sidecar keys that describe a forward operator (`physics_from_sidecar` reads them back)."""
    meta = {"task": op.task}
    if op.task == "sr":
        meta["factor"] = int(op.factor)
    elif op.task == "deblur":
        meta["kernel"] = op.kernel_name
        meta["kernel_array"] = np.asarray(op.kernel, np.float64).tolist()
    else:
        raise DataError(f"Unknown physics task {op.task!r}.")
    meta["noise_sigma"] = float(op.noise_sigma)
    return meta


def read_sidecar(measurement_dir):
    """Reads `sei_tf.json` from a measurement folder (or the folder of a given file).

    An output folder of `simulate` (see `sei_tf.data.files.simulation_subfolder`)
    stands for its `measurements/` sub-folder, as in `list_images`.

    Returns:
      The sidecar dictionary, or None when the folder has none. The key '_path'
      (the sidecar's path, for messages) is added to what the file holds.

    Raises:
      DataError: the sidecar is not valid JSON, lacks required keys, or comes from
        a newer format version.
    """
    measurement_dir = os.fspath(measurement_dir)
    if os.path.isfile(measurement_dir):
        measurement_dir = os.path.dirname(measurement_dir)
    measurement_dir = simulation_subfolder(measurement_dir, MEASUREMENTS_DIR) or measurement_dir
    path = os.path.join(measurement_dir, SIDECAR_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the sidecar: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(f"{path}: the sidecar must hold a JSON object.")
    missing = [k for k in ("format_version", "task", "noise_sigma") if k not in meta]
    if missing:
        raise DataError(f"{path}: the sidecar lacks {', '.join(missing)}.")
    if int(meta["format_version"]) > SIDECAR_FORMAT_VERSION:
        raise DataError(f"{path}: sidecar format {meta['format_version']} is newer than this sei-tf "
                        f"understands ({SIDECAR_FORMAT_VERSION}); upgrade sei-tf.")
    meta["_path"] = path
    return meta


def check_noise_level(meta, noise_sigma):
    """Reconciles a user-given noise level (8-bit units) with a sidecar.

    Returns:
      The noise level to use: the sidecar's when `noise_sigma` is None, the user's
      when there is no sidecar (`meta` None).

    Raises:
      DataError: both are given and differ (by more than 1e-6).
    """
    if meta is None:
        if noise_sigma is None:
            raise DataError("No noise level: give noise_sigma (8-bit units) or use measurements "
                            "with a sei_tf.json sidecar.")
        return float(noise_sigma)
    recorded = float(meta["noise_sigma"])
    if noise_sigma is None:
        return recorded
    if abs(float(noise_sigma) - recorded) > 1e-6:
        where = meta.get("_path", "the sidecar")
        raise DataError(
            f"noise_sigma={float(noise_sigma):g} contradicts {where}, which records noise_sigma="
            f"{recorded:g} (8-bit units) for these measurements. Drop the flag to use the recorded value.")
    return recorded


def physics_from_sidecar(meta, noise_sigma=None):
    """Rebuilds the forward operator recorded in a sidecar (via `physics.make`).

    `noise_sigma`, when given, must agree with the sidecar (`check_noise_level`).
    For deblurring, the recorded `kernel_array` is authoritative (a kernel file may
    have changed since); the recorded name is kept.
    """
    from sei_tf import physics as physics_lib

    sigma = check_noise_level(meta, noise_sigma)
    task = meta.get("task")
    try:
        if task == "sr":
            return physics_lib.make("sr", factor=int(meta["factor"]), noise_sigma=sigma)
        if task == "deblur":
            kernel = np.asarray(meta["kernel_array"], np.float32)
            op = physics_lib.make("deblur", kernel=kernel, noise_sigma=sigma)
            op.kernel_name = meta.get("kernel") or op.kernel_name
            return op
    except KeyError as e:
        raise DataError(f"The sidecar lacks {e.args[0]!r} for task {task!r}.") from e
    raise DataError(f"The sidecar names an unknown task {task!r} (expected 'sr' or 'deblur').")
