"""Checks the losses against the math: SURE unbiasedness, stop-gradient."""

import numpy as np
import pytest
import tensorflow as tf

from sei_tf import losses, physics, transforms
from sei_tf.errors import SeiTfError
from conftest import photo


def _blur_restorer():
    """A fixed linear restorer: a small sharpening filter (non-trivial divergence)."""
    k = np.array([[0, -0.25, 0], [-0.25, 2.0, -0.25], [0, -0.25, 0]], np.float32)
    k = tf.constant(np.tile(k[:, :, None, None], [1, 1, 3, 1]))

    def f(y):
        return tf.nn.depthwise_conv2d(y, k, [1, 1, 1, 1], "SAME")
    return f


def _sr_restorer(op):
    def f(y):
        return op.baseline(y) * 0.9 + 0.05
    return f


# Noise models and, per model, the mean of y given A x (photon counts clip the rate at 0).
NOISE = {"gaussian": ("gaussian:sigma=20", lambda ax: ax),
         "poisson": ("poisson:gain=0.01", lambda ax: tf.maximum(ax, 0.0)),
         "poisson_gaussian": ("poisson_gaussian:gain=0.005,sigma=10", lambda ax: tf.maximum(ax, 0.0))}


@pytest.mark.parametrize("noise_name", list(NOISE))
@pytest.mark.parametrize("op_name", ["sr", "blur"])
def test_sure_is_unbiased_estimate_of_measurement_mse(op_name, noise_name):
    """SURE / PURE / PG-URE against the true error ||A f(y) - z||^2 / m, z = E[y | x]."""
    spec, mean_of_y = NOISE[noise_name]
    op = physics.SuperResolution(2, noise=spec) if op_name == "sr" else physics.Blur("gaussian:1", noise=spec)
    assert op.noise.sure_estimator == noise_name
    f = _sr_restorer(op) if op_name == "sr" else _blur_restorer()
    x = photo("astronaut", 32)[None]
    n = 512
    ax = op.A(tf.constant(np.repeat(x, n, axis=0)))
    y = op.noise.sample(ax, seed=[3, 4])
    sure = losses.SURE(tau=0.01)(f(y), y, op, f, seed=tf.constant([5, 6]))
    mask = losses.interior_mask(tf.shape(y), op.margin)
    m = tf.reduce_sum(mask) * 3.0
    true = tf.reduce_sum(tf.square((op.A(f(y)) - mean_of_y(ax)) * mask), axis=[1, 2, 3]) / m
    naive = tf.reduce_sum(tf.square((op.A(f(y)) - y) * mask), axis=[1, 2, 3]) / m
    diff = (sure - true).numpy()
    stderr = diff.std() / np.sqrt(n)
    # Unbiased: mean of (SURE - true MSE) within 4 standard errors of 0.
    assert abs(diff.mean()) < 4 * stderr + 1e-7, (diff.mean(), stderr, float(tf.reduce_mean(true)))
    # The plain residual is biased by much more: the test can tell them apart.
    naive_bias = float(tf.reduce_mean(naive - true))
    assert abs(naive_bias) > 10 * (4 * stderr), (naive_bias, stderr)


def test_probe_response_is_the_finite_difference_of_a_f():
    """(A f(y + tau b) - A f(y)) / tau; for f(y) = y^2 elementwise that is A(2 y b + tau b^2)."""
    op = physics.Blur("gaussian:1", noise_sigma=5)
    y = tf.constant(photo("coffee", 24)[None])
    b = tf.random.stateless_normal(tf.shape(y), [1, 2])
    for tau in (0.01, 0.1):
        got = losses.probe_response(tf.square(y), y, b, op, tf.square, tau)
        np.testing.assert_allclose(got.numpy(), op.A(2.0 * y * b + tau * b * b).numpy(), rtol=1e-3, atol=1e-4)


def test_every_sure_term_probes_at_the_default_step_unless_told():
    """Presets with a SURE term (SURE or UNSURE) probe at DEFAULT_TAU, not the paper's METHOD_TAU, or at `tau`."""
    from sei_tf import objectives

    with_sure = 0
    for name in objectives.PRESETS:
        for tau, expected in ((None, losses.DEFAULT_TAU), (0.02, 0.02)):
            options = {} if tau is None else {"tau": tau}
            steps = [t.tau for t in objectives.preset(name, **options) if hasattr(t, "tau")]
            assert steps in ([], [expected]), (name, steps)
            with_sure += bool(steps)
    assert with_sure == 2 * 7  # sei, its two variants, sure, ei_shift, ei_rotate, ei_rotate_nearest


def test_divergence_step_must_be_positive():
    for tau in (0.0, -0.01):
        with pytest.raises(SeiTfError, match="tau must be > 0"):
            losses.SURE(tau=tau)


def test_sure_mask_leaves_out_the_border_and_saturated_values():
    """With an 8-bit noise model, SURE's sums skip values at 0 or 1 (and the blur margin)."""
    x = tf.constant(photo("astronaut", 32)[None])
    for spec in ("gaussian:sigma=5,bits=8", "gaussian:sigma=5"):
        op = physics.Blur("gaussian:1", noise=spec)
        y = op.noise.sample(op.A(x), seed=[1, 2]).numpy()
        y[0, 10:16, 10:16, :] = 1.0  # a saturated patch inside
        mask, m = losses.sure_mask(tf.constant(y), op)
        expected = losses.interior_mask(tf.shape(y), op.margin).numpy() * np.ones_like(y)
        if spec.endswith("bits=8"):
            expected *= (y > 0) & (y < 1)
        np.testing.assert_array_equal(mask.numpy(), expected)
        assert float(m[0]) == expected.sum()


def _tiny_restorer(seed=0):
    layer = tf.keras.layers.Conv2D(3, 3, padding="same",
                                   kernel_initializer=tf.keras.initializers.GlorotUniform(seed))
    layer.build((None, None, None, 3))
    return layer


@pytest.mark.parametrize("transform", [transforms.Scale(), transforms.Shift(), transforms.Rotate()])
def test_stop_gradient_routes_gradient_only_through_second_pass(transform):
    op = physics.Blur("gaussian:1", 5.0)
    f = _tiny_restorer()
    y = tf.constant(photo("astronaut", 24)[None].repeat(2, axis=0))
    seed = tf.constant([7, 8])

    def grads(stop):
        loss = losses.Equivariance(transform, stop_gradient=stop)
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(f(y), y, op, f, seed))
        return tape.gradient(value, f.trainable_variables)

    # Reference: the target computed first and fed in as a constant.
    with tf.GradientTape() as tape:
        x1 = f(y)
        x2 = tf.constant(transform(x1, transforms.rng.fold(seed, 0)).numpy())
        x3 = f(op(x2, transforms.rng.fold(seed, 1)))
        ref = tf.reduce_mean(tf.square(x3 - x2))
    g_ref = tape.gradient(ref, f.trainable_variables)

    g_stop, g_free = grads(True), grads(False)
    for a, b in zip(g_stop, g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)
    diff = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(g_free, g_ref))
    scale = max(float(tf.reduce_max(tf.abs(b))) for b in g_ref)
    assert diff > 1e-3 * scale, "without stop-gradient the target must carry gradient too"


def test_supervised_and_css_losses():
    x = tf.random.uniform([2, 8, 8, 3], seed=2)
    np.testing.assert_allclose(losses.Supervised()(x + 0.1, None, None, None, None, x=x), [0.01, 0.01], rtol=1e-4)
    op = physics.Blur("box:1", noise_sigma=0.0)

    def identity(t):
        return t
    # With no noise, CSS of the identity is the MSE between A y and y.
    expected = tf.reduce_mean(tf.square(op.A(x) - x), axis=[1, 2, 3])
    np.testing.assert_allclose(losses.CSS()(None, x, op, identity, [0, 0]), expected, rtol=1e-5)


def test_simulated_supervised_scores_the_restorer_on_a_fresh_measurement_of_the_transformed_truth():
    """||f(A T(x) + e') - T(x)||^2 / n with the term's own draws, and no gradient into the target."""
    op = physics.SuperResolution(2, noise_sigma=5.0)
    f = _tiny_restorer()

    def restorer(y):
        return f(op.baseline(y))

    x = tf.constant(photo("astronaut", 32)[None].repeat(2, axis=0))
    seed = tf.constant([3, 4])
    term = losses.SimulatedSupervised(transforms.Scale())
    value = term(None, None, op, restorer, seed, x=x)
    x2 = transforms.Scale()(x, transforms.rng.fold(seed, 0))
    y2 = op(x2, transforms.rng.fold(seed, 1))
    expected = tf.reduce_mean(tf.square(restorer(y2) - x2), axis=[1, 2, 3])
    np.testing.assert_allclose(value.numpy(), expected.numpy(), rtol=1e-5)
    # The measurement is simulated (noisy), not the clean A T(x): a perfect inverse of A scores above 0.
    assert not np.allclose(y2.numpy(), op.A(x2).numpy(), atol=1e-3)
    with pytest.raises(losses.SeiTfError, match="ground truth"):
        term(None, None, op, restorer, seed)
    # Round trip through the config (the transform is nested).
    again = losses.SimulatedSupervised.from_config(term.get_config())
    np.testing.assert_allclose(again(None, None, op, restorer, seed, x=x).numpy(), value.numpy(), rtol=1e-6)


def test_supervised_scale_preset_is_supervised_plus_the_simulated_term():
    from sei_tf import objectives

    terms = objectives.preset("supervised_scale", upscale=3)
    assert [type(t).__name__ for t in terms] == ["Supervised", "SimulatedSupervised"]
    assert terms[1].transform.factors == (0.75, 0.5) and terms[1].transform.multiple == 3
    assert objectives.needs_ground_truth(terms)
    assert [t.name for t in objectives.deserialize(objectives.serialize(terms))] == [t.name for t in terms]
