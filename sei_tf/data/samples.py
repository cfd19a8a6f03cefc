"""Ground-truth photographs bundled with scikit-image, for demos and tests (offline).

They are written as 8-bit PNG files named after the photograph ('astronaut.png').
"""

import os

from sei_tf.data.files import DataError, write_image

SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right",
                "immunohistochemistry", "hubble_deep_field", "retina")
# Greyscale photographs bundled in the wheel with a shorter side of at least 256 px.
GREY_SAMPLE_NAMES = ("camera", "brick", "grass", "gravel", "moon", "coins", "clock", "cell")


def _sample(name):
    import skimage.data

    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    if name == "motorcycle_right":
        return skimage.data.stereo_motorcycle()[1]
    return getattr(skimage.data, name)()


def sample_ground_truth(output_dir, names=None):
    """Writes scikit-image's bundled photographs as 8-bit PNG files (offline).

    Args:
      output_dir: folder to write to (created; existing files of the same names
        are replaced).
      names: photograph names; default `SAMPLE_NAMES` (colour). The greyscale
        photographs `GREY_SAMPLE_NAMES` are available too.

    Returns:
      The list of written paths.
    """
    names = list(SAMPLE_NAMES if names is None else names)
    known = SAMPLE_NAMES + GREY_SAMPLE_NAMES
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DataError(f"Unknown sample image(s) {', '.join(unknown)}; available: {', '.join(known)}.")
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for n in names:
        path = os.path.join(output_dir, n + ".png")
        write_image(path, _sample(n))
        paths.append(path)
    return paths
