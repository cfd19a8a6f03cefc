"""Lay out a Triton model repository for an exported restorer.

    python export/to_triton.py --onnx restorer.onnx --repository DIR [--name sei_restorer] [--max_batch_size 8]
    (also: python -m export.to_triton ..., or sei-tf triton ...)

Writes DIR/<name>/config.pbtxt (platform onnxruntime_onnx, dynamic H/W dims
-1, input/output names and types from the ONNX graph) and
DIR/<name>/1/model.onnx. Then: `tritonserver --model-repository DIR`. Needs
`onnx`, not TensorFlow.
"""

import sys

from absl import app, flags

from export import triton
from sei_tf import cli

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the command-line flags (only when run as a program: importing has no side effects)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("onnx", None, "Exported restorer (.onnx).", **fv)
    flags.DEFINE_string("repository", None, "Triton model repository folder.", **fv)
    flags.DEFINE_string("name", "sei_restorer", "Model name (folder name in the repository).", **fv)
    flags.DEFINE_integer("max_batch_size", 8, "Triton max_batch_size (0 disables batching).", **fv)
    flags.DEFINE_integer("version", 1, "Model version folder.", **fv)
    flags.DEFINE_bool("overwrite", False, "Replace an existing config.pbtxt / model.onnx.", **fv)
    flags.mark_flags_as_required(["onnx", "repository"], flag_values=flag_values)


def main(argv):
    """Writes the repository and prints the two paths."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    out = triton.write_repository(FLAGS.onnx, FLAGS.repository, FLAGS.name, FLAGS.max_batch_size,
                                  FLAGS.version, FLAGS.overwrite)
    print(f"wrote {out['config']} and {out['model']}")
    return 0


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
