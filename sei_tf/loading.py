"""The one way to load a trained restorer from disk (evaluate, restore, export, benchmarks).

A trained model is the `model.keras` file that `sei_tf.train` writes (an
`SEIModel`: backbone + physics + objective), its run folder, or the name of a
model shipped in `sei_tf.pretrained` (`sei-tf models` lists them). A bare backbone
saved with `backbone.save(...)` loads too, for tools that need only the network.
"""

import os

from sei_tf import pretrained
from sei_tf.errors import SeiTfError


class ModelError(SeiTfError, ValueError):
    """A model file that is missing, unreadable or not written by sei-tf."""


def model_path(path):
    """The model file: `path` itself, `path/model.keras` for a run folder, or a shipped model's file."""
    path = os.fspath(path)
    if not os.path.exists(path) and pretrained.is_name(path):
        try:
            return pretrained.path(path)
        except pretrained.UnknownModelError as err:
            raise ModelError(str(err)) from err
    if os.path.isdir(path):
        inner = os.path.join(path, "model.keras")
        if not os.path.isfile(inner):
            raise ModelError(f"{path} is a folder without model.keras; give the model file "
                             "written by sei_tf.train (RUN_DIR/model.keras).")
        return inner
    if not os.path.exists(path):
        raise ModelError(f"Model not found: {path}")
    if not path.endswith(".keras"):
        raise ModelError(f"{path}: expected a .keras model file written by sei_tf.train (RUN_DIR/model.keras).")
    return path


def load_any(path):
    """Loads an `SEIModel` or a bare sei-tf backbone; returns `(backbone, sei_model or None)`.

    The optimizer is not restored (`compile=False`): the model is for inference.
    """
    import keras

    from sei_tf import sei_model

    path = model_path(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # zipfile, h5py and deserialisation raise many types
        raise ModelError(f"{path}: cannot load the model (corrupt, truncated or not written by "
                         f"sei_tf.train?): {type(e).__name__}: {e}") from e
    if isinstance(model, sei_model.SEIModel):
        return model.backbone, model
    if hasattr(model, "upscale") and hasattr(model, "channels"):
        return model, None
    raise ModelError(f"{path}: holds a {type(model).__name__}, not a sei-tf model; give the model.keras "
                     "written by sei_tf.train.")


def load_model(path):
    """Loads the `SEIModel` saved by `sei_tf.train` (a file, or a run folder holding model.keras)."""
    backbone, model = load_any(path)
    if model is None:
        raise ModelError(f"{model_path(path)}: a bare {type(backbone).__name__} without physics; give the "
                         "model.keras written by sei_tf.train.")
    return model
