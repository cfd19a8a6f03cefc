"""HTTP service for an exported restorer (FastAPI + uvicorn).

    python -m serving.http --model restorer.onnx [--host 127.0.0.1] [--port 8000]

Endpoints:
- `POST /restore`: multipart upload, field `file` (PNG, JPEG, TIFF or .npy).
  Returns an 8-bit PNG by default, or a 16-bit TIFF with `?format=tiff`.
- `GET /health`: liveness, `{"status": "ok", ...}` while the process serves.
- `GET /ready`: readiness, 200 once the model is loaded and a warm-up inference
  ran (503 before; requests sent meanwhile wait in the queue).
- `GET /metadata`: the model's sei-tf metadata.
- `GET /metrics`: Prometheus text format (serving/http_metrics.py).

Under load (serving/worker_pool.py): `--max_concurrency` worker threads
restore, `--max_queue` more requests may wait. A /restore request beyond
those is answered 503 with `Retry-After` at once, before its upload is read,
so memory stays bounded by (max_concurrency + max_queue) uploads plus the
workers' images. Deadlines: the upload must arrive within `--body_timeout_s`
(else 408), wait at most `--queue_timeout_s` for a worker (else 503 +
Retry-After; it never runs), and restore within `--restore_timeout_s` (else
504; the restoration stops at its next tile, so at most one tile of work
goes on after the answer). A client that hangs up cancels its restoration
the same way (logged as 499).

Errors (JSON `{"detail": ...}`; the service keeps serving):
400 undecodable image data (any decoder error); 408 upload too slow; 413
upload over `--max_upload_mb` or image over `--max_pixels`; 415 not a
PNG/JPEG/TIFF/.npy image; 422 missing `file` field, bad query parameter, or
an image that does not fit the model (channels, dtype); 503 busy; 504 too slow.

SIGTERM (or Ctrl-C): the listening socket closes (new connections are
refused, which readiness probes see), every request already received is
finished (queued ones included), then the process exits (uvicorn re-raises
the signal: exit status -15). Requests still unanswered after body + queue +
restore timeouts + 5 s are cancelled.

Binds 127.0.0.1 by default: put a reverse proxy (TLS, auth, header
timeouts) in front before exposing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from typing import Literal

import numpy as np
from absl import app, flags
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as _StarletteHTTPException

from sei_tf import cli
from sei_tf.errors import SeiTfError
from serving import images, providers, worker_pool
from serving.http_metrics import Metrics, MetricsMiddleware
from serving.restorer import InputError, Restorer

FLAGS = flags.FLAGS
log = logging.getLogger("serving.http")

DEFAULT_MAX_UPLOAD_MB = 32.0
DEFAULT_MAX_PIXELS = 16_000_000  # input pixels (e.g. 4000x4000)
DEFAULT_MAX_CONCURRENCY = 2
DEFAULT_MAX_QUEUE = 8
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_QUEUE_TIMEOUT_S = 60.0
DEFAULT_RESTORE_TIMEOUT_S = 300.0
WARM_UP_SIDE = 64  # warm-up image side (pixels) when the restorer does not tile


class _BodyTooLarge(_StarletteHTTPException):
    """Raised from `receive`: FastAPI re-raises HTTPExceptions met while parsing
    the body, and the app's exception middleware answers 413."""

    def __init__(self, limit):
        super().__init__(413, f"upload larger than the limit of {limit} bytes")


class _BodyTimeout(_StarletteHTTPException):
    """Raised from `receive` when the upload is late; answered 408 (and the connection closed)."""

    def __init__(self, seconds):
        super().__init__(408, f"upload not received within {seconds:g} s", headers={"Connection": "close"})


class BodyLimitMiddleware:
    """Rejects request bodies over `max_bytes` with 413, before and while reading them."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False
                if too_large:
                    return await _send_json(send, 413, f"upload larger than the limit of {self.max_bytes} bytes",
                                            [(b"connection", b"close")])
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, f"upload larger than the limit of {self.max_bytes} bytes",
                                 [(b"connection", b"close")])


class AdmissionMiddleware:
    """`POST /restore` takes a place in the worker pool or is answered 503 + Retry-After at
    once, before its upload is read; its upload must then arrive within `body_timeout_s` (408).

    The place (`scope["state"]["ticket"]`) is released when the answer has been sent and
    the request's restoration, if any, has stopped.
    """

    def __init__(self, app, pool: worker_pool.WorkerPool, body_timeout_s: float):
        self.app = app
        self.pool = pool
        self.body_timeout_s = float(body_timeout_s)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/restore" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        ticket = self.pool.admit()
        if ticket is None:
            state["error_reason"] = "busy"
            wait = self.pool.retry_after()
            return await _send_json(
                send, 503, f"server busy: all {self.pool.capacity} places (workers + queue) are taken; "
                f"retry after {wait} s", [(b"retry-after", str(wait).encode())])
        state["ticket"] = ticket
        deadline = time.monotonic() + self.body_timeout_s
        body_done = False
        started = False

        async def timed_receive():
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                state["error_reason"] = "body_timeout"
                raise _BodyTimeout(self.body_timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except _BodyTimeout as err:
            if not started:
                await _send_json(send, 408, err.detail, [(b"connection", b"close")])
        finally:
            ticket.release()


async def _send_json(send, status: int, detail: str, headers=()):
    """Sends a whole `{"detail": ...}` answer from an ASGI middleware."""
    body = JSONResponse({"detail": detail}).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Readiness:
    """What `/ready` says: warming up -> ready (or: warm-up failed) -> shutting down (app shutdown)."""

    def __init__(self, gauge):
        self.status = "warming up"
        self._gauge = gauge

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def set(self, status: str):
        if self.status == "shutting down":
            return  # final
        self.status = status
        self._gauge.set(1 if self.ready else 0)


def create_app(restorer: Restorer, max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
               max_pixels: int = DEFAULT_MAX_PIXELS, max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
               max_queue: int = DEFAULT_MAX_QUEUE, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
               queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
               restore_timeout_s: float = DEFAULT_RESTORE_TIMEOUT_S):
    """The ASGI app serving `restorer`: FastAPI wrapped in the metrics, upload-size and
    admission middlewares (outermost first). The warm-up inference is queued on the worker
    pool at once; `/ready` answers 200 when it has run.

    The returned app has `.service` (the FastAPI app): its `state` holds `restorer`, `pool`,
    `metrics` and `readiness`.
    """
    pool = worker_pool.WorkerPool(max_concurrency, max_queue)
    metrics = Metrics(pool)
    readiness = Readiness(metrics.ready)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        readiness.set("shutting down")
        await asyncio.to_thread(pool.shutdown)  # cancels what is left, waits for the threads

    service = FastAPI(title="sei-tf restorer", version=restorer.metadata.version, lifespan=lifespan,
                      description=f"{restorer.task} x{restorer.scale} restorer "
                                  f"({restorer.metadata.backbone.get('class')})")
    service.state.restorer = restorer
    service.state.pool = pool
    service.state.metrics = metrics
    service.state.readiness = readiness

    def warm_up(check):
        side = restorer.tile or WARM_UP_SIDE
        shape = (side, side) if restorer.channels == 1 else (side, side, restorer.channels)
        start = time.perf_counter()
        restorer.restore(np.zeros(shape, np.uint8), callback=check)
        log.info("warm-up inference (%dx%d) took %.2f s", side, side, time.perf_counter() - start)

    def warmed_up(future):
        if future.cancelled():  # shut down before it ran
            return
        err = future.exception()
        if err is None:
            readiness.set("ready")
        else:
            log.error("warm-up inference failed: %s: %s", type(err).__name__, err)
            readiness.set(f"warm-up failed: {type(err).__name__}: {err}")

    pool.submit(warm_up).future.add_done_callback(warmed_up)

    @service.get("/health")
    def health():
        return {"status": "ok", "providers": restorer.providers, "task": restorer.task,
                "scale": restorer.scale, "channels": restorer.channels}

    @service.get("/ready")
    def ready():
        return JSONResponse({"status": readiness.status}, status_code=200 if readiness.ready else 503)

    @service.get("/metadata")
    def metadata():
        return restorer.metadata.as_dict()

    @service.get("/metrics")
    def prometheus_metrics():
        return Response(metrics.render(), headers={"Content-Type": metrics.content_type})

    def work(data: bytes, fmt: str, name: str, check):
        """One upload, in a worker thread: decode, restore (stoppable per tile), encode."""
        start = time.perf_counter()
        try:
            image = images.decode_image(data, max_pixels=max_pixels, name=name)
        except images.ImageTooLarge as err:
            raise HTTPException(413, str(err))
        except images.UnsupportedFormat as err:
            raise HTTPException(415, str(err))
        except SeiTfError as err:
            bomb = type(err.__cause__).__name__ == "DecompressionBombError"  # Pillow's own pixel limit
            raise HTTPException(413 if bomb else 400, str(err))
        except MemoryError:
            raise HTTPException(413, f"{name}: not enough memory to decode this image")
        except Exception as err:  # any decoder failure is the upload's problem: 400, never 500
            raise HTTPException(400, f"{name}: could not decode the image ({type(err).__name__}: {err})")
        check()
        dtype = np.uint16 if fmt == "tiff" else np.uint8
        try:
            out = restorer.restore(image, dtype=dtype, callback=check)
        except InputError as err:  # the Restorer's message does not know the upload's name
            raise HTTPException(422, f"{name}: {err}")
        del image  # freed before encoding
        body = images.encode_image(out, fmt)
        metrics.restoration.observe(time.perf_counter() - start)
        return body, "image/tiff" if fmt == "tiff" else "image/png"

    @service.post("/restore", responses={200: {"content": {"image/png": {}, "image/tiff": {}}},
                                         503: {"description": "busy: retry after `Retry-After` seconds"}})
    async def restore(request: Request,
                      file: UploadFile = File(..., description="PNG, JPEG, TIFF or .npy image"),
                      format: Literal["png", "tiff"] = Query("png", description="png (8-bit) or tiff (16-bit)")):
        data = await file.read()
        await file.close()
        if not data:
            raise HTTPException(400, "empty upload")
        job = pool.submit(functools.partial(work, data, format, file.filename or "upload"),
                          request.state.ticket)
        try:
            body, media = await worker_pool.wait(job, queue_timeout_s, restore_timeout_s,
                                                 client_gone=request.is_disconnected)
        except worker_pool.QueueTimeout as err:
            request.state.error_reason = "queue_timeout"
            raise HTTPException(503, f"server busy: {err}; retry later",
                                headers={"Retry-After": str(pool.retry_after())})
        except worker_pool.RunTimeout as err:
            raise HTTPException(504, f"{err}; the restoration was stopped (try a smaller image)")
        except worker_pool.ClientGone:
            return Response(status_code=499)  # nobody reads it; counted in the metrics
        except HTTPException:
            raise
        except Exception as err:
            log.exception("restoration failed")
            raise HTTPException(500, f"restoration failed: {type(err).__name__}: {err}")
        return Response(content=body, media_type=media)

    asgi = MetricsMiddleware(
        BodyLimitMiddleware(AdmissionMiddleware(service, pool, body_timeout_s), max_upload_bytes), metrics)
    asgi.service = service
    return asgi


def define_flags(flag_values=FLAGS):
    """Defines the command-line flags (only when run as a program: importing has no side effects)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "Exported restorer (.onnx).", **fv)
    flags.DEFINE_string("host", "127.0.0.1", "Bind address (default: loopback only).", **fv)
    flags.DEFINE_integer("port", 8000, "TCP port.", **fv)
    flags.DEFINE_enum("device", "auto", ["auto", "cuda", "cpu"],
                      "auto: TensorRT, then CUDA, then CPU; cuda fails unless a GPU provider loads.", **fv)
    flags.DEFINE_integer("tile", 512, "Tile size in input pixels (0: the whole image at once).", **fv)
    flags.DEFINE_integer("threads", None, "onnxruntime intra-op threads (default: onnxruntime's). With "
                         "--max_concurrency workers sharing the CPU, 1 thread per worker avoids oversubscription.",
                         **fv)
    flags.DEFINE_enum("spinning", "default", ["default", "on", "off"],
                      "onnxruntime worker threads busy-wait (on) or sleep (off) between tasks; off helps on "
                      "shared or oversubscribed CPUs (default: the Restorer's).", **fv)
    flags.DEFINE_float("max_upload_mb", DEFAULT_MAX_UPLOAD_MB, "Largest upload, MiB (larger: 413).", **fv)
    flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS, "Largest input image, pixels (larger: 413).", **fv)
    flags.DEFINE_integer("max_concurrency", DEFAULT_MAX_CONCURRENCY, "Restorations running at once (worker threads).",
                         lower_bound=1, **fv)
    flags.DEFINE_integer("max_queue", DEFAULT_MAX_QUEUE,
                         "/restore requests that may wait for a worker; beyond: 503 + Retry-After.",
                         lower_bound=0, **fv)
    flags.DEFINE_float("body_timeout_s", DEFAULT_BODY_TIMEOUT_S, "Seconds to receive an upload (later: 408).",
                       lower_bound=0.001, **fv)
    flags.DEFINE_float("queue_timeout_s", DEFAULT_QUEUE_TIMEOUT_S,
                       "Seconds a request may wait for a worker (later: 503 + Retry-After).", lower_bound=0.001, **fv)
    flags.DEFINE_float("restore_timeout_s", DEFAULT_RESTORE_TIMEOUT_S,
                       "Seconds a restoration may run (later: 504; it stops at its next tile).",
                       lower_bound=0.001, **fv)
    flags.DEFINE_integer("max_connections", 256, "Open connections (uvicorn's limit_concurrency): a backstop "
                         "against connection floods; beyond it uvicorn answers 503 without Retry-After.",
                         lower_bound=1, **fv)
    flags.DEFINE_string("log_level", "info", "uvicorn log level (critical, error, warning, info, debug, trace).",
                        **fv)
    providers.define_flags(flag_values)
    flags.mark_flags_as_required(["model"], flag_values=flag_values)


def main(argv):
    """Loads --model and serves it until SIGTERM/SIGINT (then drains: see module doc)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    import uvicorn

    spinning = {"default": "auto", "on": True, "off": False}[FLAGS.spinning]
    restorer = Restorer(FLAGS.model, device=FLAGS.device, tile=FLAGS.tile or None, threads=FLAGS.threads,
                        spinning=spinning, gpu=providers.from_flags(FLAGS))
    asgi = create_app(restorer, max_upload_bytes=int(FLAGS.max_upload_mb * 2**20), max_pixels=FLAGS.max_pixels,
                      max_concurrency=FLAGS.max_concurrency, max_queue=FLAGS.max_queue,
                      body_timeout_s=FLAGS.body_timeout_s, queue_timeout_s=FLAGS.queue_timeout_s,
                      restore_timeout_s=FLAGS.restore_timeout_s)
    grace = FLAGS.body_timeout_s + FLAGS.queue_timeout_s + FLAGS.restore_timeout_s + 5
    print(f"serving {restorer!r} on http://{FLAGS.host}:{FLAGS.port}", flush=True)
    # On SIGTERM/SIGINT uvicorn closes the listening socket, waits (up to `grace`) for the
    # requests it has received, then runs the app's shutdown (the worker pool's).
    uvicorn.run(asgi, host=FLAGS.host, port=FLAGS.port, log_level=FLAGS.log_level, lifespan="on",
                limit_concurrency=FLAGS.max_connections, timeout_graceful_shutdown=grace)
    return 0


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
