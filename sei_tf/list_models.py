"""Lists the restorers shipped with sei-tf (`sei-tf models`).

    sei-tf models                       # name, task, physics, channels, size, test PSNR vs baseline
    sei-tf models --card sei-cnn-sr2-rgb   # one model's card

A name works wherever a model path does: `sei-tf restore --model NAME`,
`sei-tf export --model NAME`, `sei-tf train --init_from NAME`. Reads JSON only
(no TensorFlow).
"""

import sys

from absl import flags

from sei_tf import cli, pretrained

FLAGS = flags.FLAGS

COLUMNS = ("name", "task", "physics", "channels", "size", "test PSNR", "baseline")


def define_flags():
    flags.DEFINE_string("card", None, "Print this model's card instead of the list.")


def rows(index):
    """One tuple of strings per shipped model, in COLUMNS order."""
    out = []
    for name, r in sorted(index.items()):
        test = r["test"]
        out.append((name, r["task"], r["physics"], str(r["channels"]), f"{r['bytes'] / 1024:.0f} kB",
                    f"{test['psnr']:.2f} dB", f"{test['baseline_psnr']:.2f} dB ({test['baseline']})"))
    return out


def table(index):
    lines = [COLUMNS] + rows(index)
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text[:1] + ["  ".join("-" * w for w in widths)] + text[1:])


def main(argv):
    del argv
    if FLAGS.card:
        print(pretrained.card(FLAGS.card))
        return
    index = pretrained.index()
    if not index:
        print("No pretrained models are shipped with this install.")
        return
    print(table(index))
    print("\nTest PSNR: 8-bit luma, the quality benchmark's test photographs (see each card: "
          "sei-tf models --card NAME).")


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
