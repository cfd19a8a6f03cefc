"""Simulates measurements from ground-truth images (the paper's protocol).

Example:
  python -m sei_tf.simulate --ground_truth photos/ --output data/sr4 \\
      --task sr --factor 4 --noise_sigma 5
  python -m sei_tf.simulate --ground_truth photos/ --output data/pg \\
      --task deblur --kernel gaussian:2 --noise poisson_gaussian:gain=0.01,sigma=2

Writes OUTPUT/measurements/<name>.tif (float32, unclipped noise), OUTPUT/ground_truth/
<name>.png (16-bit, the resized ground truth used) and OUTPUT/measurements/sei_tf.json
(the instrument: task, factor or kernel, noise model, seed). Training and evaluation
read the sidecar, so the settings need not be repeated. `--ground_truth samples` uses
scikit-image's bundled photographs (offline).
"""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # fewer TF INFO logs (start-up lines remain)

from absl import flags  # noqa: E402

from sei_tf import cli  # noqa: E402
from sei_tf.errors import SeiTfError  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Defines the command-line flags (only when run as a program: importing has no side effects)."""
    flags.DEFINE_string(
        "ground_truth", None,
        "Folder of ground-truth images (.png .jpg .tif .dcm .npy), or 'samples' for "
        "scikit-image's bundled photographs.")
    flags.DEFINE_string(
        "output", None,
        "Output folder; receives measurements/ (float32 TIFF + sei_tf.json) and ground_truth/ "
        "(16-bit PNG). Must be new or empty unless --overwrite.")
    flags.DEFINE_string("task", "sr",
                        "Forward model: 'sr' (anti-aliased bicubic downsampling by --factor) or "
                        "'deblur' (circular convolution with --kernel).")
    flags.DEFINE_integer("factor", None, "Super-resolution factor (2, 3 or 4; default 2). Only with --task sr.")
    flags.DEFINE_string(
        "kernel", None,
        "Blur kernel for --task deblur: 'gaussian:SIGMA' (pixels), 'box:RADIUS' (pixels) or a "
        "path to a PSF (.npy/.png/.tif). Default gaussian:2.")
    flags.DEFINE_string(
        "noise", None,
        "Noise model: gaussian:sigma=S (8-bit units), poisson:gain=G (signal per photon: 0.01 is 100 "
        "photons at full scale) or poisson_gaussian:gain=G,sigma=S; add ,bits=8 to clip and round to 8 "
        "bits. Default gaussian:sigma=5.")
    flags.DEFINE_float("noise_sigma", None,
                       "Gaussian noise standard deviation in 8-bit units (5 means 5/255); the same as "
                       "--noise gaussian:sigma=S. Default 5.")
    flags.DEFINE_integer(
        "shorter_side", 256,
        "Resize each ground truth so its shorter side has this many pixels (bicubic, "
        "anti-aliased); 0 keeps the original size.")
    flags.DEFINE_integer("seed", 0, "Noise seed; image NAME gets the stateless seed (seed, crc32(NAME)).")
    flags.DEFINE_integer(
        "channels", None,
        "1 (greyscale, BT.601 luma) or 3 (RGB) to convert the ground truth; default keeps "
        "the files' channels.")
    flags.DEFINE_string("dicom_window", None,
                        "LOW,HIGH in modality units (e.g. -1024,3071 HU) mapped to [0, 1] for DICOM "
                        "input; default: the full range of the stored bits.")
    flags.DEFINE_boolean("overwrite", False,
                         "Replace measurements/ and ground_truth/ in a non-empty --output folder.")
    flags.DEFINE_boolean("progress", True, "Show a progress bar.")


class UsageError(SeiTfError, ValueError):
    """A bad combination of flags."""


def _parse_window(text):
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--dicom_window must be LOW,HIGH (two numbers), got {text!r}.") from None
    return lo, hi


def _build_physics():
    from sei_tf import physics

    noise_sigma = FLAGS.noise_sigma
    if FLAGS.noise is None and noise_sigma is None:
        noise_sigma = 5.0
    return physics.from_flags(FLAGS.task, noise_sigma, noise=FLAGS.noise, factor=FLAGS.factor,
                              kernel=FLAGS.kernel)


def run():
    """Runs the simulation from the flags; returns the line to print."""
    from sei_tf import data

    if not FLAGS.ground_truth:
        raise UsageError("--ground_truth is required (a folder of images, or 'samples').")
    if not FLAGS.output:
        raise UsageError("--output is required.")
    if FLAGS.channels not in (None, 1, 3):
        raise UsageError(f"--channels must be 1 or 3, got {FLAGS.channels}.")
    if FLAGS.shorter_side < 0:
        raise UsageError(f"--shorter_side must be >= 0, got {FLAGS.shorter_side}.")
    op = _build_physics()
    window = _parse_window(FLAGS.dicom_window)
    with tempfile.TemporaryDirectory(prefix="sei_tf_samples_") as tmp:
        source = FLAGS.ground_truth
        if source == "samples" and not os.path.exists(source):
            source = os.path.join(tmp, "samples")
            data.sample_ground_truth(source)
        meta = data.simulate(source, FLAGS.output, op, shorter_side=FLAGS.shorter_side,
                             seed=FLAGS.seed, overwrite=FLAGS.overwrite, progress=FLAGS.progress,
                             channels=FLAGS.channels, dicom_window=window)
    out = os.path.abspath(FLAGS.output)
    return (f"wrote {len(meta['files'])} measurement(s) ({op.describe()}, "
            f"seed {meta['seed']}) to {os.path.join(out, data.MEASUREMENTS_DIR)} and the ground truth to "
            f"{os.path.join(out, data.GROUND_TRUTH_DIR)}")


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {' '.join(argv[1:])} (flags are written --name=value)")
    print(run())


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
