"""Shared test fixtures: small real photographs from scikit-image."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def photo(name="astronaut", size=64, channels=3):
    """A real photograph, centre-cropped and resized to `size` x `size`, float32 in [0, 1]."""
    import tensorflow as tf
    from skimage import data

    im = getattr(data, name)().astype(np.float32) / 255.0
    if im.ndim == 2:
        im = im[..., None]
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    im = tf.image.resize(im[None], (size, size), method="bicubic", antialias=True)[0].numpy()
    im = np.clip(im, 0.0, 1.0)
    if channels == 1 and im.shape[-1] == 3:
        im = im.mean(axis=-1, keepdims=True)
    return im.astype(np.float32)


@pytest.fixture
def astronaut():
    return photo("astronaut", 64)
