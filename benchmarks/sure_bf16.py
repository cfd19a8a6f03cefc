"""Is SURE still unbiased when the backbone computes in bfloat16? And how much faster is it?

    PYTHONPATH=. .venv/bin/python benchmarks/sure_bf16.py [--draws 2048] [--speed_steps 10]

Part 1, SURE bias (issue 10, item 3). SURE (method.md: residual - sigma^2 +
2 sigma^2 div / m, one Gaussian probe, tau = 0.01 (--tau), a border of (k-1)//2
excluded for blur) is an unbiased estimate of the measurement-domain error
||A f(y) - A x||^2 / m. Over many noise draws of one photograph, the mean of
(SURE - true error) must be 0 within its standard error. The backbone is a
randomly initialised ResidualCNN whose zero-initialised tail is replaced by a
random one, so that the learned residual matters. Variants, same weights:

- float32: the whole backbone in float32;
- bfloat16: convolutions in bfloat16, skip path (identity / bicubic) float32
  from the float32 input, output float32 (what `models.build(...,
  precision="bfloat16")` makes);
- bfloat16, all reduced: the input cast to bfloat16 first, skip and sum in
  bfloat16 too (what a plain Keras mixed policy on the backbone gives).

Units: mean, standard error and std of (SURE - true) and the true error are
in squared [0, 1] intensity units (per measurement pixel and channel), shown
x1e-6; z = mean / standard error.

Part 2, speed: seconds per forward+backward step (tf.function, no XLA) of
ResidualCNN(64 features, 8 blocks) on a batch of 8 48x48 inputs, output 48x48
(deblurring) and 96x96 (SR x2), float32 vs bfloat16, measured alternately in
one run; the ratio is float32 time / bfloat16 time (> 1: bfloat16 is faster).

Writes benchmarks/results/sure_bf16.md (part 1) and bf16_speed.md (part 2);
--skip_bias / --skip_speed run one part alone and leave the other file as it is.
"""

import argparse
import datetime
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sei_tf import losses, physics, precision  # noqa: E402
from sei_tf.models import ResidualCNN, SwinIR  # noqa: E402

TAU = losses.METHOD_TAU  # the method's step (0.01); --tau changes it (and the report's name)


class AllReducedCNN(ResidualCNN):
    """ResidualCNN with the skip path in the compute type too (a plain Keras mixed policy).

    Benchmark-only foil: shows what the float32 skip of `ResidualCNN` avoids.
    """

    def call(self, y):
        y = tf.cast(y, self.compute_dtype)
        skip = tf.cast(self.skip(y), self.compute_dtype)
        return tf.cast(skip + self.residual(y), tf.float32)


def photo(size):
    """scikit-image's astronaut, centre-cropped, resized to size x size, float32 in [0, 1]."""
    from skimage import data

    im = data.astronaut().astype(np.float32) / 255.0
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    im = tf.image.resize(im[None], (size, size), method="bicubic", antialias=True)[0]
    return np.clip(im.numpy(), 0.0, 1.0)


def backbones(upscale, features, blocks, seed=0):
    """The three variants of one randomly initialised ResidualCNN, with a random tail."""
    import keras

    keras.utils.set_random_seed(seed)
    f32 = ResidualCNN(upscale=upscale, channels=3, features=features, num_blocks=blocks)
    f32(tf.zeros([1, 8, 8, 3]))
    # A non-zero tail: the learned residual is ~0.1 in rms, like an early trained network.
    f32.tail.kernel.assign(0.02 * tf.random.stateless_normal(f32.tail.kernel.shape, [seed, 7]))
    out = {"float32": f32}
    for name, cls in (("bfloat16", ResidualCNN), ("bfloat16, all reduced", AllReducedCNN)):
        net = cls(upscale=upscale, channels=3, features=features, num_blocks=blocks, precision="bfloat16")
        net(tf.zeros([1, 8, 8, 3]))
        net.set_weights(f32.get_weights())
        out[name] = net
    return out


def swinir_backbones(upscale, seed=0):
    """A tiny randomly initialised SwinIR in float32 and bfloat16 (same weights).

    For SR it has no skip path: its whole output goes through bfloat16 layers.
    """
    import keras

    keras.utils.set_random_seed(seed)
    cfg = dict(upscale=upscale, channels=3, embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=4)
    f32 = SwinIR(**cfg)
    f32.build((None, None, None, 3))
    bf16 = SwinIR(precision="bfloat16", **cfg)
    bf16.build((None, None, None, 3))
    bf16.set_weights(f32.get_weights())
    return {"float32": f32, "bfloat16": bf16}


def sure_minus_true(f, op, sigma, x, draws, seed, chunk=256, tau=TAU):
    """(SURE - true error, true error) per noise draw, float64 arrays of length `draws`.

    `x` is one clean image (H, W, C); `op` gives the operator `A` and the
    border `margin`; the noise is Gaussian with std `sigma` in [0, 1] units,
    drawn here. Every draw has its own noise and probe.
    """
    diffs, trues = [], []
    for start in range(0, draws, chunk):
        n = min(chunk, draws - start)
        xb = tf.constant(np.repeat(x[None], n, axis=0))
        ax = op.A(xb)
        shape = tf.shape(ax)
        y = ax + sigma * tf.random.stateless_normal(shape, [seed, start])
        border = op.margin
        rows = tf.range(shape[1])
        cols = tf.range(shape[2])
        inside = ((rows[:, None] >= border) & (rows[:, None] < shape[1] - border)
                  & (cols[None, :] >= border) & (cols[None, :] < shape[2] - border))
        mask = tf.cast(inside, tf.float32)[None, :, :, None]
        m = tf.reduce_sum(mask) * tf.cast(shape[3], tf.float32)
        b = tf.random.stateless_normal(shape, [seed + 1, start]) * mask
        ax1 = op.A(f(y))
        ax1_probe = op.A(f(y + tau * b))
        residual = tf.reduce_sum(tf.square((ax1 - y) * mask), axis=[1, 2, 3]) / m
        div = tf.reduce_sum(b * (ax1_probe - ax1), axis=[1, 2, 3]) / tau
        var = sigma ** 2
        sure = residual - var + 2.0 * var * div / m
        true = tf.reduce_sum(tf.square((ax1 - ax) * mask), axis=[1, 2, 3]) / m
        diffs.append((sure - true).numpy().astype(np.float64))
        trues.append(true.numpy().astype(np.float64))
    return np.concatenate(diffs), np.concatenate(trues)


def _stats(values):
    """Mean, standard error, z = mean / standard error and standard deviation of `values`."""
    std = values.std(ddof=1)
    stderr = std / np.sqrt(len(values))
    return dict(mean=values.mean(), stderr=stderr, z=values.mean() / stderr if stderr > 0 else 0.0, std=std)


def bias_table(draws, size, features, blocks, sigmas, swinir, tau=TAU):
    rows = []
    x = photo(size)
    # Only the operators' `A` and `margin` are used; the noise is drawn here.
    tasks = [("sr x2", physics.SuperResolution(2), 2),
             ("blur gaussian:1", physics.Blur("gaussian:1"), 1),
             ("blur gaussian:2", physics.Blur("gaussian:2"), 1)]
    runs = [(f"ResidualCNN {task}", op, backbones(upscale, features, blocks)) for task, op, upscale in tasks]
    if swinir:
        runs += [(f"tiny SwinIR {task}", op, swinir_backbones(upscale)) for task, op, upscale in tasks[:2]]
    for task, op, nets in runs:
        for sigma in sigmas:
            reference = None
            for variant, net in nets.items():
                t0 = time.perf_counter()
                # Same seed for every variant: same noise and probes, so differences pair up.
                diff, true = sure_minus_true(net, op, sigma / 255.0, x, draws, seed=11, tau=tau)
                reference = diff if reference is None else reference
                paired = diff - reference
                r = dict(task=task, sigma=sigma, variant=variant, true=true.mean(), **_stats(diff),
                         **{f"paired_{k}": v for k, v in _stats(paired).items()})
                rows.append(r)
                print(f"{task:28s} sigma {sigma:4.1f}  {variant:22s} mean {1e6 * r['mean']:9.3f}e-6 "
                      f"stderr {1e6 * r['stderr']:7.3f}e-6  z {r['z']:6.2f}  std {1e6 * r['std']:8.2f}e-6  "
                      f"true {1e6 * r['true']:9.1f}e-6  | vs float32: {1e6 * r['paired_mean']:8.3f}e-6 "
                      f"+- {1e6 * r['paired_stderr']:6.3f}e-6 (z {r['paired_z']:6.2f})  "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return rows


def cpu_description():
    """CPU model name and its bfloat16-related flags."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = sorted(f for f in precision.cpu_flags() if "bf16" in f or f.startswith("amx"))
    return model, flags


def speed_table(steps, rounds):
    """Seconds per forward+backward step, float32 vs bfloat16, alternating to share the load drift."""
    results = []
    for upscale in (1, 2):
        nets, fns = {}, {}
        y = tf.random.stateless_uniform([8, 48, 48, 3], [0, 1])
        for p in ("float32", "bfloat16"):
            net = ResidualCNN(upscale=upscale, channels=3, features=64, num_blocks=8, precision=p)
            net(y[:1])
            nets[p] = net

            @tf.function(jit_compile=False)
            def step(y, net=net):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(tf.square(net(y)))
                return tape.gradient(loss, net.trainable_variables)

            for _ in range(2):  # trace and warm up
                step(y)
            fns[p] = step
        times = {p: [] for p in fns}
        for _ in range(rounds):
            for p, step in fns.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    grads = step(y)
                float(tf.reduce_sum(grads[0]))  # wait for the last step
                times[p].append((time.perf_counter() - t0) / steps)
        f32, bf16 = np.median(times["float32"]), np.median(times["bfloat16"])
        out = 48 * upscale
        results.append(dict(shape=f"8x48x48 -> 8x{out}x{out}", float32=f32, bfloat16=bf16, ratio=f32 / bf16))
        print(f"ResidualCNN(64, 8) fwd+bwd, batch 8, 48x48 -> {out}x{out}: float32 {f32:.3f} s, "
              f"bfloat16 {bf16:.3f} s, float32/bfloat16 {f32 / bf16:.2f}", flush=True)
    return results


def write_reports(folder, args, bias, speed, header):
    """Writes sure_bf16.md (bias) and bf16_speed.md (speed) in `folder`, each when that part ran."""
    def head(title):
        return [f"# {title}", "", f"Generated by `benchmarks/sure_bf16.py` on {header['date']}. "
                f"{header['machine']}", ""]

    if bias:
        lines = head("SURE with a bfloat16 backbone") + [
            f"ResidualCNN({args.features} features, {args.blocks} blocks), random weights, random tail "
            f"(std 0.02: a residual of ~0.12 rms); tiny SwinIR (embed 24, depths (2, 2), heads (2, 2), "
            "window 4; no skip path for SR: its output is unrelated to the image, a test of the arithmetic, "
            f"not of a trained model), random weights; one {args.size}x{args.size} photograph "
            "(astronaut, the signal x); "
            f"{args.draws} noise draws, each with its own probe; tau = {args.tau:g}. "
            "Values in squared [0, 1] units per measurement pixel and channel, x1e-6. "
            "z = mean / standard error (|z| < 4: no detectable bias). Every variant sees the same noise "
            "and probes, so the last columns pair each draw with the float32 one: the mean of "
            "(SURE - true)[variant] - (SURE - true)[float32] is the bias the reduced type adds, measured "
            "without the noise that is common to both.",
            "",
            "| backbone, task | sigma (8-bit) | precision | mean(SURE - true) | std. error | z | std(SURE - true) "
            "| true error | added vs float32 | its std. error | z | its std |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in bias:
            lines.append(f"| {r['task']} | {r['sigma']:g} | {r['variant']} | {1e6 * r['mean']:.3f} | "
                         f"{1e6 * r['stderr']:.3f} | {r['z']:.2f} | {1e6 * r['std']:.2f} | {1e6 * r['true']:.1f} | "
                         f"{1e6 * r['paired_mean']:.3f} | {1e6 * r['paired_stderr']:.3f} | "
                         f"{r['paired_z']:.2f} | {1e6 * r['paired_std']:.2f} |")
        worst = max(bias, key=lambda r: abs(r["z"]))
        worst_added = max(bias, key=lambda r: abs(r["paired_z"]))
        lines += ["", f"Largest |z| of (SURE - true): {abs(worst['z']):.2f} ({worst['task']}, sigma "
                  f"{worst['sigma']:g}, {worst['variant']}); largest |z| of the bias added by the reduced "
                  f"type: {abs(worst_added['paired_z']):.2f} ({worst_added['task']}, sigma "
                  f"{worst_added['sigma']:g}, {worst_added['variant']})."]
        name = "sure_bf16.md" if args.tau == TAU else f"sure_bf16_tau{args.tau:g}.md"
        _write(os.path.join(folder, name), lines)
    if speed:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        lines = head("bfloat16 vs float32 training-step speed (CPU)") + [
            f"ResidualCNN(64 features, 8 blocks), one forward+backward step (tf.function, no XLA), "
            f"median over {args.speed_rounds} rounds of {args.speed_steps} steps, float32 and bfloat16 "
            "alternating in one run. Seconds per step.",
            "",
            "| batch -> output | float32 (s) | bfloat16 (s) | float32 / bfloat16 |",
            "|---|---|---|---|",
        ]
        for r in speed:
            lines.append(f"| {r['shape']} | {r['float32']:.3f} | {r['bfloat16']:.3f} | {r['ratio']:.2f} |")
        lines += ["", f"Load average at the end: {load:.2f} (the CPU is shared: compare the ratio, "
                  "measured alternately, rather than the seconds)."]
        _write(os.path.join(folder, "bf16_speed.md"), lines)


def _write(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=2048, help="noise draws per row")
    parser.add_argument("--size", type=int, default=32, help="side of the clean photograph (pixels)")
    parser.add_argument("--features", type=int, default=32, help="ResidualCNN features for the bias check")
    parser.add_argument("--blocks", type=int, default=4, help="ResidualCNN blocks for the bias check")
    parser.add_argument("--sigmas", type=str, default="5,20", help="noise levels, 8-bit units")
    parser.add_argument("--speed_steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--speed_rounds", type=int, default=5, help="timed rounds per precision")
    parser.add_argument("--no_swinir", action="store_true", help="leave out the tiny SwinIR rows")
    parser.add_argument("--tau", type=float, default=TAU,
                        help="SURE's divergence step for the bias check (report sure_bf16_tau<tau>.md unless 0.01)")
    parser.add_argument("--skip_bias", action="store_true")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="folder for sure_bf16.md and bf16_speed.md")
    args = parser.parse_args()

    model, flags = cpu_description()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (f"CPU: {model}, {os.cpu_count()} logical cores, bf16 flags: {', '.join(flags) or 'none'}; "
               f"TensorFlow {tf.__version__}; load average at start {load:.2f}.")
    print(machine)
    print("precision.resolve('auto'):", precision.resolve("auto"))
    header = dict(date=datetime.date.today().isoformat(), machine=machine)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    bias = [] if args.skip_bias else bias_table(args.draws, args.size, args.features, args.blocks, sigmas,
                                                    not args.no_swinir, args.tau)
    speed = [] if args.skip_speed else speed_table(args.speed_steps, args.speed_rounds)
    write_reports(args.output_dir, args, bias, speed, header)


if __name__ == "__main__":
    main()
