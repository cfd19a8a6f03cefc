"""The whole workflow on bundled sample photographs, through the command-line tools.

    python -m sei_tf.demo --output demo_run

1. simulate: scikit-image's photographs -> noisy x2 low-resolution measurements;
2. train: SEI on the measurements only (a few minutes on a CPU);
3. evaluate: PSNR/SSIM against the ground truth, next to bicubic upsampling;
4. restore: super-resolve the measurements with the trained model;
5. export: the restorer as ONNX (with metadata), then restore again with onnxruntime.
Each step prints the command it runs, so you can rerun or adapt any of them.
"""

import os
import shlex
import subprocess
import sys

from absl import flags

from sei_tf import cli
from sei_tf.errors import SeiTfError

FLAGS = flags.FLAGS


def define_flags():
    """Defines the command-line flags (only when run as a program: importing has no side effects)."""
    flags.DEFINE_string("output", "demo_run", "Folder for the data, the run and the restored images.")
    flags.DEFINE_integer("epochs", 6, "Training epochs (the demo's length: about 1 minute each on 2 cores).")
    flags.DEFINE_integer("steps_per_epoch", 50, "Optimiser steps per epoch.")
    flags.DEFINE_boolean("overwrite", False, "Start again in an --output folder that holds a finished demo.")


def run(*args):
    cmd = [sys.executable, "-m", *args]
    print("\n$ python -m " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(cmd, check=True)


def main(argv):
    del argv
    out = FLAGS.output
    data, run_dir = os.path.join(out, "data"), os.path.join(out, "run")
    overwrite = ["--overwrite"] if FLAGS.overwrite else []
    try:
        run("sei_tf.simulate", "--ground_truth", "samples", "--output", data, "--task", "sr",
            "--factor", "2", "--noise_sigma", "5", "--shorter_side", "256", *overwrite)
        run("sei_tf.train", "--measurements", f"{data}/measurements", "--ground_truth", f"{data}/ground_truth",
            "--method", "sei", "--output", run_dir, "--epochs", str(FLAGS.epochs),
            "--steps_per_epoch", str(FLAGS.steps_per_epoch), "--patch_size", "32", "--batch_size", "8",
            "--learning_rate", "5e-4", "--precision", "auto", *overwrite)
        run("sei_tf.evaluate", "--model", f"{run_dir}/model.keras", "--measurements", f"{data}/measurements",
            "--ground_truth", f"{data}/ground_truth")
        run("sei_tf.restore", "--model", f"{run_dir}/model.keras", f"{data}/measurements",
            "--output", os.path.join(out, "restored"), "--format", "png", *overwrite)
        run("export.to_onnx", "--model", f"{run_dir}/model.keras", "--output", f"{run_dir}/restorer.onnx")
        run("serving.restore", "--model", f"{run_dir}/restorer.onnx", f"{data}/measurements",
            "--output", os.path.join(out, "restored_onnx"), *overwrite)
    except subprocess.CalledProcessError as e:
        raise SeiTfError(f"step failed with exit code {e.returncode}: {' '.join(e.cmd[2:])}") from None
    print(f"\ndemo finished: see {out}/ (restored/, restored_onnx/, run/log.csv, run/evaluation.csv)")


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
