"""Training objectives: a list of weighted loss terms, and the named presets.

An objective is a list of `sei_tf.losses` terms; its value per example is the
weighted sum of the terms. The SEI objective (Scanvic et al., arXiv 2312.11232):

    x1 = f(y)
    L_SURE = ||A x1 - y||^2 / m - sigma^2 + 2 sigma^2 div / m        (losses.sure_gaussian)
             div = sum(b * (A f(y + tau b) - A x1)) / tau,  b ~ N(0, I)
    x2 = stop_gradient(T_s(x1)),  s ~ U{0.75, 0.5}                      (transforms.Scale)
    y2 = A x2 + e'                                                       (fresh noise)
    L_SEQ = ||f(y2) - x2||^2 / n                                         (losses.Equivariance)
    L = L_SURE + alpha * L_SEQ,  alpha = 1

The paper's probe step is tau = 0.01; sei-tf's default is 0.001 (`losses.DEFAULT_TAU`):
at 0.01 SEI's SURE collapsed in long runs, with Gaussian and with Poisson-Gaussian noise.

The presets are the methods of the paper's comparison; the command line and the
benchmarks use them by name.
"""

import keras

from sei_tf import losses, transforms, unsure
from sei_tf.errors import SeiTfError

PRESETS = ("sei", "sei_no_stop_gradient", "sei_unsure", "sure", "ei_shift", "ei_rotate", "ei_rotate_nearest", "css",
           "supervised", "supervised_scale")


def preset(name, alpha=1.0, stop_gradient=True, tau=losses.DEFAULT_TAU, scale_factors=(0.75, 0.5), scale_kind="padded",
           upscale=1):
    """The list of terms of a named method.

    - "sei": SURE + alpha * scale equivariance (SEQ), the proposed method;
    - "sei_no_stop_gradient": the same with the gradient through the SEQ target (ablation);
    - "sei_unsure": UNSURE (`sei_tf.unsure`: SURE with the noise variance learned by
      gradient ascent, for an unknown noise level) + alpha * SEQ whose fresh noise has
      the learned variance: the physics' noise level is not used;
    - "sure": SURE alone;
    - "ei_shift", "ei_rotate": SURE + alpha * equivariance to shifts / rotations;
    - "ei_rotate_nearest": "ei_rotate" with nearest-neighbour rotations (bilinear in
      "ei_rotate"), the variant the reference's EI baseline used;
    - "css": the measurement as target of its own re-degraded copy;
    - "supervised": MSE against ground truth;
    - "supervised_scale": MSE against ground truth, plus the same on measurements
      simulated from ground truth rescaled by SEI's transform
      (`losses.SimulatedSupervised`): supervised learning with the augmentation SEI sees.
    `tau` is SURE's probe step (`losses.SURE`);
    `stop_gradient=False` turns any equivariance term into its ablation; `upscale` is
    the physics' upscale (the "resize" scale transform keeps sizes multiples of it).
    """
    if name not in PRESETS:
        raise SeiTfError(f"Unknown method {name!r}; choose one of {', '.join(PRESETS)}.")
    if name == "supervised":
        return [losses.Supervised()]
    if name == "supervised_scale":
        transform = transforms.Scale(scale_factors, kind=scale_kind, multiple=upscale)
        return [losses.Supervised(), losses.SimulatedSupervised(transform, weight=alpha)]
    if name == "css":
        return [losses.CSS()]
    sure = unsure.UNSURE(tau=tau) if name == "sei_unsure" else losses.SURE(tau=tau)
    if name == "sure":
        return [sure]
    if name.startswith("sei"):
        transform = transforms.Scale(scale_factors, kind=scale_kind, multiple=upscale)
        equivariance_name = "seq"
        stop_gradient = stop_gradient and name != "sei_no_stop_gradient"
    else:
        if name == "ei_shift":
            transform = transforms.Shift()
        else:
            transform = transforms.Rotate("nearest" if name == "ei_rotate_nearest" else "bilinear")
        equivariance_name = "ei"
    if name == "sei_unsure":
        return [sure, unsure.LearnedNoiseEquivariance(transform, stop_gradient, source=sure.name,
                                                       name=equivariance_name, weight=alpha)]
    return [sure, losses.Equivariance(transform, stop_gradient, name=equivariance_name, weight=alpha)]


def check(terms):
    """Raises SeiTfError unless `terms` is a non-empty list of terms with distinct names.

    Terms that read another term's state (`bind`, e.g. `unsure.LearnedNoiseEquivariance`)
    are linked to it here.
    """
    if not terms or not all(isinstance(t, losses.LossTerm) for t in terms):
        raise SeiTfError(f"An objective is a non-empty list of sei_tf.losses terms, got {terms!r}.")
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise SeiTfError(f"The terms of an objective need distinct names, got {names}.")
    for t in terms:
        if hasattr(t, "bind"):
            t.bind(terms)
    return list(terms)


def total(terms, values):
    """Weighted sum of the per-example term values (`values`: name -> tensor of shape (B,))."""
    out = 0.0
    for term in terms:
        out += term.weight * values[term.name]
    return out


def needs_ground_truth(terms):
    return any(getattr(t, "needs_ground_truth", False) for t in terms)


def describe(terms):
    """E.g. 'sure + 1*seq' for people and logs."""
    return " + ".join(t.name if t.weight == 1.0 else f"{t.weight:g}*{t.name}" for t in terms)


def serialize(terms):
    return [keras.saving.serialize_keras_object(t) for t in terms]


def deserialize(configs):
    return check([keras.saving.deserialize_keras_object(c) for c in configs])
