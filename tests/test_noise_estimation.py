"""Tests of sei_tf.noise_estimation: known noise parameters are recovered from simulated measurements."""

import numpy as np
import pytest
import skimage.color
import skimage.data
import skimage.transform
from scipy import ndimage

from sei_tf import noise_estimation as ne
from sei_tf.errors import SeiTfError


def _grey(name, side=256):
    a = getattr(skimage.data, name)()
    if a.ndim == 3:
        a = skimage.color.rgb2gray(a)
    else:
        a = a / 255.0
    # Away from 0 and 1, so that no simulated value is clipped.
    return 0.05 + 0.9 * skimage.transform.resize(a, (side, side), anti_aliasing=True)


@pytest.fixture(scope="module")
def smooth():
    """A blur measurement's signal: the camera photo through a Gaussian PSF of 2 px (smooth)."""
    return ndimage.gaussian_filter(_grey("camera"), 2.0, mode="wrap")


@pytest.fixture(scope="module")
def textured():
    """The astronaut photo: hair, fabric and print (wide intensity range)."""
    return _grey("astronaut")


@pytest.fixture(scope="module")
def bricks():
    """Bricks: fine texture everywhere, narrow intensity range (0.35-0.7)."""
    return _grey("brick")


def _poisson_gaussian(z, gain, sigma, seed):
    rng = np.random.default_rng(seed)
    return gain * rng.poisson(z / gain) + rng.normal(0, sigma / 255, z.shape)


def test_pca_rule_on_pure_noise():
    # No signal: all eigenvalues are noise and the estimate is the sample variance.
    rows = np.random.default_rng(0).normal(0, 0.1, (20000, 49))
    assert ne.pca_noise_variance(rows) == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("image", ["smooth", "textured", "bricks"])
@pytest.mark.parametrize("sigma", [5.0, 10.0, 20.0])
def test_gaussian_sigma_is_recovered(image, sigma, request):
    z = request.getfixturevalue(image)
    y = z + np.random.default_rng(int(sigma)).normal(0, sigma / 255, z.shape)
    # Texture and the photographs' own noise bias the estimate up, never much down.
    within = lambda est: 0.95 * sigma <= est <= 1.1 * sigma + 1.2  # noqa: E731
    est = ne.estimate_gaussian(y)
    assert within(est), (image, sigma, est)
    # A set of images, as a list or a batch, gives the same kind of answer.
    assert within(ne.estimate_gaussian([y[:128], y[128:]]))
    assert ne.estimate(y[None, :, :, None])["model"] == "gaussian"


@pytest.mark.parametrize("image", ["smooth", "textured"])
@pytest.mark.parametrize("gain, sigma", [(0.01, 2.0), (0.003, 5.0)])
def test_poisson_gaussian_parameters_are_recovered(image, gain, sigma, request):
    z = request.getfixturevalue(image)
    y = _poisson_gaussian(z, gain, sigma, seed=1)
    est_gain, est_sigma = ne.estimate_poisson_gaussian(y)
    assert est_gain == pytest.approx(gain, rel=0.2), (image, est_gain)
    assert abs(est_sigma - sigma) <= 2.0, (image, est_sigma)
    result = ne.estimate(y)
    assert result["model"] == "poisson_gaussian", result
    assert result["gain"] == est_gain


def test_quantisation_adds_a_twelfth_of_an_lsb_squared(smooth):
    # 8-bit rounding of data with sigma 1 gives sqrt(1 + 1/12) = 1.04 (documented, not subtracted).
    y = np.round(255 * (smooth + np.random.default_rng(3).normal(0, 1 / 255, smooth.shape))) / 255
    assert ne.estimate_gaussian(y) == pytest.approx(np.sqrt(1 + 1 / 12), rel=0.08)


def test_refuses_what_it_cannot_estimate():
    with pytest.raises(SeiTfError, match="at least one"):
        ne.estimate([])
    with pytest.raises(SeiTfError, match="constant"):
        ne.estimate(np.full((64, 64), 0.5))
    with pytest.raises(SeiTfError, match="constant"):
        ne.estimate_gaussian([np.full((64, 64, 3), 0.2)] * 2)
    with pytest.raises(SeiTfError, match="windows"):
        ne.estimate_gaussian(np.random.default_rng(0).uniform(size=(6, 6)))  # smaller than a patch
    with pytest.raises(SeiTfError, match="unclipped"):
        ne.estimate_gaussian(np.ones((64, 64)))  # all saturated
    with pytest.raises(SeiTfError, match="shape"):
        ne.estimate_gaussian(np.zeros(10))


def test_describe():
    assert ne.describe({"model": "gaussian", "sigma": 5.0, "gain": 0.0}) == "gaussian: sigma 5.00/255"
    assert "gain 0.01" in ne.describe({"model": "poisson_gaussian", "sigma": 2.0, "gain": 0.01})
