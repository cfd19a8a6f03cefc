"""Reduced precision: choosing it (sei_tf.precision), the float32 export copy, and SURE.

SURE must stay an unbiased estimate of the measurement-domain error when the
backbone computes in bfloat16 (benchmarks/sure_bf16.py has the full table).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sei_tf import models, physics, precision
from conftest import photo


# ------------------------------------------------------------------ resolve


@pytest.mark.parametrize("gpus, flags, expected", [
    ([(8, 0)], set(), "bfloat16"),                    # A100
    ([(9, 0)], {"amx_bf16"}, "bfloat16"),             # H100
    ([(7, 5)], {"amx_bf16"}, "float32"),              # T4: the GPU runs the model, AMX does not matter
    ([(8, 6), (7, 0)], set(), "float32"),             # one old GPU among them
    ([], {"avx2", "amx_bf16", "amx_tile"}, "bfloat16"),
    ([], {"avx512_bf16", "avx2"}, "float32"),         # AVX512-BF16 alone is no AMX
    ([], set(), "float32"),
])
def test_auto_picks_bfloat16_only_on_native_hardware(gpus, flags, expected):
    got, reason = precision.resolve("auto", flags=flags, gpus=gpus)
    assert got == expected
    assert reason.startswith("auto: " + expected)


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16", "BFloat16"])
def test_explicit_choice_is_kept_whatever_the_machine(name):
    for gpus, flags in [([], set()), ([(8, 0)], set()), ([], {"amx_bf16"})]:
        got, reason = precision.resolve(name, flags=flags, gpus=gpus)
        assert got == name.lower()
        assert isinstance(reason, str) and reason


def test_reason_warns_about_emulation_and_loss_scaling():
    assert "slower" in precision.resolve("bfloat16", flags=set(), gpus=[])[1]
    assert "slower" not in precision.resolve("bfloat16", flags={"amx_bf16"}, gpus=[])[1]
    assert "loss scaling" in precision.resolve("float16", flags=set(), gpus=[(7, 0)])[1]


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="auto, float32"):
        precision.resolve("half")
    with pytest.raises(ValueError):
        precision.policy_name("auto")


def test_policy_names_round_trip():
    assert [precision.policy_name(p) for p in precision.PRECISIONS] == [
        "float32", "mixed_bfloat16", "mixed_float16"]
    for p in precision.PRECISIONS:
        assert precision.from_policy_name(precision.policy_name(p)) == p
        pol = precision.policy(p)
        assert (pol.variable_dtype, pol.compute_dtype) == ("float32", p)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\n"
                    "flags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert precision.cpu_flags(str(info)) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()


def test_this_machine_resolves_and_global_policy_is_untouched():
    got, _ = precision.resolve("auto")
    assert got in ("float32", "bfloat16")
    if not precision.gpu_capabilities():
        assert (got == "bfloat16") == ("amx_bf16" in precision.cpu_flags())
    models.build("cnn", upscale=2, channels=1, precision="bfloat16", features=4, num_blocks=1)(
        tf.zeros([1, 4, 4, 1]))
    assert keras.config.dtype_policy().name == "float32"


# --------------------------------------------------------------- as_float32


@pytest.mark.parametrize("name, sizes", [
    ("cnn", dict(features=8, num_blocks=2)),
    ("swinir", dict(embed_dim=12, depths=(2,), num_heads=(2,), window_size=4)),
])
def test_float32_copy_matches_within_bfloat16_tolerance(name, sizes):
    keras.utils.set_random_seed(1)
    net = models.build(name, upscale=2, channels=3, precision="bfloat16", **sizes)
    y = tf.constant(photo("astronaut", 24)[None])
    net(y)
    if name == "cnn":  # a non-zero learned residual
        net.tail.kernel.assign(0.05 * tf.random.stateless_normal(net.tail.kernel.shape, [0, 1]))
    copy = models.as_float32(net)
    assert models.precision_of(copy) == "float32" and models.precision_of(net) == "bfloat16"
    assert all(v.dtype == "float32" for v in copy.variables)
    assert all(layer.compute_dtype == "float32" for layer in copy._flatten_layers())
    assert len(copy.variables) == len(net.variables)
    for a, b in zip(copy.variables, net.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    out, ref = net(y).numpy(), copy(y).numpy()
    assert out.dtype == ref.dtype == np.float32
    err = np.abs(out - ref).max()
    # bfloat16 keeps 8 significant bits (relative step 2**-8); a few steps through the layers.
    assert err < 0.03, err
    # ...and the copy really is another computation: bfloat16 rounding shows.
    assert err > 1e-5, err
    # Independent variables: changing the copy leaves the original alone.
    copy.variables[0].assign(copy.variables[0] + 1.0)
    np.testing.assert_array_equal(net(y).numpy(), out)


def test_float32_copy_exports_to_onnx_without_reduced_types():
    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(2)
    net = models.build("cnn", upscale=2, channels=3, precision="bfloat16", features=8, num_blocks=1)
    y = photo("astronaut", 16)[None]
    net(y)
    copy = models.as_float32(net)
    proto, _ = tf2onnx.convert.from_function(
        tf.function(lambda t: copy(t)),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)], opset=18)
    from onnx import TensorProto

    types = {t.type.tensor_type.elem_type for t in list(proto.graph.value_info) + list(proto.graph.output)}
    types |= {t.data_type for t in proto.graph.initializer}
    assert TensorProto.FLOAT16 not in types and TensorProto.BFLOAT16 not in types
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: y})[0]
    np.testing.assert_allclose(got, copy(y).numpy(), atol=1e-5)


# --------------------------------------------------------------------- SURE


def _sure_minus_true(f, op, sigma, x, n, seed=11, tau=0.01):
    """Per draw: SURE (method.md, one probe, border (k-1)//2 excluded) minus the true error,
    and the naive residual ||A f(y) - y||^2 / m minus the true error."""
    xb = tf.constant(np.repeat(x[None], n, axis=0))
    ax = op.A(xb)
    shape = tf.shape(ax)
    y = ax + sigma * tf.random.stateless_normal(shape, [seed, 0])
    k, h, w = op.margin, ax.shape[1], ax.shape[2]
    mask = np.zeros([1, h, w, 1], np.float32)
    mask[:, k:h - k, k:w - k] = 1.0
    m = mask.sum() * x.shape[-1]
    b = tf.random.stateless_normal(shape, [seed, 1]) * mask
    ax1 = op.A(f(y))
    div = tf.reduce_sum(b * (op.A(f(y + tau * b)) - ax1), axis=[1, 2, 3]) / tau
    residual = tf.reduce_sum(tf.square((ax1 - y) * mask), axis=[1, 2, 3]) / m
    true = tf.reduce_sum(tf.square((ax1 - ax) * mask), axis=[1, 2, 3]) / m
    sure = residual - sigma**2 + 2 * sigma**2 * div / m
    return (sure - true).numpy().astype(np.float64), (residual - true).numpy().astype(np.float64)


@pytest.mark.parametrize("task", ["sr", "blur"])
def test_sure_stays_unbiased_with_a_bfloat16_backbone(task):
    sigma = 20.0 / 255.0
    op, upscale = (physics.SuperResolution(2), 2) if task == "sr" else (physics.Blur("gaussian:1"), 1)
    keras.utils.set_random_seed(0)
    nets = {p: models.build("cnn", upscale=upscale, channels=3, precision=p, features=8, num_blocks=2)
            for p in ("float32", "bfloat16")}
    for net in nets.values():
        net(tf.zeros([1, 8, 8, 3]))
    # A random (non-zero) tail, so the learned residual takes part in the divergence.
    nets["float32"].tail.kernel.assign(
        0.05 * tf.random.stateless_normal(nets["float32"].tail.kernel.shape, [3, 4]))
    nets["bfloat16"].set_weights(nets["float32"].get_weights())
    x = photo("astronaut", 32)
    n = 256
    diff, naive = _sure_minus_true(nets["bfloat16"], op, sigma, x, n)
    stderr = diff.std() / np.sqrt(n)
    # Unbiased: mean of (SURE - true error) within 4 standard errors of 0.
    assert abs(diff.mean()) < 4 * stderr, (diff.mean(), stderr)
    # Same noise and probes through the float32 twin: the bias bfloat16 adds is
    # measured without the common noise, so this bound is ~100x tighter.
    diff32, _ = _sure_minus_true(nets["float32"], op, sigma, x, n)
    paired = diff - diff32
    paired_stderr = paired.std() / np.sqrt(n)
    assert paired_stderr > 0  # the two really differ (bfloat16 rounding)
    assert abs(paired.mean()) < 4 * paired_stderr, (paired.mean(), paired_stderr)
    assert paired_stderr < stderr / 10
    # The criterion has power: the plain residual, biased by about sigma^2, fails it.
    assert abs(naive.mean()) > 10 * 4 * stderr, (naive.mean(), stderr)
