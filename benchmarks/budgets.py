"""The quality benchmark across training budgets: has a method's curve flattened? (issue 14, item 4)

    PYTHONPATH=. python benchmarks/budgets.py --show_tasks gaussian_2,sr_x2 \\
        --runs benchmarks/results/quality.json,benchmarks/results/budget_3000/quality.json,\\
benchmarks/results/budget_10000/quality.json,benchmarks/results/budget_20000/quality.json \\
        --table benchmarks/results/budgets.md

Each --runs file is the summary quality.json of one budget, written by
benchmarks/quality.py over --seeds (every cell in it trained the same number of steps);
files of the same budget are merged (they must not hold the same task, method and seed).
Every budget runs the whole schedule: constant learning rate for half the steps, then a
linear decay to 0.01x. So the last quarter of one learning curve mixes more training with
the annealing of the decay, and "gained < 0.05 dB over the last quarter" can fail however
long the run is. The final PSNR across budgets separates the two. For every task, method
and budget B after the first, with B' the previous budget that method ran at:

    gain(B) = mean over the seeds run at both budgets of [PSNR_B(seed) - PSNR_B'(seed)]
    per doubling = gain(B) / log2(B / B')

where PSNR is the 8-bit luma PSNR of the final model averaged over the test images. A
method has flattened at B, by this reading, when the gain per doubling is below
quality_summary.FLAT_DB (0.05 dB) and above -FLAT_DB (one that loses more is reported as
getting worse with more steps, not as flat). The table also gives each budget's
last-quarter gain (quality_summary.last_quarter_gain, mean over seeds) for comparison.

Writes --table (markdown), the same name with .json, and budgets.png beside them (final
PSNR against steps, one line per method of --plot_methods, on a log axis; dots are single
seeds).
"""

import json
import math
import os
import sys
from statistics import fmean

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

from quality_report import COLORS, METHOD_LABELS  # noqa: E402
from quality_summary import FLAT_DB, load_summary_cells, method_row  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "Summary quality.json files (any order; several of one budget are merged).")
flags.DEFINE_list("show_tasks", None, "Tasks to show (default: every task of the runs).")
flags.DEFINE_list("plot_methods", None, "Methods drawn in budgets.png (default: all; the table has all).")
flags.DEFINE_string("table", None, "Markdown file to write; .json and budgets.png go beside it.")


def load_budget(path):
    """(steps, {(task, method, seed): cell}) of one run; every cell must have trained the same steps."""
    cells = load_summary_cells(path)
    steps = {c["steps"] for c in cells.values()}
    if len(steps) != 1:
        raise ValueError(f"{path}: cells of several budgets ({sorted(steps)}); give one budget per file.")
    return steps.pop(), cells


def merge_budgets(budgets):
    """[(steps, cells)] with the files of one budget merged (e.g. one file per task); a cell twice is an error."""
    merged = {}
    for steps, cells in budgets:
        twice = set(cells) & set(merged.get(steps, {}))
        if twice:
            raise ValueError(f"{steps} steps: {sorted(twice)[0]} is in two --runs files.")
        merged.setdefault(steps, {}).update(cells)
    return list(merged.items())


def budget_rows(budgets, tasks=None):
    """One row per (task, method, budget), budgets ascending: quality_summary.method_row (steps, PSNR per
    seed and mean, last-quarter gain) plus the gain from the previous budget."""
    budgets = sorted(budgets, key=lambda b: b[0])
    keys = dict.fromkeys((t, m) for _, cells in budgets for t, m, _ in cells if tasks is None or t in tasks)
    by_seed = []  # per budget: {seed: {(task, method): cell}}, what method_row reads
    for steps, cells in budgets:
        seeds = {}
        for (t, m, s), c in cells.items():
            seeds.setdefault(s, {})[t, m] = c
        by_seed.append((steps, seeds))
    rows = []
    for task, method in keys:
        previous = None
        for steps, cells_by_seed in by_seed:
            row = method_row(cells_by_seed, task, method)
            if row is None:
                continue
            if previous is not None:
                now = dict(zip(row["seeds"], row["psnr_per_seed"]))
                before = dict(zip(previous["seeds"], previous["psnr_per_seed"]))
                common = [s for s in now if s in before]
                if common:
                    gain = fmean(now[s] - before[s] for s in common)
                    row.update({"previous_steps": previous["steps"], "gain_seeds": common, "gain": gain,
                                "gain_per_doubling": gain / math.log2(steps / previous["steps"])})
            rows.append(row)
            previous = row
    return rows


def flattened(per_doubling):
    """The table's verdict on a gain per doubling of the budget (dB)."""
    if per_doubling <= -FLAT_DB:
        return "no: worse with more steps"
    return "yes" if per_doubling < FLAT_DB else "no"


def table(rows):
    lines = ["| Task | Method | steps | seeds | PSNR (dB) | per seed | last quarter (dB) | gain from previous "
             "budget (dB, common seeds) | per doubling (dB) | flattened (< %.2f dB per doubling) |" % FLAT_DB,
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "gain" in r:
            gain = f"{r['gain']:+.2f} from {r['previous_steps']} ({','.join(map(str, r['gain_seeds']))})"
            per = f"{r['gain_per_doubling']:+.3f}"
            flat = flattened(r["gain_per_doubling"])
        else:
            gain = per = flat = ""
        lq = "" if math.isnan(r["last_quarter_gain"]) else f"{r['last_quarter_gain']:+.2f}"
        lines.append(f"| {r['task']} | {METHOD_LABELS.get(r['method'], r['method'])} | {r['steps']} | "
                     f"{','.join(map(str, r['seeds']))} | {r['psnr_mean']:.2f} | "
                     f"{' / '.join(f'{p:.2f}' for p in r['psnr_per_seed'])} | {lq} | {gain} | {per} | {flat} |")
    return lines


def figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in dict.fromkeys(r["method"] for r in rows if r["task"] == task):
            mine = [r for r in rows if (r["task"], r["method"]) == (task, method)]
            ax.plot([r["steps"] for r in mine], [r["psnr_mean"] for r in mine], marker="o", color=COLORS.get(method),
                    label=METHOD_LABELS.get(method, method), linestyle="--" if method == "supervised_aug" else "-")
            for r in mine:
                ax.scatter([r["steps"]] * len(r["psnr_per_seed"]), r["psnr_per_seed"], s=8, alpha=0.4,
                           color=COLORS.get(method))
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("training steps (whole schedule at each budget)")
        ax.set_ylabel("final test PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    if not FLAGS.runs or not FLAGS.table:
        raise app.UsageError("give --runs (summary quality.json files) and --table.")
    try:
        budgets = [load_budget(p) for p in FLAGS.runs]
        budgets = merge_budgets(budgets)
    except ValueError as e:
        raise app.UsageError(str(e))
    rows = budget_rows(budgets, FLAGS.show_tasks)
    if not rows:
        raise app.UsageError("no finished cell of the selected tasks in --runs.")
    lines = ["# Quality across training budgets (issue 14, item 4)", "",
             "Generated by `benchmarks/budgets.py` from " + ", ".join(f"`{os.path.relpath(p)}`" for p in FLAGS.runs)
             + ". PSNR: final model, 8-bit luma, mean over "
             "the test images, then over the seeds. Every budget runs the whole schedule (constant, then linear "
             "decay to 0.01x over the second half), so the last-quarter gain includes the decay's annealing; the "
             "gain from the previous budget (same seeds) does not. Flattened: that gain divided by log2 of the "
             f"step ratio is below {FLAT_DB} dB (and above -{FLAT_DB} dB: below that the method gets worse with more "
             "steps).", ""] + table(rows)
    out = os.path.abspath(FLAGS.table)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    for name, text in ((out, "\n".join(lines) + "\n"),
                       (os.path.splitext(out)[0] + ".json", json.dumps(rows, indent=1))):
        with open(name + ".tmp", "w") as f:
            f.write(text)
        os.replace(name + ".tmp", name)
    figure([r for r in rows if FLAGS.plot_methods is None or r["method"] in FLAGS.plot_methods],
           os.path.join(os.path.dirname(out), "budgets.png"))
    print("\n".join(lines))
    print(f"\nWritten: {out}")


if __name__ == "__main__":
    app.run(main)
