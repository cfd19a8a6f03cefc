"""Files written by sei-tf 0.1 still load and behave as they did (tests/fixtures/v0_1)."""

import os

import keras
import numpy as np
import pytest

from sei_tf import losses, physics, training, transforms

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v0_1")


@pytest.mark.parametrize("name, physics_type, method, terms", [
    ("sr2_sei", physics.SuperResolution, "sei", ["sure", "seq"]),
    ("blur_sure", physics.Blur, "sure", ["sure"]),
])
def test_v0_1_keras_models_load_with_their_objective(name, physics_type, method, terms):
    model = keras.saving.load_model(os.path.join(FIXTURES, name + ".keras"))
    assert isinstance(model, training.SEIModel) and type(model.physics) is physics_type
    assert model.method == method and [t.name for t in model.objective] == terms
    assert model.seed == 3
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
