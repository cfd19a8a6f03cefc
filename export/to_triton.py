"""Lay out a Triton model repository for an exported restorer.

    python export/to_triton.py --onnx restorer.onnx --repository DIR [--name sei_restorer] [--max_batch_size 8]

Writes DIR/<name>/config.pbtxt (platform onnxruntime_onnx, dynamic H/W dims
-1, input/output names and types from the ONNX graph) and
DIR/<name>/1/model.onnx. Then: `tritonserver --model-repository DIR`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from export import triton  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("onnx", None, "Exported restorer (.onnx).")
flags.DEFINE_string("repository", None, "Triton model repository folder.")
flags.DEFINE_string("name", "sei_restorer", "Model name (folder name in the repository).")
flags.DEFINE_integer("max_batch_size", 8, "Triton max_batch_size (0 disables batching).")
flags.DEFINE_integer("version", 1, "Model version folder.")
flags.DEFINE_bool("overwrite", False, "Replace an existing config.pbtxt / model.onnx.")
flags.mark_flags_as_required(["onnx", "repository"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        out = triton.write_repository(FLAGS.onnx, FLAGS.repository, FLAGS.name, FLAGS.max_batch_size,
                                      FLAGS.version, FLAGS.overwrite)
    except triton.TritonError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out['config']} and {out['model']}")
    return 0


if __name__ == "__main__":
    app.run(main)
