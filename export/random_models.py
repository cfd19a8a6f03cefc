"""Untrained (random-init) models saved like a training run, for tests and benchmarks.

Not the demo (that is `sei_tf.demo`, which really trains). The weights are
random: good for checking export, parity, tiling and timing, meaningless for
image quality. Weights that a backbone initialises to zero
(e.g. ResidualCNN's last convolution, which makes a fresh model output the
bicubic baseline; biases; LayerNorm offsets) get small random values too, so
that every layer contributes to the output as it does after training: a
test of exact tiling or export parity would otherwise only exercise the
bicubic skip connection.
"""

from __future__ import annotations

import os

TINY = {
    "cnn": {"features": 8, "num_blocks": 1},
    "swinir": {"embed_dim": 12, "depths": (2,), "num_heads": (2,), "window_size": 4},
}


def make_model(path, backbone: str = "cnn", task: str = "sr", scale: int = 2, channels: int = 3,
               kernel: str = "gaussian:2", noise_sigma: float = 5.0, method: str = "sei", seed: int = 0,
               fill_zeros: float = 0.05, **sizes) -> str:
    """Builds an `SEIModel` with a random-init backbone and saves it to `path` (.keras); returns the path.

    `task`, `scale` (SR factor), `kernel` (blur spec) and `noise_sigma` (8-bit units) go to
    `sei_tf.physics.make`; the backbone's upscale is the physics'. `backbone` is a name for
    `sei_tf.models.build`, or `cnn_tiny` / `swinir_tiny` for the `TINY` sizes; `sizes`
    override backbone arguments. `fill_zeros` is the std of the values given to weights
    that initialise to zero (0 keeps them).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import sei_tf.models
    from sei_tf import physics as physics_lib
    from sei_tf.sei_model import SEIModel

    keras.utils.set_random_seed(seed)
    physics = physics_lib.make(task, factor=scale, kernel=kernel, noise_sigma=noise_sigma)
    name = backbone
    if backbone in ("cnn_tiny", "swinir_tiny"):
        name = backbone.split("_")[0]
        sizes = {**TINY[name], **sizes}
    bb = sei_tf.models.build(name, upscale=physics.upscale, channels=channels, **sizes)
    model = SEIModel(bb, physics, method=method)
    model.compile()
    model.build((None, None, None, channels))
    if fill_zeros:
        import numpy as np

        rng = np.random.default_rng(seed)
        for var in bb.weights:
            value = np.asarray(var.numpy())
            if value.dtype.kind == "f" and value.size and not np.any(value):
                var.assign(rng.normal(0.0, fill_zeros, value.shape).astype(value.dtype))
    path = os.fspath(path)
    model.save(path)
    return path
