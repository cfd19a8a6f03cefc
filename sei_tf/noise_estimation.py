"""Noise parameters estimated from the measurements themselves (numpy only, no TensorFlow).

For `--noise auto` and `diagnose`: given a *set* of measurements of one instrument,
estimate the parameters of

  * Gaussian noise: `y = A x + e`, `e ~ N(0, (sigma/255)^2)`; `sigma` in 8-bit units;
  * Poisson-Gaussian noise: `y = gain * Poisson(z / gain) + N(0, (sigma/255)^2)` with
    `z = A x` in [0, 1], so that `Var[y | z] = gain * z + (sigma/255)^2`; `gain` in [0, 1]
    intensity units (one photon adds `gain` to y), `sigma` in 8-bit units.

Method (chosen because it survives texture and needs no segmentation):

  1. Patches. Every 7x7 patch (per channel, stride 1, at most `max_patches` drawn
     with a fixed seed) of every image, with its signal level: the mean of the 11x11
     ring around it, whose noise is independent of the patch's. Windows with a value
     of exactly 0 or 1 (clipped, or a zero photon count) are left out, since clipping
     shrinks the variance.
  2. Gaussian sigma: PCA of the patches (Chen, Zhu & Heng, ICCV 2015, "An efficient
     statistical method for image noise level estimation"). White noise adds sigma^2
     to every eigenvalue of the patch covariance; image structure lives in a few
     large eigenvalues. Starting from all 49 eigenvalues, drop the largest until the
     mean of the rest is no more than their median: that mean is sigma^2.
  3. Poisson-Gaussian: the same PCA estimate inside groups of patches of similar
     level (`levels` quantile bins of the ring means, at least 3000 patches each), which gives the noise variance
     as a function of the signal level, then a weighted least-squares line
     `v(z) = gain * z + b` with `gain, b >= 0` (the level-wise variance regression of
     Foi et al., IEEE TIP 2008, and Liu et al., IEEE TIP 2014, with PCA in place of
     their wavelet / weak-texture variance estimates). `sigma = 255 sqrt(b)`.
  4. Model choice (`estimate`, a heuristic): Poisson-Gaussian when the fitted variance
     at the brightest level is more than `rise` (1.2) times the one at the darkest, and
     the line explains the level variances clearly better than a constant (standard
     deviation of log-variance residuals at least halved); otherwise Gaussian. Bright
     regions that are also more textured than dark ones (e.g. skimage's `coins`) can
     pass for Poisson-Gaussian; a narrow intensity range hides a small gain.

Limits (measured in benchmarks/results/noise_estimation.md, one 256-px image per estimate):

  * Blur measurements are smooth, and the estimator is at its best on them: Gaussian
    sigma within 1% from 1 to 30 on all five test images; Poisson-Gaussian gain within
    ~10% when the model is recognised (81-89% of the cases).
  * Texture that is not low-rank (fine, irregular detail) reads as noise and biases
    the estimate *up*. Aliased super-resolution measurements are such texture: on SR
    x2 measurements of textured photos, sigma 5 reads +4% (bricks) to +70% (astronaut)
    and +190% (grass); sigma 10, +2% to +62%; smooth images stay within 6% at sigma >= 5.
    At sigma 1-2, the photographs' own noise and texture dominate.
  * The model choice needs the signal to span a wide intensity range: on narrow-range
    images (moon, brick: 0.35-0.55) and on small SR measurements it often answers
    Gaussian for Poisson-Gaussian data; its sigma is then the image's average noise
    std (within ~5%), which is what Gaussian SURE needs on such data anyway.
  * 8-bit quantisation adds 1/12 LSB^2 of variance (sigma^2 + 1/12 in 8-bit units^2):
    a true sigma of 1 reads about 1.04 from 8-bit files. That is the noise the data
    really has, so it is not subtracted.
  * Few patches per level (small data sets) make the PCA rule read low (about -5% at
    1000 patches, -2% at 3000), so levels hold at least LEVEL_PATCHES patches.
"""

import numpy as np

from sei_tf.errors import SeiTfError

PATCH = 7  # patch side (pixels)
RING = 11  # side of the window whose outer ring gives a patch's signal level (pixels)
MIN_PATCHES = 1000  # fewest patches for one covariance estimate (its bias: about -5% at 1000, -2% at 3000)
LEVEL_PATCHES = 3000  # patches per signal level, at least (fewer levels when data are few)


class NoiseEstimationError(SeiTfError, ValueError):
    """The measurements cannot give a noise estimate (empty, constant, too small)."""


def _as_images(images):
    """A list of float64 arrays (H, W, C) from an array (H, W[, C]), a batch (B, H, W, C) or a list."""
    if isinstance(images, np.ndarray) or not isinstance(images, (list, tuple)):
        a = np.asarray(images, np.float64)
        images = list(a) if a.ndim == 4 else [a]
    out = []
    for a in images:
        a = np.asarray(a, np.float64)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise NoiseEstimationError(f"Noise estimation takes images (H, W[, C]), got shape {a.shape}.")
        out.append(a)
    if not out:
        raise NoiseEstimationError("Noise estimation needs at least one measurement; got none.")
    return out


def patches(images, max_patches=200_000, seed=0):
    """The unclipped 7x7 patches of all images and channels, and the signal level around each.

    Returns (rows (N, 49), levels (N,)) in [0, 1] units. `levels` is the mean of the
    11x11 ring around each patch (the 11x11 window less the patch): its noise is
    independent of the patch's, so grouping patches by level does not select their
    noise. Unclipped: no value of the 11x11 window is exactly 0 or 1 (float data may
    go below 0 or above 1). At most `max_patches`, drawn without replacement with a
    fixed `seed`. Raises NoiseEstimationError when too few are left.
    """
    rows, levels = [], []
    cut = (RING - PATCH) // 2
    planes = [a[:, :, c] for a in _as_images(images) if min(a.shape[:2]) >= RING for c in range(a.shape[2])]
    rng = np.random.default_rng(seed)
    per_plane = max(max_patches // max(len(planes), 1), MIN_PATCHES)  # bounds memory on large data sets
    for plane in planes:
        view = np.lib.stride_tricks.sliding_window_view(plane, (RING, RING))
        count = view.shape[0] * view.shape[1]
        pick = rng.choice(count, per_plane, replace=False) if count > per_plane else np.arange(count)
        win = view[pick // view.shape[1], pick % view.shape[1]]
        win = win[np.all((win != 0.0) & (win != 1.0) & np.isfinite(win), axis=(1, 2))]
        inner = win[:, cut:cut + PATCH, cut:cut + PATCH].reshape(-1, PATCH * PATCH)
        rows.append(inner)
        levels.append((win.sum(axis=(1, 2)) - inner.sum(axis=1)) / (RING * RING - PATCH * PATCH))
    p = np.concatenate(rows) if rows else np.zeros((0, PATCH * PATCH))
    lv = np.concatenate(levels) if levels else np.zeros(0)
    if len(p) < MIN_PATCHES:
        raise NoiseEstimationError(
            f"Noise estimation needs at least {MIN_PATCHES} unclipped {RING}x{RING} windows (no value exactly "
            f"0 or 1); the measurements give {len(p)}. Give more or larger images.")
    if len(p) > max_patches:
        keep = rng.choice(len(p), max_patches, replace=False)
        p, lv = p[keep], lv[keep]
    return p, lv


def pca_noise_variance(rows):
    """White-noise variance of patches `rows` (N, d) by the PCA rule of Chen et al. (2015), in units^2.

    Eigenvalues of the patch covariance, ascending: drop the largest until the mean
    of those left is no more than their median; that mean is the variance.
    """
    cov = np.cov(rows, rowvar=False)
    lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None)  # ascending
    for k in range(len(lam), 0, -1):
        kept = lam[:k]
        if kept.mean() <= np.median(kept):
            return float(kept.mean())
    return float(lam[0])


def _check_not_constant(rows):
    if float(np.max(rows) - np.min(rows)) == 0.0:
        raise NoiseEstimationError("The measurements are constant: there is no noise to estimate.")


def estimate_gaussian(images, max_patches=200_000):
    """Gaussian noise sigma of a set of measurements, in 8-bit units (5 means std 5/255).

    `images`: a list of arrays (H, W[, C]) or a batch (B, H, W, C), values in [0, 1].
    """
    rows, _ = patches(images, max_patches)
    _check_not_constant(rows)
    return 255.0 * float(np.sqrt(pca_noise_variance(rows)))


def noise_levels(images, levels=8, max_patches=200_000):
    """Noise variance against signal level: arrays (mean, variance, count), one entry per level.

    Patches are grouped by their level (the mean of the ring around them, see
    `patches`) into at most `levels` groups of equal count and at least
    LEVEL_PATCHES patches; each group's variance is the PCA estimate (units^2);
    `mean` is the average of its patches' own pixels (not of the rings that chose
    them, so that their noise does not bias it).
    """
    rows, lv = patches(images, max_patches)
    _check_not_constant(rows)
    return _levels(rows, lv, levels)


def _levels(rows, lv, levels):
    groups = int(np.clip(len(rows) // LEVEL_PATCHES, 1, levels))
    out = [(rows[idx].mean(), pca_noise_variance(rows[idx]), len(idx))
           for idx in np.array_split(np.argsort(lv), groups)]
    z, v, n = (np.array(c) for c in zip(*out))
    return z, v, n


def _fit_line(z, v, n):
    """Weighted least squares `v = gain * z + b` with gain, b >= 0.

    Weights: count / v^2 (the relative error of a variance estimate is about
    constant, so each level counts by its relative misfit).
    """
    w = n / np.maximum(v, 1e-12) ** 2

    def solve(columns):
        m = np.stack(columns, axis=1) * np.sqrt(w)[:, None]
        coef, *_ = np.linalg.lstsq(m, v * np.sqrt(w), rcond=None)
        return coef

    gain, b = solve([z, np.ones_like(z)])
    if gain < 0:
        gain, b = 0.0, float(np.sum(w * v) / np.sum(w))
    elif b < 0:
        gain, b = float(solve([z])[0]), 0.0
    return max(float(gain), 0.0), max(float(b), 0.0)


def estimate_poisson_gaussian(images, levels=8, max_patches=200_000):
    """(gain, sigma) of Poisson-Gaussian noise: Var[y | z] = gain * z + (sigma/255)^2.

    `gain` in [0, 1] intensity units per photon, `sigma` in 8-bit units. Raises
    NoiseEstimationError when fewer than 2 signal levels have enough patches.
    """
    z, v, n = noise_levels(images, levels, max_patches)
    if len(z) < 2:
        raise NoiseEstimationError(
            f"A Poisson-Gaussian estimate needs patches at 2 or more signal levels; got {len(z)}. "
            "Give more or larger images.")
    gain, b = _fit_line(z, v, n)
    return gain, 255.0 * float(np.sqrt(b))


def estimate(measurements, levels=8, rise=1.2, max_patches=200_000):
    """The noise model and parameters that the measurements look like (what `--noise auto` uses).

    Returns {"model": "gaussian" | "poisson_gaussian", "sigma": 8-bit units,
    "gain": [0, 1] units per photon (0.0 for Gaussian), "rise": fitted variance at
    the brightest level / at the darkest}. Poisson-Gaussian is chosen when `rise`
    exceeds the argument `rise` and the line fits the level variances clearly better
    than a constant (see the module docstring).
    """
    rows, lv = patches(measurements, max_patches)
    _check_not_constant(rows)
    result = {"model": "gaussian", "sigma": 255.0 * float(np.sqrt(pca_noise_variance(rows))), "gain": 0.0,
              "rise": 1.0}
    z, v, n = _levels(rows, lv, levels)
    if len(z) < 2:
        return result
    gain, b = _fit_line(z, v, n)
    rise_ratio = (gain * z[-1] + b) / max(gain * z[0] + b, 1e-12)
    misfit_flat = float(np.std(np.log(v)))
    misfit_line = float(np.std(np.log(v) - np.log(np.maximum(gain * z + b, 1e-12))))
    result["rise"] = float(rise_ratio)
    if rise_ratio > rise and misfit_flat >= 2.0 * misfit_line:
        result.update(model="poisson_gaussian", sigma=255.0 * float(np.sqrt(b)), gain=gain)
    return result


def to_spec(result):
    """The `--noise` spec string of an `estimate` result, e.g. 'poisson_gaussian:gain=0.0102,sigma=2.05'."""
    if result["model"] == "gaussian":
        return f"gaussian:sigma={result['sigma']:.4g}"
    return f"poisson_gaussian:gain={result['gain']:.4g},sigma={result['sigma']:.4g}"


def describe(result):
    """One line for people, e.g. 'poisson_gaussian: gain 0.0102, sigma 2.05/255'."""
    if result["model"] == "gaussian":
        return f"gaussian: sigma {result['sigma']:.2f}/255"
    return f"poisson_gaussian: gain {result['gain']:.3g}, sigma {result['sigma']:.2f}/255"
