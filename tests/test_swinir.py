"""Tests for sei_tf.models.swinir (tiny configs: CPU, a few seconds each)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from sei_tf.models import swinir as sw  # noqa: E402
from sei_tf.models.swinir import SwinIR  # noqa: E402

TINY = dict(embed_dim=12, depths=(2,), num_heads=(2,), window_size=4)


def _img(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _tiny(upscale=1, **kw):
    cfg = dict(TINY)
    cfg.update(kw)
    return SwinIR(upscale=upscale, channels=3, **cfg)


# --------------------------------------------------------------------------
# shapes / dynamic sizes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("upscale", [1, 2, 3, 4])
def test_output_shape_odd_sizes(upscale):
    keras.utils.set_random_seed(0)
    m = _tiny(upscale)
    for h, w in [(7, 9), (5, 13), (1, 2)]:
        y = m(_img((2, h, w, 3)))
        assert tuple(y.shape) == (2, h * upscale, w * upscale, 3)
        assert np.all(np.isfinite(y.numpy()))


def test_invalid_upscale_rejected():
    with pytest.raises(ValueError):
        _tiny(upscale=5)
    with pytest.raises(ValueError):
        SwinIR(embed_dim=12, depths=(2, 2), num_heads=(2,), window_size=4)


def test_upscale1_is_global_residual():
    """upscale=1: output = input + conv_last(...); zero conv_last -> identity."""
    keras.utils.set_random_seed(0)
    m = _tiny(1)
    x = _img((1, 6, 11, 3))
    m(x)
    m.conv_last.set_weights([np.zeros_like(v) for v in m.conv_last.get_weights()])
    np.testing.assert_array_equal(m(x).numpy(), x)


def test_tf_function_unknown_spatial_dims():
    keras.utils.set_random_seed(0)
    m = _tiny(2)
    fn = tf.function(lambda x: m(x), jit_compile=False).get_concrete_function(
        tf.TensorSpec([None, None, None, 3], tf.float32))
    for shape in [(1, 9, 6, 3), (2, 4, 13, 3)]:
        x = _img(shape, seed=1)
        y = fn(tf.constant(x))
        assert tuple(y.shape) == (shape[0], shape[1] * 2, shape[2] * 2, 3)
        np.testing.assert_allclose(y.numpy(), m(x).numpy(), atol=1e-5)


def test_tile_context_is_global():
    assert _tiny().tile_context() is None
    assert SwinIR.receptive_field is None


# --------------------------------------------------------------------------
# padding / windows / mask
# --------------------------------------------------------------------------
def test_reflect_pad_matches_tf_pad_and_extends():
    x = tf.constant(_img((1, 5, 7, 2)))
    xp, h, w = sw.reflect_pad_to_multiple(x, 4)
    assert (int(h), int(w)) == (5, 7)
    ref = tf.pad(x, [[0, 0], [0, 3], [0, 1], [0, 0]], mode="REFLECT")
    np.testing.assert_array_equal(xp.numpy(), ref.numpy())
    # pad larger than size-1: reflection continues (triangle wave)
    row = tf.reshape(tf.range(3, dtype=tf.float32), [1, 1, 3, 1])
    rp, _, _ = sw.reflect_pad_to_multiple(row, 8)
    assert rp.numpy()[0, 0, :, 0].tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert np.all(rp.numpy()[0] == rp.numpy()[0, :1])  # H=1 -> repeated row
    one = tf.ones([1, 1, 1, 1])
    assert tuple(sw.reflect_pad_to_multiple(one, 8)[0].shape) == (1, 8, 8, 1)


def test_window_partition_roundtrip():
    x = tf.constant(_img((2, 8, 12, 3)))
    win = sw.window_partition(x, 4)
    assert tuple(win.shape) == (2 * 2 * 3, 16, 3)
    # window 1 of image 0 is the top row, second block of columns
    np.testing.assert_array_equal(win[1].numpy(), x[0, 0:4, 4:8].numpy().reshape(16, 3))
    np.testing.assert_array_equal(sw.window_reverse(win, 4, 8, 12).numpy(), x.numpy())


@pytest.mark.parametrize("shift", [-3, 2])
def test_cyclic_shift_is_numpy_roll_and_its_gradient_rolls_back(shift):
    x = tf.constant(_img((2, 8, 12, 3)))
    np.testing.assert_array_equal(sw._roll_hw(x, shift).numpy(), np.roll(x.numpy(), shift, axis=(1, 2)))
    w = tf.constant(_img((2, 8, 12, 3), seed=1))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(sw._roll_hw(x, shift) * w)
    # d/dx sum(roll(x) * w) = roll(w) the other way.
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), np.roll(w.numpy(), -shift, axis=(1, 2)))


def test_relative_position_index():
    idx = sw.relative_position_index(3)
    assert idx.shape == (9, 9)
    assert idx.min() == 0 and idx.max() == (2 * 3 - 1) ** 2 - 1
    assert np.all(np.diag(idx) == idx[0, 0])  # zero offset -> one entry
    # token 0 = (0,0), token 8 = (2,2): offset (-2,-2) -> (0,0) -> 0
    assert idx[0, 8] == 0 and idx[8, 0] == 24


def _reference_mask(hp, wp, ws, s):
    """Numpy version of the reference slicing construction of the mask."""
    img = np.zeros((hp, wp), np.int64)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            img[hs, wsl] = cnt
            cnt += 1
    win = img.reshape(hp // ws, ws, wp // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, sw.MASK_VALUE, 0.0).astype(np.float32)


@pytest.mark.parametrize("hp,wp,ws", [(8, 8, 4), (12, 8, 4), (16, 24, 8), (4, 4, 4)])
def test_attention_mask_matches_reference(hp, wp, ws):
    s = ws // 2
    got = sw.shifted_window_attention_mask(tf.constant(hp), tf.constant(wp), ws, s).numpy()
    ref = _reference_mask(hp, wp, ws, s)
    assert got.shape == ref.shape == ((hp // ws) * (wp // ws), ws * ws, ws * ws)
    np.testing.assert_array_equal(got, ref)
    # interior windows unmasked; bottom-right window has 4 regions
    assert np.all(got[0] == 0) or (hp == ws and wp == ws)
    last = got[-1]
    assert np.all(np.diag(last) == 0)
    tok = lambda r, c: r * ws + c  # noqa: E731
    assert last[tok(0, 0), tok(ws - 1, ws - 1)] == sw.MASK_VALUE
    assert last[tok(0, 0), tok(ws - s - 1, ws - s - 1)] == 0.0
    assert last[tok(ws - 1, 0), tok(ws - 1, s - 1)] == 0.0
    assert last[tok(ws - 1, 0), tok(ws - 1, ws - 1)] == sw.MASK_VALUE


def test_attention_mask_dynamic_in_graph():
    fn = tf.function(lambda h, w: sw.shifted_window_attention_mask(h, w, 4, 2)
                     ).get_concrete_function(tf.TensorSpec([], tf.int32),
                                             tf.TensorSpec([], tf.int32))
    for hp, wp in [(8, 8), (12, 16)]:
        np.testing.assert_array_equal(fn(tf.constant(hp), tf.constant(wp)).numpy(),
                                      _reference_mask(hp, wp, 4, 2))


def test_shifted_window_mask_blocks_wraparound(monkeypatch):
    """A corner perturbation must not reach the opposite corner.

    One RSTB (regular + shifted block), window 4, 16x16 input (no padding).
    The influence of pixel (0,0) stays within ~9 px; without the mask the
    cyclic shift would leak it through the wrap-around window into the
    bottom/right border.
    """
    keras.utils.set_random_seed(0)
    m = _tiny(1)
    x = _img((1, 16, 16, 3))
    x2 = x.copy()
    x2[0, 0, 0, :] += 1.0
    d = np.abs(m(x2).numpy() - m(x).numpy())
    assert d[0, :3, :3].max() > 1e-3  # the perturbation does propagate
    assert d[0, 12:, :].max() < 1e-6 and d[0, :, 12:].max() < 1e-6

    # Sanity check that this test can fail: zero mask -> leak.
    def no_mask(self, h, w):
        return tf.zeros_like(sw.shifted_window_attention_mask(h, w, 4, 2))

    monkeypatch.setattr(SwinIR, "attention_mask", no_mask)
    d = np.abs(m(x2).numpy() - m(x).numpy())
    # 10x the masked bound above (about 4e-5 with the reference's conv init, seed 0).
    assert max(d[0, 12:, :].max(), d[0, :, 12:].max()) > 1e-5


# --------------------------------------------------------------------------
# serialization
# --------------------------------------------------------------------------
def test_get_config_from_config_roundtrip():
    keras.utils.set_random_seed(0)
    m = _tiny(3, mlp_ratio=1.5)
    x = _img((1, 5, 6, 3))
    y = m(x).numpy()
    cfg = m.get_config()
    assert cfg["depths"] == [2] and cfg["num_heads"] == [2]
    assert isinstance(cfg["depths"], list) and isinstance(cfg["num_heads"], list)
    assert (cfg["upscale"], cfg["channels"], cfg["embed_dim"], cfg["window_size"],
            cfg["mlp_ratio"]) == (3, 3, 12, 4, 1.5)
    m2 = SwinIR.from_config(cfg)
    m2.build((None, None, None, 3))
    m2.set_weights(m.get_weights())
    np.testing.assert_array_equal(m2(x).numpy(), y)
    # the way the parent SEIModel stores it
    ser = keras.saving.serialize_keras_object(m)
    m3 = keras.saving.deserialize_keras_object(ser)
    assert isinstance(m3, SwinIR) and m3.get_config()["upscale"] == 3
    m3.build((None, None, None, 3))
    assert m3.count_params() == m.count_params()


def test_keras_save_load_subclassed(tmp_path):
    keras.utils.set_random_seed(0)
    m = _tiny(2)
    x = _img((1, 7, 5, 3))
    y = m(x).numpy()
    path = str(tmp_path / "swinir.keras")
    m.save(path)
    m2 = keras.saving.load_model(path)
    assert isinstance(m2, SwinIR)
    np.testing.assert_array_equal(m2(x).numpy(), y)


def test_keras_save_load_functional_wrapper(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    out = _tiny(1)(inp)
    f = keras.Model(inp, out)
    x = _img((1, 9, 10, 3))
    y = f(x).numpy()
    path = str(tmp_path / "wrapped.keras")
    f.save(path)
    f2 = keras.saving.load_model(path)
    np.testing.assert_array_equal(f2(x).numpy(), y)


# --------------------------------------------------------------------------
# size of the paper model
# --------------------------------------------------------------------------
def test_paper_config_parameter_count():
    m = SwinIR(upscale=2, channels=3)  # embed 180, 6x6 RSTB, window 8
    m.build((None, None, None, 3))
    n = m.count_params()
    # Analytic count of the reference classical x2 SwinIR (incl. the
    # patch-embedding LayerNorm and the pixel-shuffle upsampler).
    assert n == 11_752_487
    assert abs(n - 11.75e6) / 11.75e6 < 0.03


@pytest.mark.slow
# --------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------
def test_onnx_export_parity():
    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(0)
    m = _tiny(2)
    x = _img((1, 21, 27, 3), seed=3)
    y = m(x).numpy()
    proto, _ = tf2onnx.convert.from_function(
        tf.function(lambda t: m(t)),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        opset=18)
    sess = ort.InferenceSession(proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = sess.run(None, {name: x})[0]
    assert got.shape == (1, 42, 54, 3)
    err = float(np.abs(got - y).max())
    print(f"ONNX max abs error (1x21x27x3, x2): {err:.3g}")
    assert err < 1e-4
    # same graph, other size and batch (dynamic dims)
    x2 = _img((2, 8, 13, 3), seed=4)
    got2 = sess.run(None, {name: x2})[0]
    assert got2.shape == (2, 16, 26, 3)
    assert float(np.abs(got2 - m(x2).numpy()).max()) < 1e-4


# --------------------------------------------------------------------------
# reduced precision
# --------------------------------------------------------------------------
def _pair(upscale, seed=0, **kw):
    """The same random SwinIR in float32 and in bfloat16 (shared weights)."""
    keras.utils.set_random_seed(seed)
    f32 = _tiny(upscale, **kw)
    f32.build((None, None, None, 3))
    bf16 = _tiny(upscale, precision="bfloat16", **kw)
    bf16.build((None, None, None, 3))
    bf16.set_weights(f32.get_weights())
    return f32, bf16


def test_bfloat16_layer_dtypes():
    _, m = _pair(2)
    y = m(_img((1, 9, 6, 3)))
    assert y.dtype == tf.float32
    assert m.precision == "bfloat16" and m.dtype_policy.name == "mixed_bfloat16"
    layers = list(m._flatten_layers())
    dense_conv = [layer for layer in layers if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))]
    norms = [layer for layer in layers if isinstance(layer, keras.layers.LayerNormalization)]
    assert len(dense_conv) == 2 * 4 + 1 + 5  # per STL qkv/proj/fc1/fc2; RSTB conv; 5 model convs
    assert all(layer.compute_dtype == "bfloat16" for layer in dense_conv)
    assert len(norms) == 2 * 2 + 2 and all(layer.compute_dtype == "float32" for layer in norms)
    assert all(v.dtype == "float32" for v in m.variables)
    assert keras.config.dtype_policy().name == "float32"


def test_bfloat16_softmax_runs_in_float32(monkeypatch):
    _, m = _pair(1)
    seen = []
    softmax = tf.nn.softmax

    def spy(logits, axis=None, name=None):
        seen.append(logits.dtype)
        return softmax(logits, axis=axis, name=name)

    monkeypatch.setattr(tf.nn, "softmax", spy)
    m(_img((1, 8, 8, 3)))
    assert seen and all(d == tf.float32 for d in seen)


def test_bfloat16_upscale1_identity_skip_is_float32():
    _, m = _pair(1)
    x = _img((1, 6, 11, 3))  # float32 values, not representable in bfloat16
    m.conv_last.set_weights([np.zeros_like(v) for v in m.conv_last.get_weights()])
    np.testing.assert_array_equal(m(x).numpy(), x)


@pytest.mark.parametrize("upscale", [1, 2])
def test_bfloat16_close_to_float32(upscale):
    cfg = dict(embed_dim=24, depths=(2, 2), num_heads=(3, 3))
    f32, bf16 = _pair(upscale, **cfg)
    x = _img((2, 16, 16, 3), seed=5)
    ref = f32(x).numpy()
    out = bf16(x).numpy()
    assert np.all(np.isfinite(out))
    learned = ref - (x if upscale == 1 else 0.0)
    rel = np.sqrt(np.mean((out - ref) ** 2) / np.mean(learned ** 2))
    # Measured ~0.7-0.9%; bfloat16 keeps 8 significant bits (0.4% per rounding).
    assert 1e-4 < rel < 0.03, rel


def test_bfloat16_shifted_window_mask_still_blocks_wraparound():
    _, m = _pair(1)
    x = _img((1, 16, 16, 3))
    x2 = x.copy()
    x2[0, 0, 0, :] += 1.0
    d = np.abs(m(x2).numpy() - m(x).numpy())
    assert d[0, :3, :3].max() > 1e-3
    assert d[0, 12:, :].max() == 0 and d[0, :, 12:].max() == 0


def test_bfloat16_keras_save_load(tmp_path):
    _, m = _pair(2)
    x = _img((1, 7, 5, 3))
    y = m(x).numpy()
    assert m.get_config()["precision"] == "bfloat16"
    path = str(tmp_path / "swinir_bf16.keras")
    m.save(path)
    m2 = keras.saving.load_model(path)
    assert isinstance(m2, SwinIR) and m2.precision == "bfloat16"
    np.testing.assert_array_equal(m2(x).numpy(), y)


def test_config_without_precision_is_float32():
    cfg = _tiny(2).get_config()
    cfg.pop("precision")
    m = SwinIR.from_config(cfg)
    assert m.precision == "float32" and m.conv_first.compute_dtype == "float32"


# --------------------------------------------------------------------------
# initialisation: as the reference implementation
# --------------------------------------------------------------------------
def test_convolutions_start_as_pytorch_conv2d_and_linears_as_the_reference():
    """Every conv: kernel and bias U(+-1/sqrt(9 * in_channels)) (PyTorch's Conv2d default,
    variance 1/(3 fan_in)); every Dense: truncated normal std 0.02 (2-std cut), zero bias."""
    keras.utils.set_random_seed(0)
    m = SwinIR(upscale=2, channels=3, embed_dim=24, depths=(2,), num_heads=(2,), window_size=4)
    m(_img((1, 8, 8, 3)))
    convs = [layer for layer in m._flatten_layers() if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 6  # first, rstb conv, after body, before upsample, upsample, last
    for conv in convs:
        k, b = conv.kernel.numpy(), conv.bias.numpy()
        fan_in = 9 * k.shape[2]
        assert np.abs(k).max() <= fan_in**-0.5 * (1 + 1e-6) and np.abs(b).max() <= fan_in**-0.5 * (1 + 1e-6)
        assert np.any(b)
        if k.size >= 5000:  # enough draws for the variance to within 10%
            assert abs(k.var() * 3 * fan_in - 1) < 0.10, (conv.name, k.var() * 3 * fan_in)
    dense = [layer for layer in m._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    kernels = np.concatenate([d.kernel.numpy().ravel() for d in dense])
    # A normal cut at +-2 std keeps std 0.02 * 0.8796.
    assert abs(kernels.std() / (0.02 * 0.87962566) - 1) < 0.05 and np.abs(kernels).max() <= 0.04 + 1e-6
    assert not any(np.any(d.bias.numpy()) for d in dense)
