"""Export a trained restorer to ONNX for onnxruntime / Triton serving.

    python export/to_onnx.py --model RUN_DIR/model.keras --output restorer.onnx [--opset 18] [--fp16]

Exports the backbone only (no physics), NHWC float32 in [0, 1] with dynamic
batch/height/width, writes the sei-tf metadata, checks the graph with
onnx.checker and its parity with the Keras model on a real photograph; fails
(and writes nothing) above 1e-4 max abs error (2e-2 with --fp16).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from export import onnx_export  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Saved Keras model (RUN_DIR/model.keras).")
flags.DEFINE_string("output", None, "Output .onnx path.")
flags.DEFINE_integer("opset", onnx_export.DEFAULT_OPSET, "ONNX opset (18 is the highest tf2onnx 1.17 supports).")
flags.DEFINE_bool("fp16", False, "Store float16 weights (needs onnxconverter-common); I/O stays float32.")
flags.DEFINE_float("tolerance", None, "Parity tolerance (max abs error); default 1e-4, or 2e-2 with --fp16.")
flags.mark_flags_as_required(["model", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        report = onnx_export.export(FLAGS.model, FLAGS.output, opset=FLAGS.opset, fp16=FLAGS.fp16,
                                    tolerance=FLAGS.tolerance)
    except onnx_export.ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    meta = report["metadata"]
    print(f"wrote {report['output']} ({report['bytes'] / 1e6:.2f} MB, opset {report['opset']}): "
          f"task {meta['task']} x{meta['scale_factor']}, {meta['channels']} channels, "
          f"tile context {meta['tile_context']}, max abs error {report['parity_max_abs_error']:.3g}")
    return 0


if __name__ == "__main__":
    app.run(main)
