"""Tests of sei_tf.unsure: SURE with a learned noise variance (Tachella et al., 2024)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from sei_tf import losses, objectives, physics, sei_model, unsure
from sei_tf.models import ResidualCNN


class CircularFilter(keras.Model):
    """f(y) = k * y: a linear restorer, one 7x7 circular convolution (no bias)."""

    channels = 1

    def __init__(self, size=7, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.conv = keras.layers.Conv2D(1, size, padding="valid", use_bias=False)

    def call(self, y, training=False):
        p = self.size // 2
        y = tf.concat([y[:, -p:], y, y[:, :p]], axis=1)
        y = tf.concat([y[:, :, -p:], y, y[:, :, :p]], axis=2)
        return self.conv(y)


@pytest.mark.slow
def test_learned_sigma_converges_to_the_true_one_on_a_linear_denoiser():
    # Denoising (A = identity), signals constant per image, c ~ N(0, 0.05^2), noise sigma 10/255.
    # At the saddle point the filter has a zero centre tap and its 48 other taps equal t; the
    # multiplier is then E[y_i r_i] = sigma^2 (1 + t), t = E[c^2] / (sigma^2 + 48 E[c^2]) ~ 1/48:
    # the learned sigma should be 10 * sqrt(1 + t) = 10.1.
    sigma = 10.0
    op = physics.Blur(kernel=np.ones((1, 1), np.float32), noise_sigma=sigma)
    rng = np.random.default_rng(0)
    c = rng.normal(0, 0.05, (64, 1, 1, 1))
    y = (c + rng.normal(0, sigma / 255, (64, 32, 32, 1))).astype(np.float32)
    t = 0.05 ** 2 / ((sigma / 255) ** 2 + 48 * 0.05 ** 2)
    expected = sigma * np.sqrt(1 + t)
    term = unsure.UNSURE(step_size=5e-5)
    model = sei_model.SEIModel(CircularFilter(), op, objective=[term])
    model.compile(optimizer=keras.optimizers.Adam(3e-2, beta_1=0.0))
    history = model.fit(tf.data.Dataset.from_tensor_slices(y).batch(16), epochs=60, verbose=0).history
    learned = np.array(history["unsure_sigma"])  # logged every epoch, 8-bit units
    assert learned[0] < 0.5 * sigma  # it starts from 0 and has to find the level
    assert np.mean(learned[-10:]) == pytest.approx(expected, rel=0.1), learned
    assert float(term.sigma) == pytest.approx(learned[-1], rel=1e-5)


def _sr_case():
    op = physics.make("sr", factor=2, noise_sigma=0.0)
    net = ResidualCNN(upscale=2, channels=1, features=8, num_blocks=1)
    y = tf.random.stateless_uniform([2, 12, 12, 1], [1, 2], 0.2, 0.8)
    net(y)
    return op, net, y


def test_value_and_network_gradient_are_those_of_sure_with_the_learned_variance():
    op, net, y = _sr_case()
    term = unsure.UNSURE(initial_sigma=7.0, tau=0.01)
    known = physics.make("sr", factor=2, noise_sigma=7.0)  # SURE told the same sigma
    seed = tf.constant([3, 4])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(term.variance.value)
        x_net = net(y)
        value = term(x_net, y, op, net, seed)
        reference = losses.sure_gaussian(x_net, y, known, net, seed, tau=0.01)
    np.testing.assert_allclose(value.numpy(), reference.numpy(), rtol=1e-5, atol=1e-8)
    for g, r in zip(tape.gradient(value, net.trainable_variables), tape.gradient(reference, net.trainable_variables)):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-4, atol=1e-8)
    # d(value)/d(variance) is the ascent direction 2 div / m (summed over the batch here).
    b = tf.random.stateless_normal(tf.shape(y), seed)
    m = float(tf.size(y[0]))
    div = tf.reduce_sum(b * (op.A(net(y + 0.01 * b)) - op.A(x_net)), axis=[1, 2, 3]) / 0.01
    np.testing.assert_allclose(tape.gradient(value, term.variance.value).numpy(),
                               float(tf.reduce_sum(2 * div / m)), rtol=1e-4)


def test_training_step_ascends_the_variance():
    op, net, y = _sr_case()
    term = unsure.UNSURE(step_size=1e-3)
    model = sei_model.SEIModel(net, op, objective=[term])
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # network frozen: only the ascent moves
    before = float(term.variance)
    b = tf.random.stateless_normal(tf.shape(y), tf.random.experimental.stateless_fold_in(
        tf.stack([tf.constant(0), tf.constant(0)]), 1))
    m = float(tf.size(y[0]))
    x_net = net(y)
    div = tf.reduce_sum(b * (op.A(net(y + 0.01 * b)) - op.A(x_net)), axis=[1, 2, 3]) / 0.01
    logs = model.train_on_batch(y, return_dict=True)
    # One step of v <- v + step_size * mean(2 div / m), with the probe of step 0's seed.
    assert float(term.variance) - before == pytest.approx(1e-3 * float(tf.reduce_mean(2 * div / m)), rel=1e-3)
    assert "unsure_sigma" in logs


def test_the_variance_survives_save_load_and_resume(tmp_path):
    op, net, y = _sr_case()
    model = sei_model.SEIModel(net, op, objective="sei_unsure")
    model.compile(optimizer="adam")
    term = model.objective[0]
    assert isinstance(term, unsure.UNSURE) and isinstance(model.objective[1], unsure.LearnedNoiseEquivariance)
    term.variance.assign(0.0123)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.method == "sei_unsure"
    assert float(loaded.objective[0].variance) == pytest.approx(0.0123)
    assert loaded.objective[1]._source_term is loaded.objective[0]  # bound again on load
    # Weights only (what BackupAndRestore writes and reads on resume).
    weights = os.path.join(tmp_path, "w.weights.h5")
    model.save_weights(weights)
    fresh = sei_model.SEIModel(ResidualCNN(upscale=2, channels=1, features=8, num_blocks=1), op,
                               objective="sei_unsure")
    fresh.load_weights(weights)
    assert float(fresh.objective[0].variance) == pytest.approx(0.0123)


@pytest.mark.slow
def test_sei_unsure_trains_and_logs_without_a_noise_level():
    op, net, y = _sr_case()
    model = sei_model.SEIModel(net, op, objective="sei_unsure")
    model.compile(optimizer="adam")
    history = model.fit(tf.data.Dataset.from_tensor_slices(y).batch(2), epochs=2, verbose=0).history
    assert set(history) >= {"loss", "unsure", "seq", "unsure_sigma"}
    assert objectives.describe(model.objective) == "unsure + seq"
    with pytest.raises(Exception, match="UNSURE term named"):
        objectives.check([unsure.LearnedNoiseEquivariance(model.objective[1].transform, source="nope")])
