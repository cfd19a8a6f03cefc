"""Trains a restorer from a folder of measurements.

    python -m sei_tf.train --measurements DIR --method sei --output RUN_DIR

The instrument (task, factor or kernel, noise level) is read from the folder's
`sei_tf.json` sidecar (written by `sei_tf.simulate`), or given with --task,
--factor, --kernel and --noise_sigma. RUN_DIR receives `model.keras` (the last
good model, saved after every epoch), `log.csv` (every loss term per epoch),
`tensorboard/` and `backup/` (BackupAndRestore state: rerunning the same
command after a crash resumes from the last finished epoch).
"""

import contextlib
import json
import os
import shutil
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
    """Defines the command-line flags (only when run as a program: importing has no side effects)."""
    flags.DEFINE_string("measurements", None, "Folder (or comma-separated files) of measurements.")
    flags.DEFINE_string("ground_truth", None, "Ground-truth folder: needed by --method supervised; "
                        "otherwise used only to report validation PSNR/SSIM after each epoch.")
    flags.DEFINE_string("output", None, "Run folder for the model, logs and checkpoints.")
    flags.DEFINE_enum("method", "sei", ["sei", "sure", "ei_shift", "ei_rotate", "css", "supervised"],
                      "Training objective (see sei_tf.training).")
    flags.DEFINE_boolean("stop_gradient", True, "Stop the gradient through the equivariance target.")
    flags.DEFINE_float("alpha", 1.0, "Weight of the equivariance term.")
    flags.DEFINE_enum("backbone", "cnn", ["cnn", "swinir", "swinir_light"], "Restorer network.")
    flags.DEFINE_string("backbone_args", "{}", 'JSON size overrides, e.g. \'{"features": 64, "num_blocks": 8}\'.')
    flags.DEFINE_enum("task", None, ["sr", "deblur"], "Task, when the measurements have no sidecar.")
    flags.DEFINE_integer("factor", None, "SR factor, when the measurements have no sidecar.")
    flags.DEFINE_string("kernel", None, "Blur kernel (gaussian:S, box:R or a PSF file), when no sidecar.")
    flags.DEFINE_float("noise_sigma", None, "Noise std in 8-bit units (5 = 5/255); must match the sidecar.")
    flags.DEFINE_integer("channels", None, "1 or 3; default: the sidecar's, else 3.")
    flags.DEFINE_integer("epochs", 10, "Number of epochs.")
    flags.DEFINE_integer("steps_per_epoch", 100, "Optimiser steps per epoch.")
    flags.DEFINE_integer("batch_size", 8, "Global batch size (split across replicas).")
    flags.DEFINE_integer("patch_size", 48, "Training patch side in measurement pixels.")
    flags.DEFINE_float("learning_rate", 2e-4, "Adam learning rate.")
    flags.DEFINE_enum("schedule", "delayed_linear", ["constant", "delayed_linear"],
                      "constant, or constant for the first half then linear decay to 0.01x (the paper's).")
    flags.DEFINE_integer("seed", 0, "Seed of initial weights, crops, noise and transforms.")
    flags.DEFINE_enum("strategy", "none", ["none", "mirrored", "multi_worker"],
                      "mirrored: all local GPUs (two logical CPUs when there is none); "
                      "multi_worker: MultiWorkerMirroredStrategy configured by TF_CONFIG.")
    flags.DEFINE_boolean("overwrite", False, "Replace a finished run in --output.")
    flags.DEFINE_boolean("progress", True, "Show a progress bar per epoch (one line per epoch if off).")
    flags.mark_flags_as_required(["measurements", "output"])


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why."""


def make_strategy(name):
    """The tf.distribute strategy named by --strategy (None for a single device)."""
    import tensorflow as tf

    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise TrainingError("--strategy multi_worker needs TF_CONFIG (see the README, 'Scaling out').")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None


def resolve_physics(measurement_dir):
    """The operator from the sidecar and/or flags; contradictions are errors."""
    from sei_tf import data, physics

    meta = data.read_sidecar(measurement_dir) if os.path.isdir(measurement_dir) else None
    if meta is not None:
        for flag, key in (("task", "task"), ("factor", "factor")):
            given = getattr(FLAGS, flag)
            if given is not None and meta.get(key) is not None and given != meta[key]:
                raise TrainingError(f"--{flag}={given} contradicts the sidecar ({key}={meta[key]}).")
        return data.physics_from_sidecar(meta, FLAGS.noise_sigma), meta
    if FLAGS.task is None:
        raise TrainingError("The measurements have no sei_tf.json sidecar: give --task "
                            "(and --factor or --kernel) and --noise_sigma.")
    if FLAGS.noise_sigma is None:
        raise TrainingError("Give --noise_sigma (8-bit units): SURE needs the noise level.")
    return physics.make(FLAGS.task, FLAGS.factor, FLAGS.kernel, FLAGS.noise_sigma), {}


# What a run writes into --output (and sei_tf.evaluate's default report): --overwrite removes these.
RUN_ARTEFACTS = ("model.keras", "model.keras.tmp.keras", "log.csv", "config.json", "tensorboard", "backup",
                 "evaluation.csv")


def check_output(run_dir, overwrite, create=True):
    """Refuses to clobber a finished run; a run with a backup/ folder is resumed.

    With `create=False` it only checks (nothing is removed or created).
    """
    finished = os.path.exists(os.path.join(run_dir, "model.keras"))
    resuming = os.path.isdir(os.path.join(run_dir, "backup"))
    if finished and not resuming:
        if not overwrite:
            raise TrainingError(f"{run_dir} already holds a finished run (model.keras); "
                                "pass --overwrite to replace it or choose another --output.")
        if not create:
            return resuming
        for name in RUN_ARTEFACTS:  # only what a run writes: --output may hold other files
            path = os.path.join(run_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
    if create:
        os.makedirs(run_dir, exist_ok=True)
    return resuming


def resumed_epoch(backup_dir):
    """Epochs already finished according to BackupAndRestore's metadata (0 if none)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        # Keras writes the number of finished epochs (the next epoch's index).
        return int(json.load(f).get("epoch", 0))


def build_callbacks(run_dir, save_every_epoch=True):
    import keras
    import numpy as np

    class StopOnNaN(keras.callbacks.Callback):
        """Stops at the first non-finite loss; the last good model.keras stays."""

        def __init__(self):
            super().__init__()
            self.bad_step = None

        def healthy(self):
            """No NaN loss so far and every weight finite: safe to save."""
            return self.bad_step is None and all(np.all(np.isfinite(w)) for w in self.model.get_weights())

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(float(loss)):
                self.bad_step = int(self.model.optimizer.iterations)
                self.model.stop_training = True

    class SaveLastGood(keras.callbacks.Callback):
        """Writes model.keras after each epoch whose weights are all finite (atomic rename)."""

        def __init__(self, path, nan_watch):
            super().__init__()
            self.path, self.nan_watch = path, nan_watch

        def on_epoch_end(self, epoch, logs=None):
            if not self.nan_watch.healthy():
                return
            tmp = self.path + ".tmp.keras"
            self.model.save(tmp)
            os.replace(tmp, self.path)

    class BackupLastGood(keras.callbacks.BackupAndRestore):
        """BackupAndRestore that skips epochs ending in NaN: a rerun resumes from the last good one."""

        def __init__(self, path, nan_watch):
            super().__init__(path, delete_checkpoint=False, double_checkpoint=True)
            self.nan_watch = nan_watch

        def on_epoch_end(self, epoch, logs=None):
            if self.nan_watch.healthy():
                super().on_epoch_end(epoch, logs)

    nan_watch = StopOnNaN()
    callbacks = [
        nan_watch,
        BackupLastGood(os.path.join(run_dir, "backup"), nan_watch),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "log.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch"),
    ]
    if save_every_epoch:
        callbacks.append(SaveLastGood(os.path.join(run_dir, "model.keras"), nan_watch))
    return callbacks, nan_watch


def train():
    """Runs training from FLAGS; returns the run folder."""
    import keras
    import tensorflow as tf

    from sei_tf import data, models, training

    run_dir = FLAGS.output
    strategy = None
    if FLAGS.strategy == "multi_worker":
        from sei_tf import distributed

        # Before any TF op: collective ops are configured at startup. Only the
        # chief writes into --output; other workers write into a temporary folder.
        strategy = make_strategy(FLAGS.strategy)
        run_dir = distributed.write_dir(FLAGS.output)
    check_output(run_dir, FLAGS.overwrite, create=False)  # refuse a finished run before loading anything
    files = data.list_images(FLAGS.measurements.split(",") if "," in FLAGS.measurements else FLAGS.measurements)
    op, meta = resolve_physics(FLAGS.measurements)
    channels = FLAGS.channels or meta.get("channels") or 3
    images, names = data.load_images(files, channels=channels)
    for warning in data.diagnose(images, op.noise_sigma):
        logging.warning("%s", warning)
    if FLAGS.method == "supervised" and not FLAGS.ground_truth:
        raise TrainingError("--method supervised needs --ground_truth.")
    for name, image in zip(names, images):
        if min(image.shape[:2]) < FLAGS.patch_size:
            raise TrainingError(f"{name}: the measurement is {image.shape[0]}x{image.shape[1]} pixels, smaller "
                                f"than --patch_size {FLAGS.patch_size}. Lower --patch_size or remove the image.")

    if strategy is None:
        strategy = make_strategy(FLAGS.strategy)
    factor = getattr(op, "factor", 1)
    if FLAGS.method == "supervised":
        dataset = data.paired_patch_dataset(files, FLAGS.ground_truth, FLAGS.patch_size, FLAGS.batch_size,
                                            channels, factor=factor, seed=FLAGS.seed)
    else:
        dataset = data.measurement_dataset(images, FLAGS.patch_size, FLAGS.batch_size, channels,
                                           seed=FLAGS.seed, factor=factor)
    validation = None
    if FLAGS.ground_truth:
        validation = data.paired_dataset(files, FLAGS.ground_truth, channels, factor=factor)
        # A known length: Keras would otherwise warn that the input "ran out of data" every run.
        validation = validation.apply(tf.data.experimental.assert_cardinality(len(files)))
    check_output(run_dir, FLAGS.overwrite)  # every input is checked: only now is --output touched

    # After a crash, skip the batches of finished epochs so the data matches an uninterrupted run.
    # (Multi-worker runs skip them in distributed.fit, after the chief's epoch is broadcast.)
    done = 0 if FLAGS.strategy == "multi_worker" else resumed_epoch(os.path.join(run_dir, "backup"))
    if done:
        logging.info("Resuming after epoch %d from %s/backup", done, run_dir)
        dataset = dataset.skip(done * FLAGS.steps_per_epoch)

    total_steps = FLAGS.epochs * FLAGS.steps_per_epoch
    lr = (training.DelayedLinearDecay(FLAGS.learning_rate, total_steps) if FLAGS.schedule == "delayed_linear"
          else FLAGS.learning_rate)
    keras.utils.set_random_seed(FLAGS.seed)
    with strategy.scope() if strategy else contextlib.nullcontext():
        backbone = models.build(FLAGS.backbone, upscale=factor, channels=channels,
                                **json.loads(FLAGS.backbone_args))
        model = training.SEIModel(backbone, op, method=FLAGS.method, alpha=FLAGS.alpha,
                                  stop_gradient=FLAGS.stop_gradient, seed=FLAGS.seed)
        model.compile(keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.999))
    callbacks, nan_watch = build_callbacks(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        settings = {fl.name: fl.value for fl in FLAGS.get_flags_for_module(sys.modules[__name__])}
        json.dump({"flags": settings, "physics": op.describe()}, f, indent=2, default=str)
    logging.info("Training %s with %s on %d images (%s, noise %.3g/255), %d steps",
                 FLAGS.backbone, FLAGS.method, len(images), op.describe(), op.noise_sigma, total_steps)
    if FLAGS.strategy == "multi_worker":
        try:
            distributed.fit(model, dataset, FLAGS.epochs, FLAGS.steps_per_epoch, callbacks, strategy,
                            validation=validation)
        finally:
            distributed.cleanup(run_dir, FLAGS.output)  # a non-chief's temporary folder
    else:
        model.fit(dataset, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
                  validation_data=validation, callbacks=callbacks,
                  verbose=1 if FLAGS.progress and sys.stdout.isatty() else 2)
    if nan_watch.bad_step is not None:
        kept = (f"The last good model is kept in {FLAGS.output}/model.keras"
                if os.path.exists(os.path.join(FLAGS.output, "model.keras"))
                else "No epoch ended with finite weights, so no model was saved")
        raise TrainingError(
            f"The loss became NaN/Inf at step {nan_watch.bad_step}; training stopped. {kept}. "
            "Lower --learning_rate or check the data.")
    shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    print(f"trained {FLAGS.method} ({total_steps} steps); model written to {FLAGS.output}/model.keras")
    return run_dir


def main(argv):
    del argv
    try:
        train()
    except (TrainingError, ValueError, OSError) as e:  # DataError and KernelError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
