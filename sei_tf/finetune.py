"""Fine-tuning: start a run from a trained restorer (`train --init_from`) and train a subset of it.

- `load_source(name_or_path)`: the backbone (and physics, when recorded) of a saved
  `.keras` restorer, a run folder, or a shipped model's name (`sei_tf.pretrained`).
- `check_fits(...)`: the new run may change the physics (another kernel, noise
  level or noise model) but not the architecture, the channels or the upscale
  factor; a mismatch is an `InitError` that says what differs.
- `start_from(source, precision)`: a fresh backbone of the source's architecture,
  computing in `precision`, holding the source's weights.
- `freeze(backbone, patterns)`: only the layers whose names match the patterns stay
  trainable (see `layer_names`).

The L2-SP penalty that keeps the weights near the starting ones lives in
`sei_tf.sei_model.SEIModel` (`l2sp=`), so its starting weights are saved with the model.
"""

import fnmatch

from sei_tf.errors import SeiTfError


class InitError(SeiTfError, ValueError):
    """A starting model that does not fit this run; the message says what differs."""


def load_source(name_or_path):
    """(backbone, physics or None) of a saved restorer, run folder or shipped model name."""
    from sei_tf import loading

    backbone, model = loading.load_any(name_or_path)
    return backbone, (model.physics if model is not None else None)


def architecture(backbone):
    """The backbone's class and size arguments (what must match), without precision or naming."""
    config = dict(backbone.get_config())
    for key in ("name", "trainable", "dtype", "precision", "upscale", "channels"):
        config.pop(key, None)
    return type(backbone).__name__, config


def check_fits(backbone, source_physics, op, channels, backbone_name=None, backbone_args=None, source="--init_from"):
    """Raises InitError when the starting backbone cannot be trained for `op` on `channels`-channel data.

    `backbone_name` / `backbone_args`: the architecture asked for on the command line
    (None: not asked, take the source's). A different physics with the same upscale
    is allowed: that is what fine-tuning is for. Returns the differences of the physics
    (sentences, for the log).
    """
    from sei_tf import models

    problems = []
    if int(backbone.channels) != int(channels):
        problems.append(f"the channels: the model has {backbone.channels}, the measurements {channels}")
    if int(backbone.upscale) != int(op.upscale):
        problems.append(f"the upscale factor: the model's is {backbone.upscale}, this physics' ({op.describe()}) "
                        f"is {op.upscale}")
    if source_physics is not None and not problems and not source_physics.is_compatible(op):
        problems.append(f"the kind of instrument: the model restores {source_physics.describe()}, this run "
                        f"measures {op.describe()}")
    if backbone_name is not None or backbone_args:
        wanted = models.build(backbone_name or "cnn", upscale=op.upscale, channels=channels, **(backbone_args or {}))
        have, want = architecture(backbone), architecture(wanted)
        if have != want:
            problems.append(f"the backbone: the model is {have[0]} {have[1]}, the flags ask for {want[0]} {want[1]}")
    if problems:
        raise InitError(f"{source} does not fit this run: {'; '.join(problems)}. Fine-tuning may change the "
                        "blur kernel, the noise level or the noise model, but not the backbone, the channels or "
                        "the upscale factor.")
    return source_physics.differences(op) if source_physics is not None else []


def start_from(source, precision="float32", copy_weights=True):
    """A new backbone like `source` computing in `precision`, with `source`'s weights when `copy_weights`."""
    from sei_tf import models

    config = {**source.get_config(), "precision": precision}
    config.pop("dtype", None)
    backbone = type(source).from_config(config)
    models._build(backbone)
    if copy_weights:
        backbone.set_weights(source.get_weights())
    return backbone


def _owner(backbone, variable):
    """The path, inside the backbone, of the layer that owns `variable` ('tail', 'rstb_0/stl_0/attn/qkv')."""
    path = variable.path.rsplit("/", 1)[0]
    prefix = (backbone.path or backbone.name) + "/"  # a deserialised backbone may have no path
    return path[len(prefix):] if path.startswith(prefix) else path


def layer_names(backbone):
    """Names of the backbone's layers that own weights, in order (cnn: head, block0_a ... block7_b, body, tail)."""
    return list(dict.fromkeys(_owner(backbone, v) for v in backbone.weights))


def freeze(backbone, patterns):
    """Keeps trainable only the weights of layers whose names match one of the glob `patterns`.

    Names are those of `layer_names`; `*` matches across '/'. E.g. ["tail"] trains
    the last convolution only, ["body", "tail"] the last two, ["block[67]_*", "body",
    "tail"] the last two residual blocks too. A pattern that matches no layer is an
    InitError listing the names. Returns the names of the layers left trainable.
    """
    names = layer_names(backbone)
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        raise InitError(f"--trainable_layers {','.join(unmatched)} matches no layer of the backbone; its layers "
                        f"are: {', '.join(names)}.")
    keep = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    for v in backbone.weights:
        v.trainable = _owner(backbone, v) in keep
    return keep
