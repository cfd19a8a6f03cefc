"""Prometheus metrics of the HTTP service (serving/http.py), served at `GET /metrics`.

Each app has its own `prometheus_client.CollectorRegistry` (several apps can live
in one process, e.g. in tests). The names, all prefixed `sei_http_`:

- `requests_total{method,path,status}`: answered requests (counter). `path` is
  one of the service's routes or `other` (no label per unknown URL).
- `request_duration_seconds{path}`: request latency, from the request line to
  the end of the answer (histogram; queueing included).
- `restoration_seconds`: time a worker spent on one upload (decode, restore,
  encode; histogram).
- `requests_in_flight`: requests being handled now, any path (gauge).
- `queue_depth`: restorations waiting for a worker; `workers_busy`: running;
  `admitted`: /restore requests holding a place (reading, queued, running or
  answering); `capacity`: places (workers + queue). All gauges.
- `errors_total{reason}`: /restore requests not restored (counter), by reason:
  busy (503, full), queue_timeout (503), restore_timeout (504), body_timeout
  (408), too_large (413), unsupported (415), bad_image (400), bad_request (422),
  client_gone (499: the client hung up), internal (500).
- `ready`: 1 once the warm-up inference has run, 0 before and while shutting down.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PATHS = ("/restore", "/health", "/ready", "/metadata", "/metrics", "/docs", "/openapi.json")
ERROR_REASONS = ("busy", "queue_timeout", "restore_timeout", "body_timeout", "too_large", "unsupported",
                 "bad_image", "bad_request", "client_gone", "internal")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The service's metrics in their own registry; `render()` is the /metrics body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pool):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("sei_http_requests", "Answered HTTP requests.", ["method", "path", "status"],
                                registry=r)
        self.latency = Histogram("sei_http_request_duration_seconds", "HTTP request latency (s), queueing included.",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.restoration = Histogram("sei_http_restoration_seconds",
                                     "Worker time per upload: decode, restore, encode (s).",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("sei_http_requests_in_flight", "HTTP requests being handled (any path).", registry=r)
        self.errors = Counter("sei_http_errors", "/restore requests not restored, by reason.", ["reason"],
                              registry=r)
        for reason in ERROR_REASONS:
            self.errors.labels(reason)  # exported as 0 from the start
        Gauge("sei_http_queue_depth", "Restorations waiting for a worker.",
              registry=r).set_function(lambda: pool.queued)
        Gauge("sei_http_workers_busy", "Restorations running.", registry=r).set_function(lambda: pool.running)
        Gauge("sei_http_admitted", "/restore requests holding a place (reading, queued, running, answering).",
              registry=r).set_function(lambda: pool.admitted)
        Gauge("sei_http_capacity", "Places for /restore requests: workers + queue.",
              registry=r).set(pool.capacity)
        self.ready = Gauge("sei_http_ready", "1 once the warm-up inference has run (0 while shutting down).",
                           registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route(path: str) -> str:
    """The `path` label: a known route, or `other`."""
    return path if path in PATHS else "other"


_REASON_BY_STATUS = {400: "bad_image", 408: "body_timeout", 413: "too_large", 415: "unsupported",
                     499: "client_gone", 503: "busy", 504: "restore_timeout"}


def error_reason(status: int, hint: str | None = None) -> str:
    """The `errors_total` reason of a /restore answer with this status (`hint`: set by the
    handler where the status is ambiguous, e.g. 503 for a queue timeout)."""
    if hint:
        return hint
    return _REASON_BY_STATUS.get(status, "internal" if status >= 500 else "bad_request")


class MetricsMiddleware:
    """ASGI middleware counting every answer (status, latency), the requests in flight,
    and the errors of /restore (reason: `scope["state"]["error_reason"]` if a handler set
    it, else from the status).

    A request that ends without an answer (the app raised before answering) counts as 500,
    which is what the server sends then.
    """

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = None

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_flight.dec()
            path, status = route(scope["path"]), status or 500
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
            if path == "/restore" and status != 200:
                hint = scope.get("state", {}).get("error_reason")
                self.metrics.errors.labels(error_reason(status, hint)).inc()
