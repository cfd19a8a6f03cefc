"""Does bfloat16 training lose quality? Compares quality-benchmark cells trained in float32 and bfloat16.

    python benchmarks/precision_quality.py --float32 benchmarks/results/quality.json \\
        --float32 benchmarks/results/float32_rerun/quality.json --bfloat16 benchmarks/results/bfloat16/quality.json

Each argument is a `quality.json` written by benchmarks/quality.py (`--precision`
selects the type there; everything else, seeds included, is the same). Where a
cell appears in several float32 files, the last one given wins. Writes
`precision_quality.md` (test PSNR per cell, the difference, and the paired
per-image difference) and `precision_curves.png` (test PSNR against steps for
both types) next to the first bfloat16 file.
"""

import json
import os

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("float32", [], "quality.json files of float32 runs (later ones win).")
flags.DEFINE_multi_string("bfloat16", [], "quality.json files of bfloat16 runs (later ones win).")
flags.DEFINE_float("bar", 0.1, "Largest acceptable PSNR loss of bfloat16, dB.")


def load_cells(paths):
    cells = {}
    for path in paths:
        with open(path) as f:
            for c in json.load(f)["cells"]:
                if c.get("method") != "baseline" and c.get("psnr_mean") is not None:
                    cells[(c["task"], c["method"])] = {**c, "source": path}
    return cells


def main(argv):
    del argv
    fp32, bf16 = load_cells(FLAGS.float32), load_cells(FLAGS.bfloat16)
    keys = sorted(set(fp32) & set(bf16))
    out_dir = os.path.dirname(os.path.abspath(FLAGS.bfloat16[0]))
    lines = ["# bfloat16 vs float32 training: test PSNR (quality benchmark cells, same seeds)", "",
             "| task | method | float32 (dB) | bfloat16 (dB) | bf16 - fp32 | paired per-image diff, mean ± std | "
             f"within {FLAGS.bar} dB | bf16 train min | fp32 train min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        a, b = fp32[key], bf16[key]
        diff = np.asarray(b["psnr"]) - np.asarray(a["psnr"])
        ok = "yes" if abs(b["psnr_mean"] - a["psnr_mean"]) <= FLAGS.bar else "**no**"
        lines.append(f"| {key[0]} | {key[1]} | {a['psnr_mean']:.2f} | {b['psnr_mean']:.2f} | "
                     f"{b['psnr_mean'] - a['psnr_mean']:+.3f} | {diff.mean():+.3f} ± {diff.std():.3f} | {ok} | "
                     f"{b['train_minutes']:.1f} | {a['train_minutes']:.1f} |")
    lines += ["", "float32 cells from: " + ", ".join(sorted({os.path.relpath(fp32[k]["source"]) for k in keys})),
              "Training minutes are not comparable across runs made at different times on a shared machine; "
              "see training_speed.md for speed."]
    with open(os.path.join(out_dir, "precision_quality.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for cells, label, style in ((fp32, "float32", "-"), (bf16, "bfloat16", "--")):
            curve = np.asarray(cells[key]["curve"], float)
            ax.plot(curve[:, 0], curve[:, 1], style, label=label)
        ax.set_title(f"{key[0]} / {key[1]}")
        ax.set_xlabel("step")
        ax.set_ylabel("test PSNR (dB)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "precision_curves.png"), dpi=90)


if __name__ == "__main__":
    app.run(main)
