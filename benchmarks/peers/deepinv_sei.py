"""SEI training step with DeepInverse: the peer timing for benchmarks/training_speed.py.

Runs inside the separate peers environment (torch + deepinv 0.5; see
benchmarks/peers/README.md), never in sei-tf's own. It imports only torch,
deepinv and numpy, builds a PyTorch twin of sei-tf's backbone, and times one
SEI training step as a DeepInverse user writes it:

    x1   = f(y)
    loss = SureGaussianLoss(sigma)(y, x1, physics, f).mean()
         + EILoss(Scale(), no_grad=True)(x1, physics, f)      # alpha = 1
    Adam step

which is what deepinv.Trainer does per batch (Trainer.compute_loss), without its
logging. Physics: deepinv.physics.Downsampling(filter="bicubic", factor=2) for
SR x2, deepinv.physics.Blur(Gaussian sigma 2, 13x13, circular) for deblurring,
both with GaussianNoise(5/255).

Prints ONE JSON line (the last line of stdout) with the median seconds per
training step over the timed steps. `--sanity N` instead trains N steps on a
fixed pool of smooth random images and reports the loss curve and PSNR.

    /work/peers-venv/bin/python benchmarks/peers/deepinv_sei.py \
        --task sr2 --backbone cnn --precision fp32 --warmup 2 --steps 10 --threads 2 --json
"""

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_TORCHVISION_STUB = None


def _torchvision_cpu_shim():
    """Lets `import deepinv` work with a CPU-only torch and PyPI's (CUDA) torchvision.

    deepinv imports torchvision, whose C extension from the PyPI wheel links
    libtorch_cuda and so fails to load next to a `+cpu` torch; torchvision then
    dies registering fake kernels for `torchvision::nms`/`qnms`, which only
    exist once that extension is loaded. When (and only when) the extension
    cannot be loaded, declare those two operator schemas so the import goes
    through. Neither op is used here: deepinv's losses, physics and transforms
    are plain torch. With a matching torch/torchvision pair this does nothing.
    """
    global _TORCHVISION_STUB
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    folder = os.path.dirname(spec.origin)
    candidates = [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("_C.") and n.endswith((".so", ".pyd"))]
    for path in candidates:
        try:
            torch.ops.load_library(path)
            return False
        except OSError:
            pass
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
        return False
    _TORCHVISION_STUB = torch.library.Library("torchvision", "DEF")  # keep alive: freed = undefined
    for op in ("nms", "qnms"):
        _TORCHVISION_STUB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True


TORCHVISION_SHIMMED = _torchvision_cpu_shim()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import deepinv as dinv  # noqa: E402


TASKS = ("sr2", "blur2")
BACKBONES = ("cnn", "swinir_light")
PRECISIONS = ("fp32", "bf16")


# --------------------------------------------------------------------------
# The twin of sei_tf.models.ResidualCNN
# --------------------------------------------------------------------------
class ResidualCNN(nn.Module):
    """PyTorch twin of sei_tf.models.residual_cnn.ResidualCNN (NCHW).

    head conv3x3 -> `num_blocks` x (conv3x3-ReLU-conv3x3, + skip) -> body conv3x3
    + long skip from the head -> tail conv3x3 to channels*upscale^2 (zero
    initialised) -> pixel shuffle + bicubic upsampling of y (SR), or + y
    (upscale 1). Glorot-uniform kernels and zero biases, as Keras' defaults.
    Same layer count, widths and parameter count as the Keras model.
    """

    def __init__(self, upscale=1, channels=3, features=64, num_blocks=8):
        super().__init__()
        self.upscale = int(upscale)

        def conv(cin, cout):
            return nn.Conv2d(cin, cout, 3, padding=1)

        self.head = conv(channels, features)
        self.blocks = nn.ModuleList(
            nn.ModuleList([conv(features, features), conv(features, features)]) for _ in range(num_blocks))
        self.body = conv(features, features)
        self.tail = conv(features, channels * self.upscale ** 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.tail.weight)

    def forward(self, y, physics=None, **kwargs):
        features = self.head(y)
        h = features
        for conv_a, conv_b in self.blocks:
            h = h + conv_b(F.relu(conv_a(h)))
        h = self.body(h) + features
        out = self.tail(h)
        if self.upscale == 1:
            return y + out
        skip = F.interpolate(y, scale_factor=self.upscale, mode="bicubic", align_corners=False)
        return skip + F.pixel_shuffle(out, self.upscale)


class _IgnorePhysics(nn.Module):
    """deepinv's losses call model(y, physics); SwinIR takes (x, sigma)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, y, physics=None, **kwargs):
        return self.net(y)


def build_model(backbone, upscale, features, num_blocks, patch_size):
    if backbone == "cnn":
        return ResidualCNN(upscale=upscale, channels=3, features=features, num_blocks=num_blocks)
    if backbone == "swinir_light":
        # sei-tf's swinir_light: embed 60, 4 stages of 6 blocks / 6 heads, window 8,
        # MLP ratio 2, "1conv" residual; SR: conv+LeakyReLU+pixel shuffle upsampler,
        # deblurring: x + conv(features). No drop-path (sei-tf has none).
        net = dinv.models.SwinIR(
            img_size=patch_size, patch_size=1, in_chans=3, embed_dim=60,
            depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6), window_size=8, mlp_ratio=2.0,
            drop_path_rate=0.0, upscale=upscale,
            upsampler="pixelshuffle" if upscale > 1 else "", resi_connection="1conv",
            pretrained=None)
        return _IgnorePhysics(net)
    raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


# --------------------------------------------------------------------------
# Physics, losses, data
# --------------------------------------------------------------------------
def build_physics(task, noise_sigma):
    noise = dinv.physics.GaussianNoise(sigma=noise_sigma / 255.0)
    if task == "sr2":
        return dinv.physics.Downsampling(filter="bicubic", factor=2, padding="circular", noise_model=noise), 2
    if task == "blur2":
        # sei-tf's 'gaussian:2': sigma 2, size 6*sigma+1 = 13.
        kernel = dinv.physics.functional.gaussian_blur(psf_size=(13, 13), sigma=(2.0, 2.0))
        return dinv.physics.Blur(filter=kernel, padding="circular", noise_model=noise), 1
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def build_losses(noise_sigma):
    sure = dinv.loss.SureGaussianLoss(sigma=noise_sigma / 255.0, tau=1e-2)
    ei = dinv.loss.EILoss(transform=dinv.transform.Scale(factors=[0.75, 0.5]), no_grad=True)
    return [sure, ei]


def smooth_images(n, size, seed):
    """n RGB images (n, 3, size, size) in [0, 1] with a 1/f amplitude spectrum."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    amplitude = 1.0 / radius ** 1.2
    amplitude[0, 0] = 0.0
    noise = rng.standard_normal((n, 3, size, size))
    # Correlate the channels so the images look like colour photographs, not RGB noise.
    noise = 0.7 * noise[:, :1] + 0.3 * noise
    img = np.real(np.fft.ifft2(np.fft.fft2(noise) * amplitude))
    lo = img.min(axis=(1, 2, 3), keepdims=True)
    hi = img.max(axis=(1, 2, 3), keepdims=True)
    return torch.from_numpy(((img - lo) / (hi - lo)).astype(np.float32))


def autocast_context(precision):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_step(model, physics, losses, optimizer, precision):
    """One SEI training step on a batch of measurements y (what deepinv.Trainer does)."""

    def step(y):
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(precision):
            x_net = model(y, physics)
            total = 0.0
            terms = []
            for loss in losses:
                value = loss(y=y, x_net=x_net, physics=physics, model=model).mean()
                terms.append(value)
                total = total + value
        total.backward()
        optimizer.step()
        return float(total.detach()), [float(t.detach()) for t in terms], x_net.detach()

    return step


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=TASKS, default="sr2")
    p.add_argument("--backbone", choices=BACKBONES, default="cnn")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--features", type=int, default=64, help="cnn width")
    p.add_argument("--num_blocks", type=int, default=8, help="cnn residual blocks")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--patch_size", type=int, default=48, help="measurement patch side")
    p.add_argument("--noise_sigma", type=float, default=5.0, help="8-bit units")
    p.add_argument("--lr", type=float, default=None, help="Adam lr (default 2e-4 SR, 1e-4 blur)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sanity", type=int, default=0,
                   help="instead of timing: train this many steps on a fixed image pool, report losses and PSNR")
    p.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    return p.parse_args(argv)


def run(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    physics, upscale = build_physics(args.task, args.noise_sigma)
    model = build_model(args.backbone, upscale, args.features, args.num_blocks, args.patch_size)
    model.train()
    losses = build_losses(args.noise_sigma)
    for loss in losses:
        model = loss.adapt_model(model)  # as deepinv.Trainer does (identity for these two)
    lr = args.lr if args.lr is not None else (2e-4 if upscale > 1 else 1e-4)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    step = make_step(model, physics, losses, optimizer, args.precision)

    # Measurements: y = A x + e from smooth random ground truth (x is never used
    # by the losses). A small pool of batches, cycled, outside the timed region.
    side = args.patch_size * upscale
    pool_batches = 4
    with torch.no_grad():
        x_pool = smooth_images(pool_batches * args.batch_size, side, args.seed)
        y_pool = physics(x_pool)
    batches = [(x_pool[i::pool_batches].contiguous(), y_pool[i::pool_batches].contiguous())
               for i in range(pool_batches)]

    result = {
        "framework": "deepinv", "task": args.task, "backbone": args.backbone,
        "precision": args.precision, "batch_size": args.batch_size, "patch_size": args.patch_size,
        "features": args.features if args.backbone == "cnn" else None,
        "num_blocks": args.num_blocks if args.backbone == "cnn" else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "noise_sigma": args.noise_sigma, "lr": lr,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__, "deepinv": dinv.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "torchvision_shim": TORCHVISION_SHIMMED,
    }

    if args.sanity:
        log = []
        for i in range(args.sanity):
            x, y = batches[i % pool_batches]
            total, terms, x_net = step(y)
            mse = float(torch.mean((x_net.float().clamp(0, 1) - x) ** 2))
            log.append({"step": i, "loss": total, "sure": terms[0], "ei": terms[1],
                        "psnr": 10 * np.log10(1.0 / mse)})
            if not args.json:
                print(f"step {i:3d} loss {total:.6f} sure {terms[0]:.6f} ei {terms[1]:.6f} "
                      f"psnr {log[-1]['psnr']:.2f}", flush=True)
        # First vs last full pass over the pool: every batch counted once in each.
        k = pool_batches if args.sanity >= 2 * pool_batches else 1
        result.update({
            "mode": "sanity", "steps": args.sanity,
            "loss_first": statistics.mean(r["loss"] for r in log[:k]),
            "loss_last": statistics.mean(r["loss"] for r in log[-k:]),
            "ei_first": statistics.mean(r["ei"] for r in log[:k]),
            "ei_last": statistics.mean(r["ei"] for r in log[-k:]),
            "psnr_first": statistics.mean(r["psnr"] for r in log[:k]),
            "psnr_last": statistics.mean(r["psnr"] for r in log[-k:]),
            "log": log,
        })
        return result

    times = []
    loss_values = []
    for i in range(args.warmup + args.steps):
        _, y = batches[i % pool_batches]
        t0 = time.perf_counter()
        total, _, _ = step(y)
        dt = time.perf_counter() - t0
        if not np.isfinite(total):
            raise FloatingPointError(f"non-finite loss at step {i}: {total}")
        loss_values.append(total)
        if i >= args.warmup:
            times.append(dt)
        if not args.json:
            print(f"step {i:3d} {'timed ' if i >= args.warmup else 'warmup'} {dt:.3f} s  loss {total:.6f}",
                  file=sys.stderr, flush=True)
    median = statistics.median(times) if times else float("nan")
    result.update({
        "mode": "timing", "warmup_steps": args.warmup, "timed_steps": args.steps,
        "seconds_per_step": median, "steps_per_second": 1.0 / median if times else float("nan"),
        "seconds_per_step_mean": statistics.mean(times) if times else float("nan"),
        "seconds_per_step_min": min(times) if times else float("nan"),
        "step_times": times, "loss_first": loss_values[0], "loss_last": loss_values[-1],
    })
    return result


def main(argv=None):
    args = parse_args(argv)
    warnings.simplefilter("ignore")  # deepinv's Scale calls torch.meshgrid without indexing=
    result = run(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
