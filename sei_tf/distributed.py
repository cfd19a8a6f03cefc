"""Multi-worker training (`--strategy multi_worker`): a custom loop around `SEIModel.train_step`.

Why not `model.fit`: under `MultiWorkerMirroredStrategy`, Keras 3 `fit` with a
custom `train_step` fails on scalar logs ("Invalid reduction dimension 0",
tensorflow#72388, keras#20585) and on tuple dataset elements (`PerReplica`).
Holding fit to a narrower contract (single-tensor elements, rank-1 logs) would
break `--method supervised` (pairs) and change the logs every callback reads.
So `fit` here runs the same `SEIModel.train_step` (the step Keras' own `fit`
runs inside `strategy.run`) in a small loop of our own and drives the same
Keras callbacks (BackupAndRestore, CSVLogger, TensorBoard, NaN stop, last-good
model) with logs that are already reduced over all replicas.

Data: every worker builds the same stream of *global* batches (stateless
seeds, see `sei_tf.data`) and keeps its replicas' slices, replica `r` getting
rows `[r * b, (r + 1) * b)` of each global batch (`b` = global batch / replicas).
With the per-example random draws of `sei_tf.rng`, a step on N workers equals a
single-device step on the same global batch up to float summation order.

Fault tolerance: only the chief (task "chief", or "worker" 0 when there is no
chief) keeps a backup (`RUN_DIR/backup`, the format of
`keras.callbacks.BackupAndRestore`). On restart the chief restores it and
broadcasts the weights, the optimizer state and the epoch to all workers, so
the other workers need no state of their own and no shared file system.
When a peer dies mid-run (or stops at start-up with an error of its own), the
failed collective becomes a `WorkerLostError`
(a `ConnectionError`, so the train CLI prints it and exits with status 1)
telling the user to restart all workers.

Writing: every worker runs the same save calls (reading some distributed
variables is a collective operation that all workers must join), but only the
chief writes into RUN_DIR; the others write into a temporary folder that is
deleted at the end (the standard multi-worker pattern).
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile

from absl import logging


class WorkerLostError(ConnectionError):
    """Another worker stopped answering (crash, kill, lost machine): restart them all to resume."""


@contextlib.contextmanager
def lost_workers_reported(during):
    """Turns a failed collective inside the block into a `WorkerLostError`.

    A collective fails when a peer crashed, was killed, is unreachable, or stopped at start-up with
    an error of its own (e.g. a chief that refuses to resume with other flags). `during` is a
    zero-argument callable giving when it happened, in words ("during epoch 3").
    """
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as e:
        text = (getattr(e, "message", "") or str(e)).strip()
        found = re.search(r"aborted by: ([^\n]+)", text)
        reason = (found.group(1) if found else text.splitlines()[-1] if text else type(e).__name__)[:300]
        raise WorkerLostError(
            f"Lost contact with another worker {during()} ({reason}). If another worker stopped with an "
            "error, fix what it names first. Then restart every worker with the same command and TF_CONFIG: "
            "training resumes after the last epoch saved in the chief's backup/ folder.") from e


def cluster_task(tf_config=None):
    """(task type, task index, number of workers) from TF_CONFIG, without importing TF.

    Raises ValueError when TF_CONFIG is missing or malformed.
    """
    raw = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    if not raw:
        raise ValueError("TF_CONFIG is not set: --strategy multi_worker needs it on every worker.")
    try:
        config = json.loads(raw) if isinstance(raw, str) else dict(raw)
        cluster = config["cluster"]
        task = config["task"]
        task_type, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG is malformed ({e!r}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}.')
    if task_type not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG task type {task_type!r} is not supported (use 'worker' or 'chief').")
    if task_type not in cluster or not 0 <= index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG task {task_type}:{index} is not in its cluster {cluster}.")
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return task_type, index, workers


def is_chief(tf_config=None):
    """True on the task that writes the run folder: 'chief', or 'worker' 0 if there is no chief."""
    task_type, index, _ = cluster_task(tf_config)
    if task_type == "chief":
        return True
    raw = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    cluster = (json.loads(raw) if isinstance(raw, str) else raw)["cluster"]
    return "chief" not in cluster and index == 0


def write_dir(run_dir, tf_config=None):
    """The folder this worker writes to: `run_dir` on the chief, a new temporary folder elsewhere."""
    if is_chief(tf_config):
        return run_dir
    task_type, index, _ = cluster_task(tf_config)
    return tempfile.mkdtemp(prefix=f"sei_tf_{task_type}{index}_")


def _replica_slices(dataset, ctx):
    """This worker's per-replica batches cut from a dataset of global batches."""
    import tensorflow as tf

    n = ctx.num_replicas_in_sync
    local = n // ctx.num_input_pipelines
    first = ctx.input_pipeline_id * local

    def cut(t):
        size = t.shape[0]
        if size is None:
            raise ValueError("multi-worker training needs batches of a fixed size (drop_remainder=True).")
        if size % n:
            raise ValueError(f"The global batch size {size} is not a multiple of the {n} replicas.")
        return tf.reshape(t, [n, size // n, *t.shape[1:]])[first:first + local]

    def split(*element):
        element = element[0] if len(element) == 1 else element
        return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(cut, element))

    return dataset.flat_map(split)


def distribute_global_batches(strategy, dataset):
    """A distributed dataset: replica r of step k gets slice r of global batch k."""
    return strategy.distribute_datasets_from_function(lambda ctx: _replica_slices(dataset, ctx))


def broadcast_from_first_replica(strategy, values):
    """Every replica's copy of `values` (tensors/variables) replaced by replica 0's (the chief's)."""
    import tensorflow as tf

    values = [tf.convert_to_tensor(v) for v in values]
    wide = [tf.float64 if v.dtype.is_integer else v.dtype for v in values]

    @tf.function
    def run():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            mine = tf.equal(ctx.replica_id_in_sync_group, 0)
            out = []
            for v, dtype in zip(values, wide):
                v = tf.cast(v, dtype)
                out.append(ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.where(mine, v, tf.zeros_like(v))))
            return out
        return strategy.run(replica_fn)

    results = run()
    local = [strategy.experimental_local_results(r)[0] for r in results]
    return [tf.cast(r, v.dtype) for r, v in zip(local, values)]


def weights_fingerprint(model):
    """SHA-1 of this worker's copy of the trainable weights (equal on all workers when in sync)."""
    h = hashlib.sha1()
    for w in model.trainable_variables:
        h.update(w.numpy().tobytes())
    return h.hexdigest()


def fit(model, dataset, epochs, steps_per_epoch, callbacks, strategy, validation=None, verbose=True):
    """Trains `model` (built and compiled under `strategy.scope()`) on global batches of `dataset`.

    `dataset` yields global batches from the beginning of training; batches of
    epochs already finished (restored by a BackupAndRestore callback on the
    chief) are skipped here. Returns the epoch logs of the last epoch.
    """
    import keras
    import tensorflow as tf

    from sei_tf import callbacks as callbacks_lib

    if not model.optimizer.built:
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    cbs = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs, steps=steps_per_epoch,
                                       verbose=0)
    model.stop_training = False
    cbs.on_train_begin()  # BackupAndRestore restores the chief's backup here

    # All workers take the chief's epoch (read from its backup), weights and optimizer state.
    backups = [cb for cb in callbacks if isinstance(cb, keras.callbacks.BackupAndRestore)]
    chief_done = callbacks_lib.resumed_epoch(backups[0].backup_dir) if backups else 0
    with lost_workers_reported(lambda: "at start-up"):
        done = int(broadcast_from_first_replica(strategy, [tf.constant(chief_done, tf.int64)])[0])
        if done:
            state = list(model.trainable_variables) + list(model.non_trainable_variables) + list(
                model.optimizer.variables)
            for var, value in zip(state, broadcast_from_first_replica(strategy, state)):
                var.assign(value)
            logging.info("Resuming after epoch %d (state broadcast from the chief)", done)
    iterator = iter(distribute_global_batches(strategy, dataset.skip(done * steps_per_epoch)))

    @tf.function
    def train_step(it):
        logs = strategy.run(model.train_step, args=(next(it),))
        # Running means of equal-size replica batches: their mean is the global running mean.
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    logs, epoch = {}, done
    with lost_workers_reported(lambda: f"during epoch {epoch + 1}"):
        for epoch in range(done, epochs):
            for m in model.metrics:
                m.reset_state()
            cbs.on_epoch_begin(epoch)
            for step in range(steps_per_epoch):
                cbs.on_train_batch_begin(step)
                logs = {k: float(v) for k, v in train_step(iterator).items()}
                cbs.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            if validation is not None:
                logs.update(_validate(model, validation))
            cbs.on_epoch_end(epoch, logs)
            if verbose:
                logging.info("epoch %d/%d: %s", epoch + 1, epochs,
                             ", ".join(f"{k}={v:.6g}" for k, v in logs.items()))
            if model.stop_training:
                break
    cbs.on_train_end(logs)
    logging.info("final weights fingerprint: %s", weights_fingerprint(model))
    return logs


def _validate(model, validation):
    """PSNR/SSIM on (y, x) pairs, computed locally (no collective), as Keras names them in logs."""
    import numpy as np

    from sei_tf import metrics

    psnr, ssim = [], []
    for batch in validation:
        y, x = batch[0], batch[1]
        x_hat = model.backbone(y, training=False)
        psnr.append(np.ravel(metrics.psnr(x_hat, x).numpy()))
        ssim.append(np.ravel(metrics.ssim(x_hat, x).numpy()))
    return {"val_psnr": float(np.mean(np.concatenate(psnr))), "val_ssim": float(np.mean(np.concatenate(ssim)))}


def cleanup(path, run_dir):
    """Removes a non-chief worker's temporary folder (never the run folder itself)."""
    if os.path.abspath(path) != os.path.abspath(run_dir):
        shutil.rmtree(path, ignore_errors=True)
