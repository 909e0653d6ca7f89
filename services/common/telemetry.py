"""The only module that knows about exporters: traces, RED metrics, JSON logs.

`setup(app, service_name)` installs a lean pure-ASGI middleware (no
BaseHTTPMiddleware, no receive/send spans) that, per request, opens one SERVER
span from the incoming W3C `traceparent`, observes a RED histogram with the
trace id as an exemplar, and writes one JSON access-log line inside the span.
OTLP/HTTP export is switched on by the standard variables
(OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, sampler from
OTEL_TRACES_SAMPLER); with none set, spans are still created (so trace ids reach
logs and exemplars) but nothing is exported.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import prometheus_client
from fastapi import FastAPI
from fastapi.responses import Response
from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_SECONDS = Histogram(
    "chaosbed_http_server_request_duration_seconds",
    "Server-side request latency by route (RED), with trace-id exemplars",
    ["service", "method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
REQUEST_ERRORS = Counter(
    "chaosbed_http_server_errors",
    "Server responses with status >= 500",
    ["service", "method", "route"],
)
CLIENT_REQUEST_SECONDS = Histogram(
    "chaosbed_http_client_request_duration_seconds",
    "Client-side latency of calls to a peer service (through Toxiproxy), with exemplars",
    ["service", "peer", "method", "status"],
    buckets=LATENCY_BUCKETS,
)

_PROPAGATION_HEADERS = (b"traceparent", b"tracestate", b"baggage")
_UNTRACED_PATHS = frozenset(("/metrics", "/healthz"))
_access_log = logging.getLogger("chaosbed.access")
_service = "unknown"
_configured = False


def _exporting() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_tracing(service_name: str) -> None:
    """Install the global tracer provider once per process, exporting only when asked."""
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    if _exporting():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def add_span_processor(processor: SpanProcessor, service_name: str = "chaosbed") -> None:
    """Attach an extra span processor (tests: an in-memory exporter) to the global provider."""
    configure_tracing(service_name)
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        kind = type(provider).__name__
        raise RuntimeError(f"the global tracer provider is {kind}, not the SDK's")
    provider.add_span_processor(processor)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line with the active trace and span ids."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ctx = trace.get_current_span().get_span_context()
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if ctx.is_valid:
            entry["trace_id"] = format(ctx.trace_id, "032x")
            entry["span_id"] = format(ctx.span_id, "016x")
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service_name: str) -> None:
    """JSON lines on stdout; CHAOSBED_LOG_LEVEL sets the level, CHAOSBED_ACCESS_LOG=0 mutes
    the per-request access lines."""
    # the logging docs' "Optimization" switches: no caller frame walk, no thread/process names
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLogFormatter(service_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("CHAOSBED_LOG_LEVEL", "INFO").upper())
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    access_on = os.environ.get("CHAOSBED_ACCESS_LOG", "1") not in ("0", "false", "no", "")
    _access_log.setLevel(logging.INFO if access_on else logging.WARNING)


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def exemplar_for(span: Span | None = None) -> dict[str, str] | None:
    """The trace-id exemplar of `span` (default: the active one), only when it is sampled.

    An unsampled trace never reaches Jaeger, so linking to it from a metric would dangle.
    """
    ctx = (span or trace.get_current_span()).get_span_context()
    if ctx.is_valid and ctx.trace_flags.sampled:
        return {"trace_id": format(ctx.trace_id, "032x")}
    return None


def observe_client(peer: str, method: str, status: int | None, seconds: float) -> None:
    """Client-side latency of one call to `peer`; status None = transport error."""
    CLIENT_REQUEST_SECONDS.labels(
        _service, peer, method, "error" if status is None else str(status)
    ).observe(seconds, exemplar=exemplar_for())


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def _parent_context(scope: Scope) -> Context | None:
    """The remote parent from W3C headers, or None (cheap path: no propagation headers)."""
    carrier: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        if name in _PROPAGATION_HEADERS:
            carrier[name.decode("latin-1")] = value.decode("latin-1")
    return propagate.extract(carrier) if carrier else None


class TelemetryMiddleware:
    """Server span + RED metrics + access log per request, as a pure ASGI middleware.

    Hand-rolled span scope (start_span + attach/detach) and cached histogram children keep
    the per-request cost low; see benchmarks/bench_overhead.py.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self.tracer = trace.get_tracer(f"chaosbed.{service}")
        self._latency: dict[tuple[str, str, int], Any] = {}

    def _observe(self, method: str, route: str, status: int, elapsed: float, span: Span) -> None:
        key = (method, route, status)
        child = self._latency.get(key)
        if child is None:
            child = self._latency[key] = REQUEST_SECONDS.labels(
                self.service, method, route, str(status)
            )
        child.observe(elapsed, exemplar=exemplar_for(span))
        if status >= 500:
            REQUEST_ERRORS.labels(self.service, method, route).inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        status = 500
        started = time.perf_counter()
        parent = _parent_context(scope)
        span = self.tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
        token = context_api.attach(trace.set_span_in_context(span, parent))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            span.record_exception(exc)
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            span.update_name(f"{method} {route}")
            if span.is_recording():
                span.set_attributes(
                    {
                        "http.route": route,
                        "http.request.method": method,
                        "http.response.status_code": status,
                        "url.path": scope["path"],
                    }
                )
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            self._observe(method, route, status, elapsed, span)
            if _access_log.isEnabledFor(logging.INFO):
                _access_log.info(
                    "request",
                    extra={
                        "fields": {
                            "method": method,
                            "route": route,
                            "path": scope["path"],
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                        }
                    },
                )
            context_api.detach(token)
            span.end()


def metrics_response(registry: CollectorRegistry = REGISTRY) -> Response:
    """OpenMetrics exposition (exemplars are only exposed in this format)."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _disable_native_fastapi_telemetry(app: FastAPI) -> None:
    """Switch off FastAPI's own OpenTelemetry spans (FastAPI >= 0.16x, on by default once a
    tracer provider exists): they would double every server span and add dependency /
    endpoint / serialization spans per request.  The config dict is read per request."""
    native = getattr(app, "_telemetry", None)
    if isinstance(native, dict):
        native.update(tracing=False, metrics=False, logs=False, operation_spans=False)


def setup(app: FastAPI, service_name: str) -> None:
    """Tracing, JSON logs, RED metrics and the /metrics route for one service."""
    global _service
    _service = service_name
    prometheus_client.disable_created_metrics()  # halves the series; nothing reads *_created
    configure_tracing(service_name)
    configure_logging(service_name)
    _disable_native_fastapi_telemetry(app)
    app.add_middleware(TelemetryMiddleware, service=service_name)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response()


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span, to store with a record for later links."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def traceparent_headers(traceparent: str | None) -> dict[str, str]:
    return {"traceparent": traceparent} if traceparent else {}


def linked_span(
    name: str,
    traceparent: str | None,
    *,
    kind: SpanKind = SpanKind.CONSUMER,
    **attributes: Any,
) -> AbstractContextManager[Span]:
    """A new root span for background work, linked to the trace that caused it.

    Background workers (notifier, outbox relay, active query, reconciliation) use this so
    their work shows up connected to the order's trace without becoming its child.
    """
    links = []
    if traceparent:
        remote = propagate.extract({"traceparent": traceparent})
        ctx = trace.get_current_span(remote).get_span_context()
        if ctx.is_valid:
            links.append(trace.Link(ctx))
    tracer = trace.get_tracer("chaosbed.workers")
    return tracer.start_as_current_span(
        name,
        context=trace.set_span_in_context(trace.INVALID_SPAN),
        kind=kind,
        links=links,
        attributes=attributes,
    )


def log_fields(**fields: Any) -> Mapping[str, Any]:
    """`extra=` for a log call whose fields become top-level keys of the JSON line."""
    return {"fields": fields}


def iter_log_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The JSON lines of a service log (non-JSON lines, e.g. a crash trace, are skipped)."""
    with open(path, errors="replace") as src:
        for line in src:
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
