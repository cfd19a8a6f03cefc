"""Held-out measurements: a signal that training works when there is no ground truth.

`split(files, fraction)` sets aside a fixed part of the measurement files (by a hash
of each file name, so the split does not depend on the order of the files and a file
keeps its side when others are added). `crops(images, patch_size, batch_size)` is the
validation dataset Keras evaluates after each epoch: a fixed grid of training-sized
crops of the held-out measurements. On it `SEIModel.test_step` reports each loss
term of the objective (`val_sure`, `val_seq`, ...) and their weighted total
(`val_loss`), with a fixed seed, so epochs are compared on the same draws.

What these numbers can tell: whether the restorer keeps fitting measurements it has
not trained on (SURE is an unbiased estimate of the measurement-domain error, so a
rising held-out SURE means overfitting to the training measurements) and whether it
stays scale-equivariant on them. What they cannot tell: the PSNR against the truth.
The terms are blind to what the physics removes (SURE) or only check a consistency
(equivariance), so a lower held-out loss is evidence, not proof, of a better image.
"""

import hashlib
import os

import numpy as np

from sei_tf.errors import SeiTfError

MAX_CROPS_PER_SIDE = 4  # at most a 4x4 grid of crops per held-out measurement


class HoldoutError(SeiTfError, ValueError):
    """A hold-out fraction that cannot be used."""


def _key(path):
    return hashlib.sha1(os.path.basename(os.fspath(path)).encode()).hexdigest()


def count(num_files, fraction):
    """How many of `num_files` files are held out: the fraction rounded half up, leaving one to train on."""
    if not 0.0 <= fraction < 1.0:
        raise HoldoutError(f"--holdout must be in [0, 1), not {fraction}.")
    return max(0, min(int(fraction * num_files + 0.5), num_files - 1))


def split(files, fraction):
    """(training indices, held-out indices) into `files`, each in the files' order.

    The held-out files are the `count(len(files), fraction)` ones whose names have the
    smallest SHA-1 (deterministic, independent of order and of the folder's path).
    """
    n = count(len(files), fraction)
    held = set(sorted(range(len(files)), key=lambda i: _key(files[i]))[:n])
    return [i for i in range(len(files)) if i not in held], sorted(held)


def _origins(size, patch):
    n = min(MAX_CROPS_PER_SIDE, size // patch)
    return np.linspace(0, size - patch, n).round().astype(int) if n > 1 else np.array([(size - patch) // 2])


def crop_grid(images, patch_size):
    """Fixed crops (N, patch, patch, C) of each image: an evenly spaced grid of up to 4x4."""
    out = []
    for image in images:
        h, w = image.shape[:2]
        for r in _origins(h, patch_size):
            for c in _origins(w, patch_size):
                out.append(np.asarray(image[r:r + patch_size, c:c + patch_size], np.float32))
    return np.stack(out)


def crops(images, patch_size, batch_size):
    """The validation dataset of held-out measurements: batches of fixed crops (whole batches only).

    Crops are repeated in order to fill the last batch, so every batch is full
    (a partial batch could leave a replica empty under a distribution strategy).
    """
    import tensorflow as tf

    grid = crop_grid(images, patch_size)
    total = -(-len(grid) // batch_size) * batch_size
    grid = grid[np.arange(total) % len(grid)]
    ds = tf.data.Dataset.from_tensor_slices(grid).batch(batch_size, drop_remainder=True)
    return ds.apply(tf.data.experimental.assert_cardinality(total // batch_size))
