"""ResidualCNN: any input size, its stated receptive field is exact, reduced precision keeps a float32 skip."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from sei_tf import models


@pytest.mark.parametrize("upscale", [1, 2, 3, 4])
def test_odd_sizes(upscale):
    net = models.build("cnn", upscale=upscale, channels=1, features=8, num_blocks=1)
    assert net(tf.zeros([2, 7, 13, 1])).shape == (2, 7 * upscale, 13 * upscale, 1)


@pytest.mark.parametrize("upscale", [1, 2])
def test_receptive_field_matches_tile_context(upscale):
    net = models.build("cnn", upscale=upscale, channels=1, features=4, num_blocks=2)
    # Non-zero tail so the learned branch contributes.
    net(tf.zeros([1, 8, 8, 1]))
    net.tail.kernel.assign(tf.random.stateless_normal(net.tail.kernel.shape, [0, 1]))
    n, c = 41, 20
    x = tf.random.stateless_uniform([1, n, n, 1], [1, 2])
    poke = tf.tensor_scatter_nd_add(x, [[0, c, c, 0]], [1.0])
    changed = np.abs((net(poke) - net(x)).numpy()[0, :, :, 0]) > 0
    rows = np.flatnonzero(changed.any(axis=1))
    radius = models.tile_context(net)
    assert radius == 2 * 2 + 3
    # Output pixels influenced by input pixel c span exactly +-radius input pixels.
    lo, hi = rows.min() // upscale, rows.max() // upscale
    assert (lo, hi) == (c - radius, c + radius)


# ------------------------------------------------------------ reduced precision


def _random_tail(net, seed=0, scale=0.05):
    net.tail.kernel.assign(scale * tf.random.stateless_normal(net.tail.kernel.shape, [seed, 1]))


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_layers_float32_weights_and_output(precision):
    net = models.build("cnn", upscale=2, channels=3, precision=precision, features=8, num_blocks=2)
    out = net(tf.random.stateless_uniform([2, 6, 5, 3], [0, 1]))
    convs = [layer for layer in net._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 2 * 2 + 3
    assert all(c.compute_dtype == precision for c in convs)
    assert all(v.dtype == "float32" for v in net.variables)
    assert net.precision == precision and net.dtype_policy.name == "mixed_" + precision
    assert out.dtype == tf.float32 and out.shape == (2, 12, 10, 3)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone


@pytest.mark.parametrize("upscale", [1, 2])
def test_reduced_precision_skip_path_is_exact_float32(upscale):
    """With a zero tail the output is the float32 skip itself, bit for bit.

    Random float32 inputs are not representable in bfloat16: had the input
    been cast to bfloat16 first, the skip would be off by up to 2**-9.
    """
    y = tf.random.stateless_uniform([2, 7, 9, 3], [2, 3])
    net = models.build("cnn", upscale=upscale, channels=3, precision="bfloat16", features=8, num_blocks=1)
    skip = y if upscale == 1 else tf.image.resize(y, [7 * upscale, 9 * upscale], method="bicubic")
    np.testing.assert_array_equal(net(y).numpy(), skip.numpy())
    # With a learned residual, the output is skip + float32(bfloat16 residual).
    _random_tail(net)
    residual = net.residual(y)
    assert residual.dtype == tf.bfloat16
    np.testing.assert_array_equal(net(y).numpy(), (skip + tf.cast(residual, tf.float32)).numpy())


def test_bfloat16_forward_and_gradients_close_to_float32():
    keras.utils.set_random_seed(3)
    nets = {p: models.build("cnn", upscale=2, channels=3, precision=p, features=16, num_blocks=2)
            for p in ("float32", "bfloat16")}
    y = tf.random.stateless_uniform([2, 12, 12, 3], [4, 5])
    nets["float32"](y)
    _random_tail(nets["float32"])
    nets["bfloat16"](y)
    nets["bfloat16"].set_weights(nets["float32"].get_weights())
    grads, outs = {}, {}
    for p, net in nets.items():
        with tf.GradientTape() as tape:
            outs[p] = net(y)
            loss = tf.reduce_mean(tf.square(outs[p] - 0.5))
        grads[p] = tape.gradient(loss, net.trainable_variables)
    residual = (outs["float32"] - tf.image.resize(y, [24, 24], method="bicubic")).numpy()
    err = np.abs(outs["bfloat16"].numpy() - outs["float32"].numpy())
    # A few bfloat16 steps (2**-8 relative) of the residual, far below the residual itself.
    assert 0 < err.max() < 0.05 * np.abs(residual).max()
    for g16, g32 in zip(grads["bfloat16"], grads["float32"]):
        assert g16.dtype == tf.float32 and np.all(np.isfinite(g16.numpy()))
        rel = np.linalg.norm(g16.numpy() - g32.numpy()) / np.linalg.norm(g32.numpy())
        assert rel < 0.05, rel


def test_precision_round_trips_through_config_and_keras_file(tmp_path):
    net = models.build("cnn", upscale=2, channels=3, precision="bfloat16", features=8, num_blocks=1)
    y = tf.random.stateless_uniform([1, 8, 8, 3], [6, 7])
    net(y)
    _random_tail(net)
    assert net.get_config()["precision"] == "bfloat16"
    again = models.ResidualCNN.from_config(net.get_config())
    assert again.precision == "bfloat16"
    path = str(tmp_path / "bf16.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.precision == "bfloat16"
    assert all(c.compute_dtype == "bfloat16" for c in loaded._flatten_layers(include_self=False))
    np.testing.assert_array_equal(loaded(y).numpy(), net(y).numpy())


def _without_config_key(path, old, key):
    """Copies the .keras file `path` to `old` with `key` removed from the model's config (as an
    older version wrote it); returns the removed value."""
    removed = []
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                removed.append(config["config"].pop(key))
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    assert len(removed) == 1, f"{path} has no config.json"
    return removed[0]


def test_file_without_precision_loads_as_float32(tmp_path):
    """.keras files from before `precision` existed carry only a float32 dtype policy."""
    net = models.build("cnn", upscale=2, channels=3, features=8, num_blocks=1)
    y = tf.random.stateless_uniform([1, 8, 8, 3], [6, 7])
    net(y)
    _random_tail(net)
    path = tmp_path / "new.keras"
    net.save(str(path))
    old = tmp_path / "old.keras"
    assert _without_config_key(path, old, "precision") == "float32"
    loaded = keras.saving.load_model(str(old))
    assert loaded.precision == "float32" and loaded.get_config()["precision"] == "float32"
    np.testing.assert_array_equal(loaded(y).numpy(), net(y).numpy())


# ------------------------------------------------------------ initialisation


def _convs(net):
    """(layer, fan_in) of every convolution but the tail; fan_in = 3*3*in_channels."""
    convs = [(net.head, 9 * net.channels)]
    convs += [(c, 9 * net.features) for pair in net.blocks for c in pair]
    return convs + [(net.body, 9 * net.features)]


def _built(init, features=32, num_blocks=2, seed=0):
    keras.utils.set_random_seed(seed)
    net = models.build("cnn", upscale=2, channels=3, features=features, num_blocks=num_blocks, init=init)
    net(tf.zeros([1, 8, 8, 3]))
    return net


@pytest.mark.parametrize("init", ["glorot_uniform", "torch", "he_normal"])
def test_initial_kernel_variance_and_bounds(init):
    """Each block kernel (9*32*32 = 9216 draws) has its documented variance within 10%, and bound."""
    net = _built(init)
    fan = 9 * 32
    expected = {"glorot_uniform": 2 / (fan + fan), "torch": 1 / (3 * fan), "he_normal": 2 / fan}[init]
    bound = {"glorot_uniform": (6 / (fan + fan)) ** 0.5, "torch": fan**-0.5, "he_normal": 2 * (2 / fan) ** 0.5 / 0.87962566}[init]
    for conv_a, conv_b in net.blocks:
        for conv in (conv_a, conv_b):
            k = conv.kernel.numpy()
            assert abs(k.mean()) < 0.05 * expected**0.5
            assert abs(k.var() / expected - 1) < 0.10, (conv.name, k.var(), expected)
            assert np.abs(k).max() <= bound * (1 + 1e-6)


def test_torch_biases_uniform_within_one_over_sqrt_fan_in():
    """'torch': bias ~ U(+-1/sqrt(fan_in)); divided by its bound, pooled over layers it is U(-1, 1), variance 1/3."""
    net = _built("torch", num_blocks=4)
    scaled = np.concatenate([conv.bias.numpy() * fan**0.5 for conv, fan in _convs(net)])  # 10 layers x 32
    assert np.abs(scaled).max() <= 1 + 1e-6
    assert abs(scaled.var() * 3 - 1) < 0.25, scaled.var()
    # The head's bound differs from the blocks' (fan_in 27 vs 288): the bound really follows fan_in.
    assert np.abs(net.head.bias.numpy()).max() > 288**-0.5


@pytest.mark.parametrize("init", ["glorot_uniform", "he_normal"])
def test_keras_style_biases_start_at_zero(init):
    net = _built(init)
    assert all(not np.any(conv.bias.numpy()) for conv, _ in _convs(net))


@pytest.mark.parametrize("init", list(models.residual_cnn.INITS))
def test_tail_is_zero_so_output_is_the_skip(init):
    net = _built(init, features=8)
    assert not np.any(net.tail.kernel.numpy()) and not np.any(net.tail.bias.numpy())
    y = tf.random.stateless_uniform([1, 9, 7, 3], [1, 1])
    np.testing.assert_array_equal(net(y).numpy(), net.skip(y).numpy())


def test_zero_branch_makes_every_residual_block_the_identity():
    """'torch_zero_branch': h + conv_b(conv_a(h)) == h for every block at init; the first conv stays random."""
    net = _built("torch_zero_branch", features=8, num_blocks=3)
    h = net.head(tf.random.stateless_uniform([1, 10, 10, 3], [2, 2]))
    assert np.any(h.numpy())
    for conv_a, conv_b in net.blocks:
        assert np.any(conv_a(h).numpy())  # the branch's first conv is not dead
        np.testing.assert_array_equal((h + conv_b(conv_a(h))).numpy(), h.numpy())
        assert abs(conv_a.kernel.numpy().var() * 3 * 72 - 1) < 0.3  # 'torch' scale elsewhere
    # Not so with the plain 'torch' init: the blocks change h.
    plain = _built("torch", features=8, num_blocks=3)
    a, b = plain.blocks[0]
    assert np.abs((b(a(h))).numpy()).max() > 1e-3


def test_init_round_trips_through_config_and_keras_file(tmp_path):
    net = _built("he_normal", features=8, num_blocks=1)
    assert net.get_config()["init"] == "he_normal"
    assert models.ResidualCNN.from_config(net.get_config()).init == "he_normal"
    _random_tail(net)
    path = str(tmp_path / "he.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)
    y = tf.random.stateless_uniform([1, 8, 8, 3], [6, 7])
    assert loaded.init == "he_normal"
    np.testing.assert_array_equal(loaded(y).numpy(), net(y).numpy())


def test_file_without_init_loads_with_its_weights(tmp_path):
    """.keras files from before `init` existed load; their trained weights, not a new init, are used."""
    net = _built("glorot_uniform", features=8, num_blocks=1)
    _random_tail(net)
    path = tmp_path / "new.keras"
    net.save(str(path))
    old = tmp_path / "old.keras"
    _without_config_key(path, old, "init")
    loaded = keras.saving.load_model(str(old))
    assert loaded.init == models.residual_cnn.DEFAULT_INIT
    for a, b in zip(loaded.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unknown_init_is_a_clear_error():
    from sei_tf.errors import SeiTfError

    with pytest.raises(SeiTfError, match="torch_zero_branch"):
        models.build("cnn", init="kaiming")
