"""Telemetry in-process: server spans, W3C propagation, exemplars, log trace ids, links."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as context_api
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)
from prometheus_client import CollectorRegistry, Histogram

from services.common import otlp, telemetry

ROOT = Path(__file__).resolve().parents[2]
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
        s
        for s in _exporter.get_finished_spans()
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
        line
        for line in body.splitlines()
        if line.startswith("chaosbed_http_server_request_duration_seconds_bucket{")
        and f'service="{SERVICE}"' in line
        and 'route="/orders/{order_id}"' in line
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
        line
        for line in body.splitlines()
        if line.startswith("chaosbed_http_server_errors_total{")
        and f'service="{SERVICE}"' in line
        and 'route="/boom"' in line
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
    with telemetry.linked_span("reconcile", None, kind=SpanKind.INTERNAL):
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
        line
        for line in body.splitlines()
        if line.startswith("chaosbed_http_client_request_duration_seconds_bucket{")
        and 'peer="channel-test"' in line
    ]
    assert any(f'trace_id="{trace_id}"' in line and 'status="201"' in line for line in lines)
    assert any('status="error"' in line for line in lines)


def test_traceparent_headers() -> None:
    assert telemetry.traceparent_headers(None) == {}
    assert telemetry.traceparent_headers("00-a-b-01") == {"traceparent": "00-a-b-01"}


OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.mark.parametrize(
    ("env", "exporters", "protocol"),
    [
        ({}, (), "http/protobuf"),  # nothing configured: no exporter, no span
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ("otlp",), "http/protobuf"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"},
            ("otlp",),
            "http/protobuf",
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",), "http/protobuf"),  # SDK default endpoint
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",), "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": " Console , otlp,console"}, ("console", "otlp"), "http/protobuf"),
        (
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
            (),
            "http/protobuf",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("otlp",),
            "http/protobuf",
        ),
        # the protocol only matters for otlp: grpc without otlp is no error
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ("console",),
            "http/protobuf",
        ),
    ],
)
def test_traces_config_from_the_standard_variables(
    env: dict[str, str], exporters: tuple[str, ...], protocol: str
) -> None:
    config = telemetry.traces_config(env)
    assert (config.exporters, config.protocol) == (exporters, protocol)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER='zipkin': unknown exporter 'zipkin'",
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp,jaeger"}, "unknown exporter 'jaeger'"),
        ({"OTEL_TRACES_EXPORTER": "none,console"}, "'none' cannot be combined"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/json': supported OTLP protocols",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the opentelemetry-exporter-otlp-proto-grpc",
        ),
        (
            # the traces-specific variable wins, and is the one named
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc needs",
        ),
    ],
)
def test_traces_config_refuses_what_it_cannot_honour(
    env: dict[str, str], problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "_grpc_exporter_installed", lambda: False)
    with pytest.raises(telemetry.TelemetryConfigError) as raised:
        telemetry.traces_config(env)
    assert problem in str(raised.value)


def test_grpc_is_used_when_its_exporter_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_grpc_exporter_installed", lambda: True)
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "GRPC"}
    assert telemetry.traces_config(env) == telemetry.TracesConfig(("otlp",), "grpc")
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert telemetry.traces_config(env).protocol == "http/protobuf"


def test_each_exporter_name_builds_its_exporter() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    assert isinstance(telemetry._span_exporter("console", "http/protobuf"), ConsoleSpanExporter)
    assert isinstance(telemetry._span_exporter("otlp", "http/protobuf"), OTLPSpanExporter)
    # the SDK's exporter with the services' encoder (tests/unit/test_otlp.py)
    assert isinstance(telemetry._span_exporter("otlp", "http/protobuf"), otlp.OTLPSpanExporter)


_CONSOLE_SERVICE = """
import asyncio, httpx
from fastapi import FastAPI
from opentelemetry import trace
from services.common import telemetry
app = FastAPI()
telemetry.setup(app, "console-test")
@app.get("/stock/{sku}")
async def stock(sku: str) -> dict:
    return {"sku": sku}
async def go() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        assert (await client.get("/stock/sku-1")).status_code == 200
asyncio.run(go())
trace.get_tracer_provider().force_flush()
print("tracing", telemetry.tracing())
"""


def _service_process(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in OTEL_VARIABLES}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_console_exporter_prints_the_server_span() -> None:
    done = _service_process(_CONSOLE_SERVICE, {"OTEL_TRACES_EXPORTER": "console"})
    assert done.returncode == 0, done.stderr
    assert '"name": "GET /stock/{sku}"' in done.stdout
    assert '"http.route": "/stock/{sku}"' in done.stdout
    assert "tracing True" in done.stdout


def test_without_exporter_nothing_is_printed_and_tracing_is_off() -> None:
    done = _service_process(_CONSOLE_SERVICE, {"OTEL_TRACES_EXPORTER": "none"})
    assert done.returncode == 0, done.stderr
    assert '"name"' not in done.stdout and "tracing False" in done.stdout


def test_a_service_refuses_to_start_on_a_bad_exporter_naming_the_variable() -> None:
    done = _service_process(
        "from services.order.__main__ import main; main()",
        {"OTEL_TRACES_EXPORTER": "zipkin", "CHAOSBED_PORT": "0"},
    )
    assert done.returncode == 1
    assert "order: OTEL_TRACES_EXPORTER='zipkin': unknown exporter 'zipkin'" in done.stderr
    assert "Traceback" not in done.stderr


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
        line
        for line in body.splitlines()
        if line.startswith("chaosbed_http_server_request_duration_seconds_bucket{")
        and 'route="unmatched"' in line
        and 'status="404"' in line
    ]
    assert lines and not any("trace_id" in line for line in lines)


# --- HTTP semantic conventions -------------------------------------------------------


def test_server_span_has_the_semconv_http_attributes(app: FastAPI) -> None:
    _exporter.clear()

    async def go() -> int:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 50123))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shop.example:18000"
        ) as client:
            return (await client.post("/orders/o-9?source=app")).status_code

    assert asyncio.run(go()) == 200
    (span,) = _server_spans("/orders/{order_id}")
    assert span.name == "POST /orders/{order_id}"
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes or {})
    assert attributes == {
        "http.request.method": "POST",
        "http.route": "/orders/{order_id}",
        "http.response.status_code": 200,
        "url.path": "/orders/o-9",
        "url.query": "source=app",
        "url.scheme": "http",
        "server.address": "shop.example",
        "server.port": 18000,
        "client.address": "10.1.2.3",
        "network.protocol.version": "1.1",
    }


def test_server_error_span_has_error_type(app: FastAPI) -> None:
    _exporter.clear()
    assert _call(app, "GET", "/boom").status_code == 500
    (span,) = _server_spans("/boom")
    attributes = span.attributes or {}
    assert attributes["error.type"] == "RuntimeError"  # the exception, not only the status
    assert attributes["http.response.status_code"] == 500
    assert attributes["server.address"] == "svc" and attributes["server.port"] == 80


def test_unknown_route_span_is_named_by_method_only(app: FastAPI) -> None:
    _exporter.clear()
    assert _call(app, "GET", "/no/such/page").status_code == 404
    (span,) = [s for s in _exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.name == "GET"
    attributes = span.attributes or {}
    assert "http.route" not in attributes and "error.type" not in attributes  # 404: no error
    assert attributes["url.path"] == "/no/such/page"
    assert span.status.status_code is StatusCode.UNSET


def _client_spans() -> list[ReadableSpan]:
    return [s for s in _exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]


def _peer_call(status_line: bytes | None, path: str) -> None:
    """One ServiceClient call to a loopback peer answering `status_line` (None: port closed)."""
    from services.common.http import PeerError, ServiceClient

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 " + (status_line or b"") + b"\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if status_line is None:
            server.close()
            await server.wait_closed()
        client = ServiceClient(f"http://127.0.0.1:{port}", timeout_s=2.0, peer="inventory")
        try:
            await client.request("GET", path)
        except PeerError:
            pass
        finally:
            await client.close()
            server.close()

    asyncio.run(go())


def test_peer_receives_the_client_span_as_parent_and_the_client_span_is_the_callers_child(
    app: FastAPI,
) -> None:
    from opentelemetry import trace

    from services.common.http import ServiceClient

    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = ServiceClient(f"http://127.0.0.1:{port}", timeout_s=2.0, peer="channel")
        tracer = trace.get_tracer("test")
        try:
            with tracer.start_as_current_span("caller") as caller_span:
                await client.request("GET", "/payments/p-1")
                assert trace.get_current_span() is caller_span  # restored after the call
        finally:
            await client.close()
            server.close()

    _exporter.clear()
    asyncio.run(go())
    (span,) = _client_spans()
    (caller,) = [s for s in _exporter.get_finished_spans() if s.name == "caller"]
    assert span.parent is not None and span.parent.span_id == caller.context.span_id
    sent = [line for line in heads[0].split(b"\r\n") if line.lower().startswith(b"traceparent:")]
    assert len(sent) == 1
    _, trace_id, span_id, _ = sent[0].split(b":", 1)[1].strip().decode().split("-")
    assert trace_id == format(caller.context.trace_id, "032x")
    assert span_id == format(span.context.span_id, "016x")  # the CLIENT span, not the caller


def test_client_span_has_the_semconv_http_attributes(app: FastAPI) -> None:
    _exporter.clear()
    _peer_call(b"200 OK", "/stock/sku-1?fresh=1")
    (span,) = _client_spans()
    assert span.name == "GET"
    attributes = dict(span.attributes or {})
    port = attributes.pop("server.port")
    assert isinstance(port, int) and port > 0
    assert attributes == {
        "http.request.method": "GET",
        "url.full": f"http://127.0.0.1:{port}/stock/sku-1?fresh=1",
        "server.address": "127.0.0.1",
        "peer.service": "inventory",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("status", [b"409 Conflict", b"503 Service Unavailable"])
def test_client_span_of_an_error_status_has_error_type(app: FastAPI, status: bytes) -> None:
    _exporter.clear()
    _peer_call(status, "/reservations")
    (span,) = _client_spans()
    code = status.split()[0].decode()
    assert (span.attributes or {})["error.type"] == code
    assert (span.attributes or {})["http.response.status_code"] == int(code)
    assert span.status.status_code is StatusCode.ERROR


def test_client_span_of_a_transport_failure_names_the_exception(app: FastAPI) -> None:
    _exporter.clear()
    _peer_call(None, "/reservations")
    (span,) = _client_spans()
    attributes = span.attributes or {}
    assert attributes["error.type"] == "aiohttp.client_exceptions.ClientConnectorError"
    assert "http.response.status_code" not in attributes
    assert span.status.status_code is StatusCode.ERROR


def test_idle_sweep_makes_no_span_and_a_sweep_that_cancels_makes_one(
    app: FastAPI, tmp_path: Path
) -> None:
    from services.inventory import domain, workers
    from services.inventory.store import InventoryStore

    store = InventoryStore.open(str(tmp_path / "inventory.db"))
    domain.seed_stock(store, {"sku-1": 10})
    _exporter.clear()
    assert workers.sweep_once(store) == 0
    assert [s.name for s in _exporter.get_finished_spans()] == []
    domain.try_reserve(store, "o-1", "sku-1", 2, ttl_s=0.1, now=time.time() - 10)
    assert workers.sweep_once(store) == 1
    (span,) = _exporter.get_finished_spans()
    assert span.name == "inventory.sweep" and span.parent is None
    assert (span.attributes or {})["chaosbed.swept"] == 1
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= span.end_time


@pytest.mark.parametrize(
    "parent",
    [
        SpanContext(0x1234, 0x5678, True, TraceFlags(1)),
        SpanContext(0x1234, 0x5678, True, TraceFlags(0)),
        SpanContext(2**128 - 1, 2**64 - 1, False, TraceFlags(3),
                    TraceState([("vendor", "v1"), ("other", "x")])),  # fmt: skip
        SpanContext(0x1234, 0x5678, False, TraceFlags(1), TraceState()),
        SpanContext(2**128 + 5, 2**64 + 1, False, TraceFlags(1)),  # ids too wide for the fields
        trace.INVALID_SPAN_CONTEXT,
    ],
    ids=["sampled", "unsampled", "tracestate", "empty tracestate", "ids too wide", "invalid"],
)
@pytest.mark.parametrize("with_baggage", [False, True])
def test_inject_writes_what_the_default_propagators_write(
    parent: SpanContext, with_baggage: bool
) -> None:
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    if with_baggage:
        context = baggage.set_baggage("tenant", "shop 1", context)
    token = context_api.attach(context)
    try:
        ours: dict[str, str] = {"x-keep": "1"}
        telemetry.inject(ours)
        theirs: dict[str, str] = {"x-keep": "1"}
        propagate.inject(theirs)
    finally:
        context_api.detach(token)
    assert ours == theirs
    assert ("traceparent" in ours) == (parent != trace.INVALID_SPAN_CONTEXT)
    assert ("baggage" in ours) == with_baggage


def test_inject_uses_any_other_global_propagator(monkeypatch: pytest.MonkeyPatch) -> None:
    class Custom(TextMapPropagator):
        def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
            carrier["x-custom"] = "yes"

        def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
            return context

        @property
        def fields(self) -> set[str]:
            return {"x-custom"}

    default = propagate.get_global_textmap()
    propagate.set_global_textmap(Custom())
    try:
        carrier: dict[str, str] = {}
        telemetry.inject(carrier)
        assert carrier == {"x-custom": "yes"}
    finally:
        propagate.set_global_textmap(default)
    carrier = {}
    token = context_api.attach(
        trace.set_span_in_context(NonRecordingSpan(SpanContext(1, 2, True, TraceFlags(1))))
    )
    try:
        telemetry.inject(carrier)
    finally:
        context_api.detach(token)
    assert carrier == {"traceparent": f"00-{1:032x}-{2:016x}-01"}  # the default again


def _histogram_samples(histogram: Histogram) -> list[tuple[str, dict[str, str], float, Any]]:
    """Every sample of `histogram` with its exemplar (labels and value; not its time)."""
    return [
        (
            sample.name.removeprefix("fast_").removeprefix("stock_"),
            sample.labels,
            "nan" if math.isnan(sample.value) else sample.value,
            None if sample.exemplar is None else (sample.exemplar.labels, sample.exemplar.value),
        )
        for metric in histogram.collect()
        for sample in metric.samples
    ]


def test_the_fast_histogram_observe_counts_what_observe_counts() -> None:
    registry = CollectorRegistry()
    buckets = (0.002, 0.005, 0.01, 0.25, 1.0)
    stock = Histogram("stock_seconds", "h", ["peer"], buckets=buckets, registry=registry)
    fast = Histogram("fast_seconds", "h", ["peer"], buckets=buckets, registry=registry)
    fast_child = telemetry._HistogramChild(fast.labels("inventory"))
    rng = random.Random(7)
    amounts = [0.0, -1.0, 0.002, 0.005, 0.0050001, 1.0, 1.5, math.inf, math.nan]
    amounts += [rng.choice([rng.random() * 0.02, rng.random() * 2]) for _ in range(400)]
    for n, amount in enumerate(amounts):
        exemplar = None if n % 3 == 0 else {"trace_id": f"{n:032x}"}
        stock.labels("inventory").observe(amount, exemplar)
        fast_child.observe(amount, exemplar)
    assert _histogram_samples(fast) == _histogram_samples(stock)
    assert any(sample[3] is not None for sample in _histogram_samples(fast))
