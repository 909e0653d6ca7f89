"""Telemetry in-process: server spans, W3C propagation, exemplars, log trace ids, links."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from services.common import telemetry

SERVICE = "telemetry-test"
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"

_exporter = InMemorySpanExporter()


def _app() -> FastAPI:
    app = FastAPI()
    telemetry.setup(app, SERVICE)

    @app.post("/orders/{order_id}")
    async def place(order_id: str) -> dict[str, str | None]:
        logging.getLogger("chaosbed.test").info("placing", extra={"fields": {"order": order_id}})
        return {"order_id": order_id, "traceparent": telemetry.current_traceparent()}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("planted failure")

    return app


@pytest.fixture(scope="module")
def app() -> FastAPI:
    application = _app()
    telemetry.add_span_processor(SimpleSpanProcessor(_exporter), SERVICE)
    return application


@pytest.fixture()
def log_lines() -> Iterator[io.StringIO]:
    """JSON log lines as the service writes them (same formatter, captured stream)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(telemetry.JsonLogFormatter(SERVICE))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def _call(
    app: FastAPI, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(go())


def _server_spans(route: str) -> list[ReadableSpan]:
    return [
        s for s in _exporter.get_finished_spans()
        if s.kind is SpanKind.SERVER and s.attributes and s.attributes.get("http.route") == route
    ]


def test_server_span_continues_incoming_trace_and_logs_carry_its_ids(
    app: FastAPI, log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "_log_every_request", True)  # CHAOSBED_ACCESS_LOG=all
    _exporter.clear()
    traceparent = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
    response = _call(app, "POST", "/orders/o-1", {"traceparent": traceparent})
    assert response.status_code == 200

    (span,) = _server_spans("/orders/{order_id}")
    ctx = span.get_span_context()
    assert ctx is not None
    assert format(ctx.trace_id, "032x") == PARENT_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_SPAN
    assert span.name == "POST /orders/{order_id}"
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 200
    # the handler saw the server span as current: its traceparent names the same trace
    assert response.json()["traceparent"].split("-")[1] == PARENT_TRACE

    records = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    by_msg = {r["msg"]: r for r in records}
    assert by_msg["placing"]["trace_id"] == PARENT_TRACE
    assert by_msg["placing"]["order"] == "o-1"
    access = by_msg["request"]
    assert access["trace_id"] == PARENT_TRACE
    assert access["span_id"] == format(ctx.span_id, "016x")
    assert access["route"] == "/orders/{order_id}" and access["status"] == 200


def test_histogram_exposes_trace_id_exemplar_in_openmetrics(app: FastAPI) -> None:
    _exporter.clear()
    _call(app, "POST", "/orders/o-2")
    (span,) = _server_spans("/orders/{order_id}")
    ctx = span.get_span_context()
    assert ctx is not None
    trace_id = format(ctx.trace_id, "032x")

    metrics = _call(app, "GET", "/metrics")
    assert metrics.headers["content-type"].startswith("application/openmetrics-text")
    body = metrics.text
    assert body.rstrip().endswith("# EOF")
    bucket_lines = [
        line for line in body.splitlines()
        if line.startswith("chaosbed_http_server_request_duration_seconds_bucket{")
        and f'service="{SERVICE}"' in line and 'route="/orders/{order_id}"' in line
    ]
    assert any(f'# {{trace_id="{trace_id}"}}' in line for line in bucket_lines), bucket_lines
    assert "_created" not in body


def test_server_error_sets_span_status_and_counts_error(app: FastAPI) -> None:
    _exporter.clear()
    response = _call(app, "GET", "/boom")
    assert response.status_code == 500
    (span,) = _server_spans("/boom")
    assert span.status.status_code is StatusCode.ERROR
    body = _call(app, "GET", "/metrics").text
    (line,) = [
        line for line in body.splitlines()
        if line.startswith("chaosbed_http_server_errors_total{")
        and f'service="{SERVICE}"' in line and 'route="/boom"' in line
    ]
    assert float(line.split()[-1]) >= 1


def test_metrics_and_health_are_not_traced(app: FastAPI) -> None:
    _exporter.clear()
    _call(app, "GET", "/metrics")
    assert _exporter.get_finished_spans() == ()


def test_linked_span_starts_a_new_trace_linked_to_the_cause(app: FastAPI) -> None:
    _exporter.clear()
    traceparent = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
    with telemetry.linked_span("order.notify", traceparent, payment="p-1") as span:
        inner_trace = telemetry.current_trace_id()
    assert inner_trace is not None and inner_trace != PARENT_TRACE
    (finished,) = _exporter.get_finished_spans()
    assert finished.kind is SpanKind.CONSUMER and finished.parent is None
    assert [format(link.context.trace_id, "032x") for link in finished.links] == [PARENT_TRACE]
    assert finished.attributes is not None and finished.attributes["payment"] == "p-1"
    assert span.get_span_context().trace_id == finished.get_span_context().trace_id  # type: ignore[union-attr]


def test_linked_span_without_cause_has_no_link(app: FastAPI) -> None:
    _exporter.clear()
    with telemetry.linked_span("inventory.sweep", None, kind=SpanKind.INTERNAL):
        pass
    (finished,) = _exporter.get_finished_spans()
    assert list(finished.links) == []


def test_exemplar_only_for_sampled_spans() -> None:
    sampled = NonRecordingSpan(
        SpanContext(int(PARENT_TRACE, 16), int(PARENT_SPAN, 16), True, TraceFlags(1))
    )
    unsampled = NonRecordingSpan(
        SpanContext(int(PARENT_TRACE, 16), int(PARENT_SPAN, 16), True, TraceFlags(0))
    )
    assert telemetry.exemplar_for(sampled) == {"trace_id": PARENT_TRACE}
    assert telemetry.exemplar_for(unsampled) is None
    assert telemetry.exemplar_for(trace.INVALID_SPAN) is None


def test_client_latency_histogram_has_exemplar_of_active_trace(app: FastAPI) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller"):
        trace_id = telemetry.current_trace_id()
        telemetry.observe_client("channel-test", "POST", 201, 0.012)
        telemetry.observe_client("channel-test", "POST", None, 2.0)
    body = _call(app, "GET", "/metrics").text
    lines = [
        line for line in body.splitlines()
        if line.startswith("chaosbed_http_client_request_duration_seconds_bucket{")
        and 'peer="channel-test"' in line
    ]
    assert any(f'trace_id="{trace_id}"' in line and 'status="201"' in line for line in lines)
    assert any('status="error"' in line for line in lines)


def test_traceparent_headers() -> None:
    assert telemetry.traceparent_headers(None) == {}
    assert telemetry.traceparent_headers("00-a-b-01") == {"traceparent": "00-a-b-01"}


def test_no_exporter_without_otel_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert telemetry._exporting() is False
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert telemetry._exporting() is True


def _records(log_lines: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in log_lines.getvalue().splitlines()]


def test_access_log_by_default_writes_only_failed_requests(
    app: FastAPI, log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "_log_every_request", False)
    assert _call(app, "POST", "/orders/o-quiet").status_code == 200
    assert _call(app, "GET", "/boom").status_code == 500
    access = [r for r in _records(log_lines) if r["msg"] == "request"]
    assert [(r["route"], r["status"], r["level"]) for r in access] == [("/boom", 500, "error")]


def test_access_log_mode_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, mode in (("", "errors"), ("all", "all"), ("1", "all"), ("0", "errors")):
        monkeypatch.setenv("CHAOSBED_ACCESS_LOG", raw)
        assert telemetry._access_log_mode() == mode
    monkeypatch.setenv("CHAOSBED_ACCESS_LOG", "sometimes")
    with pytest.raises(ValueError, match="CHAOSBED_ACCESS_LOG='sometimes'"):
        telemetry._access_log_mode()


def test_without_tracing_no_span_is_made_and_the_caller_trace_is_passed_on(
    app: FastAPI, log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "_tracing", False)
    _exporter.clear()
    traceparent = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
    response = _call(app, "POST", "/orders/o-3", {"traceparent": traceparent})
    assert response.status_code == 200
    assert _exporter.get_finished_spans() == ()
    # what the route stores and sends on is the caller's context, unchanged
    assert response.json()["traceparent"] == traceparent
    (placing,) = [r for r in _records(log_lines) if r["msg"] == "placing"]
    assert placing["trace_id"] == PARENT_TRACE
    assert telemetry.current_traceparent() is None  # nothing leaks out of the request
    assert telemetry.outgoing_headers({"a": "b"}) == {"a": "b"}
    with telemetry.continued_span("notify", traceparent, kind=SpanKind.PRODUCER):
        assert telemetry.outgoing_headers(None) == {"traceparent": traceparent}
    with telemetry.linked_span("reconcile", traceparent) as span:
        assert span is trace.INVALID_SPAN
    assert _exporter.get_finished_spans() == ()


def test_without_tracing_histograms_carry_no_exemplar(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "_tracing", False)
    traceparent = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
    _call(app, "POST", "/untraced-route-404", {"traceparent": traceparent})
    body = _call(app, "GET", "/metrics").text
    lines = [
        line for line in body.splitlines()
        if line.startswith("chaosbed_http_server_request_duration_seconds_bucket{")
        and 'route="unmatched"' in line and 'status="404"' in line
    ]
    assert lines and not any("trace_id" in line for line in lines)
