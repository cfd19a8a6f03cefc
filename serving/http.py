"""HTTP service for an exported restorer (FastAPI + uvicorn).

    python -m serving.http --model restorer.onnx [--host 127.0.0.1] [--port 8000]

Endpoints:
- `POST /restore`: multipart upload, field `file` (PNG, JPEG, TIFF or .npy).
  Returns an 8-bit PNG by default, or a 16-bit TIFF with `?format=tiff`.
- `GET /health`: `{"status": "ok", ...}`.
- `GET /metadata`: the model's sei-tf metadata.

Errors (JSON `{"detail": ...}`; the service keeps serving):
400 undecodable image data; 413 upload over `--max_upload_mb` or image over
`--max_pixels`; 415 not a PNG/JPEG/TIFF/.npy image; 422 missing `file` field,
bad query parameter, or an image that does not fit the model (channels,
dtype). At most `--max_concurrency` restorations run at once (memory bound);
the others wait.

Binds 127.0.0.1 by default: put a reverse proxy (TLS, auth) in front before
exposing it.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Literal

import numpy as np
from absl import app, flags
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.exceptions import HTTPException as _StarletteHTTPException

from sei_tf import cli
from serving import images, providers
from serving.restorer import InputError, Restorer

FLAGS = flags.FLAGS
log = logging.getLogger("serving.http")

DEFAULT_MAX_UPLOAD_MB = 32.0
DEFAULT_MAX_PIXELS = 16_000_000  # input pixels (e.g. 4000x4000)


class _BodyTooLarge(_StarletteHTTPException):
    """Raised from `receive`: FastAPI re-raises HTTPExceptions met while parsing
    the body, and the app's exception middleware answers 413."""

    def __init__(self, limit):
        super().__init__(413, f"upload larger than the limit of {limit} bytes")


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
                    return await _send_413(send, self.max_bytes)
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
                await _send_413(send, self.max_bytes)


async def _send_413(send, limit):
    body = (b'{"detail":"upload larger than the limit of %d bytes"}' % limit)
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(restorer: Restorer, max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
               max_pixels: int = DEFAULT_MAX_PIXELS, max_concurrency: int = 2):
    """The FastAPI app (wrapped in the upload-size limit) serving `restorer`."""
    app = FastAPI(title="sei-tf restorer", version=restorer.metadata.version,
                  description=f"{restorer.task} x{restorer.scale} restorer ({restorer.metadata.backbone.get('class')})")
    slots = threading.BoundedSemaphore(max(1, int(max_concurrency)))
    app.state.restorer = restorer

    @app.get("/health")
    def health():
        return {"status": "ok", "providers": restorer.providers, "task": restorer.task,
                "scale": restorer.scale, "channels": restorer.channels}

    @app.get("/metadata")
    def metadata():
        return restorer.metadata.as_dict()

    def _restore(data: bytes, fmt: str, name: str):
        try:
            image = images.decode_image(data, max_pixels=max_pixels, name=name)
        except images.ImageTooLarge as err:
            raise HTTPException(413, str(err))
        except images.UnsupportedFormat as err:
            raise HTTPException(415, str(err))
        except images.ImageError as err:
            raise HTTPException(400, str(err))
        dtype = np.uint16 if fmt == "tiff" else np.uint8
        with slots:
            try:
                out = restorer.restore(image, dtype=dtype)
            except InputError as err:
                raise HTTPException(422, str(err))
        if fmt == "tiff":
            return images.encode_image(out, "tiff"), "image/tiff"
        return images.encode_image(out, "png"), "image/png"

    @app.post("/restore", responses={200: {"content": {"image/png": {}, "image/tiff": {}}}})
    async def restore(file: UploadFile = File(..., description="PNG, JPEG, TIFF or .npy image"),
                      format: Literal["png", "tiff"] = Query("png", description="png (8-bit) or tiff (16-bit)")):
        data = await file.read()
        if not data:
            raise HTTPException(400, "empty upload")
        body, media = await run_in_threadpool(_restore, data, format, file.filename or "upload")
        return Response(content=body, media_type=media)

    return BodyLimitMiddleware(app, max_upload_bytes)


def define_flags(flag_values=FLAGS):
    """Defines the command-line flags (only when run as a program: importing has no side effects)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "Exported restorer (.onnx).", **fv)
    flags.DEFINE_string("host", "127.0.0.1", "Bind address (default: loopback only).", **fv)
    flags.DEFINE_integer("port", 8000, "TCP port.", **fv)
    flags.DEFINE_enum("device", "auto", ["auto", "cuda", "cpu"],
                      "auto: TensorRT, then CUDA, then CPU; cuda fails unless a GPU provider loads.", **fv)
    flags.DEFINE_integer("tile", 512, "Tile size in input pixels (0: the whole image at once).", **fv)
    flags.DEFINE_integer("threads", None, "onnxruntime intra-op threads (default: onnxruntime's).", **fv)
    flags.DEFINE_float("max_upload_mb", DEFAULT_MAX_UPLOAD_MB, "Largest upload, MiB (larger: 413).", **fv)
    flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS, "Largest input image, pixels (larger: 413).", **fv)
    flags.DEFINE_integer("max_concurrency", 2, "Restorations running at once (the others wait).", **fv)
    flags.DEFINE_string("log_level", "info", "uvicorn log level (critical, error, warning, info, debug, trace).",
                        **fv)
    providers.define_flags(flag_values)
    flags.mark_flags_as_required(["model"], flag_values=flag_values)


def main(argv):
    """Loads --model and serves it until interrupted."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    import uvicorn

    restorer = Restorer(FLAGS.model, device=FLAGS.device, tile=FLAGS.tile or None, threads=FLAGS.threads,
                        gpu=providers.from_flags(FLAGS))
    service = create_app(restorer, max_upload_bytes=int(FLAGS.max_upload_mb * 2**20), max_pixels=FLAGS.max_pixels,
                         max_concurrency=FLAGS.max_concurrency)
    print(f"serving {restorer!r} on http://{FLAGS.host}:{FLAGS.port}", flush=True)
    uvicorn.run(service, host=FLAGS.host, port=FLAGS.port, log_level=FLAGS.log_level)
    return 0


if __name__ == "__main__":
    cli.run(sys.modules[__name__])
