"""HTTP service (serving/http.py): the real server (uvicorn, in a subprocess) on a
free loopback port, exercised with httpx: success paths, a few concurrent
requests (bounded count and time), and every error path.
"""

import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tifffile  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data as skdata  # noqa: E402

from serving import Restorer  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
MAX_UPLOAD_MB = 0.25
MAX_PIXELS = 120 * 120
TIMEOUT = 60.0


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from export import onnx_export, random_models

    tmp = tmp_path_factory.mktemp("http")
    keras_path = random_models.make_model(tmp / "sr.keras", "cnn_tiny", "sr", scale=2)
    out = tmp / "sr.onnx"
    onnx_export.export(keras_path, out, log=lambda *_: None)
    return str(out)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
    # No --host: the default must be loopback.
    proc = subprocess.Popen([sys.executable, "-m", "serving.http", "--model", model, "--port", str(port),
                             "--device", "cpu", "--tile", "32", "--max_upload_mb", str(MAX_UPLOAD_MB),
                             "--max_pixels", str(MAX_PIXELS), "--max_concurrency", "2", "--log_level", "warning"],
                            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            log.seek(0)
            proc.kill()
            pytest.fail(f"server did not start:\n{log.read()[-3000:]}")
        time.sleep(0.2)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def photo():
    return np.ascontiguousarray(skdata.astronaut()[180:231, 200:263])  # 51x63 real photo crop


def _restore(base, content, filename="x.png", params=None, content_type="image/png"):
    return httpx.post(f"{base}/restore", files={"file": (filename, content, content_type)}, params=params,
                      timeout=TIMEOUT)


def test_health_and_metadata(server):
    health = httpx.get(f"{server}/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["providers"] == ["CPUExecutionProvider"]
    meta = httpx.get(f"{server}/metadata", timeout=TIMEOUT).json()
    assert meta["task"] == "sr" and meta["scale"] == 2 and meta["channels"] == 3
    assert meta["tile_context"] == 5 and meta["backbone"]["class"] == "ResidualCNN"


def test_restore_png_default(server, model, photo):
    r = _restore(server, _png(photo))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert out.shape == (102, 126, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, Restorer(model, device="cpu").restore(photo))


def test_restore_tiff_16bit(server, model, photo):
    r = _restore(server, _png(photo), params={"format": "tiff"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
    out = tifffile.imread(io.BytesIO(r.content))
    assert out.dtype == np.uint16 and out.shape == (102, 126, 3)
    np.testing.assert_array_equal(out, Restorer(model, device="cpu").restore(photo, dtype=np.uint16))
    # 16-bit TIFF and float .npy uploads are accepted too.
    buf = io.BytesIO()
    tifffile.imwrite(buf, photo.astype(np.uint16) * 257, photometric="rgb")
    assert _restore(server, buf.getvalue(), "x.tif", content_type="image/tiff").status_code == 200
    buf = io.BytesIO()
    np.save(buf, photo.astype(np.float32) / 255)
    assert _restore(server, buf.getvalue(), "x.npy", content_type="application/octet-stream").status_code == 200


def test_concurrent_requests(server, photo):
    """Six requests at once (bounded count and time): all succeed, identical results."""
    payload = _png(photo)
    start = time.time()
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda _: _restore(server, payload), range(6)))
    assert time.time() - start < TIMEOUT
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.content for r in responses}) == 1


def test_error_paths_and_service_keeps_running(server, photo):
    def detail(r):
        return r.json()["detail"]

    # 415: not an image at all.
    r = _restore(server, b"this is not an image, just text" * 4, "x.txt", content_type="text/plain")
    assert r.status_code == 415 and "not a PNG, JPEG, TIFF" in detail(r)
    # 400: a PNG signature with a truncated body; and an empty upload.
    r = _restore(server, _png(photo)[:120])
    assert r.status_code == 400 and "could not decode" in detail(r)
    assert _restore(server, b"").status_code == 400
    # 413: upload over the byte limit (Content-Length known up front).
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(int(MAX_UPLOAD_MB * 2**20))
    r = _restore(server, big)
    assert r.status_code == 413 and "larger than the limit" in r.text
    # 413: chunked upload (no Content-Length) that grows past the limit while streaming.
    def chunks():  # a well-formed multipart file part that never ends
        yield (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
               b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n")
        for _ in range(int(MAX_UPLOAD_MB * 16) + 4):
            yield b"\x00" * 65536
    r = httpx.post(f"{server}/restore", content=chunks(), timeout=TIMEOUT,
                   headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "larger than the limit" in r.text
    # 413: a small file with too many pixels (checked from the header, before decoding).
    r = _restore(server, _png(np.zeros((200, 200, 3), np.uint8)))
    assert r.status_code == 413 and "exceeds the limit" in detail(r)
    # 422: greyscale image for an RGB model; missing file field; bad format parameter.
    r = _restore(server, _png(photo[..., 0]))
    assert r.status_code == 422 and "greyscale" in detail(r)
    r = httpx.post(f"{server}/restore", files={"other": ("x.png", _png(photo), "image/png")}, timeout=TIMEOUT)
    assert r.status_code == 422
    r = httpx.post(f"{server}/restore", data={"file": "not a file"}, timeout=TIMEOUT)
    assert r.status_code == 422
    assert _restore(server, _png(photo), params={"format": "bmp"}).status_code == 422
    # 405 / 404 for wrong method or path.
    assert httpx.get(f"{server}/restore", timeout=TIMEOUT).status_code == 405
    assert httpx.get(f"{server}/nope", timeout=TIMEOUT).status_code == 404
    # Still serving after all of that.
    assert httpx.get(f"{server}/health", timeout=TIMEOUT).status_code == 200
    assert _restore(server, _png(photo)).status_code == 200


def test_binds_loopback_by_default():
    from absl import flags

    from serving import http

    flag_values = flags.FlagValues()  # a private registry: no clash with other tools' flags
    http.define_flags(flag_values)
    assert flag_values(["serving.http", "--model", "m.onnx"]) == ["serving.http"]
    assert flag_values.host == "127.0.0.1" and flag_values.port == 8000


def test_cli_user_error_is_one_line(tmp_path):
    """A model that is not there: one `error:` line and exit status 1, not a traceback."""
    proc = subprocess.run([sys.executable, "-m", "serving.http", "--model", str(tmp_path / "missing.onnx")],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: model file not found: {tmp_path / 'missing.onnx'}"]
