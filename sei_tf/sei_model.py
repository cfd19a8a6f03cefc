"""`SEIModel`: a Keras model whose `fit` trains a restorer from measurements.

`model.fit(dataset)` takes batches of measurements `y` (float32 NHWC in [0, 1]);
an objective with a supervised term needs `(y, x)` pairs. `evaluate` on `(y, x)`
pairs reports PSNR and SSIM with the paper's protocol.

The objective is a list of loss terms (`sei_tf.objectives`, where the SEI
equations are written out); give a preset name (`objectives.PRESETS`: "sei",
"sure", "ei_shift", "ei_rotate", "css", "supervised", ...) or a list of terms.
Terms may hold state (`variables`, e.g. UNSURE's learned noise variance,
`sei_tf.unsure`): the model tracks, saves and logs it, and takes the ascent steps
of terms that maximise over it (`ascent_variables`, `ascend`).

Fine-tuning (`sei_tf.finetune`, `train --init_from`): `l2sp=alpha` adds the L2-SP
penalty (Li et al., 2018) that keeps the weights near the ones the model started from,

    alpha / 2 * sum_l ||w_l - w0_l||^2     (sum over every backbone weight),

to the loss that is minimised. The starting weights `w0` are non-trainable
variables of the model, so they are saved in `model.keras` and in the crash backup.
`trainable_layers=[globs]` trains only the matching backbone layers
(`sei_tf.finetune.freeze`); it is saved in the config, so a reloaded model has the
same trainable weights and its optimizer state fits them.
"""

import keras
import tensorflow as tf

from sei_tf import metrics, objectives, physics as physics_lib, rng
from sei_tf import models  # also registers the backbones that saved models name
from sei_tf.errors import SeiTfError


@keras.saving.register_keras_serializable(package="sei_tf")
class DelayedLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Constant learning rate for `hold` of the steps, then linear decay to `final_ratio`x."""

    def __init__(self, initial, total_steps, hold=0.5, final_ratio=0.01):
        self.initial = float(initial)
        self.total_steps = int(total_steps)
        self.hold = float(hold)
        self.final_ratio = float(final_ratio)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        start = self.hold * self.total_steps
        span = tf.maximum(self.total_steps - start, 1.0)
        progress = tf.clip_by_value((step - start) / span, 0.0, 1.0)
        return self.initial * (1.0 - (1.0 - self.final_ratio) * progress)

    def get_config(self):
        return {"initial": self.initial, "total_steps": self.total_steps,
                "hold": self.hold, "final_ratio": self.final_ratio}


# Options of a preset objective (see `objectives.preset`); version 0.1 saved them in the model config.
PRESET_OPTIONS = ("alpha", "stop_gradient", "scale_factors", "scale_kind", "tau")


@keras.saving.register_keras_serializable(package="sei_tf")
class SEIModel(keras.Model):
    """Wraps a backbone restorer with the physics and the training objective.

    Calling the model runs the backbone only: `model(y)` is the restored image.
    `objective`: a preset name (with the preset's options, PRESET_OPTIONS, as keyword
    arguments) or a list of `sei_tf.losses` terms; `method` is an older name for
    the same argument. `seed` seeds every random draw of a step, together with the
    step number.
    """

    def __init__(self, backbone, physics, objective="sei", seed=0, method=None, l2sp=0.0, trainable_layers=None,
                 **kwargs):
        options = {k: kwargs.pop(k) for k in PRESET_OPTIONS if k in kwargs}
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        self.backbone = backbone
        self.physics = physics_lib.deserialize(physics)
        objective = method or objective
        if isinstance(objective, str):
            self.method = objective
            objective = objectives.preset(objective, upscale=self.physics.upscale, **options)
        else:
            if options:
                raise SeiTfError(f"{', '.join(options)} only apply to a preset objective; set them on the "
                                 "terms of a custom objective.")
            self.method = "custom"
            if objective and isinstance(objective[0], dict):
                objective = objectives.deserialize(objective)
        self.objective = objectives.check(objective)
        self.seed = int(seed)
        # State of the terms (e.g. UNSURE's learned noise variance): tracked, so saved and restored.
        self.term_variables = [v for t in self.objective for v in getattr(t, "variables", ())]
        self.l2sp = float(l2sp)
        if self.l2sp < 0:
            raise SeiTfError(f"The L2-SP weight must be >= 0, not {l2sp}.")
        self.anchor = []  # the starting weights w0 of the L2-SP penalty (made in build)

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = {t.name: keras.metrics.Mean(name=t.name) for t in self.objective}
        self.psnr_tracker = keras.metrics.Mean(name="psnr")
        self.ssim_tracker = keras.metrics.Mean(name="ssim")
        self.l2sp_tracker = keras.metrics.Mean(name="l2sp") if self.l2sp else None
        self.build((None, None, None, backbone.channels))
        self.trainable_layers = list(trainable_layers) if trainable_layers else None
        if self.trainable_layers:
            from sei_tf import finetune

            finetune.freeze(self.backbone, self.trainable_layers)

    @property
    def metrics(self):
        extra = [self.l2sp_tracker] if self.l2sp_tracker is not None else []
        return [self.loss_tracker, *self.term_trackers.values(), *extra, self.psnr_tracker, self.ssim_tracker]

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone(tf.zeros([1, 16, 16, input_shape[-1]]))
        if self.l2sp and not self.anchor:
            # w0 = the backbone's weights now (a loaded model then overwrites them with the saved w0).
            for i, w in enumerate(self.backbone.weights):
                v = self.add_weight(shape=w.shape, dtype=w.dtype, initializer="zeros", trainable=False,
                                    name=f"l2sp_anchor_{i}")
                v.assign(w)
                self.anchor.append(v)
        self.built = True

    def l2sp_penalty(self):
        """alpha / 2 * sum ||w - w0||^2 over the backbone's weights (float32 scalar; 0 without L2-SP)."""
        if not self.l2sp:
            return tf.constant(0.0)
        squares = [tf.reduce_sum(tf.square(tf.cast(w, tf.float32) - tf.cast(w0, tf.float32)))
                   for w, w0 in zip(self.backbone.weights, self.anchor)]
        return 0.5 * self.l2sp * tf.add_n(squares)

    def call(self, y, training=False):
        return self.backbone(y, training=training)

    @property
    def precision(self):
        """The type the backbone computes in: "float32", "bfloat16" or "float16" (see sei_tf.precision)."""
        return models.precision_of(self.backbone)

    def compile(self, optimizer="adam", jit_compile=False, **kwargs):
        """Keras `compile`; a float16 backbone gets its optimizer wrapped in a `LossScaleOptimizer`.

        float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
        """
        optimizer = keras.optimizers.get(optimizer)
        if self.precision == "float16" and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # XLA cannot compile bicubic resizes, which the physics uses.
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        # Restores the optimizer (and its state, loaded next) of a saved model.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def loss_terms(self, y, x=None, seed=(0, 0), training=True):
        """Each term of the objective, one value per batch element (name -> tensor).

        Term i draws its random numbers from `fold(seed, i + 1)`.
        """
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)

        def restorer(t):
            return self.backbone(t, training=training)

        x_net = restorer(y)
        return {term.name: term(x_net, y, self.physics, restorer, rng.fold(seed, i + 1), x=x)
                for i, term in enumerate(self.objective)}

    def train_step(self, data):
        y, x, _ = keras.utils.unpack_x_y_sample_weight(data)
        # Terms that maximise over their own state (UNSURE's noise variance): `ascent_variables`, `ascend`.
        ascending = [t for t in self.objective if getattr(t, "ascent_variables", None)]
        state = [v.value for t in ascending for v in t.ascent_variables]
        with tf.GradientTape() as tape:
            tape.watch(state)  # non-trainable variables: the tape does not watch them by itself
            terms = self.loss_terms(y, x, self._step_seed(), training=True)
            per_example = objectives.total(self.objective, terms)
            # Divides by the global batch, so replica gradients sum to the mean.
            loss = tf.nn.compute_average_loss(per_example)
            if self.l2sp:
                penalty = self.l2sp_penalty()
                # Not per example: divided by the replica count, so replica gradients sum to one penalty.
                loss += tf.nn.scale_regularization_loss(penalty)
                self.l2sp_tracker.update_state(penalty)
            # Multiplied by the loss scale under float16 (apply() unscales); unchanged otherwise.
            scaled_loss = self.optimizer.scale_loss(loss)
        weights = self.backbone.trainable_variables
        grads = tape.gradient(scaled_loss, weights + state)
        self.optimizer.apply(grads[:len(weights)], weights)
        if ascending:
            scale = self.optimizer.scale_loss(tf.constant(1.0))
            state_grads = [g / scale for g in grads[len(weights):]]
            for term in ascending:  # one ascent step each, after the network's descent step
                n = len(term.ascent_variables)
                term.ascend(state_grads[:n])
                state_grads = state_grads[n:]
        return self._update(terms, per_example)

    def test_step(self, data):
        y, x, _ = keras.utils.unpack_x_y_sample_weight(data)
        if x is None:
            terms = self.loss_terms(y, None, (self.seed, 0), training=False)
            if self.l2sp:
                self.l2sp_tracker.update_state(self.l2sp_penalty())
            return self._update(terms, objectives.total(self.objective, terms))
        x_hat = self(y, training=False)
        self.psnr_tracker.update_state(metrics.psnr(x_hat, x))
        self.ssim_tracker.update_state(metrics.ssim(x_hat, x))
        return {"psnr": self.psnr_tracker.result(), "ssim": self.ssim_tracker.result()}

    def _step_seed(self):
        return tf.stack([tf.constant(self.seed, tf.int32), tf.cast(self.optimizer.iterations, tf.int32)])

    def _update(self, terms, per_example):
        self.loss_tracker.update_state(per_example)
        for name, value in terms.items():
            self.term_trackers[name].update_state(value)
        logs = {"loss": self.loss_tracker.result()}
        logs.update({n: self.term_trackers[n].result() for n in terms})
        for term in self.objective:  # a term's state, e.g. UNSURE's learned sigma
            if hasattr(term, "logs"):
                logs.update(term.logs())
        if self.l2sp_tracker is not None:
            logs["l2sp"] = self.l2sp_tracker.result()
        return logs

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "physics": physics_lib.serialize(self.physics),
            "objective": objectives.serialize(self.objective),
            "method": self.method,
            "seed": self.seed,
            "l2sp": self.l2sp,
            "trainable_layers": self.trainable_layers,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "objective" in config:  # a saved list of terms; `method` names it
            objective = objectives.deserialize(config.pop("objective"))
            method = config.pop("method", "custom")
            model = cls(objective=objective, **config)
            model.method = method
            return model
        return cls(**config)  # version 0.1: `method` plus the options in PRESET_OPTIONS
