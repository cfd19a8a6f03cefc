"""Point-spread functions (blur kernels) for the deblurring physics.

A kernel is a 2-D float32 NumPy array of odd height and width, non-negative,
summing to 1, with its centre at the middle pixel. Sizes are in pixels.
"""

import os

import numpy as np

from sei_tf.errors import SeiTfError


class KernelError(SeiTfError, ValueError):
    """A kernel that cannot be used as a point-spread function."""


def gaussian(sigma):
    """Isotropic Gaussian PSF of standard deviation `sigma` pixels, size 6*sigma+1."""
    if sigma <= 0:
        raise KernelError(f"Gaussian sigma must be positive, got {sigma}.")
    size = int(round(6 * sigma)) + 1
    if size % 2 == 0:
        size += 1
    r = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(r**2) / (2.0 * sigma**2))
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def box(radius):
    """Uniform square PSF of half-width `radius` pixels, size 2*radius+1."""
    if int(radius) != radius or radius < 1:
        raise KernelError(f"Box radius must be a positive integer, got {radius}.")
    size = 2 * int(radius) + 1
    return np.full((size, size), 1.0 / size**2, dtype=np.float32)


def validate(kernel, source="kernel"):
    """Checks a user PSF and returns it as float32 normalised to sum 1."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim == 3 and k.shape[-1] in (1, 3, 4):
        k = k[..., :3].mean(axis=-1)  # an RGB(A) image of a PSF: use its intensity
    if k.ndim != 2 or k.size == 0:
        raise KernelError(f"{source}: a PSF must be a non-empty 2-D array, got shape {k.shape}.")
    if not np.all(np.isfinite(k)):
        raise KernelError(f"{source}: the PSF contains NaN or Inf values.")
    if np.any(k < 0):
        raise KernelError(
            f"{source}: the PSF has negative values (min {k.min():.3g}); "
            "a physical point-spread function is non-negative.")
    if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise KernelError(
            f"{source}: the PSF is {k.shape[0]}x{k.shape[1]}; height and width must be odd "
            "so that its centre is a pixel. Pad it with a row/column of zeros on the side "
            "that keeps the peak in the middle.")
    total = k.sum()
    if total <= 0:
        raise KernelError(f"{source}: the PSF sums to {total}; it must have positive mass.")
    return (k / total).astype(np.float32)


def load(path):
    """Reads a PSF from .npy, or an image file (PNG, TIFF, ...), and validates it."""
    if not os.path.exists(path):
        raise KernelError(f"PSF file not found: {path}")
    if path.lower().endswith(".npy"):
        k = np.load(path)
    else:
        from PIL import Image  # imported here: only needed for image PSFs
        with Image.open(path) as im:
            k = np.asarray(im).astype(np.float64)
    return validate(k, source=path)


def from_spec(spec):
    """Builds a PSF from a string: 'gaussian:SIGMA', 'box:RADIUS' or a file path."""
    name, _, value = str(spec).partition(":")
    if name == "gaussian" and value:
        return gaussian(float(value))
    if name == "box" and value:
        return box(int(value))
    if os.path.exists(spec):
        return load(spec)
    raise KernelError(
        f"Unknown kernel {spec!r}: use 'gaussian:SIGMA', 'box:RADIUS' or a path to a .npy/.png/.tif PSF.")
