"""Checks of measurements against SURE's assumptions: noise model, noise level and clipping.

Noise levels are in 8-bit units (5 means a standard deviation of 5/255 in the
[0, 1] units of `sei_tf.data.files`); the Poisson gain is in [0, 1] units per
photon (`sei_tf.noise_estimation` defines both).
"""

import os

import numpy as np

from sei_tf import noise_estimation
from sei_tf.data.files import DataError, load_images

_LAPLACE_DIFF = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
NOISE_FLOOR = 3.0  # 8-bit units: below this, texture dominates the noise estimate


def estimate_noise_sigma(image):
    """Estimates the Gaussian noise std of an image, in 8-bit units.

    Robust (median absolute deviation) version of Immerkaer's estimator: the image
    is filtered with the 3x3 difference of Laplacians [[1,-2,1],[-2,4,-2],[1,-2,1]]
    (which cancels constant, linear and most smooth content; for white noise of std
    s the output has std 6 s); sigma = median(|r|) / 0.6745 / 6, per channel, median
    over channels.

    Bias (measured on 8 scikit-image photographs resized to a shorter side of 256):
    image texture leaks into the residual, so the estimate is biased *upwards* and
    rarely below the truth (at most ~1% below on pure noise).
      * full-resolution / deblurring measurements: +0.2 to +1.4 at a true sigma of
        5 (median +0.7), +0.1 to +1.1 at 10, under +0.7 at 25; 0.4 to 3.5 on
        noise-free 8-bit photographs;
      * x4 super-resolution measurements (64-pixel shorter side, all texture):
        +0.3 to +3.8 at sigma 5 (median +1.7), +0.2 to +2.8 at 10; 0.3 to 6.5 when
        noise-free. Trust it less on few, textured SR images.
    Below about `NOISE_FLOOR` (3/255) it cannot tell noise from texture.
    """
    from scipy import ndimage

    a = np.asarray(image, np.float64)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[0] < 3 or a.shape[1] < 3:
        raise DataError(f"Noise estimation needs at least 3x3 pixels, got {a.shape[:2]}.")
    sigmas = []
    for c in range(a.shape[-1]):
        r = ndimage.correlate(a[:, :, c], _LAPLACE_DIFF, mode="reflect")[1:-1, 1:-1]
        sigmas.append(np.median(np.abs(r)) / 0.6745 / 6.0)
    return float(np.median(sigmas) * 255.0)


# Noise models by the name of their SURE estimator (`sei_tf.noise`); the signal-dependent ones.
SIGNAL_DEPENDENT = ("poisson", "poisson_gaussian")


def noise_model(images):
    """Which noise model the measurements look like, where it can tell.

    Returns (result, sentence): `result` is `sei_tf.noise_estimation.estimate`'s dict,
    or None when the data cannot tell (too few unclipped patches, constant images,
    or noise below `NOISE_FLOOR` even at the brightest level, where texture
    dominates); `sentence` says it for people.
    """
    try:
        result = noise_estimation.estimate(images)
    except noise_estimation.NoiseEstimationError as e:
        return None, f"The noise model cannot be told from these measurements: {e}"
    # Largest noise std (8-bit units) over the signal levels: the brightest level for Poisson-Gaussian.
    top = result["sigma"] if result["model"] == "gaussian" else 255.0 * np.sqrt(
        result["gain"] + (result["sigma"] / 255.0) ** 2)
    if top < NOISE_FLOOR:
        return None, (f"The noise is below {NOISE_FLOOR:g}/255, where texture hides it: the noise model cannot "
                      "be told from these measurements.")
    if result["model"] == "gaussian":
        return result, (f"The measurements look like Gaussian noise of sigma {result['sigma']:.2f}/255: its "
                        f"variance is flat across signal levels (x{result['rise']:.2f} from dark to bright).")
    return result, (
        "The measurements look like Poisson-Gaussian noise: its variance rises with the signal "
        f"(x{result['rise']:.2f} from dark to bright). Estimated gain {result['gain']:.3g} (signal units per "
        f"photon), sigma {result['sigma']:.2f}/255: --noise poisson_gaussian:gain={result['gain']:.3g},"
        f"sigma={result['sigma']:.2f}.")


def diagnose(images, noise_sigma, clip_fraction=0.01, tolerance=1.5, noise_model_name="gaussian"):
    """Checks measurements against SURE's assumptions; returns warnings (strings).

    Args:
      images: list of arrays (H, W, C) or file paths, or a folder.
      noise_sigma: the declared Gaussian noise std in 8-bit units; None (another
        noise model) skips the noise-level check.
      clip_fraction: warn when more than this fraction of an image's values are
        exactly 0 or exactly 1 (clipping makes the noise non-Gaussian; SURE's
        estimate is then biased).
      tolerance: warn when the declared sigma and the median of the per-image
        estimates (`estimate_noise_sigma`) differ by more than this factor either
        way. Both are first raised to `NOISE_FLOOR`, because the estimator cannot
        resolve lower noise from texture.
      noise_model_name: the declared noise model ("gaussian", "poisson",
        "poisson_gaussian": a `sei_tf.noise` model's `sure_estimator`); warn when the
        data look like the other kind (signal-dependent or not, see `noise_model`).

    Returns:
      A list of human-readable warnings; empty when nothing looks wrong.
    """
    if isinstance(images, (str, os.PathLike)) or (
            isinstance(images, (list, tuple)) and images
            and isinstance(images[0], (str, os.PathLike))):
        images, names = load_images(images)
    else:
        if not isinstance(images, (list, tuple)):  # one array (H, W[, C]) or a batch (B, H, W, C)
            images = np.asarray(images, np.float32)
            images = list(images) if images.ndim == 4 else [images]
        images = [np.asarray(a, np.float32) for a in images]
        names = [f"image {i}" for i in range(len(images))]
    warnings = []
    for name, a in zip(names, images):
        clipped = float(np.mean((a == 0.0) | (a == 1.0)))
        if clipped > clip_fraction:
            warnings.append(
                f"{name}: {100 * clipped:.1f}% of the values are exactly 0 or 1: the measurements look "
                "clipped (saturated or quantised to [0, 1]). SURE assumes unclipped Gaussian noise; "
                "its loss will be biased. Save measurements as float TIFF without clipping if you can; "
                "otherwise add ',bits=8' to --noise (e.g. gaussian:sigma=5,bits=8) so SURE leaves "
                "saturated values out.")
    if images and noise_sigma is not None:  # None: not Gaussian noise, no level to check
        estimate = float(np.median([estimate_noise_sigma(a) for a in images]))
        declared = float(noise_sigma)
        ratio = max(estimate, NOISE_FLOOR) / max(declared, NOISE_FLOOR)
        if ratio > tolerance or ratio < 1.0 / tolerance:
            warnings.append(
                f"The declared noise sigma {declared:g}/255 disagrees with the estimate {estimate:.2f}/255 "
                f"from the measurements (median over {len(images)} image(s); the estimator reads high "
                "on textured images, by about 1/255 at sigma 5 and up to 4/255 on x4 SR measurements). "
                "SURE needs the true noise level: check --noise_sigma.")
    if images:
        result, sentence = noise_model(images)
        if result is not None:
            looks_dependent = result["model"] == "poisson_gaussian"
            if looks_dependent != (noise_model_name in SIGNAL_DEPENDENT):
                warnings.append(f"The declared noise model is {noise_model_name}. {sentence} SURE needs the "
                                "noise model of the data.")
    return warnings
