"""Export a trained restorer to ONNX for onnxruntime / Triton serving.

    python export/to_onnx.py --model RUN_DIR/model.keras --output restorer.onnx [--opset 18] [--fp16]
    (also: python -m export.to_onnx ..., or sei-tf export ...)

Exports the backbone only (no physics), NHWC float32 in [0, 1] with dynamic
batch/height/width, writes the sei-tf metadata (including the physics), checks
the graph with onnx.checker and its parity with the Keras model on a real
photograph; fails (and writes nothing) above 1e-4 max abs error (2e-2 with
--fp16). Run as a script, it finds the `export` package because sei-tf is
installed (`pip install -e .`).
"""

import os
import sys

from absl import app, flags

from export import onnx_export
from sei_tf import cli

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the command-line flags (only when run as a program: importing has no side effects)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "Saved Keras model (RUN_DIR/model.keras, or RUN_DIR).", **fv)
    flags.DEFINE_string("output", None, "Output .onnx path.", **fv)
    flags.DEFINE_integer("opset", onnx_export.DEFAULT_OPSET,
                         "ONNX opset (18 is the highest tf2onnx 1.17 supports).", **fv)
    flags.DEFINE_bool("fp16", False, "Store float16 weights (needs onnxconverter-common); I/O stays float32.", **fv)
    flags.DEFINE_float("tolerance", None,
                       "Parity tolerance (max abs error on [0, 1] images); default 1e-4, or 2e-2 with --fp16.", **fv)
    flags.mark_flags_as_required(["model", "output"], flag_values=flag_values)


def main(argv):
    """Exports --model to --output and prints a one-line report."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    report = onnx_export.export(FLAGS.model, FLAGS.output, opset=FLAGS.opset, fp16=FLAGS.fp16,
                                tolerance=FLAGS.tolerance)
    meta = report["metadata"]
    print(f"wrote {report['output']} ({report['bytes'] / 1e6:.2f} MB, opset {report['opset']}): "
          f"{meta['operator']}, {meta['noise']}, {meta['channels']} channels, "
          f"tile context {meta['tile_context']}, max abs error {report['parity_max_abs_error']:.3g}")
    return 0


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
