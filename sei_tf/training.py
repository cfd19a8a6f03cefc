"""`SEIModel`: a Keras model whose `fit` trains a restorer from measurements.

`model.fit(dataset)` takes batches of measurements `y` (float32 NHWC in
[0, 1]); only the "supervised" method needs `(y, x)` pairs. `evaluate` on
`(y, x)` pairs reports PSNR and SSIM with the paper's protocol.

Methods (the paper's comparison):
- "sei": SURE + alpha * scale-equivariance (SEQ), the proposed method;
- "sure": SURE alone;
- "ei_shift", "ei_rotate": SURE + alpha * equivariance to shifts / rotations;
- "css": the measurement as target of its own re-degraded copy;
- "supervised": MSE against ground truth.
`stop_gradient` (default True) stops the gradient through the equivariance
target; turning it off gives the paper's ablation.
"""

import keras
import tensorflow as tf

from sei_tf import losses, metrics, physics as physics_lib, rng, transforms

METHODS = ("sei", "sure", "ei_shift", "ei_rotate", "css", "supervised")


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


@keras.saving.register_keras_serializable(package="sei_tf")
class SEIModel(keras.Model):
    """Wraps a backbone restorer with the physics and the training objective.

    Calling the model runs the backbone only: `model(y)` is the restored image.
    """

    def __init__(self, backbone, physics, method="sei", alpha=1.0, stop_gradient=True,
                 scale_factors=(0.75, 0.5), scale_kind="padded", tau=0.01, seed=0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if isinstance(physics, dict):
            physics = physics_lib.deserialize(physics)
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
        self.backbone = backbone
        self.physics = physics
        self.method = method
        self.alpha = float(alpha)
        self.stop_gradient = bool(stop_gradient)
        self.scale_factors = tuple(scale_factors)
        self.scale_kind = scale_kind
        self.tau = float(tau)
        self.seed = int(seed)

        self.sure_loss = losses.SURELoss(tau=tau, margin=physics.margin)
        transform = {"sei": transforms.Scale(scale_factors, kind=scale_kind,
                                             multiple=getattr(physics, "factor", 1)),
                     "ei_shift": transforms.Shift(), "ei_rotate": transforms.Rotate()}.get(method)
        self.equivariance_loss = (losses.EquivarianceLoss(transform, stop_gradient)
                                  if transform is not None else None)

        names = {"sei": ["sure", "seq"], "sure": ["sure"], "ei_shift": ["sure", "ei"],
                 "ei_rotate": ["sure", "ei"], "css": ["css"], "supervised": ["supervised"]}[method]
        self.term_names = names
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.psnr_tracker = keras.metrics.Mean(name="psnr")
        self.ssim_tracker = keras.metrics.Mean(name="ssim")
        self.build((None, None, None, backbone.channels))

    @property
    def metrics(self):
        return [self.loss_tracker, *self.term_trackers.values(), self.psnr_tracker, self.ssim_tracker]

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone(tf.zeros([1, 16, 16, input_shape[-1]]))
        self.built = True

    def call(self, y, training=False):
        return self.backbone(y, training=training)

    def compile(self, optimizer="adam", jit_compile=False, **kwargs):
        # XLA cannot compile bicubic resizes, which the physics uses.
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        # Restores the optimizer (and its state, loaded next) of a saved model.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def loss_terms(self, y, x=None, seed=(0, 0), training=True):
        """Each loss term of the method, one value per batch element."""
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)

        def restorer(t):
            return self.backbone(t, training=training)

        if self.method == "supervised":
            if x is None:
                raise ValueError("method 'supervised' needs (measurement, ground truth) pairs.")
            return {"supervised": losses.supervised_loss(restorer(y), x)}
        if self.method == "css":
            return {"css": losses.css_loss(y, restorer, self.physics, seed)}
        x1 = restorer(y)
        terms = {"sure": self.sure_loss(y, x1, restorer, self.physics, rng.fold(seed, 1))}
        if self.equivariance_loss is not None:
            name = "seq" if self.method == "sei" else "ei"
            terms[name] = self.equivariance_loss(x1, restorer, self.physics, rng.fold(seed, 2))
        return terms

    def total(self, terms):
        """Per-example objective: the first term plus alpha times the equivariance term."""
        total = 0.0
        for name, value in terms.items():
            total += self.alpha * value if name in ("seq", "ei") else value
        return total

    def _step_seed(self):
        return tf.stack([tf.constant(self.seed, tf.int32), tf.cast(self.optimizer.iterations, tf.int32)])

    def train_step(self, data):
        y, x = _unpack(data)
        with tf.GradientTape() as tape:
            terms = self.loss_terms(y, x, self._step_seed(), training=True)
            per_example = self.total(terms)
            # Divides by the global batch, so replica gradients sum to the mean.
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, self.backbone.trainable_variables)
        self.optimizer.apply(grads, self.backbone.trainable_variables)
        return self._update(terms, per_example)

    def test_step(self, data):
        y, x = _unpack(data)
        if x is None:
            terms = self.loss_terms(y, None, (self.seed, 0), training=False)
            return self._update(terms, self.total(terms))
        x_hat = self(y, training=False)
        self.psnr_tracker.update_state(metrics.psnr(x_hat, x))
        self.ssim_tracker.update_state(metrics.ssim(x_hat, x))
        return {"psnr": self.psnr_tracker.result(), "ssim": self.ssim_tracker.result()}

    def _update(self, terms, per_example):
        self.loss_tracker.update_state(per_example)
        for name, value in terms.items():
            self.term_trackers[name].update_state(value)
        logs = {"loss": self.loss_tracker.result()}
        logs.update({n: self.term_trackers[n].result() for n in terms})
        return logs

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "physics": physics_lib.serialize(self.physics),
            "method": self.method, "alpha": self.alpha, "stop_gradient": self.stop_gradient,
            "scale_factors": list(self.scale_factors), "scale_kind": self.scale_kind,
            "tau": self.tau, "seed": self.seed,
        }


def _unpack(data):
    """Accepts `y`, `(y,)` or `(y, x)` dataset elements."""
    if isinstance(data, (tuple, list)):
        return data[0], (data[1] if len(data) > 1 else None)
    return data, None
