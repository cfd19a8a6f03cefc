"""Metrics follow the protocol: clamp, 8-bit quantise, luma PSNR and SSIM."""

import numpy as np
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from sei_tf import metrics
from conftest import photo


def test_luma_matches_bt601():
    x = photo("astronaut", 32)
    ours = metrics.to_luma(x[None]).numpy()[0, :, :, 0] * 255.0
    np.testing.assert_allclose(ours, rgb2ycbcr(x)[..., 0], atol=1e-3)


def test_psnr_quantises_and_clamps():
    x = metrics.quantize(photo("coffee", 32)[None]).numpy()
    # Offsets below half an 8-bit level vanish; values beyond [0, 1] are clamped.
    np.testing.assert_allclose(metrics.psnr(x + 0.001, x), 120.0, atol=1e-3)
    np.testing.assert_allclose(metrics.psnr(np.where(x == 1.0, 1.5, x), x), 120.0, atol=1e-3)
    noisy = x + np.random.RandomState(0).normal(0, 0.05, x.shape).astype(np.float32)
    q = lambda a: np.round(np.clip(a, 0, 1) * 255) / 255  # noqa: E731
    mse = np.mean((q(noisy) - q(x)) ** 2)
    np.testing.assert_allclose(metrics.psnr(noisy, x, luma=False), 10 * np.log10(1 / mse), rtol=1e-4)
    assert float(metrics.psnr(noisy, x)[0]) != pytest.approx(float(metrics.psnr(noisy, x, luma=False)[0]), abs=0.1)


def test_ssim_against_skimage():
    x = photo("astronaut", 64)
    y = np.clip(x + np.random.RandomState(1).normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
    ours = float(metrics.ssim(y[None], x[None])[0])
    qy, qx = (metrics.to_luma(metrics.quantize(a[None])).numpy()[0, :, :, 0] for a in (y, x))
    ref = structural_similarity(qy, qx, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ours == pytest.approx(ref, abs=5e-3)
    assert float(metrics.ssim(x[None], x[None])[0]) == pytest.approx(1.0, abs=1e-6)
