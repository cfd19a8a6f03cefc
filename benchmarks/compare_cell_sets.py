"""Two configurations of the quality benchmark, cell by cell, over their common seeds.

    PYTHONPATH=. python benchmarks/compare_cell_sets.py \\
        --a benchmarks/results/quality.json --a_label "tau 0.01" \\
        --b benchmarks/results/tau0.001/quality.json --b_label "tau 0.001" \\
        --out benchmarks/results/tau0.001/tau_compare.md

--a and --b are summary files written by benchmarks/quality.py over several
seeds (their "cells" hold every finished cell per seed). Each configuration
differs in one setting (a flag of quality.py); everything else, seeds
included, is the same, so a cell of A and the cell of B with the same task,
method and seed saw the same initial weights, crops and noise draws until the
setting made them differ.

For every (task, method) that both finished on at least one common seed:
PSNR of A and of B (mean over those seeds of the per-seed mean over the test
images), B minus A per seed, and the paired difference: for each test image,
B - A averaged over the common seeds; its mean with the 95% Student-t interval
over the images (quality_summary.paired_interval), in bold where it excludes 0.
Prints the table and writes it to --out.

--a and --b may each list several summaries (comma-separated), whose cells are
pooled: e.g. the tasks of one budget that were reported in two folders. A cell
found in two of them must hold the same scores.

--a_method M --b_method N compares method M of A with method N of B instead
(one row per task), e.g. supervised + aug. at the default tau against SEI
trained with --tau 0.001: the cells still pair by seed and test image.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

from quality_report import METHOD_LABELS  # noqa: E402
from quality_summary import load_summary_cells, paired_interval, per_image_difference  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("a", None, "quality.json (several seeds) of the reference configuration; several are pooled.")
flags.DEFINE_list("b", None, "quality.json (several seeds) of the configuration compared with it; same.")
flags.DEFINE_string("a_label", "A", "Name of configuration A in the table.")
flags.DEFINE_string("b_label", "B", "Name of configuration B in the table.")
flags.DEFINE_string("out", None, "Markdown file to write (default: compare.md next to --b).")
flags.DEFINE_string("a_method", None, "Compare only this method (cell key) of A ... (give --b_method too).")
flags.DEFINE_string("b_method", None, "... with this method of B, task by task (default: each method with itself).")


def pooled_cells(paths):
    """{(task, method, seed): cell} of several summaries, in their order; a cell in two must agree."""
    pooled = {}
    for path in paths:
        for key, cell in load_summary_cells(path).items():
            if key in pooled and pooled[key]["psnr"] != cell["psnr"]:
                raise ValueError(f"{path}: the cell {key} is also in an earlier file, with other scores.")
            pooled.setdefault(key, cell)
    return pooled


def compare(cells_a, cells_b, a_method=None, b_method=None):
    """One row per (task, method) both finished on a common seed, in the order of cells_a.

    With a_method and b_method: one row per task, method a_method of A against b_method of B.
    A row names both ("method_a", "method_b").
    """
    rows = []
    if a_method is None:
        pairs = dict.fromkeys((t, m, m) for t, m, _ in cells_a)
    else:
        pairs = dict.fromkeys((t, a_method, b_method) for t, m, _ in cells_a if m == a_method)
    for task, method_a, method_b in pairs:
        seeds = sorted(s for t, m, s in cells_a if (t, m) == (task, method_a) and (t, method_b, s) in cells_b)
        if not seeds:
            continue
        a = [cells_a[task, method_a, s] for s in seeds]
        b = [cells_b[task, method_b, s] for s in seeds]
        if any(x["test_names"] != a[0]["test_names"] for x in a + b):
            raise ValueError(f"{task}/{method_b}: the two configurations were tested on different images.")
        mean, low, high = paired_interval(per_image_difference(list(zip(b, a))))
        rows.append({"task": task, "method_a": method_a, "method_b": method_b, "seeds": seeds,
                     "psnr_a": sum(c["psnr_mean"] for c in a) / len(a),
                     "psnr_b": sum(c["psnr_mean"] for c in b) / len(b),
                     "per_seed": [cb["psnr_mean"] - ca["psnr_mean"] for ca, cb in zip(a, b)],
                     "diff": mean, "low": low, "high": high})
    return rows


def table(rows, label_a, label_b):
    lines = [f"| task | method | seeds | {label_a} (dB) | {label_b} (dB) | {label_b} minus {label_a} per seed | "
             "paired per-image difference [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        interval = f"{r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"
        if r["low"] > 0 or r["high"] < 0:
            interval = f"**{interval}**"
        method = METHOD_LABELS.get(r["method_b"], r["method_b"])
        if r["method_a"] != r["method_b"]:
            method += f" vs {METHOD_LABELS.get(r['method_a'], r['method_a'])}"
        lines.append(f"| {r['task']} | {method} | "
                     f"{','.join(map(str, r['seeds']))} | {r['psnr_a']:.2f} | {r['psnr_b']:.2f} | "
                     f"{' / '.join(f'{d:+.2f}' for d in r['per_seed'])} | {interval} |")
    return lines


def main(argv):
    del argv
    if not FLAGS.a or not FLAGS.b:
        raise app.UsageError("give both --a and --b.")
    if (FLAGS.a_method is None) != (FLAGS.b_method is None):
        raise app.UsageError("give both --a_method and --b_method, or neither.")
    files_a, files_b = (", ".join(map(os.path.relpath, paths)) for paths in (FLAGS.a, FLAGS.b))
    try:
        rows = compare(pooled_cells(FLAGS.a), pooled_cells(FLAGS.b), FLAGS.a_method, FLAGS.b_method)
    except ValueError as e:
        raise app.UsageError(str(e))
    if not rows:
        raise app.UsageError(f"{files_a} and {files_b} have no (task, method, seed) cell in common.")
    lines = [f"# {FLAGS.b_label} against {FLAGS.a_label}", "",
             f"A: {files_a}; B: {files_b}. PSNR: 8-bit luma, full test images, "
             "mean over the common seeds. Paired: B minus A per test image (averaged over the seeds), mean and "
             "95% t interval over the images; bold where it excludes 0.", ""] + table(rows, FLAGS.a_label,
                                                                                      FLAGS.b_label)
    out = FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(FLAGS.b[0])), "compare.md")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, out)
    print("\n".join(lines))
    print(f"\nWritten: {out}")


if __name__ == "__main__":
    app.run(main)
