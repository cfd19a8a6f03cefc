"""Trains a restorer from a folder of measurements.

    python -m sei_tf.train --measurements DIR --method sei --output RUN_DIR

The instrument (task, factor or kernel, noise level) is read from the folder's
`sei_tf.json` sidecar (written by `sei_tf.simulate`), or given with --task,
--factor, --kernel and --noise (or --noise_sigma). RUN_DIR receives `model.keras` (the last
good model, saved after every epoch), `log.csv` (every loss term per epoch),
`tensorboard/` and `backup/` (BackupAndRestore state: rerunning the same
command after a crash resumes from the last finished epoch). A resumed run must
keep the flags that define what is learnt (data, instrument, objective, network,
seed); optimisation flags may change (e.g. a lower --learning_rate after a NaN),
and config.json records each resume and what it changed.

Fine-tuning: --init_from starts from a trained restorer (a .keras file, a run
folder or a shipped model's name, see `sei-tf models`) instead of random weights;
--l2sp keeps the weights near the starting ones and --trainable_layers trains a
subset (see sei_tf.finetune). --holdout sets aside a fraction of the measurements
and reports the loss terms on them after each epoch (val_*); RUN_DIR/best.keras is
the model of the epoch with the lowest held-out loss (see sei_tf.holdout).
"""

import contextlib
import json
import os
import shutil
import sys

from absl import flags, logging

from sei_tf import cli
from sei_tf.errors import SeiTfError

FLAGS = flags.FLAGS


def define_flags():
    """Defines the command-line flags (only when run as a program: importing has no side effects)."""
    from sei_tf import losses, objectives, precision

    flags.DEFINE_string("measurements", None, "Folder (or comma-separated files) of measurements.")
    flags.DEFINE_string("ground_truth", None, "Ground-truth folder: needed by --method supervised; "
                        "otherwise used only to report validation PSNR/SSIM after each epoch.")
    flags.DEFINE_string("output", None, "Run folder for the model, logs and checkpoints.")
    flags.DEFINE_enum("method", "sei", list(objectives.PRESETS), "Training objective (see sei_tf.objectives).")
    flags.DEFINE_boolean("stop_gradient", True, "Stop the gradient through the equivariance target.")
    flags.DEFINE_float("alpha", 1.0, "Weight of the equivariance term.")
    flags.DEFINE_float("tau", losses.DEFAULT_TAU, "Step of SURE's Monte-Carlo divergence probe y + tau b, in [0, 1] "
                       "intensity units (> 0). The paper's is 0.01; there a probe adds enough noise for restorers "
                       "to learn to recognise it, and SURE collapsed in long runs (Gaussian and Poisson-Gaussian "
                       "noise).")
    flags.DEFINE_enum("backbone", "cnn", ["cnn", "swinir", "swinir_light"], "Restorer network.")
    flags.DEFINE_enum("precision", "float32", list(precision.CHOICES),
                      "Type the backbone computes in (physics and losses stay float32). auto: bfloat16 on a "
                      "GPU of compute capability >= 8.0 or a CPU with AMX-BF16, else float32.")
    flags.DEFINE_string("backbone_args", "{}", 'JSON size overrides, e.g. \'{"features": 64, "num_blocks": 8}\'.')
    flags.DEFINE_string("task", None, "Task (sr or deblur), when the measurements have no sidecar.")
    flags.DEFINE_integer("factor", None, "SR factor, when the measurements have no sidecar.")
    flags.DEFINE_string("kernel", None, "Blur kernel (gaussian:S, box:R or a PSF file), when no sidecar.")
    flags.DEFINE_string("noise", None, "Noise model, when no sidecar (must match it otherwise): gaussian:sigma=S, "
                        "poisson:gain=G or poisson_gaussian:gain=G,sigma=S (see sei_tf.noise.parse_spec); auto: "
                        "estimated from the measurements (sei_tf.noise_estimation), replacing a sidecar's.")
    flags.DEFINE_float("noise_sigma", None, "Gaussian noise std in 8-bit units (5 = 5/255); must match the sidecar.")
    flags.DEFINE_integer("channels", None, "1 or 3; default: the sidecar's, else 3.")
    flags.DEFINE_integer("epochs", 10, "Number of epochs.")
    flags.DEFINE_integer("steps_per_epoch", 100, "Optimiser steps per epoch.")
    flags.DEFINE_integer("batch_size", 8, "Global batch size (split across replicas: a multiple of their number).")
    flags.DEFINE_integer("patch_size", 48, "Training patch side in measurement pixels.")
    flags.DEFINE_boolean("dihedral", False, "Rotate each training crop by a random multiple of 90 degrees and flip "
                         "it (the same on the measurement and its ground truth). Free extra data when the "
                         "instrument commutes with these (SR, symmetric blurs); refused otherwise (motion blur).")
    flags.DEFINE_float("learning_rate", 2e-4, "Adam learning rate.")
    flags.DEFINE_enum("schedule", "delayed_linear", ["constant", "delayed_linear"],
                      "constant, or constant for the first half then linear decay to 0.01x (the paper's).")
    flags.DEFINE_integer("seed", 0, "Seed of initial weights, crops, noise and transforms.")
    flags.DEFINE_enum("strategy", "none", ["none", "mirrored", "multi_worker"],
                      "mirrored: all local GPUs (two logical CPUs when there is none); "
                      "multi_worker: MultiWorkerMirroredStrategy configured by TF_CONFIG.")
    flags.DEFINE_boolean("overwrite", False, "Replace a finished run in --output.")
    flags.DEFINE_boolean("progress", True, "Show a progress bar per epoch (one line per epoch if off).")
    define_finetune_flags()
    flags.mark_flags_as_required(["measurements", "output"])


def define_finetune_flags():
    """Flags of fine-tuning and of the held-out measurements (issue #12)."""
    flags.DEFINE_string("init_from", None, "Start from this trained restorer: a .keras file, a run folder or a "
                        "shipped model's name (sei-tf models). Its backbone, channels and upscale factor must fit "
                        "this run; the physics may differ. A resumed run takes its weights from backup/.")
    flags.DEFINE_float("l2sp", 0.0, "With --init_from: weight alpha of the L2-SP penalty alpha/2 * ||w - w0||^2 "
                       "that keeps the weights w near the starting ones w0 (0: off). Try 0.01-1.")
    flags.DEFINE_list("trainable_layers", None, "Train only the backbone layers whose names match these globs "
                      "(e.g. tail or body,tail or 'block[67]_*,body,tail' for cnn, whose layers are head, "
                      "block0_a ... block7_b, body, tail); the others keep their weights. Default: all.")
    flags.DEFINE_float("holdout", 0.1, "Fraction of the measurement files held out of training (chosen by a hash "
                       "of the file name); the loss terms on them are reported per epoch (val_*) and "
                       "RUN_DIR/best.keras keeps the epoch with the lowest held-out loss. 0: none.")


class TrainingError(SeiTfError):
    """Training cannot go on; the message says why."""


def make_strategy(name):
    """The tf.distribute strategy named by --strategy (None for a single device)."""
    import tensorflow as tf

    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")  # (listing logical devices would fix them)
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


def check_global_batch(batch_size, replicas):
    """The random draws of a step are made per example of the global batch: it must split evenly."""
    if batch_size % replicas:
        raise TrainingError(f"--batch_size {batch_size} is not a multiple of the {replicas} replicas: "
                            "every replica must get the same number of examples. Use a multiple of "
                            f"{replicas}.")


def read_sidecar(measurements):
    """The folder's sidecar (dict) or None."""
    from sei_tf import data

    return data.read_sidecar(measurements) if os.path.isdir(measurements) else None


def estimated_noise(images):
    """`--noise auto`: the noise spec estimated from the measurements themselves (`sei_tf.noise_estimation`)."""
    from sei_tf import noise_estimation

    if FLAGS.noise_sigma is not None:
        raise TrainingError("--noise auto estimates the noise level: drop --noise_sigma.")
    try:
        result = noise_estimation.estimate(images)
    except noise_estimation.NoiseEstimationError as err:
        raise TrainingError(f"--noise auto: {err} Give the noise with --noise instead.") from None
    logging.info("--noise auto: estimated %s from %d measurement(s) (--noise %s).",
                 noise_estimation.describe(result), len(images), noise_estimation.to_spec(result))
    return noise_estimation.to_spec(result)


def resolve_physics(measurements, estimated=None):
    """The physics from the sidecar and/or the flags; flags that contradict the sidecar are errors.

    `estimated`: the noise spec of `--noise auto`, which replaces the noise a sidecar
    records (both are logged). Returns (physics, sidecar dict or {}).
    """
    from sei_tf import data, physics

    meta = read_sidecar(measurements)
    recorded = data.physics_from_sidecar(meta) if meta is not None else None
    if recorded is None and FLAGS.task is None:
        raise TrainingError("The measurements have no sei_tf.json sidecar: give --task "
                            "(and --factor or --kernel) and --noise (or --noise_sigma).")
    try:
        op = physics.from_flags(FLAGS.task, FLAGS.noise_sigma, like=recorded, noise=estimated or FLAGS.noise,
                                factor=FLAGS.factor, kernel=FLAGS.kernel)
    except physics.PhysicsError as err:
        if recorded is None:
            raise
        raise TrainingError(f"{err} {meta.get('_path', 'The sidecar')} records {recorded.describe()}; drop the "
                            "flag(s) to use the recorded physics.") from err
    if recorded is not None:
        checked = op
        if estimated:
            logging.info("--noise auto replaces the noise %s records (%s).", meta.get("_path", "the sidecar"),
                         recorded.noise.describe())
            checked = physics.from_flags(FLAGS.task, None, like=recorded, noise=recorded.noise,
                                         factor=FLAGS.factor, kernel=FLAGS.kernel)
        differences = recorded.differences(checked)
        if differences:
            given = " ".join(f"--{name}={getattr(FLAGS, name)}" for name in ("task", "factor", "kernel", "noise", "noise_sigma")
                             if getattr(FLAGS, name) is not None)
            raise TrainingError(f"{given} contradicts {meta.get('_path', 'the sidecar')}, which records "
                                f"{recorded.describe()}: {'; '.join(differences)}. Drop the flag(s) to use the "
                                "recorded physics.")
    return op, meta or {}


def split_holdout(files, images, names):
    """(training files, training images, held-out images) by --holdout (see sei_tf.holdout)."""
    from sei_tf import holdout

    train_idx, held_idx = holdout.split(files, FLAGS.holdout)
    if FLAGS.holdout and not held_idx:
        log = logging.warning if FLAGS["holdout"].present else logging.info
        log("--holdout %g of %d measurement file(s) rounds to none: nothing is held out, so no held-out loss "
            "is reported.", FLAGS.holdout, len(files))
    elif held_idx:
        logging.info("Holding out %d of %d measurements for validation: %s", len(held_idx), len(files),
                     ", ".join(os.path.basename(names[i]) for i in held_idx))
    return ([files[i] for i in train_idx], [images[i] for i in train_idx], [images[i] for i in held_idx])


def check_start(op, channels):
    """Checks --init_from, --l2sp and --trainable_layers before anything is written.

    Returns the source backbone of --init_from (None without it). A source that does
    not fit this run, or a --trainable_layers pattern that matches no layer, is an error.
    """
    from sei_tf import finetune, models

    backbone_args = json.loads(FLAGS.backbone_args)
    if not FLAGS.init_from:
        if FLAGS.l2sp:
            raise TrainingError("--l2sp keeps the weights near the starting ones: it needs --init_from.")
        source = None
        if FLAGS.trainable_layers:  # names come from the architecture: a throwaway copy
            probe = models.build(FLAGS.backbone, upscale=op.upscale, channels=channels, **backbone_args)
            models._build(probe)
            finetune.freeze(probe, FLAGS.trainable_layers)
        return source
    source, source_physics = finetune.load_source(FLAGS.init_from)
    differences = finetune.check_fits(source, source_physics, op, channels,
                                      FLAGS.backbone if FLAGS["backbone"].present else None, backbone_args)
    if differences:
        logging.info("Fine-tuning %s for another physics: %s", FLAGS.init_from, "; ".join(differences))
    if FLAGS.trainable_layers:
        finetune.freeze(finetune.start_from(source, copy_weights=False), FLAGS.trainable_layers)
    return source


def starting_backbone(source, op, channels, compute_type, resuming):
    """The backbone a run starts from: a copy of --init_from's `source`, or a new one (inside the strategy scope).

    When resuming, --init_from gives the architecture only: the weights come from backup/.
    SEIModel applies (and saves) --trainable_layers.
    """
    from sei_tf import finetune, models

    if source is None:
        return models.build(FLAGS.backbone, upscale=op.upscale, channels=channels, precision=compute_type,
                            **json.loads(FLAGS.backbone_args))
    logging.info("Starting from %s%s", FLAGS.init_from, " (architecture only: resuming)" if resuming else "")
    if FLAGS.trainable_layers:
        logging.info("Training only the layers matching %s (the others are frozen)", ",".join(FLAGS.trainable_layers))
    return finetune.start_from(source, compute_type, copy_weights=not resuming)


# What a run writes into --output (and sei_tf.evaluate's default report): --overwrite removes these.
RUN_ARTEFACTS = ("model.keras", "model.keras.tmp.keras", "log.csv", "config.json", "tensorboard", "backup",
                 "evaluation.csv", "best.keras", "best.keras.tmp.keras", "best.json")


# Flags that define what a run learns: the data, the instrument, the objective, the network and the
# seed. A resumed run must keep them (its backup's weights and data position belong to that run).
# The other flags (optimisation and display) may change on a resume; the change is logged.
RESUME_FIXED = ("measurements", "ground_truth", "method", "stop_gradient", "alpha", "backbone", "backbone_args",
                "task", "factor", "kernel", "noise", "noise_sigma", "channels", "batch_size", "patch_size",
                "dihedral", "seed", "init_from", "trainable_layers", "holdout")
RESUME_IGNORED = ("output", "overwrite", "progress")
PATH_FLAGS = ("measurements", "ground_truth", "init_from")  # compared as absolute paths


def _absolute(value):
    """A path flag's value (comma-separated parts) with each existing part made absolute."""
    if not isinstance(value, str):
        return value
    return ",".join(os.path.abspath(p) if os.path.exists(p) else p for p in value.split(","))


def run_settings():
    """This program's flags as JSON values, paths made absolute (what config.json records)."""
    settings = {fl.name: fl.value for fl in FLAGS.get_flags_for_module(sys.modules[__name__])}
    settings = json.loads(json.dumps(settings, default=str))
    for name in PATH_FLAGS:
        settings[name] = _absolute(settings.get(name))
    return settings


def check_resume(run_dir, settings):
    """Compares a resumed run's settings with those config.json recorded; returns the changes.

    Returns {flag: (recorded, now)} for the changed flags that may change. Raises TrainingError,
    touching nothing, when a flag of RESUME_FIXED changed. A run folder without config.json (a
    crash before it was written) has nothing to compare.
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path} cannot be read ({e}), so the flags of the run in {run_dir} are unknown. "
                            "Move the folder aside and start again, or choose another --output.") from e
    recorded = dict(record.get("flags", {}))
    for name in PATH_FLAGS:  # recorded absolute since this check exists; older relative ones: best effort
        recorded[name] = _absolute(recorded.get(name))
    changed = {name: (recorded[name], value) for name, value in settings.items()
               if name in recorded and name not in RESUME_IGNORED and recorded[name] != value}
    fixed = {name: change for name, change in changed.items() if name in RESUME_FIXED}
    if fixed:
        listed = "; ".join(f"--{name} was {old!r}, now {new!r}" for name, (old, new) in sorted(fixed.items()))
        raise TrainingError(
            f"{run_dir} holds an unfinished run (backup/) started with other settings: {listed}. A resumed run "
            "must keep what it learns (data, instrument, objective, network, seed). Rerun with the recorded "
            f"flags ({path}) to resume it, or choose another --output to start a new run.")
    return changed


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


def write_config(run_dir, settings, physics, done, resume_changes):
    """Writes run_dir/config.json (atomically): the flags, the physics, and the list of resumes.

    A resume appends {"after_epoch": done, "changed": {flag: [recorded, now]}} to "resumes"; "flags" holds
    the latest settings.
    """
    path = os.path.join(run_dir, "config.json")
    resumes = []
    if done and os.path.exists(path):
        with open(path) as f:
            resumes = json.load(f).get("resumes", [])
        resumes.append({"after_epoch": done, "changed": {k: list(v) for k, v in sorted(resume_changes.items())}})
    record = {"flags": settings, "physics": physics, "resumes": resumes}
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)


def train():
    """Runs training from FLAGS; returns the run folder."""
    import keras
    import tensorflow as tf

    from sei_tf import callbacks as callbacks_lib
    from sei_tf import data, models, objectives, precision, sei_model, transforms
    from sei_tf import noise as noise_lib

    run_dir = FLAGS.output
    # Before any TF op: logical CPU devices and collective ops are configured at start-up.
    strategy = make_strategy(FLAGS.strategy)
    check_global_batch(FLAGS.batch_size, strategy.num_replicas_in_sync if strategy else 1)
    if FLAGS.strategy == "multi_worker":
        from sei_tf import distributed

        # Only the chief writes into --output; other workers write into a temporary folder.
        run_dir = distributed.write_dir(FLAGS.output)
    # Refuse a finished run, or a resume with other settings, before loading anything.
    settings = run_settings()
    resume_changes = check_resume(run_dir, settings) if check_output(run_dir, FLAGS.overwrite, create=False) else {}
    for name, (old, new) in sorted(resume_changes.items()):
        logging.warning("Resuming with --%s %s (the run started with %s).", name, new, old)
    files = data.list_images(FLAGS.measurements)  # a folder, a file, or comma-separated paths
    channels = FLAGS.channels or (read_sidecar(FLAGS.measurements) or {}).get("channels") or 3
    estimated = None
    # UNSURE learns the noise level: with no noise given anywhere, the physics records the estimate.
    learns_noise = (FLAGS.method == "sei_unsure" and FLAGS.noise is None and FLAGS.noise_sigma is None
                    and read_sidecar(FLAGS.measurements) is None)
    if noise_lib.is_auto(FLAGS.noise) or learns_noise:  # the measurements are needed before the physics
        images, names = data.load_images(files, channels=channels)
        if learns_noise:
            logging.info("--method sei_unsure learns the noise level; the saved physics records the level "
                         "estimated from the measurements (as --noise auto), for reference.")
        estimated = estimated_noise(images)
    op, meta = resolve_physics(FLAGS.measurements, estimated)
    if FLAGS.dihedral and not transforms.commutes_with_dihedral(op):
        raise TrainingError(f"--dihedral: the physics ({op.describe()}) does not commute with rotations and flips "
                            "(A(Dx) differs from D(Ax)), so a rotated measurement is not a measurement of the "
                            "rotated image. Train without --dihedral.")
    if estimated is None:
        images, names = data.load_images(files, channels=channels)
    logging.info("%s", data.noise_model(images)[1])
    for warning in data.diagnose(images, op.noise_sigma, noise_model_name=op.noise.sure_estimator):
        logging.warning("%s", warning)
    all_files = files
    objective = objectives.preset(FLAGS.method, alpha=FLAGS.alpha, stop_gradient=FLAGS.stop_gradient,
                                  tau=FLAGS.tau, upscale=op.upscale)
    for term in objective:
        if hasattr(term, "tau"):
            logging.info("%s: divergence probe step tau = %g", term.name, term.tau)
    supervised = objectives.needs_ground_truth(objective)
    if supervised and not FLAGS.ground_truth:
        raise TrainingError(f"--method {FLAGS.method} needs --ground_truth.")
    op.check_measurement_size(FLAGS.patch_size, FLAGS.patch_size,
                              source=f"a training patch (--patch_size {FLAGS.patch_size})")
    for name, image in zip(names, images):
        if min(image.shape[:2]) < FLAGS.patch_size:
            raise TrainingError(f"{name}: the measurement is {image.shape[0]}x{image.shape[1]} pixels, smaller "
                                f"than --patch_size {FLAGS.patch_size}. Lower --patch_size or remove the image.")

    factor = op.upscale
    # Every measurement's ground truth, paired once over all files (a missing partner is an error
    # here), so that the training and held-out subsets each take their own partners.
    truth_of = {m: g for _, m, g in data.pair_files(all_files, FLAGS.ground_truth)} if FLAGS.ground_truth else {}
    files, images, held_out = split_holdout(files, images, names)
    if supervised:
        dataset = data.paired_patch_dataset(files, [truth_of[f] for f in files], FLAGS.patch_size,
                                            FLAGS.batch_size, channels, factor=factor, seed=FLAGS.seed,
                                            dihedral=FLAGS.dihedral)
    else:
        dataset = data.measurement_dataset(images, FLAGS.patch_size, FLAGS.batch_size, channels,
                                           seed=FLAGS.seed, factor=factor, dihedral=FLAGS.dihedral)
    validation = None
    if FLAGS.ground_truth:
        # PSNR/SSIM on the held-out measurements, or on all of them when none is held out.
        checked = [f for f in all_files if f not in files] or all_files
        validation = data.paired_dataset(checked, [truth_of[f] for f in checked], channels, factor=factor)
        # A known length: Keras would otherwise warn that the input "ran out of data" every run.
        validation = validation.apply(tf.data.experimental.assert_cardinality(len(checked)))
    elif held_out:
        from sei_tf import holdout

        validation = holdout.crops(held_out, FLAGS.patch_size, FLAGS.batch_size)
    source = check_start(op, channels)
    check_output(run_dir, FLAGS.overwrite)  # every input is checked: only now is --output touched

    # After a crash, skip the batches of finished epochs so the data matches an uninterrupted run.
    # (Multi-worker runs skip them in distributed.fit, after the chief's epoch is broadcast; the
    # chief, the only worker whose run_dir holds backup/, still records the resume in config.json.)
    resumed = callbacks_lib.resumed_epoch(os.path.join(run_dir, "backup"))
    done = 0 if FLAGS.strategy == "multi_worker" else resumed
    if done:
        logging.info("Resuming after epoch %d from %s/backup", done, run_dir)
        dataset = dataset.skip(done * FLAGS.steps_per_epoch)

    total_steps = FLAGS.epochs * FLAGS.steps_per_epoch
    lr = (sei_model.DelayedLinearDecay(FLAGS.learning_rate, total_steps) if FLAGS.schedule == "delayed_linear"
          else FLAGS.learning_rate)
    compute_type, why = precision.resolve(FLAGS.precision)
    logging.info("Precision: %s", why)
    keras.utils.set_random_seed(FLAGS.seed)
    # Creating the variables is the workers' first collective: a peer that stopped at start-up shows here.
    watched = (distributed.lost_workers_reported(lambda: "at start-up") if FLAGS.strategy == "multi_worker"
               else contextlib.nullcontext())
    with watched, strategy.scope() if strategy else contextlib.nullcontext():
        backbone = starting_backbone(source, op, channels, compute_type, resuming=bool(resumed))
        model = sei_model.SEIModel(backbone, op, objective=FLAGS.method, seed=FLAGS.seed, alpha=FLAGS.alpha,
                                   stop_gradient=FLAGS.stop_gradient, tau=FLAGS.tau, l2sp=FLAGS.l2sp,
                                   trainable_layers=FLAGS.trainable_layers)
        model.compile(keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.999))
    keep_best = None
    if held_out:  # the best epoch is judged on measurements that training never saw
        keep_best = ("val_psnr", "max") if FLAGS.ground_truth else ("val_loss", "min")
    sure_check = callbacks_lib.WarnNegativeSURE.for_objective(model.objective, op.noise)
    callbacks, watch = callbacks_lib.build_callbacks(run_dir, keep_best=keep_best, sure_check=sure_check)
    write_config(run_dir, settings, op.describe(), resumed, resume_changes)
    logging.info("Training %s with %s (%s) on %d images (%s), %d steps", FLAGS.backbone, FLAGS.method,
                 objectives.describe(model.objective), len(images), op.describe(), total_steps)
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
    if watch.bad_step is not None:
        kept = (f"The last good model is kept in {FLAGS.output}/model.keras"
                if os.path.exists(os.path.join(FLAGS.output, "model.keras"))
                else "No epoch ended before it, so no model was saved")
        raise TrainingError(
            f"The loss {watch.reason} at step {watch.bad_step}; training stopped. {kept}. "
            "Lower --learning_rate or check the data.")
    shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    print(f"trained {FLAGS.method} ({total_steps} steps); model written to {FLAGS.output}/model.keras")
    return run_dir


def main(argv):
    del argv
    train()


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
