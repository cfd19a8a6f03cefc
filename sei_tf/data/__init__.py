"""Reading, writing, batching and simulating images for sei-tf.

Conventions used throughout (see also `sei_tf.physics`):

* An image is a float32 NumPy array of shape (H, W, C), C = 1 (grey) or 3 (RGB),
  with values nominally in [0, 1]. Measurements are *not* clipped: simulated
  measurements carry unclipped Gaussian noise and may hold values below 0 or
  above 1, which SURE needs.
* Sizes (height, width, patch sizes) are in pixels. For super-resolution, a
  measurement pixel covers `factor x factor` ground-truth pixels.
* Noise levels passed by users are in 8-bit units (`noise_sigma=5` means a
  standard deviation of 5/255 in [0, 1] units), like `sei_tf.physics`.

Modules (every name below is also available as `sei_tf.data.<name>`):

* `files`: listing, reading and writing image files (formats, `DataError`);
  `png16`: the 16-bit PNG codec it uses; `guards`: the checks on broken and hostile
  files that it and `serving.images` run before decoding (the pixel limit,
  SEI_TF_MAX_PIXELS);
* `sidecar`: the physics recorded in `sei_tf.json` next to measurements;
* `diagnostics`: noise-level estimate, noise model and checks of SURE's assumptions;
* `samples`: scikit-image's photographs as ground truth;
* `datasets`: tf.data pipelines for training and evaluation (TensorFlow);
* `simulation`: the paper's simulation protocol, `simulate` (TensorFlow).

Importing `sei_tf.data` does not import TensorFlow: the names of `datasets` and
`simulation` are loaded on first use.
"""

import importlib

from sei_tf.data.diagnostics import NOISE_FLOOR, diagnose, estimate_noise_sigma, noise_model
from sei_tf.data.files import (GROUND_TRUTH_DIR, MEASUREMENTS_DIR, SIDECAR_NAME, SUPPORTED_EXTENSIONS, DataError,
                               dicom_value_range, list_images, load_images, read_image, simulation_subfolder,
                               split_paths, write_image)
from sei_tf.data.samples import GREY_SAMPLE_NAMES, SAMPLE_NAMES, sample_ground_truth
from sei_tf.data.sidecar import (SIDECAR_FORMAT_VERSION, check_noise_level, physics_from_sidecar, physics_meta,
                                 read_sidecar)

# Names whose modules import TensorFlow, loaded by `__getattr__` on first use.
_LAZY = {
    **dict.fromkeys(("measurement_dataset", "pair_files", "check_pair_size", "paired_dataset",
                     "paired_patch_dataset"), "sei_tf.data.datasets"),
    **dict.fromkeys(("simulate", "noise_seed", "resize_shorter_side"), "sei_tf.data.simulation"),
}

__all__ = [
    "SUPPORTED_EXTENSIONS", "SIDECAR_NAME", "MEASUREMENTS_DIR", "GROUND_TRUTH_DIR", "DataError",
    "list_images", "split_paths", "simulation_subfolder", "read_image", "dicom_value_range", "load_images",
    "write_image", "SIDECAR_FORMAT_VERSION", "physics_meta", "read_sidecar", "check_noise_level",
    "physics_from_sidecar", "NOISE_FLOOR", "estimate_noise_sigma", "noise_model", "diagnose", "SAMPLE_NAMES",
    "GREY_SAMPLE_NAMES", "sample_ground_truth", *_LAZY,
]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups do not come here again
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
