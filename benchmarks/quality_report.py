"""Report of the quality benchmark: tables, figures and markdown from finished cells.

`benchmarks/quality.py` runs the experiment (data, training, evaluation, cached
cells) and calls `write_report` after every cell. This module only formats what
it is given and knows nothing of how cells are trained or stored:

- `cells`: {(task, method): result dict} of the finished cells (see
  `quality.train_cell` and `quality.baseline_cell`; method "baseline" is the
  non-learned reconstruction of the task's physics);
- `partial`: {(task, method): checkpoint state} of unfinished cells (their step
  and learning curve so far);
- `tasks`: {task key: {"label", "methods", "upscale", "baseline_name"}}, in
  display order;
- `data_dirs`: {task key: {"test_names", "test_y", "test_x"}} (measurement and
  ground-truth arrays, for the figures);
- `predictions(task, method)`: the cell's 8-bit test predictions, a mapping
  image name -> uint8 array, or None.

Outputs in `results_dir`: quality.md, quality.csv, quality.json,
learning_curves.png, visual.png, spectra.png.
"""

import json
import os

METHOD_LABELS = {"supervised": "Supervised", "supervised_aug": "Supervised + SEI's augmentation", "css": "CSS", "sure": "SURE", "ei_shift": "EI (shift)",
                 "ei_rotate": "EI (rotate)", "sei": "SEI", "sei_nostop": "SEI, no stop-gradient",
                 "ei_rotate_nearest": "EI (rotate, nearest)", "baseline": "Non-learned baseline"}
# Methods that learn from measurements alone (the bar "SEI best self-supervised" compares them).
SELF_SUPERVISED = ("css", "sure", "ei_shift", "ei_rotate", "ei_rotate_nearest", "sei", "sei_nostop")
# The authors' published PSNR (dB), noise 5/255, DIV2K validation, SwinIR, GPU budget.
PAPER_PSNR = {
    "sr_x2": {"supervised": 29.2, "sei": 29.1, "baseline": 27.4},
    "sr_x4": {"supervised": 22.7, "sei": 22.9, "baseline": 21.9},
    "gaussian_2": {"supervised": 25.9, "sei": 25.8, "baseline": 22.8},
}
# Bars of issue #4 on the CPU budget: max PSNR gap (dB) of SEI below supervised.
GAP_BARS = {"sr_x2": 0.3, "sr_x4": 0.5, "gaussian_2": 1.5}
VISUAL_NAME = "astronaut"  # the test image shown in visual.png (centre crop)
SPECTRA_TASKS = ("sr_x2", "gaussian_2")  # the tasks of spectra.png (else the first one shown)
COLORS = {"supervised": "k", "supervised_aug": "tab:gray", "css": "tab:purple", "sure": "tab:orange", "ei_shift": "tab:olive",
          "ei_rotate": "tab:cyan", "sei": "tab:red", "sei_nostop": "tab:pink", "ei_rotate_nearest": "tab:blue"}


# A variant without a learning rate of its own trains at its parent's (quality.learning_rate).
RATE_PARENT = {"ei_rotate_nearest": "ei_rotate"}


def per_method_rates(rates):
    """"SEI 0.001 (SR) / 0.001 (blur), ...": each method's chosen learning rates (--learning_rates),
    then the variants that take their parent's."""
    text = ", ".join(f"{METHOD_LABELS[m]} {v.get('sr', '-')} (SR) / {v.get('deblur', '-')} (blur)"
                     for m, v in rates.items())
    inherited = [f"{METHOD_LABELS[m]} at {METHOD_LABELS[p]}'s" for m, p in RATE_PARENT.items()
                 if m not in rates and p in rates]
    return text + "".join(f", {t}" for t in inherited)


def tau_text(cfg):
    """" SURE's divergence step tau = 0.001 (...)." for a configuration with a non-default tau, else ""."""
    if "tau" not in cfg:
        return ""
    return f" SURE's divergence step tau = {cfg['tau']:g} (the method's default is 0.01)."


def learning_rate_text(cfg):
    """The protocol's learning rates: one per task family, or each method's chosen one (--learning_rates)."""
    default = f"{cfg['lr_sr']:g} (SR) / {cfg['lr_deblur']:g} (deblurring)"
    if not cfg.get("learning_rates"):
        return f"learning rate {default}"
    return f"learning rates per method: {per_method_rates(cfg['learning_rates'])}; other methods {default}"


def write_report(results_dir, cells, partial, cfg, tasks, cell_key, data_label, data_dirs, predictions):
    """Writes every table and figure of the report into `results_dir` (see the module docstring)."""
    os.makedirs(results_dir, exist_ok=True)
    write_tables(cells, cfg, tasks, results_dir, cell_key, data_label, partial)
    write_figures(cells, tasks, data_dirs, results_dir, predictions, partial)
    with open(os.path.join(results_dir, "quality.json"), "w") as fh:
        json.dump({"config": cfg, "cell_set": cell_key, "cells": list(cells.values())}, fh, indent=1)


def _fmt(r, key="psnr"):
    if r is None:
        return "not run yet"
    return f"{r[key + '_mean']:.{2 if key == 'psnr' else 4}f} ± {r[key + '_std']:.{2 if key == 'psnr' else 3}f}"


def bars(cells, tasks):
    """Checks the bars of issue #4 on the finished cells; a list of (bar, verdict, detail)."""
    out = []
    for t in tasks:
        sei = cells.get((t, "sei"))
        others = {m: cells.get((t, m)) for m in SELF_SUPERVISED if m in tasks[t]["methods"]
                  and m not in ("sei",)}
        done = {m: r for m, r in others.items() if r is not None}
        label = tasks[t]["label"]
        if sei is None:
            out.append((f"{label}: SEI best self-supervised", "not run yet", ""))
        else:
            best_other = max(done.items(), key=lambda kv: kv[1]["psnr_mean"]) if done else None
            missing = [m for m, r in others.items() if r is None]
            if best_other is None:
                verdict, detail = "not run yet", "no other self-supervised cell finished"
            else:
                ok = sei["psnr_mean"] > best_other[1]["psnr_mean"]
                verdict = ("met" if ok else "NOT met") + (" (so far)" if missing else "")
                detail = (f"SEI {sei['psnr_mean']:.2f} dB vs best other {METHOD_LABELS[best_other[0]]} "
                          f"{best_other[1]['psnr_mean']:.2f} dB"
                          + (f"; not run yet: {', '.join(missing)}" if missing else ""))
            out.append((f"{label}: SEI best self-supervised", verdict, detail))
        if t in GAP_BARS:
            sup = cells.get((t, "supervised"))
            name = f"{label}: SEI within {GAP_BARS[t]} dB of supervised"
            if sei is None or sup is None:
                out.append((name, "not run yet", ""))
            else:
                gap = sup["psnr_mean"] - sei["psnr_mean"]
                out.append((name, "met" if gap <= GAP_BARS[t] else "NOT met", f"gap {gap:+.2f} dB"))
        if "sei_nostop" in tasks[t]["methods"]:
            nos = cells.get((t, "sei_nostop"))
            name = f"{label}: stop-gradient ablation shows an effect"
            if sei is None or nos is None:
                out.append((name, "not run yet", ""))
            else:
                d = sei["psnr_mean"] - nos["psnr_mean"]
                out.append((name, "met" if d > 0.05 else "NOT met",
                            f"SEI with stop-gradient {d:+.2f} dB vs without"))
    return out


def write_tables(cells, cfg, tasks, results_dir, cell_key, data_label, partial=None):
    """quality.csv and quality.md."""
    import csv

    partial = partial or {}

    os.makedirs(results_dir, exist_ok=True)
    rows = []
    for t in tasks:
        for m in ("baseline",) + tuple(tasks[t]["methods"]):
            r = cells.get((t, m))
            rows.append({
                "task": t, "method": m,
                "status": "done" if r is not None else (
                    f"running (step {partial[(t, m)]['step']})" if (t, m) in partial else "not run yet"),
                "psnr_mean": f"{r['psnr_mean']:.3f}" if r else "", "psnr_std": f"{r['psnr_std']:.3f}" if r else "",
                "ssim_mean": f"{r['ssim_mean']:.4f}" if r else "", "ssim_std": f"{r['ssim_std']:.4f}" if r else "",
                "paper_psnr": PAPER_PSNR.get(t, {}).get(m, ""),
                "steps": r.get("steps", "") if r else "", "batch_size": r.get("batch_size", "") if r else "",
                "patch_size": r.get("patch_size", "") if r else "",
                "learning_rate": r.get("learning_rate", "") if r else "",
                "train_minutes": f"{r['train_minutes']:.1f}" if r and "train_minutes" in r else "",
                "eval_minutes": f"{r['eval_minutes']:.1f}" if r and "eval_minutes" in r else "",
                "backbone": cfg["backbone"] + json.dumps(cfg["backbone_args"], sort_keys=True) if m != "baseline" else "",
            })
    with open(os.path.join(results_dir, "quality.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    any_cell = next((r for r in cells.values() if r["method"] != "baseline"), None)
    n_train = any_cell["num_train"] if any_cell else "?"
    test_names = next(iter(cells.values()))["test_names"] if cells else []
    L = ["# Quality benchmark (issue #4)", "",
         "Generated by `benchmarks/quality.py` from the finished cells "
         f"(cell set `{cell_key}`); cells marked *not run yet* have not finished.", "",
         "## Protocol", "",
         f"- Data: {data_label}, "
         f"shorter side {cfg['shorter_side']} px; {n_train} training images, {len(test_names)} test images "
         f"({', '.join(test_names)}), split fixed in the code.",
         f"- Measurements: simulated once, noise sigma {cfg['noise_sigma']:g}/255, fixed noise seed per image.",
         f"- Backbone: `{cfg['backbone']}` {json.dumps(cfg['backbone_args'], sort_keys=True)}, same initial weights "
         f"(seed {cfg['seed']}) for all methods.",
         f"- Budget per cell: {cfg['steps'] if cfg['steps'] is not None else str(cfg['epochs']) + ' epochs'} steps, batch "
         f"{cfg['batch_size']}, patches {cfg['patch_size']} measurement px ({cfg['patch_size_x4']} for SR x4), "
         f"{cfg['schedule']}, " + learning_rate_text(cfg) + "." + tau_text(cfg),
         "- Evaluation: full test images, outputs clamped and quantised to 8 bits, PSNR (dB) / SSIM on the "
         "BT.601 luma channel, mean ± std over the test images.",
         "- Minutes: wall-clock training time of the cell on this machine's CPU (2 shared cores, no GPU; "
         "other jobs ran concurrently, so times are indicative), evaluation time separate.", ""]
    for t in tasks:
        L += [f"## {tasks[t]['label']}", "",
              "| Method | PSNR (dB) | vs baseline | SSIM | Paper PSNR (DIV2K, SwinIR, GPU) | train min | steps |",
              "|---|---|---|---|---|---|---|"]
        for m in ("baseline",) + tuple(tasks[t]["methods"]):
            r = cells.get((t, m))
            paper = PAPER_PSNR.get(t, {}).get(m)
            minutes = f"{r['train_minutes']:.1f}" if r and "train_minutes" in r else ""
            steps = str(r["steps"]) if r and "steps" in r else ""
            b = cells.get((t, "baseline"))
            delta = f"{r['psnr_mean'] - b['psnr_mean']:+.2f}" if r and b and m != "baseline" else ""
            shown = _fmt(r)
            if r is None and (t, m) in partial:
                c = partial[(t, m)]["curve"][-1]
                shown = f"not finished (step {c[0]}: {c[1]:.2f})"
            L.append(f"| {METHOD_LABELS[m]} | {shown} | {delta} | {_fmt(r, 'ssim') if r else ''} | "
                     f"{paper if paper is not None else '-'} | {minutes} | {steps} |")
        L.append("")
    L += ["## Per-image PSNR (dB)", "",
          "The standard deviations above are dominated by differences between images; "
          "paired differences per image say more about differences between methods.", ""]
    for t in tasks:
        done = [m for m in ("baseline",) + tuple(tasks[t]["methods"]) if (t, m) in cells]
        if len(done) < 2:
            continue
        names = cells[(t, done[0])]["test_names"]
        L += [f"**{tasks[t]['label']}**", "", "| Method | " + " | ".join(names) + " | SEI minus it (mean ± std) |",
              "|---|" + "---|" * (len(names) + 1)]
        sei = cells.get((t, "sei"))
        for m in done:
            r = cells[(t, m)]
            diff = ""
            if sei is not None and m != "sei":
                d = [a - b for a, b in zip(sei["psnr"], r["psnr"])]
                mean = sum(d) / len(d)
                sd = (sum((v - mean) ** 2 for v in d) / len(d)) ** 0.5
                diff = f"{mean:+.2f} ± {sd:.2f} (SEI higher on {sum(v > 0 for v in d)}/{len(d)})"
            L.append(f"| {METHOD_LABELS[m]} | " + " | ".join(f"{v:.2f}" for v in r["psnr"]) + f" | {diff} |")
        L.append("")
    L += ["## Bars of issue #4", "", "| Bar | Verdict | Detail |", "|---|---|---|"]
    for name, verdict, detail in bars(cells, tasks):
        L.append(f"| {name} | {verdict} | {detail} |")
    notes = []
    for t in tasks:
        sei, sup = cells.get((t, "sei")), cells.get((t, "supervised"))
        if sei and sup and sup.get("train_minutes"):
            c = sup["curve"]
            tail = c[-1][1] - c[len(c) // 2][1] if len(c) > 2 else float("nan")
            notes.append(f"{tasks[t]['label']}: an SEI step took {sei['train_minutes'] / sup['train_minutes']:.1f}x "
                         f"the wall-clock time of a supervised step; supervised test PSNR changed by "
                         f"{tail:+.2f} dB over the second half of its steps.")
    if notes:
        L += ["", "Budget caveat: every method gets the same number of steps, not the same compute, and the "
              "budget is short. SEI does three network passes per step (SURE's two plus the equivariance "
              "pass), supervised one, so at equal steps SEI has spent more compute, and its equivariance "
              "term adds a scale-augmented training pair per patch. A supervised result below SEI here "
              "says the CPU budget stops supervised training early; it is not a claim that SEI beats "
              "supervised training at convergence (the paper finds them close)."] + [f"- {n}" for n in notes]
    L += ["", "The paper's numbers (SwinIR, 500 epochs on 800 DIV2K images, GPU) are given for orientation "
          "only: data, backbone and budget differ, so absolute values are not comparable.", "",
          "Figures: `learning_curves.png` (test PSNR vs step), `visual.png` (crops), `spectra.png` "
          "(radially averaged power spectra).", ""]
    with open(os.path.join(results_dir, "quality.md"), "w") as fh:
        fh.write("\n".join(L))


def _luma(img):
    import numpy as np

    img = np.asarray(img, np.float64)
    if img.dtype != np.float64 or img.max() > 1.5:
        img = img / 255.0
    return 16 / 255 + img @ (np.array([65.481, 128.553, 24.966]) / 255)


def radial_spectrum(img):
    """Radially averaged power spectrum of an image's luma (Hann window)."""
    import numpy as np

    y = _luma(img)
    y = y - y.mean()
    h, w = y.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    p = np.abs(np.fft.fftshift(np.fft.fft2(y * win))) ** 2
    yy, xx = np.indices((h, w))
    r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)  # cycles per pixel
    bins = np.linspace(0, 0.5, 65)
    idx = np.digitize(r.ravel(), bins)
    spec = np.array([p.ravel()[idx == i].mean() if np.any(idx == i) else np.nan for i in range(1, len(bins))])
    return 0.5 * (bins[1:] + bins[:-1]), spec


def write_figures(cells, tasks, data_dirs, results_dir, predictions, partial=None):
    """learning_curves.png, visual.png and spectra.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = COLORS

    # Learning curves.
    ncols = min(2, len(tasks))
    nrows = (len(tasks) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.4 * nrows), squeeze=False)
    for ax in axes.ravel()[len(tasks):]:
        ax.set_visible(False)
    for ax, t in zip(axes.ravel(), tasks):
        for m in tasks[t]["methods"]:
            r = cells.get((t, m))
            if r is None and (t, m) in (partial or {}):
                c = np.array(partial[(t, m)]["curve"])
                ax.plot(c[:, 0], c[:, 1], color=colors[m], ls="--", marker=".",
                        label=f"{METHOD_LABELS[m]} (unfinished, step {int(c[-1, 0])})")
                continue
            if r is None:
                ax.plot([], [], color=colors[m], label=f"{METHOD_LABELS[m]} (not run yet)", ls=":")
                continue
            c = np.array(r["curve"])
            ax.plot(c[:, 0], c[:, 1], color=colors[m], label=METHOD_LABELS[m], marker=".")
        b = cells.get((t, "baseline"))
        if b is not None:
            ax.axhline(b["psnr_mean"], color="gray", ls="--", label="Non-learned baseline")
        finished = [cells[(t, m)]["steps"] for m in tasks[t]["methods"] if (t, m) in cells]
        finished += [p["curve"][-1][0] for k, p in (partial or {}).items() if k[0] == t]
        ax.set_xlim(0, max(finished) if finished else 1)
        ax.set_title(tasks[t]["label"])
        ax.set_xlabel("training step")
        ax.set_ylabel("test PSNR (dB, luma)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(results_dir, "learning_curves.png"), dpi=110)
    plt.close(fig)

    # Visual comparison: the same crop of one test image for each task.
    cols = [("measurement", "Measurement"), ("baseline", "Baseline"), ("sure", "SURE"),
            ("ei", "EI"), ("sei", "SEI"), ("supervised", "Supervised"), ("gt", "Ground truth")]
    shown = [t for t in tasks if t in data_dirs]
    if shown:
        fig, axes = plt.subplots(len(shown), len(cols), figsize=(2.1 * len(cols), 2.3 * len(shown)),
                                 squeeze=False)
        for row, t in zip(axes, shown):
            dd = data_dirs[t]
            i = dd["test_names"].index(VISUAL_NAME) if VISUAL_NAME in dd["test_names"] else 0
            name, x, y = dd["test_names"][i], dd["test_x"][i], dd["test_y"][i]
            f = tasks[t]["upscale"]
            h, w = x.shape[:2]
            size = min(96, h, w) // 4 * 4 or min(h, w)
            r0, c0 = (h - size) // 2, (w - size) // 2
            for ax, (key, label) in zip(row, cols):
                img, info = None, ""
                if key == "gt":
                    img = x
                elif key == "measurement":
                    img = np.clip(y[r0 // f:(r0 + size) // f, c0 // f:(c0 + size) // f], 0, 1)
                    img = np.kron(img, np.ones((f, f, 1))) if f > 1 else img
                else:
                    if key == "ei":
                        m = "ei_shift" if (t, "ei_shift") in cells or (t, "ei_rotate") not in cells else "ei_rotate"
                        label = METHOD_LABELS[m] if m in tasks[t]["methods"] else "EI"
                    else:
                        m = key
                    r = cells.get((t, m))
                    p = predictions(t, m)
                    if r is not None and p is not None and name in p:
                        img = p[name] / 255.0
                        info = f"\n{r['psnr'][i]:.2f} dB"
                if img is not None and key != "measurement":
                    img = img[r0:r0 + size, c0:c0 + size]
                if img is None:
                    ax.text(0.5, 0.5, "not run yet" if m in tasks[t]["methods"] else "n/a",
                            ha="center", va="center", fontsize=8)
                else:
                    ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(label + info, fontsize=8)
            row[0].set_ylabel(f"{tasks[t]['label']}\n{name}", fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(results_dir, "visual.png"), dpi=110)
        plt.close(fig)

    # Radially averaged power spectra (averaged over the test images), SR x2 and Gaussian blur.
    spec_tasks = [t for t in SPECTRA_TASKS if t in data_dirs] or list(data_dirs)[:1]
    if spec_tasks:
        fig, axes = plt.subplots(1, len(spec_tasks), figsize=(5.8 * len(spec_tasks), 4.4), squeeze=False)
        for ax, spec_task in zip(axes[0], spec_tasks):
            dd = data_dirs[spec_task]
            base_label = f"Baseline ({tasks[spec_task]['baseline_name']})"
            curves = [("Ground truth", [np.asarray(x) for x in dd["test_x"]], "k", "-")]
            for m, label, col, ls in (("baseline", base_label, "gray", "--"),
                                      ("sure", "SURE", "tab:orange", "-"), ("sei", "SEI", "tab:red", "-"),
                                      ("supervised", "Supervised", "tab:blue", ":")):
                p = predictions(spec_task, m)
                curves.append((label, [p[n] / 255.0 for n in dd["test_names"]] if p is not None else None,
                               col, ls) if p is not None else (label + " (not run yet)", None, col, ls))
            for label, imgs, col, ls in curves:
                if imgs is None:
                    ax.plot([], [], color=col, ls=ls, label=label)
                    continue
                specs = [radial_spectrum(im) for im in imgs]
                ax.semilogy(specs[0][0], np.nanmean([sp for _, sp in specs], axis=0), color=col, ls=ls,
                            label=label)
            ax.set_xlabel("spatial frequency (cycles / pixel)")
            ax.set_ylabel("power (luma, mean over test images)")
            ax.set_title(f"Radially averaged power spectrum, {tasks[spec_task]['label']}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(results_dir, "spectra.png"), dpi=110)
        plt.close(fig)
