"""Fine-tuning (issue #12): L2-SP, frozen layers, --init_from, held-out measurements, shipped models.

The crash-resume of a fine-tuning run (bit-identical to an uninterrupted one) is
checked in test_fault_tolerance.py, next to the from-scratch case.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from sei_tf import callbacks as callbacks_lib
from sei_tf import finetune, holdout, loading, models, physics, pretrained, sei_model

CNN = {"features": 8, "num_blocks": 1}


def _perturb(backbone, seed):
    """Adds stateless Gaussian noise to every weight; returns the deltas (NumPy)."""
    deltas = []
    for i, w in enumerate(backbone.weights):
        d = tf.random.stateless_normal(w.shape, [seed, i]) * 0.05
        w.assign_add(d)
        deltas.append(d.numpy())
    return deltas


def _sr_model(l2sp=0.0, seed=0, noise_sigma=5):
    keras.utils.set_random_seed(seed)
    backbone = models.build("cnn", upscale=2, **CNN)
    return sei_model.SEIModel(backbone, physics.SuperResolution(2, noise_sigma=noise_sigma), l2sp=l2sp, seed=seed)


def _patches(count, seed=7):
    return tf.data.Dataset.from_tensor_slices(tf.random.stateless_uniform([count, 12, 12, 3], [seed, 1])).batch(4)


# ------------------------------------------------------------------------------- L2-SP

def test_l2sp_penalty_value_and_gradient_match_the_formula():
    alpha = 0.3
    model = _sr_model(l2sp=alpha)
    assert float(model.l2sp_penalty()) == 0.0  # w0 = the weights at construction
    deltas = _perturb(model.backbone, seed=1)
    expected = 0.5 * alpha * sum(float(np.sum(d.astype(np.float64) ** 2)) for d in deltas)
    with tf.GradientTape() as tape:
        penalty = model.l2sp_penalty()
    assert float(penalty) == pytest.approx(expected, rel=1e-5)
    grads = tape.gradient(penalty, model.backbone.weights)
    for g, d in zip(grads, deltas):  # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0)
        np.testing.assert_allclose(g.numpy(), alpha * d, rtol=1e-5, atol=1e-7)
    assert float(_sr_model(l2sp=0.0).l2sp_penalty()) == 0.0


@pytest.mark.slow  # traces and runs SEI training steps
def test_l2sp_step_adds_alpha_times_the_displacement_to_the_gradient():
    """One SGD step with L2-SP moves each weight by lr * alpha * (w - w0) more than without it."""
    lr, alpha = 0.1, 2.0
    ys = next(iter(_patches(4)))
    moved = {}
    for weight in (0.0, alpha):
        model = _sr_model(l2sp=weight)  # the anchor w0: the weights at construction
        _perturb(model.backbone, seed=2)  # both models step from w0 + delta
        start = [w.numpy() for w in model.backbone.weights]
        model.compile(keras.optimizers.SGD(lr))
        model.train_on_batch(ys)
        moved[weight] = [w.numpy() - s for w, s in zip(model.backbone.weights, start)]
    deltas = _perturb(_sr_model().backbone, seed=2)  # the same displacements w - w0
    for with_pen, without, d in zip(moved[alpha], moved[0.0], deltas):
        np.testing.assert_allclose(with_pen - without, -lr * alpha * d, rtol=1e-3, atol=1e-6)


def test_l2sp_starting_weights_are_saved_with_the_model(tmp_path):
    model = _sr_model(l2sp=0.5)
    w0 = [w.numpy() for w in model.backbone.weights]
    _perturb(model.backbone, seed=3)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert loaded.l2sp == 0.5
    for a, b in zip(loaded.anchor, w0):
        np.testing.assert_array_equal(a.numpy(), b)
    assert float(loaded.l2sp_penalty()) == pytest.approx(float(model.l2sp_penalty()), rel=1e-6)


# ---------------------------------------------------------------------- frozen layers

@pytest.mark.slow  # traces and runs SEI training steps
def test_frozen_layers_do_not_change_and_trained_ones_do():
    model = _sr_model()
    _perturb(model.backbone, seed=4)  # a non-zero tail, so every layer gets a gradient
    kept = finetune.freeze(model.backbone, ["tail", "block0_*"])
    assert kept == ["block0_a", "block0_b", "tail"]
    before = {v.path: v.numpy() for v in model.backbone.weights}
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(_patches(8), epochs=1, verbose=0)
    for v in model.backbone.weights:
        layer = v.path.split("/")[-2]
        changed = not np.array_equal(v.numpy(), before[v.path])
        assert changed == (layer in kept), (v.path, changed)


@pytest.mark.slow  # traces and runs SEI training steps
def test_trainable_layers_are_saved_so_a_reloaded_model_resumes_with_its_optimizer_state(tmp_path):
    keras.utils.set_random_seed(0)
    model = sei_model.SEIModel(models.build("cnn", upscale=2, **CNN), physics.SuperResolution(2, noise_sigma=5),
                               l2sp=0.1, trainable_layers=["body", "tail"])
    assert len(model.trainable_variables) == 4
    model.compile(keras.optimizers.Adam(1e-3))
    model.fit(_patches(8), epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # compiled: the optimizer state is loaded into the same variables
    assert loaded.trainable_layers == ["body", "tail"] and len(loaded.trainable_variables) == 4
    assert int(loaded.optimizer.iterations) == 2
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_freeze_with_a_pattern_that_matches_nothing_lists_the_layers():
    backbone = models.build("cnn", upscale=1, **CNN)
    models._build(backbone)
    with pytest.raises(finetune.InitError, match="matches no layer.*head, block0_a, block0_b, body, tail"):
        finetune.freeze(backbone, ["tail", "decoder*"])


# -------------------------------------------------------------------------- init_from

def test_start_from_a_saved_model_gives_the_same_restorer(tmp_path):
    """f equals the source model before training, in float32 and under bfloat16 compute."""
    source = _sr_model(seed=5)
    _perturb(source.backbone, seed=5)
    path = str(tmp_path / "source.keras")
    source.save(path)
    backbone, source_physics = finetune.load_source(path)
    assert source_physics.describe() == source.physics.describe()
    y = tf.random.stateless_uniform([2, 20, 20, 3], [5, 5])
    start = finetune.start_from(backbone, "float32")
    np.testing.assert_array_equal(start(y).numpy(), source(y).numpy())
    assert start is not backbone and start.weights[0] is not backbone.weights[0]
    bf16 = finetune.start_from(backbone, "bfloat16")
    assert models.precision_of(bf16) == "bfloat16"
    np.testing.assert_allclose(bf16(y).numpy(), source(y).numpy(), atol=0.02)
    # Another noise level is allowed (the differences are reported); another factor is not.
    new_op = physics.SuperResolution(2, noise_sigma=10)
    assert any("noise" in d for d in finetune.check_fits(backbone, source_physics, new_op, 3))


@pytest.mark.parametrize("case, match", [
    ("channels", "the channels: the model has 3, the measurements 1"),
    ("upscale", "the upscale factor: the model's is 2, this physics' .* is 4"),
    ("operator", "the upscale factor: the model's is 2"),
    ("backbone", "the backbone: the model is ResidualCNN .*'features': 8.*the flags ask for .*'features': 16"),
])
def test_a_starting_model_that_does_not_fit_says_what_differs(case, match):
    model = _sr_model()
    op, channels, name, args = physics.SuperResolution(2, noise_sigma=5), 3, None, None
    if case == "channels":
        channels = 1
    elif case == "upscale":
        op = physics.SuperResolution(4, noise_sigma=5)
    elif case == "operator":
        op = physics.from_flags("deblur", 5, kernel="gaussian:2")
    else:
        name, args = "cnn", {"features": 16, "num_blocks": 1}
    with pytest.raises(finetune.InitError, match=match):
        finetune.check_fits(model.backbone, model.physics, op, channels, name, args)


# -------------------------------------------------------------------------- held out

def test_holdout_split_is_deterministic_by_file_name():
    files = [f"/data/img{i:02d}.png" for i in range(20)]
    train, held = holdout.split(files, 0.1)
    assert len(held) == 2 and sorted(train + held) == list(range(20))
    # Same files held out whatever the order and the folder.
    moved = [f.replace("/data/", "/elsewhere/") for f in reversed(files)]
    _, held2 = holdout.split(moved, 0.1)
    assert sorted(os.path.basename(moved[i]) for i in held2) == sorted(os.path.basename(files[i]) for i in held)
    assert holdout.count(3, 0.1) == 0 and holdout.count(5, 0.1) == 1 and holdout.count(2, 0.9) == 1
    with pytest.raises(holdout.HoldoutError):
        holdout.split(files, 1.0)


def test_holdout_crops_fill_whole_batches_and_report_the_loss_terms():
    images = [np.random.default_rng(0).random((40, 30, 3), np.float32), np.zeros((16, 16, 3), np.float32)]
    grid = holdout.crop_grid(images, 16)
    assert grid.shape == (2 * 1 + 1, 16, 16, 3)  # 40x30 -> 2x1 crops, 16x16 -> 1
    np.testing.assert_array_equal(grid[0], images[0][:16, 7:23])
    ds = holdout.crops(images, 16, batch_size=2)
    assert [b.shape[0] for b in ds] == [2, 2]
    model = _sr_model()
    model.compile(keras.optimizers.Adam())
    logs = model.evaluate(ds, verbose=0, return_dict=True)
    assert set(logs) >= {"loss", "sure", "seq"}
    assert logs["loss"] == pytest.approx(logs["sure"] + logs["seq"], rel=1e-5)  # SEI: weights 1, 1
    assert model.evaluate(ds, verbose=0, return_dict=True)["loss"] == logs["loss"]  # fixed draws


def test_keep_best_keeps_the_lowest_and_remembers_it_across_a_restart(tmp_path):
    model = _sr_model()
    model.compile(keras.optimizers.Adam())
    path = str(tmp_path / "best.keras")

    def run(values, start=0):
        watch = callbacks_lib.StopOnBlowUp()
        keep = callbacks_lib.KeepBest(path, "val_loss", "min", watch)
        for cb in (watch, keep):
            cb.set_model(model)
        keep.on_train_begin()
        for epoch, v in enumerate(values, start):
            model.backbone.tail.bias.assign(tf.fill(model.backbone.tail.bias.shape, float(epoch)))
            keep.on_epoch_end(epoch, {"val_loss": v})

    run([3.0, 1.0, 2.0])
    assert json.load(open(tmp_path / "best.json")) == {"epoch": 2, "monitor": "val_loss", "value": 1.0}
    run([1.5, 0.5], start=3)  # a resumed run: 1.5 is worse than the 1.0 before the crash
    assert json.load(open(tmp_path / "best.json"))["epoch"] == 5
    saved = keras.saving.load_model(path, compile=False)
    assert float(saved.backbone.tail.bias.numpy()[0]) == 4.0


def test_keep_best_skips_epochs_whose_sure_fell_below_the_floor(tmp_path, caplog):
    """A collapsed SURE makes the held-out loss lowest at the worst epoch: best.keras must not take it."""
    from sei_tf import noise

    model = _sr_model()
    model.compile(keras.optimizers.Adam())
    check = callbacks_lib.WarnNegativeSURE.for_objective(model.objective, noise.Gaussian(5.0))
    floor = check.floor

    def run(monitor, mode, epochs):
        run_dir = tmp_path / monitor
        run_dir.mkdir()
        cbs, _ = callbacks_lib.build_callbacks(str(run_dir), save_every_epoch=False, keep_best=(monitor, mode),
                                               sure_check=check)
        (keep,) = [cb for cb in cbs if isinstance(cb, callbacks_lib.KeepBest)]
        assert check in cbs
        keep.set_model(model)
        cbs[0].set_model(model)  # the StopOnBlowUp watch KeepBest asks
        keep.on_train_begin()
        for epoch, logs in enumerate(epochs):
            keep.on_epoch_end(epoch, logs)
        return json.load(open(run_dir / "best.json"))

    epochs = [{"val_loss": 3e-3, "val_sure": 1e-3, "sure": 1e-3, "val_psnr": 30.0},
              {"val_loss": 10 * floor, "val_sure": 10 * floor, "sure": 1e-3, "val_psnr": 31.0},  # held-out collapse
              {"val_loss": 1e-3, "val_sure": 5e-4, "sure": 10 * floor, "val_psnr": 29.0},  # training collapse
              {"val_loss": 2e-3, "val_sure": 0.5 * floor, "sure": 1e-3, "val_psnr": 28.0}]  # within SURE's noise
    with caplog.at_level("WARNING"):
        assert run("val_loss", "min", epochs) == {"epoch": 4, "monitor": "val_loss", "value": 2e-3}
    assert "epoch 2: val_loss" in caplog.text and "epoch 3: val_loss" in caplog.text
    # Against ground truth the PSNR is the judge: the SURE check does not apply.
    assert run("val_psnr", "max", epochs)["epoch"] == 2


# ------------------------------------------------------------------- shipped models

def test_shipped_models_load_by_name_and_match_their_index():
    names = pretrained.names()
    assert "sei-cnn-sr2-rgb" in names
    for name in names:
        row = pretrained.entry(name)
        path = loading.model_path(name)
        assert os.path.getsize(path) == row["bytes"] < 2_000_000
        assert name in pretrained.card(name)
    model = loading.load_model("sei-cnn-sr2-rgb")
    assert model.physics.describe() == pretrained.entry("sei-cnn-sr2-rgb")["physics"]
    assert (model.backbone.channels, model.physics.upscale) == (3, 2)
    assert models.precision_of(model.backbone) == "float32"
    assert not model.l2sp and not model.anchor
    with pytest.raises(loading.ModelError, match="neither a model file nor a shipped model.*sei-cnn-sr2-rgb"):
        loading.model_path("sei-cnn-sr9-rgb")


def test_models_command_lists_every_shipped_model(capsys):
    from sei_tf import list_models

    text = list_models.table(pretrained.index())
    for name, row in pretrained.index().items():
        line = next(li for li in text.splitlines() if li.startswith(name + " "))
        assert row["physics"] in line and f"{row['test']['psnr']:.2f} dB" in line
