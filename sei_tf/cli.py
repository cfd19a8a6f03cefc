"""The command-line convention of sei-tf, and the `sei-tf` command.

Every tool is a module with two functions, `define_flags()` (absl flags, defined
only when the tool runs, so importing a tool has no side effects) and
`main(argv)`. `run(module)` defines the flags and runs `main` under absl: a
`SeiTfError` (bad input, a physics that does not fit, a run that cannot go on) or
an `OSError` (a missing file, a full disk) prints one `error: ...` line and exits
with status 1; any other exception is a bug and keeps its traceback.

    sei-tf COMMAND [flags]      e.g. sei-tf train --measurements data/ --output runs/x2
    python -m sei_tf.train ...  the same tool, run as a module

This module imports neither TensorFlow nor the tools until a command runs, so the
serving commands work where only onnxruntime is installed.
"""

import importlib
import sys

from absl import app

from sei_tf.errors import SeiTfError

# Command -> (module, one-line summary).
COMMANDS = {
    "simulate": ("sei_tf.simulate", "simulate measurements from ground-truth images"),
    "train": ("sei_tf.train", "train a restorer from measurements"),
    "evaluate": ("sei_tf.evaluate", "PSNR/SSIM of a trained model against ground truth"),
    "restore": ("sei_tf.restore", "restore images with a trained .keras model or a shipped one"),
    "models": ("sei_tf.list_models", "list the shipped pretrained restorers (names for --model, --init_from)"),
    "export": ("export.to_onnx", "export a trained model to ONNX with its metadata"),
    "triton": ("export.to_triton", "lay out an ONNX restorer for Triton Inference Server"),
    "serve-restore": ("serving.restore", "restore images with an exported .onnx restorer (onnxruntime)"),
    "serve": ("serving.http", "HTTP service around an exported .onnx restorer"),
    "demo": ("sei_tf.demo", "simulate, train, evaluate, restore and export on bundled photographs"),
}


# Packages of the `train` extra: a serving-only install lacks them.
TRAINING_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "skimage", "tensorboard")


def report_errors(main):
    """Wraps `main(argv)`: user errors become one line on stderr and exit status 1."""

    def wrapped(argv):
        try:
            return main(argv)
        except (SeiTfError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] not in TRAINING_PACKAGES:
                raise
            print(f"error: this command needs {err.name}, which comes with the training install: "
                  "pip install 'sei-tf[train,cpu]' (this machine has the serving-only install).", file=sys.stderr)
            sys.exit(1)

    return wrapped


def run(module, argv=None):
    """Defines `module`'s flags and runs its `main` under absl (with `report_errors`)."""
    module.define_flags()
    app.run(report_errors(module.main), argv=argv)


def usage():
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return ("usage: sei-tf COMMAND [flags]   (sei-tf COMMAND --help for a command's flags)\n\ncommands:\n"
            + "\n".join(lines))


def main(argv=None):
    """Entry point of the `sei-tf` console command."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command = argv[1]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    run(module, argv=[f"sei-tf {command}"] + argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
