"""Keras callbacks of a training run: stop on a bad loss, last good model, crash backup, logs, SURE check.

A run folder holds `model.keras` (the last model whose weights were all finite,
written after every epoch by an atomic rename), `backup/` (Keras
`BackupAndRestore`: weights, optimizer state and epoch count, so a rerun resumes
after the last finished epoch), `log.csv` and `tensorboard/`. With a validation set
(held-out measurements or ground truth) it also holds `best.keras`, the model of the
epoch with the best validation score, and `best.json` (that epoch and score).
An epoch whose mean SURE fell far below 0 is never kept as the best (`WarnNegativeSURE`).
"""

import collections
import json
import os

import keras
import numpy as np
from absl import logging


class StopOnBlowUp(keras.callbacks.Callback):
    """Stops at the first step whose loss is non-finite or has blown up; the last good model.keras stays.

    Blown up: the logged loss (Keras's running mean over the epoch) exceeds
    `factor` times the median of |loss| over the last `window` steps. A finite
    blow-up passes a NaN check: SEI on SR x2 (tau 0.01, lr 1e-3, bfloat16) went
    from a loss of ~1e-3 to a mean of 1.1e6 over 500 steps and never reached Inf
    (benchmarks/results/budget_10000_sr_x2; this rule stopped it at step 4542,
    loss 1.46e3 against a median of 1.19e-3). A healthy run's loss falls by orders
    of magnitude but does not rise by them, so `factor` 1000 leaves a wide margin.
    `reason` says which rule stopped the run.
    """

    def __init__(self, factor=1000.0, window=100):
        super().__init__()
        self.factor, self.window = float(factor), int(window)
        self.recent = collections.deque(maxlen=self.window)
        self.bad_step = None
        self.reason = None

    def healthy(self):
        """No bad loss so far and every weight finite: safe to save."""
        return self.bad_step is None and all(np.all(np.isfinite(w)) for w in self.model.get_weights())

    def blown_up(self, loss):
        """The reason `loss` stops training ("became NaN/Inf ...", "blew up ..."), or None; remembers a good `loss`."""
        if not np.isfinite(loss):
            return f"became NaN/Inf ({loss})"
        if len(self.recent) == self.window:
            typical = float(np.median(np.abs(self.recent)))
            if abs(loss) > self.factor * typical:
                return (f"blew up to {loss:.3g} (more than {self.factor:g} times the median |loss| of the "
                        f"{self.window} steps before, {typical:.3g})")
        self.recent.append(loss)
        return None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.bad_step is not None:
            return
        reason = self.blown_up(float(loss))
        if reason:
            self.bad_step = int(self.model.optimizer.iterations)
            self.reason = reason
            self.model.stop_training = True


class SaveLastGood(keras.callbacks.Callback):
    """Writes model.keras after each epoch whose weights are all finite (atomic rename)."""

    def __init__(self, path, watch):
        super().__init__()
        self.path, self.watch = path, watch

    def on_epoch_end(self, epoch, logs=None):
        if not self.watch.healthy():
            return
        tmp = self.path + ".tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, self.path)


class BackupLastGood(keras.callbacks.BackupAndRestore):
    """BackupAndRestore skipping epochs that end in a bad loss or NaN weights: reruns resume from the last good one."""

    def __init__(self, path, watch):
        super().__init__(path, delete_checkpoint=False, double_checkpoint=True)
        self.watch = watch

    def on_epoch_end(self, epoch, logs=None):
        if self.watch.healthy():
            super().on_epoch_end(epoch, logs)


class KeepBest(keras.callbacks.Callback):
    """Writes best.keras (atomic rename) at each epoch whose `monitor` beats every earlier epoch's.

    `mode` "min" (a loss) or "max" (PSNR). The best score so far is read back from
    best.json at the start of training, so a resumed run keeps comparing with the
    epochs before the crash. Epochs ending in a bad loss or NaN weights are skipped,
    and so are those `trusted(logs)` rejects (e.g. `WarnNegativeSURE.trusted`: once
    SURE has collapsed, the lowest held-out loss marks the worst restorer, not the best).
    """

    def __init__(self, path, monitor, mode, watch, trusted=None):
        super().__init__()
        self.path, self.monitor, self.mode, self.watch = path, monitor, mode, watch
        self.trusted = trusted
        self.record = os.path.splitext(path)[0] + ".json"
        self.best = None

    def on_train_begin(self, logs=None):
        if os.path.exists(self.record) and os.path.exists(self.path):
            with open(self.record) as f:
                self.best = json.load(f).get("value")

    def better(self, value):
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(float(value)) or not self.better(float(value)):
            return
        if not self.watch.healthy():
            return
        if self.trusted is not None and not self.trusted(logs):
            logging.warning(f"epoch {epoch + 1}: {self.monitor} = {float(value):.4g} would be the best so far, "
                            f"but SURE no longer measures the error there: not kept in {os.path.basename(self.path)}.")
            return
        self.best = float(value)
        tmp = self.path + ".tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, self.path)  # the model first: best.json never names a model not on disk
        with open(self.record + ".tmp", "w") as f:
            json.dump({"epoch": epoch + 1, "monitor": self.monitor, "value": self.best}, f)
        os.replace(self.record + ".tmp", self.record)


class WarnNegativeSURE(keras.callbacks.Callback):
    """Warns (once per log key) when an epoch's mean SURE falls below `floor` (< 0).

    SURE estimates a squared error, so its mean over an epoch stays >= 0 up to its
    noise. Far below 0 it has stopped measuring the error: the network answers the
    divergence probe y + tau b differently from y (seen on SR x2 after 2400 steps
    of SURE alone and 6000-9500 steps of SEI at tau 0.01, benchmarks/results/
    sure_probe_step*.md). Training on it degrades the restorer while the loss keeps
    falling, so the lowest held-out loss would pick the worst epoch: `trusted(logs)`
    lets `KeepBest` skip such epochs. `keys` are the log entries to watch (e.g.
    "sure", "val_sure").
    """

    def __init__(self, keys, floor, tau):
        super().__init__()
        self.keys, self.floor, self.tau = list(keys), float(floor), tau
        self.warned = set()

    @classmethod
    def for_objective(cls, objective, noise):
        """The check for the SURE terms of `objective` (training and validation logs), or None.

        The floor is a tenth of the Gaussian noise variance below 0; noise without
        a Gaussian part (pure Poisson) gets no check.
        """
        from sei_tf import losses

        terms = [t for t in objective if isinstance(t, losses.SURE)]
        variance = float(noise.gaussian_variance)
        if not terms or variance <= 0:
            return None
        keys = [t.name for t in terms] + [f"val_{t.name}" for t in terms]
        return cls(keys, -0.1 * variance, terms[0].tau)

    def below_floor(self, logs):
        """{key: value} of the watched SURE means in these epoch logs that are below the floor."""
        logs = logs or {}
        return {k: float(logs[k]) for k in self.keys if k in logs and float(logs[k]) < self.floor}

    def trusted(self, logs):
        """False when a watched SURE mean of these epoch logs is below the floor."""
        return not self.below_floor(logs)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in self.below_floor(logs).items():
            if key in self.warned:
                continue
            self.warned.add(key)
            logging.warning(f"epoch {epoch + 1}: mean {key} = {value:.3g}, below {self.floor:.3g}. SURE "
                            "estimates a squared error, so it has stopped measuring the error: the network has "
                            f"learned to answer the divergence probe (step tau = {self.tau:g}) differently from real "
                            "measurements. The restorer degrades from here (a best.keras keeps no such epoch). "
                            "A probe adds tau^2 to the noise variance, which a network can learn to notice: "
                            "restart with a smaller --tau (the default 0.001 did not collapse in our runs of up to "
                            "20000 steps, where 0.01 did) or a lower --learning_rate.")


def resumed_epoch(backup_dir):
    """Epochs already finished according to BackupAndRestore's metadata (0 if none)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        # Keras writes the number of finished epochs (the next epoch's index).
        return int(json.load(f).get("epoch", 0))


def build_callbacks(run_dir, save_every_epoch=True, keep_best=None, sure_check=None):
    """The callbacks of a run writing into `run_dir`; returns (callbacks, the StopOnBlowUp watch).

    `keep_best`: (monitor, mode), e.g. ("val_loss", "min"), adds `KeepBest` writing best.keras.
    `sure_check`: a `WarnNegativeSURE`, added; when `KeepBest` monitors a loss it skips the
    epochs the check distrusts (a PSNR against ground truth needs no such check).
    """
    watch = StopOnBlowUp()
    callbacks = [
        watch,
        BackupLastGood(os.path.join(run_dir, "backup"), watch),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "log.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch"),
    ]
    if save_every_epoch:
        callbacks.append(SaveLastGood(os.path.join(run_dir, "model.keras"), watch))
    if keep_best:  # before the backup marks the epoch finished: a crash in between redoes the epoch
        callbacks.insert(1, KeepBest(os.path.join(run_dir, "best.keras"), *keep_best, watch,
                                     trusted=sure_check.trusted if sure_check and keep_best[1] == "min" else None))
    if sure_check:
        callbacks.append(sure_check)
    return callbacks, watch
