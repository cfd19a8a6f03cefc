"""HTTP service (serving/http.py): the real server (uvicorn, in a subprocess) on a
free loopback port, exercised with httpx: success paths, a few concurrent
requests (bounded count and time), every error path, a burst (every request
answered), metrics, and a graceful SIGTERM drain.

Overload and deadlines are tested deterministically on uvicorn in a thread of the
test process, serving a real Restorer wrapped so that its restorations wait for a
gate or take a set time per tile (`SlowRestorer`).
"""

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
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
MAX_CONCURRENCY, MAX_QUEUE = 2, 4
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
                             "--max_pixels", str(MAX_PIXELS), "--max_concurrency", str(MAX_CONCURRENCY),
                             "--max_queue", str(MAX_QUEUE), "--log_level", "warning"],
                            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
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


def _restore(base, content, filename="x.png", params=None, content_type="image/png", client=httpx):
    return client.post(f"{base}/restore", files={"file": (filename, content, content_type)}, params=params,
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
    """Six requests at once (= workers + queue: bounded count and time): all succeed, identical results."""
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


# -- load, deadlines, readiness, metrics -------------------------------------------------------------
def _metrics(base):
    """/metrics parsed by prometheus_client's own parser: {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(f"{base}/metrics", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _wait_for(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class SlowRestorer:
    """A real Restorer whose restorations first wait for `gate`, then take `tile_s` more per
    tile; counts restorations started and tiles done. Everything else is the Restorer's."""

    def __init__(self, restorer, tile_s=0.0, gate_open=True):
        self._restorer = restorer
        self.tile_s = tile_s
        self.gate = threading.Event()
        if gate_open:
            self.gate.set()
        self.calls = 0
        self.tiles = 0

    def __getattr__(self, name):
        return getattr(self._restorer, name)

    def restore(self, image, *, callback=None, **kwargs):
        self.calls += 1
        assert self.gate.wait(TIMEOUT), "gate never opened"

        def per_tile():
            self.tiles += 1
            time.sleep(self.tile_s)
            if callback:
                callback()

        return self._restorer.restore(image, callback=per_tile, **kwargs)


@contextlib.contextmanager
def _serve_in_thread(asgi):
    """uvicorn serving `asgi` on a free loopback port, in a thread of this process."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)


@pytest.fixture
def slow(model):
    """A SlowRestorer (32-pixel tiles) whose gate is opened at teardown, so nothing stays blocked."""
    slow = SlowRestorer(Restorer(model, device="cpu", tile=32))
    yield slow
    slow.gate.set()


def _app(restorer, **limits):
    from serving.http import create_app

    return create_app(restorer, max_upload_bytes=int(MAX_UPLOAD_MB * 2**20), max_pixels=MAX_PIXELS, **limits)


def test_readiness_flips_after_warm_up(slow, photo):
    """Liveness at once; readiness (and the `ready` gauge) only after the warm-up inference;
    a request that arrives meanwhile waits in the queue and is served."""
    slow.gate.clear()  # the warm-up (the first restoration) blocks
    with _serve_in_thread(_app(slow, max_concurrency=1, max_queue=2)) as base:
        assert httpx.get(f"{base}/health", timeout=TIMEOUT).status_code == 200
        r = httpx.get(f"{base}/ready", timeout=TIMEOUT)
        assert r.status_code == 503 and r.json()["status"] == "warming up"
        assert _value(_metrics(base), "sei_http_ready") == 0
        with ThreadPoolExecutor(1) as pool:
            early = pool.submit(_restore, base, _png(photo))
            _wait_for(lambda: _value(_metrics(base), "sei_http_queue_depth") == 1, "the early request to queue")
            assert slow.calls == 1  # only the warm-up has started
            slow.gate.set()
            assert early.result().status_code == 200
        _wait_for(lambda: httpx.get(f"{base}/ready", timeout=TIMEOUT).status_code == 200, "readiness")
        assert httpx.get(f"{base}/ready", timeout=TIMEOUT).json() == {"status": "ready"}
        assert _value(_metrics(base), "sei_http_ready") == 1
        assert slow.tiles >= 1 + 4  # warm-up (32x32: one tile) + the 51x63 photo (2x2 tiles)


def test_full_queue_answers_503_with_retry_after(slow, photo):
    """1 worker + 1 queue place, both taken: the next request gets 503 + Retry-After at once,
    with its upload unread; the admitted ones are restored once the worker is free."""
    with _serve_in_thread(_app(slow, max_concurrency=1, max_queue=1)) as base:
        _wait_for(lambda: httpx.get(f"{base}/ready", timeout=TIMEOUT).status_code == 200, "readiness")
        slow.gate.clear()
        payload = _png(photo)
        with ThreadPoolExecutor(2) as pool:
            admitted = [pool.submit(_restore, base, payload) for _ in range(2)]
            _wait_for(lambda: _value(_metrics(base), "sei_http_admitted") == 2, "two admitted requests")
            start = time.monotonic()
            r = _restore(base, payload)
            assert time.monotonic() - start < 5.0  # at once, not after the queue
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert "busy" in r.json()["detail"]
            # Also over a keep-alive connection: the unread upload is skipped and the connection reused.
            with httpx.Client(timeout=TIMEOUT) as client:
                for _ in range(2):
                    r = client.post(f"{base}/restore", files={"file": ("x.png", payload, "image/png")})
                    assert r.status_code == 503
            slow.gate.set()
            assert [f.result().status_code for f in admitted] == [200, 200]
        samples = _metrics(base)
    assert _value(samples, "sei_http_errors_total", reason="busy") == 3
    assert _value(samples, "sei_http_requests_total", method="POST", path="/restore", status="503") == 3
    assert _value(samples, "sei_http_requests_total", method="POST", path="/restore", status="200") == 2


def test_queue_timeout_answers_503_and_never_runs(slow, photo):
    """A request that waits longer than queue_timeout_s for a worker: 503 + Retry-After, and its
    restoration never starts."""
    with _serve_in_thread(_app(slow, max_concurrency=1, max_queue=2, queue_timeout_s=0.3)) as base:
        _wait_for(lambda: httpx.get(f"{base}/ready", timeout=TIMEOUT).status_code == 200, "readiness")
        slow.gate.clear()
        calls = slow.calls
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_restore, base, _png(photo))  # takes the worker, waits at the gate
            _wait_for(lambda: slow.calls == calls + 1, "the first restoration to start")
            r = _restore(base, _png(photo))
            assert r.status_code == 503 and "waited 0.3 s for a worker" in r.json()["detail"]
            assert int(r.headers["retry-after"]) >= 1
            slow.gate.set()
            assert first.result().status_code == 200
        assert slow.calls == calls + 1  # the timed-out one never ran
        samples = _metrics(base)
    assert _value(samples, "sei_http_errors_total", reason="queue_timeout") == 1
    assert _value(samples, "sei_http_queue_depth") == 0


def test_restore_timeout_answers_504_and_stops_the_work(slow):
    """A restoration over restore_timeout_s: 504 at the deadline; it stops at its next tile (not
    all tiles run) and frees its worker and its place."""
    slow.tile_s = 0.3
    image = _png(np.full((120, 120, 3), 128, np.uint8))  # 4x4 = 16 tiles of 32: 4.8 s at 0.3 s per tile
    with _serve_in_thread(_app(slow, max_concurrency=1, max_queue=1, restore_timeout_s=0.5)) as base:
        _wait_for(lambda: httpx.get(f"{base}/ready", timeout=TIMEOUT).status_code == 200, "readiness")
        tiles = slow.tiles
        start = time.monotonic()
        r = _restore(base, image)
        assert r.status_code == 504 and "longer than 0.5 s" in r.json()["detail"]
        assert time.monotonic() - start < 4.0  # well before the 4.8 s the whole image takes
        _wait_for(lambda: _value(_metrics(base), "sei_http_workers_busy") == 0, "the worker to stop")
        done = slow.tiles - tiles
        assert 1 <= done < 16, done
        time.sleep(0.3)
        assert slow.tiles - tiles == done  # nothing runs after the stop
        samples = _metrics(base)
        assert _value(samples, "sei_http_admitted") == 0
        assert _value(samples, "sei_http_errors_total", reason="restore_timeout") == 1


def test_client_hanging_up_cancels_its_restoration(slow):
    """A client that gives up: its restoration stops at the next tile (counted as 499)."""
    slow.tile_s = 0.2
    image = _png(np.full((120, 120, 3), 128, np.uint8))  # 16 tiles: 3.2 s
    with _serve_in_thread(_app(slow, max_concurrency=1, max_queue=1)) as base:
        _wait_for(lambda: httpx.get(f"{base}/ready", timeout=TIMEOUT).status_code == 200, "readiness")
        tiles = slow.tiles
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.4 s and closes the connection
            httpx.post(f"{base}/restore", files={"file": ("x.png", image, "image/png")},
                       timeout=httpx.Timeout(TIMEOUT, read=0.4))
        _wait_for(lambda: _value(_metrics(base), "sei_http_errors_total", reason="client_gone") == 1,
                  "the server to notice")
        _wait_for(lambda: _value(_metrics(base), "sei_http_workers_busy") == 0, "the worker to stop")
        assert slow.tiles - tiles < 16


def test_slow_upload_answers_408(model):
    """An upload that does not arrive within body_timeout_s: 408, connection closed."""
    with _serve_in_thread(_app(Restorer(model, device="cpu", tile=32), body_timeout_s=0.3)) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST /restore HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 100000\r\n\r\n--b\r\n")  # ... and nothing more
            start = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            assert time.monotonic() - start < 5.0
        assert answer.startswith(b"HTTP/1.1 408") and b"not received within 0.3 s" in answer
        assert _value(_metrics(base), "sei_http_errors_total", reason="body_timeout") == 1


def test_metrics_count_the_requests_made(model, photo):
    """/metrics parses with prometheus_client and its counters equal the requests made."""
    with _serve_in_thread(_app(Restorer(model, device="cpu", tile=32))) as base:
        _wait_for(lambda: httpx.get(f"{base}/ready", timeout=TIMEOUT).status_code == 200, "readiness")
        ready_polls = _value(_metrics(base), "sei_http_requests_total", method="GET", path="/ready", status="200")
        for _ in range(3):
            assert _restore(base, _png(photo)).status_code == 200
        assert _restore(base, b"not an image at all", "x.txt", content_type="text/plain").status_code == 415
        assert _restore(base, _png(photo)[:100]).status_code == 400
        assert _restore(base, _png(np.zeros((200, 200, 3), np.uint8))).status_code == 413
        assert _restore(base, _png(photo[..., 0])).status_code == 422
        for _ in range(2):
            assert httpx.get(f"{base}/health", timeout=TIMEOUT).status_code == 200
        assert httpx.get(f"{base}/nope", timeout=TIMEOUT).status_code == 404
        samples = _metrics(base)
    def requests(path, status, method="POST"):
        return _value(samples, "sei_http_requests_total", method=method, path=path, status=str(status))

    assert [requests("/restore", s) for s in (200, 415, 400, 413, 422)] == [3, 1, 1, 1, 1]
    assert requests("/health", 200, "GET") == 2 and requests("other", 404, "GET") == 1
    assert requests("/metrics", 200, "GET") == 1  # the scrape before this one (ready_polls came from it)
    assert requests("/ready", 200, "GET") == ready_polls
    assert _value(samples, "sei_http_request_duration_seconds_count", path="/restore") == 7
    assert _value(samples, "sei_http_restoration_seconds_count") == 3
    assert [_value(samples, "sei_http_errors_total", reason=r)
            for r in ("unsupported", "bad_image", "too_large", "bad_request", "busy", "internal")] == [1, 1, 1, 1, 0, 0]
    assert _value(samples, "sei_http_requests_in_flight") == 1  # this scrape
    assert _value(samples, "sei_http_queue_depth") == 0 and _value(samples, "sei_http_workers_busy") == 0
    assert _value(samples, "sei_http_capacity") == 2 + 8 and _value(samples, "sei_http_ready") == 1


def test_burst_every_request_gets_an_answer(server, photo):
    """Twenty-four requests at once against 2 workers + 4 queue places: every one is answered
    (200 or 503 + Retry-After, nothing dropped), and the server counted each of them."""
    def restore_count():
        return sum(v for (name, labels), v in _metrics(server).items()
                   if name == "sei_http_requests_total" and ("path", "/restore") in labels)

    before = restore_count()
    payload = _png(photo)
    with ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(pool.map(lambda _: _restore(server, payload), range(24)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= MAX_CONCURRENCY, statuses
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 503)
    assert len({r.content for r in responses if r.status_code == 200}) == 1
    assert restore_count() - before == 24


def test_corrupt_uploads_get_a_4xx_naming_the_problem(server, photo):
    """Broken files of every accepted format, over HTTP: a 4xx whose message names the upload
    and the problem; never a 5xx or a dropped connection."""
    import tifffile as tf

    photo = photo[:24, :24]  # one tile: a damaged file that still decodes is restored quickly
    png = _png(photo)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    buf = io.BytesIO()
    tf.imwrite(buf, photo)
    tiff = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, photo)
    npy = buf.getvalue()
    bomb = bytearray(png)  # IHDR claims 100000x100000 pixels (CRC fixed, so only the size is wrong)
    bomb[16:24] = (100000).to_bytes(4, "big") * 2
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")
    cases = {  # name -> (data, expected status, words the message must hold)
        "empty.png": (b"", 400, "empty upload"),
        "magic.png": (b"GIF89a" + png[6:], 415, "not a PNG, JPEG, TIFF"),
        "truncated.png": (png[:len(png) // 2], 400, "could not decode PNG"),
        "truncated.jpg": (jpeg[:len(jpeg) // 3], 400, "could not decode JPEG"),
        "truncated.tif": (tiff[:200], 400, "could not decode TIFF"),
        "truncated.npy": (npy[:150], 400, "truncated.npy"),
        "bomb.png": (bytes(bomb), 413, "pixels"),
    }
    client = httpx.Client(timeout=TIMEOUT)  # one connection for all: a dropped one would fail the next request
    for name, (data, status, words) in cases.items():
        r = _restore(server, data, name, client=client)
        assert r.status_code == status and words in r.json()["detail"], (name, r.status_code, r.text)
        if data:
            assert name in r.json()["detail"], (name, r.text)
    # Random damage (seeded): bytes overwritten, and cuts, anywhere in each format.
    rng = np.random.default_rng(0)
    outcomes = {}
    for original in (png, jpeg, tiff, npy):
        for _ in range(6):
            data = bytearray(original)
            if rng.random() < 0.5:
                data = data[:int(rng.integers(1, len(data)))]
            for i in rng.integers(0, len(data), size=4):
                data[i] = int(rng.integers(0, 256))
            r = _restore(server, bytes(data), client=client)
            assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
            if r.status_code != 200:
                assert r.json()["detail"], r.text
            outcomes[r.status_code] = outcomes.get(r.status_code, 0) + 1
    client.close()
    assert sum(outcomes.values()) == 24
    assert httpx.get(f"{server}/health", timeout=TIMEOUT).status_code == 200


BAD_INPUTS = os.path.join(ROOT, "tests", "fixtures", "bad_inputs")


@pytest.mark.skipif(not os.path.isdir(BAD_INPUTS), reason="the bad-input corpus (tests/fixtures/bad_inputs) is absent")
def test_bad_input_corpus_over_http(server):
    """Every file of the committed bad-input corpus, uploaded: answered 200 (a file that is only
    bad for another reader) or a 4xx whose message names the upload; never a 5xx or no answer."""
    names = sorted(n for n in os.listdir(BAD_INPUTS) if not n.endswith((".py", ".md", ".txt", ".json")))
    assert names
    outcomes = {}
    for name in names:
        with open(os.path.join(BAD_INPUTS, name), "rb") as f:
            data = f.read()
        r = _restore(server, data, name, content_type="application/octet-stream")
        assert r.status_code == 200 or 400 <= r.status_code < 500, (name, r.status_code, r.text[:500])
        if r.status_code != 200:
            detail = r.json()["detail"]
            assert isinstance(detail, str) and (name in detail or not data or r.status_code == 413), (name, detail)
        outcomes[r.status_code] = outcomes.get(r.status_code, 0) + 1
    print(f"bad-input corpus over HTTP: {len(names)} files, answers by status {dict(sorted(outcomes.items()))}")
    assert httpx.get(f"{server}/health", timeout=TIMEOUT).status_code == 200


def test_load_test_smoke(server, photo):
    """benchmarks/load_test.py's client loop, briefly, against the test server: every request
    answered, the throughput and latency summary consistent with the answers."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import load_test

    before = load_test.server_restore_answers(server)
    level = load_test.summarise(load_test.run_level(server, _png(photo), clients=4, duration_s=1.0,
                                                    max_requests=12, request_timeout_s=TIMEOUT))
    assert level["no_answer"] == 0 and level["answered"] == level["sent"] >= 4
    assert level["ok_200"] >= 1 and level["other"] == 0 and level["distinct_200_bodies"] == 1
    assert 0 < level["p50_ms"] <= level["p99_ms"]
    assert load_test.server_restore_answers(server) - before == level["sent"]


@pytest.mark.slow  # its own server process, and four restorations
def test_sigterm_drains_queued_requests(model, tmp_path):
    """SIGTERM with requests running and queued: every request already received is answered
    200, the process exits, and no new connection is accepted."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "serving.http", "--model", model, "--port", str(port),
                             "--device", "cpu", "--tile", "32", "--max_concurrency", "1", "--max_queue", "4",
                             "--log_level", "warning"], cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            assert proc.poll() is None, "server exited"
            try:
                return httpx.get(f"{base}/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait_for(ready, "readiness", timeout=TIMEOUT)
        payload = _png(np.asarray(Image.fromarray(skdata.astronaut()).resize((128, 128))))  # 16 tiles each
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_restore, base, payload) for _ in range(4)]
            _wait_for(lambda: _value(_metrics(base), "sei_http_queue_depth") >= 2, "queued requests")
            proc.send_signal(signal.SIGTERM)
            statuses = [f.result().status_code for f in futures]
        assert statuses == [200] * 4
        assert proc.wait(timeout=TIMEOUT) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        output = log.read()
        log.close()
    assert "Traceback" not in output, output[-3000:]
