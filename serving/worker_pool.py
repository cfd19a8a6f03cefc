"""A bounded pool of restoration workers with admission control (used by serving/http.py).

Memory under load is bounded by refusing work, not by piling it up:

- `workers` threads run restorations; `queue` more admitted requests may wait.
  `admit()` hands out at most `workers + queue` tickets; when none is left the
  caller answers 503 at once (with `retry_after()` seconds), before reading the
  upload.
- A ticket is held from admission until the answer is sent *and* the request's
  job (if any) has stopped, so a job that outlives its answer (timed out) still
  counts against the capacity.
- `wait(job, ...)` awaits a job with two deadlines: `queue_timeout` for waiting
  for a worker (the job is cancelled before it starts: no work is wasted) and
  `run_timeout` for running (the job is asked to stop; it stops at its next
  `check()`, i.e. the restorer's next tile, so at most one tile of work goes on
  after the answer).

No asyncio in the workers: jobs are plain functions `fn(check)` run in threads;
`check()` raises `Cancelled` once the job has been cancelled.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

from sei_tf.errors import SeiTfError


class Cancelled(SeiTfError):
    """Raised inside a job by `check()` once the job has been cancelled."""


class QueueTimeout(SeiTfError):
    """The job waited longer than `queue_timeout` seconds for a worker; it never ran."""


class RunTimeout(SeiTfError):
    """The job ran longer than `run_timeout` seconds; it was asked to stop."""


class ClientGone(SeiTfError):
    """The client hung up while its job waited or ran; the job was cancelled."""


class Ticket:
    """A place in the pool's capacity; freed when every holder has released it."""

    def __init__(self, pool: "WorkerPool"):
        self._pool = pool
        self._holders = 1
        self._lock = threading.Lock()

    def hold(self):
        with self._lock:
            self._holders += 1

    def release(self):
        with self._lock:
            self._holders -= 1
            free = self._holders == 0
        if free:
            self._pool._free_ticket()


class Job:
    """One function run by the pool; `future` holds its result."""

    def __init__(self, fn):
        self.fn = fn
        self.future: Future = Future()
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None
        self._cancel = threading.Event()

    def check(self):
        """Raises `Cancelled` if the job was cancelled (called between units of work)."""
        if self._cancel.is_set():
            raise Cancelled("cancelled")

    def cancel(self) -> bool:
        """Cancels the job: True if it had not started (it never will), False if it
        is running (it stops at its next `check()`) or already done."""
        self._cancel.set()
        return self.future.cancel()


class WorkerPool:
    """`workers` restoration threads and at most `queue` admitted requests waiting for one."""

    def __init__(self, workers: int, queue: int):
        if workers < 1 or queue < 0:
            raise ValueError(f"need workers >= 1 and queue >= 0, got {workers} and {queue}.")
        self.workers = int(workers)
        self.capacity = int(workers) + int(queue)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="restore")
        self._lock = threading.Lock()
        self._tickets = 0
        self._queued = 0
        self._running = 0
        self._jobs: set[Job] = set()  # not yet done
        self._mean_run_s = None  # moving average of job run times, for Retry-After

    # -- state (read by the metrics) --------------------------------------------
    @property
    def admitted(self) -> int:
        """Tickets handed out and not yet freed."""
        return self._tickets

    @property
    def queued(self) -> int:
        """Jobs submitted and waiting for a worker."""
        return self._queued

    @property
    def running(self) -> int:
        """Jobs running in a worker."""
        return self._running

    # -- admission ----------------------------------------------------------------
    def admit(self) -> Ticket | None:
        """A ticket, or None when `capacity` tickets are already out (answer 503)."""
        with self._lock:
            if self._tickets >= self.capacity:
                return None
            self._tickets += 1
        return Ticket(self)

    def _free_ticket(self):
        with self._lock:
            self._tickets -= 1

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the time the pool needs to work
        through a full queue at the recent mean run time (1 to 60 s)."""
        mean = self._mean_run_s or 1.0
        return int(min(60, max(1, math.ceil(mean * self.capacity / self.workers))))

    # -- jobs -----------------------------------------------------------------------
    def submit(self, fn, ticket: Ticket | None = None) -> Job:
        """Queues `fn(check)`; the ticket (if any) is held until the job is done or cancelled."""
        job = Job(fn)
        if ticket is not None:
            ticket.hold()
            job.future.add_done_callback(lambda _: ticket.release())
        with self._lock:
            self._queued += 1
            self._jobs.add(job)
        job.future.add_done_callback(lambda f: self._on_done(job, f))
        self._executor.submit(self._run, job)
        return job

    def _on_done(self, job, future):
        with self._lock:
            self._jobs.discard(job)
            if future.cancelled():  # cancelled before a worker took it
                self._queued -= 1

    def _run(self, job: Job):
        if not job.future.set_running_or_notify_cancel():
            return  # cancelled while queued (counted by _on_done)
        job.started_at = time.monotonic()
        with self._lock:
            self._queued -= 1
            self._running += 1
        try:
            result = job.fn(job.check)
        except BaseException as err:  # handed to the waiting request
            job.future.set_exception(err)
        else:
            job.future.set_result(result)
        finally:
            elapsed = time.monotonic() - job.started_at
            with self._lock:
                self._running -= 1
                self._mean_run_s = elapsed if self._mean_run_s is None else 0.8 * self._mean_run_s + 0.2 * elapsed

    def shutdown(self, wait: bool = True):
        """Cancels every job left (queued ones never run, running ones stop at their
        next `check()`), then stops the threads (waiting for them when `wait`)."""
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        self._executor.shutdown(wait=wait, cancel_futures=True)


async def wait(job: Job, queue_timeout: float, run_timeout: float, client_gone=None, poll_s: float = 0.25):
    """Awaits `job`'s result under the pool's two deadlines (see module doc).

    Raises `QueueTimeout` (never started; cancelled), `RunTimeout` (asked to stop),
    `ClientGone` (when the coroutine `client_gone()`, polled every `poll_s`, returns
    True; the job is cancelled), or the job's own exception.
    """
    result = asyncio.wrap_future(job.future)
    while True:
        if job.started_at is None:
            deadline = job.submitted_at + queue_timeout
        else:
            deadline = job.started_at + run_timeout
        remaining = deadline - time.monotonic()
        if remaining > 0:
            done, _ = await asyncio.wait({result}, timeout=min(remaining, poll_s) if client_gone else remaining)
            if done:
                try:
                    return result.result()
                except CancelledError:  # cancelled by shutdown while queued
                    raise QueueTimeout("the server is shutting down") from None
            if client_gone is not None and await client_gone():
                job.cancel()
                _ignore_outcome(result)
                raise ClientGone("client disconnected")
            continue
        if job.started_at is None:
            if job.cancel():
                raise QueueTimeout(f"waited {queue_timeout:g} s for a worker")
            continue  # a worker took it just now: the run deadline applies
        job.cancel()
        _ignore_outcome(result)
        raise RunTimeout(f"restoration took longer than {run_timeout:g} s")


def _ignore_outcome(result: asyncio.Future):
    """The job's late result or `Cancelled` error is nobody's business any more."""
    result.add_done_callback(lambda f: f.cancelled() or f.exception())
