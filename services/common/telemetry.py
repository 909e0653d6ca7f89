"""The only module that knows about exporters: traces, RED metrics, JSON logs.

`setup(app, service_name)` installs a lean pure-ASGI middleware (no
BaseHTTPMiddleware, no receive/send spans) that, per request, opens one SERVER
span from the incoming W3C `traceparent`, and observes a RED histogram with the
trace id as an exemplar.  OTLP/HTTP export is switched on by the standard
variables (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); with
none set, spans are still created (so trace ids reach logs and exemplars) but
nothing is exported.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
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

_configured = False


def configure_tracing(service_name: str) -> None:
    """Install the global tracer provider once per process, exporting only when asked."""
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


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
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLogFormatter(service_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("CHAOSBED_LOG_LEVEL", "INFO").upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class TelemetryMiddleware:
    """Server span + RED metrics per request, as a pure ASGI middleware."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self.tracer = trace.get_tracer(f"chaosbed.{service}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/metrics", "/healthz"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        parent = propagate.extract(headers)
        method = scope["method"]
        status = 500
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            f"{method} {scope['path']}", context=parent, kind=SpanKind.SERVER
        ) as span:

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = _route_template(scope)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                    REQUEST_ERRORS.labels(self.service, method, route).inc()
                ctx = span.get_span_context()
                exemplar = {"trace_id": format(ctx.trace_id, "032x")} if ctx.is_valid else None
                REQUEST_SECONDS.labels(self.service, method, route, str(status)).observe(
                    time.perf_counter() - started, exemplar=exemplar
                )


def metrics_response(registry: CollectorRegistry = REGISTRY) -> Response:
    """OpenMetrics exposition (exemplars are only exposed in this format)."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def setup(app: FastAPI, service_name: str) -> None:
    """Tracing, JSON logs, RED metrics and the /metrics route for one service."""
    configure_tracing(service_name)
    configure_logging(service_name)
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


def linked_span(name: str, traceparent: str | None, *, kind: SpanKind = SpanKind.CONSUMER, **attributes: Any) -> Any:
    """A new root span for background work, linked to the trace that caused it.

    Background workers (notifier, outbox relay, active query, reconciliation) use this so
    their work shows up connected to the order's trace without becoming its child.
    """
    links = []
    if traceparent:
        ctx = trace.get_current_span(propagate.extract({"traceparent": traceparent})).get_span_context()
        if ctx.is_valid:
            links.append(trace.Link(ctx))
    tracer = trace.get_tracer("chaosbed.workers")
    return tracer.start_as_current_span(
        name, context=trace.set_span_in_context(trace.INVALID_SPAN), kind=kind, links=links, attributes=attributes
    )
