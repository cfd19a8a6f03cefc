"""The sidecar `sei_tf.json`: the physics recorded next to a folder of measurements.

`sei_tf.data.simulate` writes it into `measurements/`; training and evaluation read
it so that the physics is not retyped. It holds a JSON object:

- format 2 (this version): `physics` (the serialised physics object,
  `sei_tf.physics.serialize`), `summary` (the same in words, for people: task,
  upscale, operator, noise, ...), and what `simulate` adds (`seed`,
  `shorter_side`, `channels`, `files`, ...);
- format 1 (sei-tf 0.1, still read): flat keys `task` ('sr' or 'deblur'),
  `noise_sigma` (8-bit units), `factor` (SR) or `kernel` and `kernel_array` (deblurring).
"""

import json
import os

from sei_tf.data.files import MEASUREMENTS_DIR, SIDECAR_NAME, DataError, simulation_subfolder

SIDECAR_FORMAT_VERSION = 2
_REQUIRED = {1: ("task", "noise_sigma"), 2: ("physics",)}


def physics_meta(op):
    """The sidecar keys that describe the physics (`physics_from_sidecar` reads them back)."""
    from sei_tf import physics as physics_lib

    return {"physics": physics_lib.serialize(op), "summary": op.summary()}


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
    if "format_version" not in meta:
        raise DataError(f"{path}: the sidecar lacks format_version.")
    if int(meta["format_version"]) > SIDECAR_FORMAT_VERSION:
        raise DataError(f"{path}: sidecar format {meta['format_version']} is newer than this sei-tf "
                        f"understands ({SIDECAR_FORMAT_VERSION}); upgrade sei-tf.")
    missing = [k for k in _REQUIRED.get(int(meta["format_version"]), ()) if k not in meta]
    if missing:
        raise DataError(f"{path}: the sidecar lacks {', '.join(missing)}.")
    meta["_path"] = path
    return meta


def check_noise_level(meta, noise_sigma):
    """Reconciles a user-given Gaussian noise level (8-bit units) with a sidecar.

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
    op = physics_from_sidecar(meta)
    noise, recorded = op.noise, op.noise_sigma  # noise_sigma: None unless the noise is Gaussian
    if noise_sigma is None:
        return recorded
    if recorded is None or abs(float(noise_sigma) - recorded) > 1e-6:
        where = meta.get("_path", "the sidecar")
        raise DataError(
            f"noise_sigma={float(noise_sigma):g} contradicts {where}, which records {noise.describe()} for "
            "these measurements. Drop the flag to use the recorded value.")
    return recorded


def physics_from_sidecar(meta, noise_sigma=None):
    """Rebuilds the physics recorded in a sidecar (either format).

    `noise_sigma`, when given, must agree with the sidecar (`check_noise_level`).
    In format 1, the recorded `kernel_array` is authoritative (a kernel file may
    have changed since); the recorded name is kept.
    """
    from sei_tf import physics as physics_lib

    if noise_sigma is not None:
        check_noise_level(meta, noise_sigma)
    where = meta.get("_path", "the sidecar")
    try:
        if int(meta.get("format_version", 1)) >= 2:
            return physics_lib.deserialize(meta["physics"])
        return physics_lib.from_legacy(meta)
    except physics_lib.PhysicsError as e:
        raise DataError(f"{where}: {e}") from e
