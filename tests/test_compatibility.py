"""Files written by sei-tf 0.1 still load and behave as they did (tests/fixtures/v0_1)."""

import os

import keras
import numpy as np
import pytest

from sei_tf import losses, physics, sei_model, transforms

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v0_1")


@pytest.mark.parametrize("name, physics_type, method, terms", [
    ("sr2_sei", physics.SuperResolution, "sei", ["sure", "seq"]),
    ("blur_sure", physics.Blur, "sure", ["sure"]),
])
def test_v0_1_keras_models_load_with_their_objective(name, physics_type, method, terms):
    model = keras.saving.load_model(os.path.join(FIXTURES, name + ".keras"))
    assert isinstance(model, sei_model.SEIModel) and type(model.physics) is physics_type
    assert model.method == method and [t.name for t in model.objective] == terms
    assert model.seed == 3 and model.objective[0].tau == 0.01  # trained at the paper's step, kept
    y = np.load(os.path.join(FIXTURES, name + "_input.npy"))
    np.testing.assert_array_equal(model.predict(y, verbose=0), np.load(os.path.join(FIXTURES, name + "_output.npy")))
    if method == "sei":  # the saved options: alpha 0.5, no stop-gradient
        seq = model.objective[1]
        assert isinstance(seq, losses.Equivariance) and isinstance(seq.transform, transforms.Scale)
        assert seq.weight == 0.5 and seq.stop_gradient is False
        assert model.physics.noise_sigma == 5.0 and model.physics.factor == 2
    else:
        assert model.physics.noise_sigma == 3.0 and model.physics.kernel.shape == (7, 7)


def test_v0_1_model_resaved_keeps_its_objective(tmp_path):
    model = keras.saving.load_model(os.path.join(FIXTURES, "sr2_sei.keras"))
    path = str(tmp_path / "again.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    assert again.method == "sei" and again.objective[1].weight == 0.5
    assert again.objective[1].stop_gradient is False
    assert physics.serialize(again.physics) == physics.serialize(model.physics)


def test_v0_1_sidecar_still_reads():
    from sei_tf import data

    meta = data.read_sidecar(os.path.join(FIXTURES, "sim_blur", "measurements"))
    assert meta["format_version"] == 1
    op = data.physics_from_sidecar(meta)
    assert isinstance(op, physics.Blur) and op.noise_sigma == 4.0 and op.kernel_name == "gaussian:1"
    assert op.differences(physics.Blur("gaussian:1", noise_sigma=4)) == []
    # The same folder read as a simulate output (measurements/ + ground_truth/).
    assert data.read_sidecar(os.path.join(FIXTURES, "sim_blur"))["_path"] == meta["_path"]


def test_new_sidecar_round_trips_the_physics(tmp_path):
    from sei_tf import data

    op = physics.Blur(np.random.RandomState(0).rand(3, 5), noise_sigma=7, kernel_name="measured psf")
    gt = tmp_path / "gt"
    gt.mkdir()
    data.write_image(gt / "a.png", np.random.RandomState(1).rand(20, 24, 3).astype(np.float32))
    data.simulate(gt, tmp_path / "out", op, shorter_side=0, progress=False)
    meta = data.read_sidecar(tmp_path / "out")
    assert meta["format_version"] == 2 and meta["summary"]["operator"] == "blur measured psf"
    rebuilt = data.physics_from_sidecar(meta)
    assert rebuilt.differences(op) == [] and rebuilt.kernel_name == "measured psf"
