"""`--strategy multi_worker`: two worker processes on loopback, one CPU device each.

Each test starts its workers in their own process groups and kills the groups
on any failure or after a deadline, so a hung collective cannot hang the suite.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import photo
from sei_tf import distributed, models, physics, sei_model  # noqa: F401 (load_model needs the classes)

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = {"features": 8, "num_blocks": 1}
DEADLINE_S = 240  # per launch of a cluster; a healthy 2-worker run here takes 10-20 s


# ------------------------------------------------------------------ unit tests

def test_chief_and_write_dir_from_tf_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    workers = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}
    w0 = json.dumps({**workers, "task": {"type": "worker", "index": 0}})
    w1 = json.dumps({**workers, "task": {"type": "worker", "index": 1}})
    assert distributed.is_chief(w0) and not distributed.is_chief(w1)
    assert distributed.write_dir("/run", w0) == "/run"
    temp = distributed.write_dir("/run", w1)
    assert temp != "/run" and os.path.isdir(temp) and os.path.basename(temp).startswith("sei_tf_worker1_")
    distributed.cleanup(temp, "/run")
    assert not os.path.exists(temp)
    with_chief = {"cluster": {"chief": ["h:1"], "worker": ["h:2"]}}
    assert distributed.is_chief({**with_chief, "task": {"type": "chief", "index": 0}})
    assert not distributed.is_chief({**with_chief, "task": {"type": "worker", "index": 0}})
    assert distributed.cluster_task({**with_chief, "task": {"type": "worker", "index": 0}})[2] == 2
    with pytest.raises(ValueError, match="not in its cluster"):
        distributed.is_chief({**workers, "task": {"type": "worker", "index": 2}})
    with pytest.raises(ValueError, match="malformed"):
        distributed.is_chief("{not json")
    with pytest.raises(ValueError, match="not supported"):
        distributed.is_chief({**workers, "task": {"type": "evaluator", "index": 0}})


def test_replica_slices_follow_replica_order():
    """Worker w of N (one replica each) gets rows [w*b, (w+1)*b) of every global batch."""
    ds = tf.data.Dataset.range(3).map(lambda k: tf.reshape(tf.range(8) + 100 * tf.cast(k, tf.int32), [8, 1]))

    class Ctx:
        num_replicas_in_sync, num_input_pipelines = 4, 2

    for pipeline, rows in [(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7])]:
        ctx = Ctx()
        ctx.input_pipeline_id = pipeline
        got = [t.numpy().ravel().tolist() for t in distributed._replica_slices(ds, ctx)]
        want = [[k * 100 + r for r in rows[i:i + 2]] for k in range(3) for i in (0, 2)]
        assert got == want


# ------------------------------------------------------------- process helpers

def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_configs(n):
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    return [json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
            for i in range(n)]


def _env(tmp, tf_config=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "TMPDIR": str(tmp)}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return env


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in procs:
        p.wait(timeout=30)


class Cluster:
    """Worker processes of `python -m sei_tf.train`; killed (process groups) on exit."""

    def __init__(self, args, tmp, name, n=2, extra=None):
        """`extra`: {worker index: more arguments for that worker only}."""
        self.logs = [tmp / f"{name}-worker{i}.log" for i in range(n)]
        self.procs = []
        for i, (log, config) in enumerate(zip(self.logs, _tf_configs(n))):
            with open(log, "w") as f:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "sei_tf.train", *args, *(extra or {}).get(i, []),
                     "--strategy", "multi_worker"],
                    env=_env(tmp, config), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                    start_new_session=True))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _kill(self.procs)

    def output(self, i):
        return self.logs[i].read_text()

    def exit_codes(self, timeout=DEADLINE_S):
        """Waits until every worker has exited, or the deadline; their exit codes (None: still running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.1)
        return [p.poll() for p in self.procs]

    def wait(self, timeout=DEADLINE_S):
        """Waits for all workers; on a failure or the deadline, kills the rest and fails the test."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in self.procs]
            if any(c not in (None, 0) for c in codes) or all(c == 0 for c in codes):
                break
            time.sleep(0.1)
        _kill(self.procs)
        codes = [p.returncode for p in self.procs]
        assert codes == [0] * len(codes), "worker exit codes %s (deadline %d s)\n%s" % (
            codes, timeout, "\n".join(f"--- worker {i}:\n{self.output(i)[-2500:]}" for i in range(len(codes))))


def _run_single(args, tmp, name):
    with open(tmp / f"{name}.log", "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "sei_tf.train", *args], env=_env(tmp), cwd=ROOT,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill([proc])
    out = (tmp / f"{name}.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def measurements(tmp_path_factory):
    """x2 SR measurements (sigma 5/255) of three photographs; their ground truth is in ./gt."""
    folder = tmp_path_factory.mktemp("measurements")
    (folder / "gt").mkdir()
    op = physics.SuperResolution(2, noise_sigma=5)
    for i, name in enumerate(["astronaut", "chelsea", "coffee"]):
        x = photo(name, 64)
        y = op(tf.constant(x[None]), seed=[i, 0]).numpy()[0]
        np.save(folder / f"{name}.npy", y.astype(np.float32))
        np.save(folder / "gt" / f"{name}.npy", x)
    return str(folder)


def _args(measurements, output, epochs, steps, batch=4):
    return ["--measurements", measurements, "--task", "sr", "--factor", "2", "--noise_sigma", "5",
            "--backbone_args", json.dumps(CNN), "--epochs", str(epochs), "--steps_per_epoch", str(steps),
            "--batch_size", str(batch), "--patch_size", "16", "--output", str(output), "--noprogress"]


def _weights(path):
    """Backbone weights and optimizer variables (iterations, Adam moments) of a saved run."""
    model = keras.saving.load_model(str(path))
    return [w.numpy() for w in model.backbone.weights] + [np.asarray(v) for v in model.optimizer.variables]


def _iterations(path):
    return int(keras.saving.load_model(str(path)).optimizer.iterations)


def _max_diff(a, b):
    return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b))


def _fingerprints(cluster):
    found = []
    for i in range(len(cluster.procs)):
        lines = [l for l in cluster.output(i).splitlines() if "final weights fingerprint:" in l]
        assert len(lines) == 1, cluster.output(i)[-2000:]
        found.append(lines[0].split("final weights fingerprint:")[1].strip())
    return found


def _log_rows(run):
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def _epochs_logged(run):
    return [row["epoch"] for row in _log_rows(run)]


# ------------------------------------------------------------------ cluster tests

def test_two_workers_match_single_process_run(measurements, tmp_path):
    """Supervised (y, x) pairs (tuple elements, which Keras fit cannot distribute across workers)
    and per-epoch validation PSNR/SSIM; the SEI objective is covered by the resume test below."""
    epochs, steps = 2, 2
    args = ["--method", "supervised", "--ground_truth", os.path.join(measurements, "gt")]
    _run_single(_args(measurements, tmp_path / "single", epochs, steps) + args, tmp_path, "single")
    run = tmp_path / "multi"
    with Cluster(_args(measurements, run, epochs, steps) + args, tmp_path, "multi") as cluster:
        cluster.wait()
    # Both replicas apply the same all-reduced gradients: bit-identical weights on both workers.
    a, b = _fingerprints(cluster)
    assert a == b
    # Only the chief wrote into --output (both workers were given the same folder); the other
    # worker's temporary folder (under TMPDIR) is gone.
    assert sorted(os.listdir(run)) == ["config.json", "log.csv", "model.keras", "tensorboard"]
    assert _epochs_logged(run) == ["0", "1"]
    for a, b in zip(_log_rows(tmp_path / "single"), _log_rows(run)):
        assert a.keys() == b.keys() and "val_psnr" in a
        for key in a:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), (key, a, b)
    assert [n for n in os.listdir(tmp_path) if n.startswith("sei_tf_worker")] == []
    # Same global batches, same stateless seeds: equal to a single-process run up to float
    # summation order (measured: max |diff| 1.5e-8 after 4 Adam steps, weights ~0.1).
    single, multi = _weights(tmp_path / "single" / "model.keras"), _weights(run / "model.keras")
    diff = _max_diff(single, multi)
    print(f"2 workers vs 1 process: max |diff| {diff:.3g}")
    assert _iterations(run / "model.keras") == epochs * steps
    assert diff < 1e-6, diff


def test_a_worker_stopping_at_start_up_stops_the_chief(measurements, tmp_path):
    """Worker 1 refuses its input (patch larger than the images): the chief stops with a clear error."""
    args = _args(measurements, tmp_path / "run", 2, 5)
    with Cluster(args, tmp_path, "bad", extra={1: ["--patch_size", "999"]}) as cluster:
        assert cluster.exit_codes() == [1, 1], "\n".join(cluster.output(i)[-2000:] for i in range(2))
        assert "smaller than --patch_size 999" in cluster.output(1)
        assert "error: Lost contact with another worker at start-up" in cluster.output(0), cluster.output(0)[-2000:]


def test_two_workers_resume_after_sigkill(measurements, tmp_path):
    """Worker 1 is SIGKILLed mid-epoch; the job (both workers) restarts and resumes from the chief."""
    epochs, steps = 3, 10
    _run_single(_args(measurements, tmp_path / "single", epochs, steps), tmp_path, "single")
    run = tmp_path / "multi"
    meta = run / "backup" / "training_metadata.json"
    with Cluster(_args(measurements, run, epochs, steps), tmp_path, "first") as cluster:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and all(p.poll() is None for p in cluster.procs):
            try:
                if json.loads(meta.read_text())["epoch"] >= 1:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        time.sleep(0.2)  # a few steps into the next epoch
        assert all(p.poll() is None for p in cluster.procs), "\n".join(
            cluster.output(i)[-2000:] for i in range(2))
        os.kill(cluster.procs[1].pid, signal.SIGKILL)
        cluster.procs[1].wait(timeout=30)
        # The chief's next collective fails (connection reset, or missed heartbeats when a machine
        # vanishes): it stops with a clear error instead of hanging.
        try:
            cluster.procs[0].wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("the chief did not notice the lost worker within 90 s:\n" + cluster.output(0)[-2000:])
        assert cluster.procs[0].returncode == 1, cluster.output(0)[-3000:]
        assert "error: Lost contact with another worker" in cluster.output(0), cluster.output(0)[-3000:]
    finished = json.loads(meta.read_text())["epoch"]
    assert 1 <= finished < epochs, finished
    # A restart with another seed is refused by the chief, and no worker is left waiting for it.
    with Cluster(_args(measurements, run, epochs, steps) + ["--seed", "1"], tmp_path, "refused") as cluster:
        codes = cluster.exit_codes(120)
        assert codes[0] == 1 and "--seed was 0, now 1" in cluster.output(0), cluster.output(0)[-2000:]
        assert codes[1] == 1 and "error: Lost contact with another worker at start-up" in cluster.output(1), (
            f"worker 1: exit code {codes[1]}\n" + cluster.output(1)[-2000:])
    assert json.loads(meta.read_text())["epoch"] == finished
    with Cluster(_args(measurements, run, epochs, steps), tmp_path, "resumed") as cluster:
        cluster.wait()
    assert f"Resuming after epoch {finished} (state broadcast from the chief)" in cluster.output(0)
    # The chief records the resume (same flags, so nothing changed).
    assert json.loads((run / "config.json").read_text())["resumes"] == [{"after_epoch": finished, "changed": {}}]
    a, b = _fingerprints(cluster)
    assert a == b
    assert _epochs_logged(run) == ["0", "1", "2"]
    assert not (run / "backup").exists()
    assert _iterations(run / "model.keras") == epochs * steps
    diff = _max_diff(_weights(tmp_path / "single" / "model.keras"), _weights(run / "model.keras"))
    print(f"killed after {finished} epoch(s); resumed 2-worker run vs uninterrupted 1 process: "
          f"max |diff| {diff:.3g}")
    assert diff < 1e-6, diff
