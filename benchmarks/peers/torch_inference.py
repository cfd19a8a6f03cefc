"""PyTorch inference of the cnn restorer: the peer row of benchmarks/inference.py.

Runs inside the peers environment (torch; see README.md here), never in sei-tf's
own. The network is the PyTorch twin of sei_tf.models.ResidualCNN from
deepinv_sei.py, loaded with the Keras weights that benchmarks/inference.py
wrote to an .npz (torch layout). It restores the same photograph with the same
tiling code (serving/tiling.py, loaded by file path: no sei-tf imports beyond
it) and prints one JSON line: latency (best of --repeats after a warm-up tile),
peak RSS (VmHWM) and the max abs difference to the Keras output on the check
input stored in the .npz. The twin's bicubic skip is torch's (a = -0.75),
TensorFlow's is a = -0.5, so outputs differ by about 1e-2 near edges; the
convolutions are the same.

    /work/peers-venv/bin/python benchmarks/peers/torch_inference.py --weights W.npz --image IMG.npy \
        --tile 512 --threads 2 --repeats 1
"""

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--image", required=True, help=".npy uint8 HxWxC")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()

    sys.path.insert(0, ROOT)  # sei_tf.errors (plain Python) for serving/tiling.py
    tiling = _load("sei_tiling", os.path.join(ROOT, "serving", "tiling.py"))
    with open(os.devnull, "w") as devnull:  # deepinv_sei imports deepinv, which may print
        stdout, sys.stdout = sys.stdout, devnull
        try:
            twin = _load("deepinv_sei", os.path.join(HERE, "deepinv_sei.py"))
        finally:
            sys.stdout = stdout
    if args.threads:
        torch.set_num_threads(args.threads)
    w = np.load(args.weights)
    upscale, features, blocks, context = (int(w[k]) for k in ("upscale", "features", "num_blocks", "context"))
    net = twin.ResidualCNN(upscale=upscale, channels=3, features=features, num_blocks=blocks).eval()
    net.load_state_dict({k: torch.from_numpy(w[k]) for k in net.state_dict()})

    @torch.inference_mode()
    def run(x):  # NHWC float32 numpy -> NHWC
        y = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        return y.numpy().transpose(0, 2, 3, 1)

    check = run(w["check_input"])
    diff = float(np.max(np.abs(check - w["check_keras"])))
    image = np.load(args.image)
    run(np.zeros((1, 64, 64, 3), np.float32))
    rss_before = _rss_mb()
    times = []
    tile = args.tile or None
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = tiling.tiled_apply(
            run, image, scale=upscale, channels=3, tile=tile, context=context, overlap=None,
            to_float=lambda a: a.astype(np.float32) / np.float32(255),
            from_float=lambda y: np.rint(np.clip(y, 0, 1) * 255).astype(np.uint8), out_dtype=np.uint8)
        times.append(time.perf_counter() - start)
    print("RESULT " + json.dumps({
        "latency_s": min(times), "out_h": out.shape[0], "out_w": out.shape[1], "peak_rss_mb": _rss_mb(),
        "rss_before_mb": rss_before, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "max_abs_diff_vs_keras": diff}))


if __name__ == "__main__":
    main()
