"""Load test of the HTTP service (serving/http.py): throughput, latency, answers and memory under load.

    PYTHONPATH=$PWD python benchmarks/load_test.py [--clients 1,4,16] [--duration_s 20] [--max_requests 600]
    PYTHONPATH=$PWD python benchmarks/load_test.py --nohonour_retry_after --results benchmarks/results/load_test_hammer

Not part of CI (tests/test_http.py runs `run_level` briefly against its own server).

The model is ResidualCNN in its default size (32 features, 8 blocks), SR x2, with
*random weights* (`export/random_models.py`): speed and memory do not depend on the
weights. It is exported to ONNX once (cached under --workdir). The server,
`python -m serving.http`, runs in a subprocess bound to 127.0.0.1 only, with
`--max_concurrency` workers and `--max_queue` places in the queue.

For each client count, that many threads (each with its own keep-alive connection)
send a 256x256 RGB PNG (a real photograph, scikit-image's astronaut) one request
after another, for `--duration_s` seconds or `--max_requests` requests in all,
whichever comes first; then the outstanding answers are awaited (each bounded by
`--request_timeout_s`). A client answered 503 waits `Retry-After` seconds (capped
at the level's end), as a well-behaved client does; with
`--nohonour_retry_after` it sends its next request at once (a hammering client).

Reported per level: requests sent; answers by status (200, 503, other); requests
without an answer (transport error or client timeout: the goal is none);
throughput (restored images per second); p50/p99 latency of the 200s; the server's
peak RSS during the level (VmHWM after resetting it through /proc/PID/clear_refs,
and the largest VmRSS sampled every 20 ms); and the server's own count of /restore
answers (from /metrics), which must equal the client's. The server is stopped with
SIGTERM at the end (graceful drain); its exit time is reported.

Results: benchmarks/results/load_test.md and .json; the CPU model is printed.
"""

import datetime
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.machine import cpu_description as cpu_model  # noqa: E402
FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list("clients", ["1", "4", "16"], "Concurrent clients, one level each.")
    flags.DEFINE_float("duration_s", 20.0, "Seconds each level sends requests.")
    flags.DEFINE_integer("max_requests", 600, "Most requests sent per level.")
    flags.DEFINE_float("request_timeout_s", 120.0, "Client timeout per request (no answer within it: 'no answer').")
    flags.DEFINE_bool("honour_retry_after", True, "Clients answered 503 wait Retry-After seconds (False: they "
                      "send the next request at once, hammering the server).")
    flags.DEFINE_integer("size", 256, "Input image side (pixels, RGB); the output is size*scale.")
    flags.DEFINE_integer("scale", 2, "SR factor.")
    flags.DEFINE_integer("max_concurrency", 2, "Server: worker threads.")
    flags.DEFINE_integer("max_queue", 8, "Server: queue places.")
    flags.DEFINE_integer("threads", 1, "Server: onnxruntime intra-op threads (0: onnxruntime's default); "
                         "1 thread per worker, with as many workers as cores, does not oversubscribe the CPU.")
    flags.DEFINE_enum("spinning", "off", ["default", "on", "off"], "Server: onnxruntime thread spinning.")
    flags.DEFINE_string("workdir", os.path.join(ROOT, "benchmarks", "cache"), "The model is written here.")
    flags.DEFINE_string("results", os.path.join(ROOT, "benchmarks", "results", "load_test"),
                        "Results path prefix (.md and .json are appended).")




# -- the server's memory --------------------------------------------------------------------------
def _status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Peak resident memory of process `pid` (MB): VmHWM (reset by `reset()` where the
    kernel allows it) and the largest VmRSS seen by a 20 ms sampling thread."""

    def __init__(self, pid, period_s=0.02):
        self.pid = pid
        self.period_s = period_s
        self.max_rss_kb = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            try:
                self.max_rss_kb = max(self.max_rss_kb, _status_kb(self.pid, "VmRSS"))
            except (OSError, ValueError):
                return  # the process is gone
            self._stop.wait(self.period_s)

    def reset(self):
        """Starts a new measurement: VmHWM reset to the current RSS (`echo 5 > clear_refs`)."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.max_rss_kb = _status_kb(self.pid, "VmRSS")

    def peak_mb(self) -> dict:
        return {"vmrss_max_mb": self.max_rss_kb / 1024, "vmhwm_mb": _status_kb(self.pid, "VmHWM") / 1024,
                "vmhwm_reset": self.hwm_reset}

    def stop(self):
        self._stop.set()
        self._thread.join()


# -- clients ----------------------------------------------------------------------------------------
def run_level(base: str, payload: bytes, clients: int, duration_s: float, max_requests: int,
              request_timeout_s: float = 120.0, honour_retry_after: bool = True) -> dict:
    """`clients` threads post `payload` to `base`/restore until `duration_s` or `max_requests`.

    Returns the counts by outcome ('200', '503', other statuses, 'no answer': transport
    errors and timeouts), the 200s' latencies (s), the wall time and the digests of the
    200 bodies (all equal for one payload).
    """
    import httpx

    lock = threading.Lock()
    sent = 0
    outcomes, latencies, bodies, errors = {}, [], set(), []
    sessions = [httpx.Client(timeout=request_timeout_s) for _ in range(clients)]  # made before the clock starts
    start = time.monotonic()
    stop_at = start + duration_s

    def take():
        nonlocal sent
        with lock:
            if sent >= max_requests or time.monotonic() >= stop_at:
                return False
            sent += 1
            return True

    def client(session):
        with session:
            while take():
                t0 = time.monotonic()
                try:
                    r = session.post(f"{base}/restore", files={"file": ("x.png", payload, "image/png")})
                except httpx.HTTPError as err:  # transport error or timeout: no answer
                    key, retry = "no answer", 0.0
                    with lock:
                        errors.append(f"{type(err).__name__}: {err}")
                else:
                    key = str(r.status_code)
                    retry = float(r.headers.get("retry-after", 0)) if r.status_code == 503 else 0.0
                    if r.status_code == 503 and "retry-after" not in r.headers:
                        key = "503 without Retry-After"
                with lock:
                    outcomes[key] = outcomes.get(key, 0) + 1
                    if key == "200":
                        latencies.append(time.monotonic() - t0)
                        bodies.add(hash(r.content))
                if retry and honour_retry_after:
                    time.sleep(max(0.0, min(retry, stop_at - time.monotonic())))

    threads = [threading.Thread(target=client, args=(session,)) for session in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"clients": clients, "sent": sent, "outcomes": outcomes, "latencies_s": latencies,
            "wall_s": time.monotonic() - start, "distinct_200_bodies": len(bodies), "errors": errors[:5]}


def summarise(level: dict) -> dict:
    """Throughput and latency percentiles of one `run_level` result."""
    lat = np.asarray(level["latencies_s"])
    ok = level["outcomes"].get("200", 0)
    return {
        "clients": level["clients"], "sent": level["sent"], "ok_200": ok,
        "busy_503": level["outcomes"].get("503", 0),
        "other": sum(v for k, v in level["outcomes"].items() if k not in ("200", "503", "no answer")),
        "no_answer": level["outcomes"].get("no answer", 0),
        "answered": sum(v for k, v in level["outcomes"].items() if k != "no answer"),
        "images_per_s": ok / level["wall_s"] if level["wall_s"] else 0.0,
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if lat.size else float("nan"),
        "wall_s": level["wall_s"], "outcomes": level["outcomes"], "errors": level["errors"],
        "distinct_200_bodies": level["distinct_200_bodies"],
    }


def server_restore_answers(base: str) -> int:
    """The server's count of answered /restore requests (its /metrics)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    total = 0
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "sei_http_requests_total" and sample.labels.get("path") == "/restore":
                total += int(sample.value)
    return total


# -- the experiment --------------------------------------------------------------------------------
def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(workdir):
    from export import onnx_export, random_models

    os.makedirs(workdir, exist_ok=True)
    onnx_path = os.path.join(workdir, f"load_test_cnn_sr{FLAGS.scale}.onnx")
    if not os.path.exists(onnx_path):
        keras_path = random_models.make_model(os.path.join(workdir, f"load_test_cnn_sr{FLAGS.scale}.keras"),
                                              "cnn", "sr", scale=FLAGS.scale)
        onnx_export.export(keras_path, onnx_path, log=lambda *_: None)
    return onnx_path


def _payload(size):
    from PIL import Image
    from skimage import data as skdata

    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).resize((size, size), Image.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def _start_server(model, port, log_path):
    import httpx

    args = [sys.executable, "-m", "serving.http", "--model", model, "--host", "127.0.0.1", "--port", str(port),
            "--device", "cpu", "--max_concurrency", str(FLAGS.max_concurrency), "--max_queue", str(FLAGS.max_queue),
            "--log_level", "warning"]
    if FLAGS.threads:
        args += ["--threads", str(FLAGS.threads)]
    args += ["--spinning", FLAGS.spinning]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(log_path, "w")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return proc, base, args
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not become ready; see {log_path}")
        time.sleep(0.2)


def _write(results, path_prefix):
    os.makedirs(os.path.dirname(path_prefix), exist_ok=True)
    rows = results["levels"]
    lines = [
        "# HTTP service under load (benchmarks/load_test.py)", "",
        f"- Date: {results['date']}; CPU: {results['cpu']}; Python {results['python']}; 1-minute load average "
        f"{results['load_average_1min'][0]:.1f} at the start, {results['load_average_1min'][1]:.1f} at the end "
        "(other processes share the CPU: compare rows of one run only)",
        f"- Model: {results['model']}", f"- Request: {results['request']}",
        f"- Server: `{results['server']}`",
        f"- Each level: {results['duration_s']:g} s or {results['max_requests']} requests, whichever first; "
        + ("clients answered 503 wait Retry-After." if results["honour_retry_after"]
           else "clients answered 503 send the next request at once (Retry-After ignored)."),
        f"- Server idle RSS after warm-up: {results['idle_rss_mb']:.0f} MB; SIGTERM to exit: "
        f"{results['shutdown_s']:.2f} s (exit status {results['exit_status']}).", "",
        "| clients | sent | 200 | 503 | other | no answer | server-counted answers | images/s | p50 ms | p99 ms "
        "| peak RSS MB (VmHWM) | peak RSS MB (sampled) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['sent']} | {r['ok_200']} | {r['busy_503']} | {r['other']} | "
                     f"{r['no_answer']} | {r['server_counted']} | {r['images_per_s']:.2f} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['vmhwm_mb']:.0f} | {r['vmrss_max_mb']:.0f} |")
    lines += ["", "Latency percentiles are over the 200 answers. `server-counted answers`: the server's "
              "`sei_http_requests_total{path=\"/restore\"}` increase during the level; equal to `sent` minus "
              "`no answer` when nothing is lost.", ""]
    tmp = path_prefix + ".md.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path_prefix + ".md")
    tmp = path_prefix + ".json.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path_prefix + ".json")
    return "\n".join(lines)


def main(argv):
    del argv
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    cpu = cpu_model()
    print(f"CPU: {cpu}; load average {os.getloadavg()[0]:.1f}", flush=True)
    load_before = os.getloadavg()[0]
    model = _model(FLAGS.workdir)
    payload = _payload(FLAGS.size)
    port = _free_port()
    proc, base, args = _start_server(model, port, os.path.join(FLAGS.workdir, "load_test_server.log"))
    sampler = RssSampler(proc.pid)
    levels = []
    try:
        time.sleep(0.5)
        idle_rss = _status_kb(proc.pid, "VmRSS") / 1024
        for clients in map(int, FLAGS.clients):
            sampler.reset()
            before = server_restore_answers(base)
            print(f"{clients} clients: {FLAGS.duration_s:g} s ...", flush=True)
            level = summarise(run_level(base, payload, clients, FLAGS.duration_s, FLAGS.max_requests,
                                        FLAGS.request_timeout_s, FLAGS.honour_retry_after))
            level.update(sampler.peak_mb())
            level["server_counted"] = server_restore_answers(base) - before
            print(f"  {level['outcomes']}  {level['images_per_s']:.2f} images/s  p50 {level['p50_ms']:.0f} ms  "
                  f"p99 {level['p99_ms']:.0f} ms  peak RSS {level['vmhwm_mb']:.0f} MB", flush=True)
            levels.append(level)
    finally:
        sampler.stop()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            exit_status = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_status = "killed after 120 s"
        shutdown_s = time.monotonic() - t0
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
        "python": platform.python_version(),
        "model": f"ResidualCNN default size (32 features, 8 blocks), SR x{FLAGS.scale}, random weights, "
                 "ONNX fp32 on onnxruntime CPU",
        "request": f"POST /restore, {FLAGS.size}x{FLAGS.size} RGB PNG ({len(payload)} bytes) -> "
                   f"{FLAGS.size * FLAGS.scale}x{FLAGS.size * FLAGS.scale} PNG",
        "server": " ".join(["python"] + args[1:]).replace(model, os.path.relpath(model, ROOT)),
        "duration_s": FLAGS.duration_s, "max_requests": FLAGS.max_requests,
        "honour_retry_after": FLAGS.honour_retry_after, "idle_rss_mb": idle_rss,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "shutdown_s": shutdown_s, "exit_status": exit_status, "levels": levels,
    }
    print(_write(results, FLAGS.results))
    lost = sum(r["no_answer"] for r in levels)
    mismatched = [r["clients"] for r in levels if r["server_counted"] != r["answered"]]
    if lost or mismatched:
        print(f"FAILED: {lost} requests without an answer; server count differs at clients={mismatched}")
        return 1
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
