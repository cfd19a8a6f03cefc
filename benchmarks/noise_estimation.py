"""How well are noise parameters estimated from the measurements themselves?

    PYTHONPATH=$PWD .venv/bin/python benchmarks/noise_estimation.py

`sei_tf.noise_estimation.estimate` (the estimator `--noise auto` uses) on simulated
measurements: greyscale photographs from scikit-image's bundled data, resized to a
shorter side of 256 (bicubic, anti-aliased), through `sei_tf.physics` (SR x2, and a
Gaussian blur of 2 px), then noise drawn with numpy (seeded):

  * Gaussian: y = A x + N(0, (sigma/255)^2), sigma in {1, 2, 5, 10, 20, 30} (8-bit units);
  * Poisson-Gaussian: y = gain * Poisson(max(A x, 0) / gain) + N(0, (sigma/255)^2),
    gain in {0.001, 0.01, 0.05} ([0, 1] units per photon), sigma in {0, 2, 5}.

Measurements are float (not clipped, not quantised). Each image is one data set (one
measurement); the estimate also picks the model. Errors: relative, (estimate - true) / true;
for a true sigma of 0, the estimated sigma itself (8-bit units).

Writes benchmarks/results/noise_estimation.md (first table) and .json.
"""

import datetime
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import skimage.color  # noqa: E402
import skimage.data  # noqa: E402

from sei_tf import noise_estimation, physics  # noqa: E402
from sei_tf.data import resize_shorter_side  # noqa: E402

IMAGES = {  # name -> kind
    "moon": "smooth",  # astronomy: smooth, narrow intensity range
    "retina": "smooth",  # fundus photograph: smooth, dark background
    "brick": "textured",
    "grass": "textured",
    "astronaut": "textured",  # photograph: hair, fabric, print
}
GAUSSIAN = (1, 2, 5, 10, 20, 30)
POISSON_GAUSSIAN = [(g, s) for g in (0.001, 0.01, 0.05) for s in (0, 2, 5)]
TASKS = {"sr x2": physics.make("sr", factor=2), "blur gaussian s2": physics.make("deblur", kernel="gaussian:2")}
RESULTS = os.path.join(ROOT, "benchmarks", "results")


from benchmarks.machine import cpu_model  # noqa: E402
def grey(name):
    a = getattr(skimage.data, name)()
    a = skimage.color.rgb2gray(a) if a.ndim == 3 else a / 255.0
    return resize_shorter_side(a[:, :, None].astype(np.float32), 256)




def noisy(z, gain, sigma, seed):
    rng = np.random.default_rng(seed)
    y = gain * rng.poisson(np.maximum(z, 0.0) / gain) if gain else z.astype(np.float64)
    return y + rng.normal(0, sigma / 255, z.shape)


def relative(est, true):
    return (est - true) / true if true else None


def run():
    rows = []
    clean = {name: grey(name) for name in IMAGES}
    for task, op in TASKS.items():
        for name, x in clean.items():
            z = op.A(x[None])[0].numpy().astype(np.float64)
            cases = [("gaussian", 0.0, s) for s in GAUSSIAN] + [("poisson_gaussian", g, s) for g, s in POISSON_GAUSSIAN]
            for i, (model, gain, sigma) in enumerate(cases):
                t0 = time.perf_counter()
                y = noisy(z, gain, sigma, seed=i)
                est = noise_estimation.estimate(y)
                rows.append(dict(task=task, image=name, kind=IMAGES[name], true_model=model, true_gain=gain,
                                 true_sigma=float(sigma), model=est["model"], gain=est["gain"], sigma=est["sigma"],
                                 rise=est["rise"], model_ok=est["model"] == model,
                                 rel_sigma=relative(est["sigma"], sigma), rel_gain=relative(est["gain"], gain),
                                 seconds=time.perf_counter() - t0, size=list(y.shape)))
                # The std a Gaussian model should find: the noise averaged over the image.
                avg = 255 * float(np.sqrt(gain * np.mean(np.maximum(z, 0)) + (sigma / 255) ** 2))
                rows[-1].update(average_sigma=avg, rel_average_sigma=relative(est["sigma"], avg))
                r = rows[-1]
                print(f"{task:17s} {name:10s} {model:16s} gain {gain:<6g} sigma {sigma:<3g} -> {est['model']:16s} "
                      f"gain {est['gain']:.4f} sigma {est['sigma']:6.2f}  ({r['seconds']:.2f} s)", flush=True)
    return rows


def cell(r):
    """'5.12 (+2%)' or 'g 0.0101 (+1%), s 2.1 (+5%)'; '[G]' / '[PG]' marks a wrong model choice."""
    def pct(v):
        return f"{100 * v:+.0f}%"

    if r["true_model"] == "gaussian":
        text = f"{r['sigma']:.2f} ({pct(r['rel_sigma'])})"
    elif r["model"] == "gaussian":
        text = f"s {r['sigma']:.1f} (average {r['average_sigma']:.1f}: {pct(r['rel_average_sigma'])})"
    else:
        s = f"{r['sigma']:.1f}" + (f" ({pct(r['rel_sigma'])})" if r["true_sigma"] else "")
        text = f"g {r['gain']:.4f} ({pct(r['rel_gain']) if r['gain'] else '-100%'}), s {s}"
    if not r["model_ok"]:
        text += " **[G]**" if r["model"] == "gaussian" else " **[PG]**"
    return text


def summary(rows):
    """Per task, kind and true model: median |relative error| of the parameters when the model was
    right (sigma only where the true sigma >= 5), of a Gaussian answer's sigma against the average
    noise std when it was not, and the share of right model choices."""
    out = []
    for task in TASKS:
        for kind in ("smooth", "textured"):
            for model in ("gaussian", "poisson_gaussian"):
                sel = [r for r in rows if r["task"] == task and r["kind"] == kind and r["true_model"] == model]
                right = [r for r in sel if r["model_ok"]]
                sig = [abs(r["rel_sigma"]) for r in right if r["true_sigma"] >= 5]
                gain = [abs(r["rel_gain"]) for r in right if r["rel_gain"] is not None]
                avg = [abs(r["rel_average_sigma"]) for r in sel if not r["model_ok"] and r["model"] == "gaussian"]

                def median(v):
                    return float(np.median(v)) if v else None

                out.append(dict(task=task, kind=kind, model=model, sigma=median(sig), gain=median(gain),
                                average=median(avg), right_model=float(np.mean([r["model_ok"] for r in sel]))))
    return out


def write(rows, header):
    os.makedirs(RESULTS, exist_ok=True)
    names = list(IMAGES)
    lines = [
        "# Noise parameters estimated from the measurements", "",
        f"Generated by `benchmarks/noise_estimation.py` on {header['date']}; CPU: {header['cpu']}.", "",
        "Estimator: `sei_tf.noise_estimation.estimate` (PCA of 7x7 patches, Chen et al. 2015; per signal level "
        "and a weighted line fit for Poisson-Gaussian; the model is chosen by the rise of the variance with the "
        "signal). Measurements: scikit-image greyscale images "
        f"({', '.join(f'{n} ({k})' for n, k in IMAGES.items())}), shorter side 256, through `sei_tf.physics` "
        "(SR x2: 128-pixel measurements; Gaussian blur s2: 256), float, one image per estimate, one noise draw. "
        "Units: sigma in 8-bit units, gain in [0, 1] units per photon (Var[y | z] = gain z + (sigma/255)^2). "
        "Cells: the estimate and its relative error; for a true sigma of 0 the estimated sigma itself. "
        "**[G]** / **[PG]**: the estimate chose the wrong model (Gaussian / Poisson-Gaussian) and its "
        "parameters are those of that model; a Gaussian answer to Poisson-Gaussian data is compared with the "
        "noise std averaged over the image, sqrt(gain mean(A x) + (sigma/255)^2), which is what Gaussian SURE "
        "would need. The photographs carry their own noise and 8-bit quantisation "
        "(about 1/255 or more), which reads as noise at sigma 1-2.", "",
        "## Estimates", "",
        "| task | true noise | " + " | ".join(f"{n} ({IMAGES[n]})" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    keys = sorted({(r["task"], r["true_model"], r["true_gain"], r["true_sigma"]) for r in rows},
                  key=lambda k: (list(TASKS).index(k[0]), k[1], k[2], k[3]))
    for task, model, gain, sigma in keys:
        cells = {r["image"]: cell(r) for r in rows
                 if (r["task"], r["true_model"], r["true_gain"], r["true_sigma"]) == (task, model, gain, sigma)}
        noise = f"gaussian sigma {sigma:g}" if model == "gaussian" else f"PG gain {gain:g}, sigma {sigma:g}"
        lines.append(f"| {task} | {noise} | " + " | ".join(cells.get(n, "") for n in names) + " |")
    lines += ["", "## Summary", "",
              "Median |relative error| of sigma (true sigma >= 5 only: a small sigma under Poisson noise is "
              "hard to see) and of the gain, over the estimates that chose the right model; of the sigma of a "
              "Gaussian answer to Poisson-Gaussian data against the average noise std; and the share of right "
              "model choices.", "",
              "| task | images | true model | sigma | gain | Gaussian answer vs average std | right model |",
              "|---|---|---|---|---|---|---|"]
    for s in summary(rows):
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        lines.append(f"| {s['task']} | {s['kind']} | {s['model']} | {fmt(s['sigma'])} | {fmt(s['gain'])} | "
                     f"{fmt(s['average'])} | {100 * s['right_model']:.0f}% |")
    path = os.path.join(RESULTS, "noise_estimation.md")
    text = "\n".join(lines) + "\n"
    if os.path.exists(path):  # keep a second part (training comparison) written by another script
        old = open(path).read()
        marker = "\n## Training without the noise level"
        if marker in old:
            text += old[old.index(marker):]
    for target, content in ((path, text), (os.path.join(RESULTS, "noise_estimation.json"),
                                          json.dumps({"header": header, "rows": rows}, indent=1))):
        tmp = target + ".tmp"
        with open(tmp, "w") as f:
            f.write(content)
        os.replace(tmp, target)
    return text


def main():
    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model()}
    print(f"CPU: {header['cpu']}", flush=True)
    rows = run()
    print(write(rows, header))


if __name__ == "__main__":
    main()
