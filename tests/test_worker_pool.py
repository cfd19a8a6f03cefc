"""The bounded worker pool behind the HTTP service (serving/worker_pool.py): admission up to
capacity, tickets held until the job stops, the two deadlines, cancellation at `check()`."""

import asyncio
import threading
import time

import pytest

from serving import worker_pool
from serving.worker_pool import QueueTimeout, RunTimeout, WorkerPool


def _blocked(gate, started=None, steps=None):
    """A job that waits for `gate`, then runs `steps` checked units of work (counted)."""
    done = []

    def job(check):
        if started is not None:
            started.set()
        assert gate.wait(10)
        for _ in range(steps or 0):
            check()
            done.append(1)
            time.sleep(0.02)
        return "result"

    return job, done


def test_admission_is_bounded_and_tickets_outlive_the_answer_until_the_job_stops():
    pool = WorkerPool(workers=1, queue=1)
    try:
        a, b = pool.admit(), pool.admit()
        assert a is not None and b is not None and pool.admit() is None and pool.admitted == 2
        gate = threading.Event()
        job = pool.submit(_blocked(gate)[0], a)
        a.release()  # the request has answered, but its job still runs: the place stays taken
        assert pool.admitted == 2 and pool.admit() is None
        b.release()
        assert pool.admitted == 1
        gate.set()
        assert job.future.result(10) == "result"
        deadline = time.monotonic() + 10
        while pool.admitted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.admitted == 0 and pool.admit() is not None
    finally:
        pool.shutdown()


def test_queue_timeout_cancels_before_start_and_run_timeout_stops_at_next_check():
    pool = WorkerPool(workers=1, queue=2)
    gate, started = threading.Event(), threading.Event()
    fn, done = _blocked(gate, started, steps=50)  # 50 steps of 20 ms: 1 s
    try:
        running = pool.submit(fn)
        assert started.wait(10)
        gate.set()
        never_ran = []
        queued = pool.submit(lambda check: never_ran.append(1))
        assert pool.queued == 1 and pool.running == 1
        with pytest.raises(QueueTimeout, match="waited 0.1 s for a worker"):
            asyncio.run(worker_pool.wait(queued, queue_timeout=0.1, run_timeout=10))
        assert queued.future.cancelled() and pool.queued == 0
        with pytest.raises(RunTimeout, match="longer than 0.5 s"):
            asyncio.run(worker_pool.wait(running, queue_timeout=10, run_timeout=0.5))
        with pytest.raises(worker_pool.Cancelled):
            running.future.result(10)
        assert 0 < len(done) < 50  # stopped at a check, well before the end
        assert never_ran == []
    finally:
        gate.set()
        pool.shutdown()


def test_wait_returns_the_result_or_the_jobs_own_error():
    pool = WorkerPool(workers=2, queue=0)
    try:
        assert asyncio.run(worker_pool.wait(pool.submit(lambda check: 42), 5, 5)) == 42

        def fails(check):
            raise ValueError("bad pixels")

        with pytest.raises(ValueError, match="bad pixels"):
            asyncio.run(worker_pool.wait(pool.submit(fails), 5, 5))
    finally:
        pool.shutdown()


def test_client_gone_cancels_the_job():
    pool = WorkerPool(workers=1, queue=0)
    gate, started = threading.Event(), threading.Event()
    fn, done = _blocked(gate, started, steps=50)
    try:
        job = pool.submit(fn)
        assert started.wait(10)
        gate.set()

        async def gone():
            return True

        with pytest.raises(worker_pool.ClientGone):
            asyncio.run(worker_pool.wait(job, 10, 10, client_gone=gone, poll_s=0.05))
        with pytest.raises(worker_pool.Cancelled):
            job.future.result(10)
        assert len(done) < 50
    finally:
        pool.shutdown()


def test_retry_after_follows_the_mean_run_time_within_bounds():
    pool = WorkerPool(workers=2, queue=6)
    try:
        assert pool.retry_after() == 4  # no run yet: 1 s per job, 8 places / 2 workers
        for _ in range(20):
            pool.submit(lambda check: time.sleep(0.001)).future.result(10)
        assert pool.retry_after() == 1  # fast jobs: the minimum
        pool._mean_run_s = 1000.0
        assert pool.retry_after() == 60  # the maximum
    finally:
        pool.shutdown()


def test_shutdown_cancels_queued_jobs_and_stops_running_ones():
    pool = WorkerPool(workers=1, queue=3)
    gate, started = threading.Event(), threading.Event()
    fn, done = _blocked(gate, started, steps=1000)
    running = pool.submit(fn)
    assert started.wait(10)
    queued = [pool.submit(lambda check: 1) for _ in range(3)]
    gate.set()
    pool.shutdown(wait=True)
    assert all(job.future.cancelled() for job in queued)
    with pytest.raises(worker_pool.Cancelled):
        running.future.result(0)
    assert len(done) < 1000 and pool.queued == 0 and pool.running == 0


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        WorkerPool(workers=0, queue=1)
    with pytest.raises(ValueError):
        WorkerPool(workers=1, queue=-1)
