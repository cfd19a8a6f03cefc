"""Summary of the quality benchmark over several seeds: means, paired intervals, the bars of issue 14.

`benchmarks/quality.py --seeds 0,1,2` trains one cell set per seed (each with its
own report in <results_dir>/seed<N>/) and then calls `write_summary` with every
finished cell. This module only computes and formats (and `load_summary_cells` reads
the cells of a written summary back, for compare_cell_sets.py and budgets.py):

- PSNR / SSIM of a method: per seed, the mean over the test images; then the
  mean and the standard deviation of those over the seeds.
- Paired comparison with SEI: for each test image, the PSNR difference
  SEI - method averaged over the seeds both finished; then the mean of the
  per-image differences and its 95% interval, mean +- t(0.975, n-1) * sd / sqrt(n)
  over the n test images (Student t: the images are the independent units; the
  seeds only reduce the training noise inside each image's difference).
- Flatness of a learning curve: test PSNR gained over the last quarter of the
  steps (final point minus the last point at or before 3/4 of the steps),
  averaged over the seeds.

Outputs in `results_dir`: quality.md, quality.csv, quality.json, learning_curves.png.
"""

import csv
import json
import math
import os

from quality_report import METHOD_LABELS, PAPER_PSNR, SELF_SUPERVISED, COLORS, per_method_rates, tau_text

# Bars of issue 14 (dB): SEI at most this far below the better supervised row.
GAP_BARS = {"sr": 0.5, "gaussian": 1.5}
# Tasks on which SEI's interval against the runner-up must exclude zero.
CI_BAR_TASKS = ("sr_x2", "gaussian_2")
SUPERVISED = ("supervised", "supervised_aug")
FLAT_DB = 0.05  # "flattened": less than this gained over the last quarter (budgets.py: per doubling of the steps)


def load_summary_cells(path):
    """{(task, method, seed): cell} of the finished learned cells in a summary quality.json."""
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    if not isinstance(summary.get("cells"), dict):
        raise ValueError(f"{path}: no per-seed cells; give the summary quality.json of a run over --seeds.")
    cells = {(c["task"], c["method"], int(seed)): c
             for seed, cells in summary["cells"].items() for c in cells
             if c.get("method") != "baseline" and c.get("psnr_mean") is not None}
    # In the order of the summary's table (task by task), where it has one.
    order = {(r["task"], r["method"]): i for i, r in enumerate(summary.get("rows", []))}
    return dict(sorted(cells.items(), key=lambda kv: (order.get(kv[0][:2], len(order)), kv[0][2])))


def t_quantile_975(df):
    """The 0.975 quantile of Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def paired_interval(differences):
    """(mean, low, high) of the 95% t interval of the mean of `differences`; low = high = nan for n < 2."""
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def last_quarter_gain(curve, steps):
    """PSNR gained over the last quarter of the steps by a curve [[step, psnr, ssim], ...]."""
    before = [c for c in curve if c[0] <= 0.75 * steps]
    if not before or curve[-1][0] < steps:
        return float("nan")
    return curve[-1][1] - before[-1][1]


def _mean(values):
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _std(values):
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")


def method_row(cells_by_seed, task, method):
    """What the tables show of one (task, method): None when no seed finished it."""
    runs = {s: c[(task, method)] for s, c in cells_by_seed.items() if (task, method) in c}
    if not runs:
        return None
    first = next(iter(runs.values()))
    per_seed = [runs[s]["psnr_mean"] for s in sorted(runs)]
    row = {"task": task, "method": method, "seeds": sorted(runs), "psnr_per_seed": per_seed,
           "psnr_mean": _mean(per_seed), "psnr_seed_std": _std(per_seed),
           "ssim_mean": _mean([r["ssim_mean"] for r in runs.values()]),
           "test_names": first["test_names"],
           "psnr_per_image": [_mean([r["psnr"][i] for r in runs.values()]) for i in range(len(first["psnr"]))]}
    if method != "baseline":
        row.update({"learning_rate": first.get("learning_rate"), "steps": first.get("steps"),
                    "train_minutes": _mean([r["train_minutes"] for r in runs.values()]),
                    "last_quarter_gain": _mean([last_quarter_gain(r["curve"], r["steps"]) for r in runs.values()])})
    return row


def paired_with_sei(cells_by_seed, task, method):
    """(mean, low, high, seeds) of SEI minus `method` over the test images, on the seeds both finished; or None."""
    seeds = [s for s, c in cells_by_seed.items() if (task, "sei") in c and (task, method) in c]
    if not seeds or method == "sei":
        return None
    pairs = [(cells_by_seed[s][(task, "sei")], cells_by_seed[s][(task, method)]) for s in seeds]
    return (*paired_interval(per_image_difference(pairs)), seeds)


def per_image_difference(pairs):
    """For each test image, PSNR of the first cell minus that of the second, averaged over the pairs (one per seed)."""
    return [_mean([b["psnr"][i] - a["psnr"][i] for b, a in pairs]) for i in range(len(pairs[0][0]["psnr"]))]


def _family(task):
    return "sr" if task.startswith("sr") else ("gaussian" if task.startswith("gaussian") else None)


def bars(rows, pairs, tasks):
    """The bars of issue 14 on the finished cells: a list of (bar, verdict, detail).

    Each comparison is the paired SEI-minus-method difference on the seeds both finished
    (`pairs`), so a method run on fewer seeds is not compared with SEI's mean over more.
    """
    out = []
    for t in tasks:
        label = tasks[t]["label"]
        others = [m for m in SELF_SUPERVISED if m in tasks[t]["methods"] and m != "sei"]
        done = [m for m in others if (t, m) in pairs]  # a pair exists only where SEI finished too
        missing = [m for m in others if (t, m) not in rows]
        name = f"{label}: SEI best self-supervised" + (" (95% interval vs runner-up excludes 0)"
                                                         if t in CI_BAR_TASKS else "")
        if not done:
            out.append((name, "not run yet", ""))
        else:
            runner = min(done, key=lambda m: pairs[(t, m)][0])
            mean, low, high, seeds = pairs[(t, runner)]
            ok = mean > 0 and (t not in CI_BAR_TASKS or low > 0)
            verdict = ("met" if ok else "NOT met") + (" (so far)" if missing else "")
            detail = (f"runner-up {METHOD_LABELS[runner]}: SEI {mean:+.2f} dB [{low:+.2f}, {high:+.2f}] over "
                      f"{_seed_text(seeds)}" + (f"; not run yet: {', '.join(missing)}" if missing else ""))
            out.append((name, verdict, detail))
        family = _family(t)
        if family:
            name = f"{label}: SEI within {GAP_BARS[family]} dB of the better supervised row"
            sup = [m for m in SUPERVISED if (t, m) in pairs]
            if not sup:
                out.append((name, "not run yet", ""))
            else:
                best = min(sup, key=lambda m: pairs[(t, m)][0])
                mean, _, _, seeds = pairs[(t, best)]
                gap = -mean
                verdict = ("met" if gap <= GAP_BARS[family] else "NOT met") + (
                    " (so far)" if len(sup) < len(SUPERVISED) else "")
                out.append((name, verdict, f"{METHOD_LABELS[best]} minus SEI {gap:+.2f} dB over "
                                           f"{_seed_text(seeds)}"))
        for m in SUPERVISED:
            r = rows.get((t, m))
            if r is not None:
                g = r["last_quarter_gain"]
                out.append((f"{label}: {METHOD_LABELS[m]} curve flat (< {FLAT_DB} dB over the last quarter)",
                            "met" if g < FLAT_DB else "NOT met", f"{g:+.3f} dB"))
    return out


def _seed_text(seeds):
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def _f(v, digits=2, sign=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def write_summary(results_dir, cells_by_seed, cfg, tasks, data_label):
    """Writes the summary tables and figure (see the module docstring); `cells_by_seed`: {seed: cells}."""
    os.makedirs(results_dir, exist_ok=True)
    seeds = sorted(cells_by_seed)
    rows, pairs = {}, {}
    for t in tasks:
        for m in ("baseline",) + tuple(tasks[t]["methods"]):
            r = method_row(cells_by_seed, t, m)
            if r is not None:
                rows[(t, m)] = r
            p = paired_with_sei(cells_by_seed, t, m)
            if p is not None:
                pairs[(t, m)] = p

    fields = ["task", "method", "seeds", "psnr_mean", "psnr_seed_std", "ssim_mean", "psnr_per_seed",
              "sei_minus_it", "ci95_low", "ci95_high", "learning_rate", "steps", "last_quarter_gain",
              "train_minutes", "paper_psnr"]
    with open(os.path.join(results_dir, "quality.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for t in tasks:
            for m in ("baseline",) + tuple(tasks[t]["methods"]):
                r, p = rows.get((t, m)), pairs.get((t, m))
                w.writerow({
                    "task": t, "method": m, "seeds": " ".join(map(str, r["seeds"])) if r else "",
                    "psnr_mean": _f(r and r["psnr_mean"], 3), "psnr_seed_std": _f(r and r["psnr_seed_std"], 3),
                    "ssim_mean": _f(r and r["ssim_mean"], 4),
                    "psnr_per_seed": " ".join(f"{v:.3f}" for v in r["psnr_per_seed"]) if r else "",
                    "sei_minus_it": _f(p and p[0], 3), "ci95_low": _f(p and p[1], 3), "ci95_high": _f(p and p[2], 3),
                    "learning_rate": (r or {}).get("learning_rate") or "", "steps": (r or {}).get("steps") or "",
                    "last_quarter_gain": _f((r or {}).get("last_quarter_gain"), 3),
                    "train_minutes": _f((r or {}).get("train_minutes"), 1),
                    "paper_psnr": PAPER_PSNR.get(t, {}).get(m, "")})

    any_row = next((r for r in rows.values()), None)
    lrs = cfg.get("learning_rates", {})
    L = ["# Quality benchmark over seeds (issue 14)", "",
         f"Generated by `benchmarks/quality.py --seeds {','.join(map(str, seeds))}` (summary: "
         "`benchmarks/quality_summary.py`) from the finished cells; the report of each seed is in `seed<N>/`. "
         "Cells marked *not run yet* have not finished.", "",
         "## Protocol", "",
         f"- Data: {data_label}, shorter side {cfg['shorter_side']} px; test images "
         f"{', '.join(any_row['test_names']) if any_row else '?'}. Measurements simulated once (seed "
         f"{cfg['seed']}), noise sigma {cfg['noise_sigma']:g}/255: every seed trains and scores on the same data.",
         f"- Backbone `{cfg['backbone']}` {json.dumps(cfg['backbone_args'], sort_keys=True)}; precision "
         f"{cfg.get('precision', 'float32')}. Per seed: initial weights, crops, rotations/flips and the noise "
         "drawn during training change; all methods of a seed start from the same weights.",
         f"- Budget per cell: {cfg['steps']} steps, batch {cfg['batch_size']}, patches {cfg['patch_size']} measurement "
         f"px ({cfg['patch_size_x4']} for SR x4), {cfg['schedule']}."
         + (" Every method's training crops are rotated by multiples of 90 degrees and flipped (checked to commute "
            "with each task's physics)." if cfg.get("dihedral") else "") + tau_text(cfg),
         "- Learning rates: chosen per method and task family on a validation split of the training photographs "
         "(`results/learning_rates.md`); "
         + (per_method_rates(lrs) if lrs else "none chosen: all methods at the defaults")
         + f"; others {cfg['lr_sr']:g} (SR) / {cfg['lr_deblur']:g} (blur).",
         "- Supervised + SEI's augmentation: supervised loss on the measurement pairs plus the same loss on "
         "measurements simulated (fresh noise) from ground truth shrunk by SEI's transform (factor 0.75 or 0.5, "
         "mirror-padded): the augmentation SEI's second pass sees (`losses.SimulatedSupervised`).",
         "- Evaluation: full test images, 8-bit luma PSNR (dB) / SSIM. PSNR: mean over seeds of the per-seed mean "
         "over images (± std over seeds). SEI minus it: mean of the per-image differences (each averaged over "
         "the seeds both finished) with its 95% Student-t interval over the test images; **bold** where the "
         "interval excludes 0.",
         "- Last quarter: test PSNR gained over the last 25% of the steps (mean over seeds); < "
         f"{FLAT_DB} dB reads as flattened.", ""]
    for t in tasks:
        L += [f"## {tasks[t]['label']}", "",
              "| Method | PSNR (dB) | per seed | SSIM | SEI minus it (dB) [95% CI] | lr | last quarter (dB) | "
              "train min | paper (DIV2K, SwinIR) |",
              "|---|---|---|---|---|---|---|---|---|"]
        for m in ("baseline",) + tuple(tasks[t]["methods"]):
            r, p = rows.get((t, m)), pairs.get((t, m))
            paper = PAPER_PSNR.get(t, {}).get(m, "-")
            if r is None:
                L.append(f"| {METHOD_LABELS[m]} | not run yet | | | | | | | {paper} |")
                continue
            std = f" ± {r['psnr_seed_std']:.2f}" if len(r["seeds"]) > 1 else ""
            ci = ""
            if p is not None:
                ci = f"{p[0]:+.2f} [{p[1]:+.2f}, {p[2]:+.2f}]"
                if p[1] > 0 or p[2] < 0:
                    ci = f"**{ci}**"
                if len(p[3]) < len(seeds):
                    ci += f" ({len(p[3])} seed{'s' if len(p[3]) > 1 else ''})"
            L.append(f"| {METHOD_LABELS[m]} | {r['psnr_mean']:.2f}{std} | "
                     + " / ".join(f"{v:.2f}" for v in r["psnr_per_seed"])
                     + f" | {r['ssim_mean']:.4f} | {ci} | {r.get('learning_rate') or ''} | "
                     f"{_f(r.get('last_quarter_gain'), 2, sign=True)} | {_f(r.get('train_minutes'), 1)} | {paper} |")
        L.append("")
    L += ["## Bars of issue 14", "", "| Bar | Verdict | Detail |", "|---|---|---|"]
    L += [f"| {n} | {v} | {d} |" for n, v, d in bars(rows, pairs, tasks)]
    L += ["", "Training minutes are wall-clock on a shared 2-core CPU (two to four cells ran at once, one "
          "thread each): compare them loosely. The paper's numbers (SwinIR, DIV2K, GPU budget) are for "
          "orientation only.",
          "", "Figure: `learning_curves.png` (test PSNR against step, mean over seeds).", ""]
    with open(os.path.join(results_dir, "quality.md"), "w") as fh:
        fh.write("\n".join(L))
    with open(os.path.join(results_dir, "quality.json"), "w") as fh:
        json.dump({"config": cfg, "seeds": seeds,
                   "rows": [{**r, "sei_minus_it": list(pairs[k][:3]) if k in pairs else None}
                            for k, r in rows.items()],
                   "cells": {str(s): list(c.values()) for s, c in cells_by_seed.items()}}, fh, indent=1)
    write_curves(cells_by_seed, tasks, results_dir)


def write_curves(cells_by_seed, tasks, results_dir):
    """learning_curves.png: test PSNR against step per task, mean over the seeds of each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [t for t in tasks if any(k[0] == t and k[1] != "baseline" for c in cells_by_seed.values() for k in c)]
    if not shown:
        return
    cols = min(len(shown), 4)
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, t in zip(axes.ravel(), shown):
        for m in tasks[t]["methods"]:
            curves = [c[(t, m)]["curve"] for c in cells_by_seed.values() if (t, m) in c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [curves[0][i][0] for i in range(n)]
            psnr = [_mean([c[i][1] for c in curves]) for i in range(n)]
            ax.plot(steps, psnr, color=COLORS.get(m), label=f"{METHOD_LABELS[m]} ({len(curves)})",
                    linestyle="--" if m == "supervised_aug" else "-")
        ax.set_title(tasks[t]["label"])
        ax.set_xlabel("step")
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "learning_curves.png"), dpi=110)
    plt.close(fig)
