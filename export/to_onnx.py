"""Export a trained restorer to ONNX for onnxruntime / Triton serving.

    python export/to_onnx.py --model RUN_DIR/model.keras --output restorer.onnx [--opset 18] [--fp16]
    python export/to_onnx.py --model RUN_DIR/model.keras --output restorer_int8.onnx --int8 --calibration MEASUREMENTS/
    (also: python -m export.to_onnx ..., or sei-tf export ...)

Exports the backbone only (no physics), NHWC float32 in [0, 1] with dynamic
batch/height/width, writes the sei-tf metadata (including the physics), checks
the graph with onnx.checker and its parity with the Keras model on a real
photograph; fails (and writes nothing) above 1e-4 max abs error (2e-2 with
--fp16). With --int8, the checked fp32 graph is quantised to static int8 with
onnxruntime's tools, calibrated on crops of the --calibration measurements,
and written only if its output agrees with fp32 on held-back measurements
(PSNR >= --int8_threshold dB). Run as a script, it finds the `export` package because sei-tf is
installed (`pip install -e .`).
"""

import os
import sys

from absl import app, flags

from export import int8, onnx_export
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
    flags.DEFINE_bool("int8", False, "Write a static int8 restorer (QDQ; int8 per-channel weights, uint8 "
                      "activations), calibrated on --calibration and checked against fp32.", **fv)
    flags.DEFINE_string("calibration", None, "--int8: measurements to calibrate on (folder or comma-separated "
                        "files; typically the training folder).", **fv)
    flags.DEFINE_float("int8_threshold", int8.DEFAULT_THRESHOLD_DB,
                       "--int8: lowest PSNR (dB) of the int8 output against fp32 on a held-back image; "
                       "below it nothing is written.", **fv)
    flags.DEFINE_integer("int8_holdback", 2, "--int8: calibration images held back to check the int8 graph.", **fv)
    flags.DEFINE_integer("calibration_crop", int8.DEFAULT_CROP, "--int8: calibration crop side (pixels).", **fv)
    flags.DEFINE_integer("calibration_crops_per_image", int8.DEFAULT_CROPS_PER_IMAGE,
                         "--int8: calibration crops taken from each image (a regular grid).", **fv)
    flags.mark_flags_as_required(["model", "output"], flag_values=flag_values)


def main(argv):
    """Exports --model to --output and prints a one-line report."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    if FLAGS.int8 != (FLAGS.calibration is not None):
        raise app.UsageError("--int8 needs --calibration MEASUREMENTS (and --calibration needs --int8).")
    int8_options = {"threshold_db": FLAGS.int8_threshold, "holdback": FLAGS.int8_holdback,
                    "crop": FLAGS.calibration_crop, "crops_per_image": FLAGS.calibration_crops_per_image}
    report = onnx_export.export(FLAGS.model, FLAGS.output, opset=FLAGS.opset, fp16=FLAGS.fp16,
                                tolerance=FLAGS.tolerance, int8_calibration=FLAGS.calibration if FLAGS.int8 else None,
                                int8_options=int8_options)
    meta = report["metadata"]
    print(f"wrote {report['output']} ({report['bytes'] / 1e6:.2f} MB, opset {report['opset']}): "
          f"{meta['operator']}, {meta['noise']}, {meta['channels']} channels, "
          f"tile context {meta['tile_context']}, max abs error {report['parity_max_abs_error']:.3g}"
          + (f"; int8 PSNR vs fp32 {meta['int8_psnr_vs_fp32_db']} dB (worst of {meta['int8_holdback_images']} "
             f"held-back images)" if report["int8"] else ""))
    return 0


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
