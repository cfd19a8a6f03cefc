"""Peak memory of `python -m serving.restore` against image size: streamed tiled TIFF vs whole image.

    PYTHONPATH=. python benchmarks/memory.py [--sizes 4,33,100,400] [--max_memory 1GB] \
        [--whole_sizes 4,33] [--tile_sizes 4,33] [--features 8 --blocks 1] [--tmpdir /tmp/sei_memory_bench] \
        [--append]

For each size (megapixels), a synthetic greyscale uint8 image of side
sqrt(size) is written under --tmpdir as a tiled TIFF (512x512 tiles,
uncompressed), tile by tile from a generator, so making it also takes bounded
memory (smooth waves plus noise, seeded per tile). Then
`python -m serving.restore --model M IN --output DIR --max_memory B --quiet`
runs in a fresh process, and its peak resident memory is read from
`os.wait4`'s rusage (ru_maxrss of that child alone, KiB on Linux). The same is
done with `--nostream --tile 512` (the whole-image path) at --whole_sizes,
and streamed with `--tile 512` (the same tile as the whole-image run) at
--tile_sizes.
Reported per run: peak RSS, wall time, input megapixels per second, the tile
the budget picked and the memory model's estimate; one restored tile in the
middle of every streamed output is checked against restoring its window in
this process (bit-exact). Inputs and outputs are deleted after each run.

The model is a deblurring ResidualCNN with *random weights* (greyscale,
Gaussian blur sigma 2; --features, --blocks), saved by
`export/random_models.py` and exported to ONNX once under --tmpdir (weights
do not change memory or time). Results: benchmarks/results/memory.md and .json.
"""

import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.machine import cpu_description  # noqa: E402
FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["4", "33", "100", "400"], "Image sizes in megapixels (greyscale, square).")
flags.DEFINE_list("whole_sizes", ["4", "33"], "Sizes also restored by the whole-image path (--nostream).")
flags.DEFINE_list("tile_sizes", ["4", "33"], "Sizes also streamed with --tile 512.")
flags.DEFINE_string("max_memory", "1GB", "Memory budget given to the streamed runs.")
flags.DEFINE_bool("budget", True, "Stream every size with --max_memory (--nobudget: only the other paths).")
flags.DEFINE_list("merge", [], "Results .json files of other runs whose rows are added (e.g. a run with "
                  "other paths made at the same time); the report says so.")
flags.DEFINE_bool("append", False, "Keep the rows of an earlier results .json (a new run of the same "
                  "size and path replaces its row).")
flags.DEFINE_integer("features", 8, "ResidualCNN features of the benchmark model.")
flags.DEFINE_integer("blocks", 1, "ResidualCNN residual blocks of the benchmark model.")
flags.DEFINE_integer("threads", 0, "onnxruntime intra-op threads (0: default).")
flags.DEFINE_string("tmpdir", "/tmp/sei_memory_bench", "Model, inputs and outputs (inputs/outputs deleted).")
flags.DEFINE_string("results", os.path.join(ROOT, "benchmarks", "results", "memory"),
                    "Results path prefix (.md and .json are appended).")

TIFF_TILE = 512




def make_model(tmpdir):
    """A random-weight greyscale deblurring ResidualCNN exported to ONNX (cached under tmpdir).

    Exported in a subprocess: this process stays free of TensorFlow.
    """
    path = os.path.join(tmpdir, f"deblur_cnn{FLAGS.features}x{FLAGS.blocks}.onnx")
    if not os.path.exists(path):
        code = ("import sys; from export import onnx_export, random_models; "
                "k = random_models.make_model(sys.argv[1] + '.keras', 'cnn', 'deblur', kernel='gaussian:2', "
                "channels=1, features=int(sys.argv[2]), num_blocks=int(sys.argv[3])); "
                "onnx_export.export(k, sys.argv[1], log=lambda *_: None)")
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        subprocess.run([sys.executable, "-c", code, path, str(FLAGS.features), str(FLAGS.blocks)],
                       cwd=ROOT, env=env, check=True, capture_output=True)
    return path


def synthetic_tiles(side, seed=0):
    """The tiles (row by row) of a side x side uint8 image: waves plus noise seeded by the tile's position."""
    for ty in range(0, side, TIFF_TILE):
        for tx in range(0, side, TIFF_TILE):
            h, w = min(TIFF_TILE, side - ty), min(TIFF_TILE, side - tx)
            yy, xx = np.mgrid[ty:ty + h, tx:tx + w].astype(np.float32)
            rng = np.random.default_rng((seed, ty, tx))
            v = 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + rng.normal(0, 12, (h, w))
            yield np.clip(np.rint(v), 0, 255).astype(np.uint8)


def write_input(path, side):
    import tifffile

    tifffile.imwrite(path, data=synthetic_tiles(side), shape=(side, side), dtype=np.uint8,
                     tile=(TIFF_TILE, TIFF_TILE), photometric="minisblack", bigtiff=side * side > 2**32 - 2**25)


_MEASURED = """
import atexit, runpy, sys
_hwm_path = sys.argv[1]
def _report():
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(_hwm_path, "w") as out:
        out.write(hwm)
atexit.register(_report)
sys.argv = ["serving.restore"] + sys.argv[2:]
runpy.run_module("serving.restore", run_name="__main__", alter_sys=True)
"""


def run_cli(args, log_path):
    """Runs `python -m serving.restore ARGS` in a fresh process: (status, seconds, peak RSS MiB, its output).

    The child reports its own VmHWM at exit (peak resident set of its address space): `ru_maxrss`
    would carry over the parent's peak through fork and exec.
    """
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    hwm_path = log_path + ".hwm"
    with open(log_path, "w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _MEASURED, hwm_path, *args], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - t0
        log.seek(0)
        text = log.read()
    with open(hwm_path) as f:
        rss = int(f.read()) / 1024.0
    return proc.returncode, seconds, rss, text


def spot_check(model_path, src, dst):
    """One output tile in the middle equals restoring its window in this process (exact tiling)."""
    import tifffile

    from serving import Restorer
    from serving.large_images import open_lazy

    r = Restorer(model_path, device="cpu", tile=None)
    ctx = r.metadata.tile_context
    with tifffile.TiffFile(dst) as tif:
        page = tif.pages.first
        th, tw = page.tilelength, page.tilewidth
        rows, cols = -(-page.imagelength // th), -(-page.imagewidth // tw)
        ty, tx = rows // 2, cols // 2
        index = ty * cols + tx
        fh = tif.filehandle
        fh.seek(page.dataoffsets[index])
        tile = page.decode(fh.read(page.databytecounts[index]), index, _fullsize=True)[0][0, ..., 0]
    with open_lazy(src) as source:
        h, w = source.shape[:2]
        y0, x0 = ty * th, tx * tw
        y1, x1 = min(h, y0 + th), min(w, x0 + tw)
        wy0, wx0 = max(0, y0 - ctx), max(0, x0 - ctx)
        window = source.read(wy0, min(h, y1 + ctx), wx0, min(w, x1 + ctx))[..., 0]
    ref = r.restore(window)[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
    return bool(np.array_equal(tile[:y1 - y0, :x1 - x0], ref))


PATHS = {"whole": "whole image, --nostream --tile 512", "tile": "streamed, --tile 512",
         "budget": "streamed, --max_memory"}


def measure(model_path, size_mp, mode):
    from serving import Restorer
    from serving.large_images import core_for_budget, core_for_tile, memory_model, open_lazy, parse_bytes

    side = int(round(math.sqrt(size_mp * 1e6)))
    work = os.path.join(FLAGS.tmpdir, f"{size_mp}mp")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    src, out_dir = os.path.join(work, "in.tif"), os.path.join(work, "out")
    row = {"size_mp": size_mp, "side": side, "path": PATHS[mode]}
    streamed = mode != "whole"
    try:
        t0 = time.perf_counter()
        write_input(src, side)
        row["write_input_s"] = round(time.perf_counter() - t0, 1)
        args = ["--model", model_path, src, "--output", out_dir, "--quiet", "--max_pixels", "0"]
        if FLAGS.threads:
            args += ["--threads", str(FLAGS.threads)]
        if streamed:
            restorer = Restorer(model_path, device="cpu")
            with open_lazy(src) as source:
                model = memory_model(restorer, source)
                if mode == "budget":
                    core = core_for_budget(parse_bytes(FLAGS.max_memory), model)
                else:
                    core = core_for_tile(512, restorer.metadata.tile_context, restorer.scale)
                row.update(core=core, estimate_mb=round(model.peak(core) / 2**20))
            del restorer
        if mode == "budget":
            args += ["--max_memory", FLAGS.max_memory]
        elif mode == "tile":
            args += ["--tile", "512"]
        else:
            args += ["--nostream", "--tile", "512"]
        status, seconds, rss, log = run_cli(args, os.path.join(work, "log.txt"))
        row.update(status=status, seconds=round(seconds, 1), peak_rss_mb=round(rss),
                   mp_per_s=round(side * side / 1e6 / seconds, 3))
        if status != 0:
            row["error"] = log.strip().splitlines()[-1] if log.strip() else "failed"
        elif streamed:
            row["spot_check_exact"] = spot_check(model_path, src, os.path.join(out_dir, "in.tif"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(row), flush=True)
    return row


def write_report(rows, header):
    lines = [f"# Peak memory against image size ({header['date']})", "",
             f"CPU: {header['cpu']}. "
             + (f"Load average at start / end: {header['load_start']} / {header['load_end']}. "
                if header.get("measured_here", True) else "Report regenerated from earlier runs only. ")
             + (f"Rows {'also ' if header.get('measured_here', True) else ''}from the runs of "
                f"{'; '.join(header['earlier_runs'])} (load average at start / end). " if header.get("earlier_runs")
                else "")
             + "The machine is shared: times are noisy, memory is not.", "",
             f"`python -m serving.restore` on synthetic greyscale uint8 tiled TIFFs (512x512 tiles), "
             f"model: {header['model']}. Streamed runs: `--max_memory {header['max_memory']}` "
             "(the tile it picks and the memory model's estimate are shown); whole image: `--nostream "
             "--tile 512`. Peak RSS: VmHWM of the restoring process, read by itself at exit, MiB (1GB = 10^9 bytes "
             "= 954 MiB). Estimate: `serving.large_images.MemoryModel` for the tile used. MP/s: input "
             "megapixels per second of the whole command (start-up included). Exact: one output tile in the "
             "middle equals restoring its window directly.", "",
             "| size | pixels | path | tile (core px) | estimate MiB | peak RSS MiB | wall s | MP/s | exact |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = list(PATHS.values())
    for r in sorted(rows, key=lambda r: (r["size_mp"], order.index(r["path"]) if r["path"] in order else 9)):
        if r.get("status") != 0:
            lines.append(f"| {r['size_mp']} MP | {r['side']}x{r['side']} | {r['path']} | | | | | | "
                         f"error: {r.get('error', '?')} |")
            continue
        lines.append(f"| {r['size_mp']} MP | {r['side']}x{r['side']} | {r['path']} | {r.get('core', '')} | "
                     f"{r.get('estimate_mb', '')} | {r['peak_rss_mb']} | {r['seconds']} | {r['mp_per_s']} | "
                     f"{r.get('spot_check_exact', '')} |")
    lines.append("")
    with open(FLAGS.results + ".md.tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(FLAGS.results + ".md.tmp", FLAGS.results + ".md")
    with open(FLAGS.results + ".json.tmp", "w") as f:
        json.dump({"header": header, "rows": rows}, f, indent=1)
    os.replace(FLAGS.results + ".json.tmp", FLAGS.results + ".json")
    print("\n".join(lines))


def main(argv):
    del argv
    os.makedirs(FLAGS.tmpdir, exist_ok=True)
    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "cpu": cpu_description(), "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
              "max_memory": FLAGS.max_memory,
              "model": f"ResidualCNN {FLAGS.features} features x {FLAGS.blocks} blocks, deblur (Gaussian s2), "
                       "greyscale, random weights, ONNX fp32, onnxruntime CPU"}
    print(f"CPU: {header['cpu']}", flush=True)
    model_path = make_model(FLAGS.tmpdir) if FLAGS.sizes else None
    header["measured_here"] = bool(FLAGS.sizes)
    rows = []
    earlier = ([FLAGS.results + ".json"] if FLAGS.append and os.path.exists(FLAGS.results + ".json") else [])
    for path in earlier + FLAGS.merge:
        with open(path) as f:
            old = json.load(f)
        legacy = {"streamed": PATHS["budget"], "whole image": PATHS["whole"]}  # labels of the first version
        rows += [dict(r, path=legacy.get(r["path"], r["path"])) for r in old["rows"]]
        header.setdefault("earlier_runs", []).append(
            f"{old['header']['date']} (load {old['header']['load_start']} / {old['header'].get('load_end')})")
    for size in FLAGS.sizes:
        size = int(size)
        modes = ([m for m, sizes in (("whole", FLAGS.whole_sizes), ("tile", FLAGS.tile_sizes)) if str(size) in sizes]
                 + (["budget"] if FLAGS.budget else []))
        for mode in modes:
            row = measure(model_path, size, mode)
            rows = [r for r in rows if (r["size_mp"], r["path"]) != (size, row["path"])] + [row]
        header["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
        write_report(rows, header)  # after every size: a long run that stops keeps what it measured
    header["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    write_report(rows, header)


if __name__ == "__main__":
    app.run(main)
