"""Training steps in reduced precision: float16 loss scaling is undone exactly; bf16 trains."""

import keras
import numpy as np
import tensorflow as tf

from sei_tf import models, physics, sei_model
from conftest import photo


def _step(precision, optimizer, weights=None, batch=None):
    """One SURE training step of a tiny cnn; returns (model, weights before)."""
    op = physics.Blur("gaussian:1", noise_sigma=5)
    backbone = models.build("cnn", precision=precision, features=8, num_blocks=1)
    model = sei_model.SEIModel(backbone, op, objective="sei", seed=4)
    if weights is not None:
        model.backbone.set_weights(weights)
    else:  # a non-zero tail, so every layer gets a gradient
        model.backbone.set_weights([w + 0.05 * np.random.RandomState(i).standard_normal(w.shape).astype(w.dtype)
                                    for i, w in enumerate(model.backbone.get_weights())])
    model.compile(optimizer)
    before = [w.copy() for w in model.backbone.get_weights()]
    model.train_on_batch(batch)
    return model, before


def test_float16_step_equals_float32_step_within_half_precision():
    batch = np.stack([photo("astronaut", 24), photo("coffee", 24)])
    m32, w0 = _step("float32", keras.optimizers.SGD(0.5), batch=batch)
    m16, _ = _step("float16", keras.optimizers.SGD(0.5), weights=w0, batch=batch)
    assert isinstance(m16.optimizer, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(m32.optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(m16.optimizer.dynamic_scale) == 32768.0  # no overflow: the scale stayed
    moved = 0.0
    for a, b, start in zip(m16.backbone.get_weights(), m32.backbone.get_weights(), w0):
        d16, d32 = a - start, b - start
        scale = np.abs(d32).max()
        moved = max(moved, scale)
        # An update left scaled by 32768 (or 1/32768) would miss this by orders of magnitude.
        np.testing.assert_allclose(d16, d32, atol=0.05 * scale + 1e-7)
    assert moved > 1e-4


def test_loss_scale_reacts_to_an_overflow():
    batch = np.stack([photo("astronaut", 24), photo("coffee", 24)])
    lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5), initial_scale=2.0 ** 60)
    model, w0 = _step("float16", lso, batch=batch)
    # float16 overflows (max 65504): the step is skipped and the scale halved.
    assert float(model.optimizer.dynamic_scale) == 2.0 ** 59
    for a, b in zip(model.backbone.get_weights(), w0):
        np.testing.assert_array_equal(a, b)
    model.train_on_batch(batch)
    assert float(model.optimizer.dynamic_scale) <= 2.0 ** 59


def test_bfloat16_model_saves_reloads_and_resumes(tmp_path):
    batch = np.stack([photo("astronaut", 24), photo("coffee", 24)])
    model, _ = _step("bfloat16", keras.optimizers.Adam(1e-3), batch=batch)
    assert model.precision == "bfloat16" and model(batch).dtype == tf.float32
    path = str(tmp_path / "bf16.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.precision == "bfloat16"
    np.testing.assert_array_equal(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0))
    assert int(loaded.optimizer.iterations) == 1
    loaded.train_on_batch(batch)  # resumes with the restored optimizer state
    assert int(loaded.optimizer.iterations) == 2


def test_bfloat16_model_exports_a_float32_onnx_file(tmp_path):
    import onnxruntime as ort

    from export import onnx_export

    batch = np.stack([photo("astronaut", 24), photo("coffee", 24)])
    model, _ = _step("bfloat16", keras.optimizers.Adam(1e-3), batch=batch)
    path = str(tmp_path / "bf16.keras")
    model.save(path)
    onnx_path = str(tmp_path / "bf16.onnx")
    onnx_export.export(path, onnx_path, log=lambda *a: None)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["trained_precision"] == "bfloat16" and meta["precision"] == "fp32"
    assert all(i.type == "tensor(float)" for i in session.get_inputs() + session.get_outputs())
    x = photo("chelsea", 21)[None]
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    float_copy = models.as_float32(model.backbone)
    np.testing.assert_allclose(onnx_out, float_copy(x).numpy(), atol=1e-4)
    # ... and close to the bf16 model itself, within bf16 rounding of the residual.
    np.testing.assert_allclose(onnx_out, model(x).numpy(), atol=2e-2)
