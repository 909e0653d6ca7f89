"""The hand-written OTLP encoder makes the SDK encoder's bytes, and the exporter sends them."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkOTLPSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from services.common import otlp
from services.common.tracer import LeanSpan, LeanTracerProvider

KINDS = list(SpanKind)
STATUSES = [
    None,
    Status(StatusCode.OK),
    Status(StatusCode.ERROR),
    Status(StatusCode.ERROR, "ConnectionRefusedError: [Errno 111] refused"),
    Status(StatusCode.ERROR, "é" * 200),
]
SCALARS: list[Any] = [
    "",
    "POST",
    "/orders/ünïcode-✓",
    "x" * 130,
    "y" * 20000,
    True,
    False,
    0,
    1,
    -1,
    127,
    128,
    300,
    2**31,
    -(2**31),
    2**63 - 1,
    -(2**63),
    0.0,
    -0.0,
    1.5,
    -2.25e-300,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
]
SEQUENCES: list[Any] = [
    [],
    ["a", "", "b" * 200],
    [True, False],
    [0, -1, 2**62],
    [0.5, -0.0, math.nan],
    ("t",),
]


def _value(rng: random.Random) -> Any:
    return rng.choice(SCALARS) if rng.random() < 0.75 else rng.choice(SEQUENCES)


def _attributes(rng: random.Random, most: int = 12) -> dict[str, Any]:
    return {
        f"attr.{rng.randrange(40)}.{'k' * rng.randrange(3)}": _value(rng)
        for _ in range(rng.randrange(most))
    }


def _context(rng: random.Random, remote: bool) -> SpanContext:
    state = rng.choice([None, TraceState(), TraceState([("vendor", "v1"), ("other", "x-y")])])
    return SpanContext(
        rng.getrandbits(128) or 1,
        rng.getrandbits(64) or 1,
        is_remote=remote,
        trace_flags=TraceFlags(rng.choice([0, 1])),
        trace_state=state,
    )


def _varied_spans(
    seed: int, count: int = 60, provider_class: type[Any] = TracerProvider
) -> list[ReadableSpan]:
    """Spans from real SDK tracers (or the services' lean ones): every kind, status,
    attribute type, events, links (remote and local), remote and local parents, tracestate,
    dropped counts, several resources (two of them equal but distinct objects) and scopes."""
    rng = random.Random(seed)
    exporter = InMemorySpanExporter()
    limits = SpanLimits(
        max_span_attributes=8,
        max_events=3,
        max_links=2,
        max_event_attributes=4,
        max_link_attributes=3,
    )
    resources = [
        Resource.create({"service.name": "order"}),
        Resource(
            {"service.name": "channel", "host.cores": 2, "deployment": ["a", "b"]},
            schema_url="https://opentelemetry.io/schemas/1.21.0",
        ),
        Resource(
            {"service.name": "channel", "host.cores": 2, "deployment": ["a", "b"]},
            schema_url="https://opentelemetry.io/schemas/1.21.0",
        ),
        Resource({}),
    ]
    tracers = []
    for resource in resources:
        provider = provider_class(resource=resource, span_limits=limits, sampler=ALWAYS_ON)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracers += [
            provider.get_tracer("chaosbed.order"),
            provider.get_tracer(
                "chaosbed.http",
                "1.2.3",
                "https://schema/1",
                attributes={"scope.attr": "on", "n": 3},
            ),
            provider.get_tracer(""),
        ]
    for _ in range(count):
        tracer = rng.choice(tracers)
        parent = rng.choice(["root", "remote", "local"])
        context = None
        if parent != "root":
            context = trace.set_span_in_context(
                NonRecordingSpan(_context(rng, remote=parent == "remote"))
            )
        links = [
            Link(_context(rng, rng.random() < 0.5), _attributes(rng, 5) or None)
            for _ in range(rng.randrange(4))
        ]
        span = tracer.start_span(
            rng.choice(["GET /orders/{order_id}", "POST", "", "notify ✓"]),
            context=context,
            kind=rng.choice(KINDS),
            attributes=_attributes(rng),
            links=links,
        )
        for _ in range(rng.randrange(5)):
            span.add_event(
                rng.choice(["retry", "", "exception"]),
                _attributes(rng, 6),
                timestamp=rng.choice([None, 1, 2**63]),
            )
        if rng.random() < 0.3:
            span.set_attributes(_attributes(rng))
        status = rng.choice(STATUSES)
        if status is not None:
            span.set_status(status)
        span.end()
    spans = list(exporter.get_finished_spans())
    assert len(spans) == count
    return spans


def _assert_same_bytes(spans: list[ReadableSpan]) -> None:
    expected = sdk_encode(spans)
    ours = otlp.encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(ours) == expected
    assert ours == expected.SerializePartialToString()


@pytest.mark.parametrize("seed", range(25))
def test_the_encoder_makes_the_sdk_encoders_bytes(seed: int) -> None:
    spans = _varied_spans(seed)
    _assert_same_bytes(spans)
    _assert_same_bytes(spans[:1])
    _assert_same_bytes(spans[::-1])


@pytest.mark.parametrize("seed", range(10))
def test_the_services_lean_spans_encode_as_the_sdk_encodes_them(seed: int) -> None:
    """A LeanSpan is read from its fields, not through ReadableSpan's properties: the same
    bytes, alone and mixed in one batch with the SDK's spans."""
    lean = _varied_spans(seed, provider_class=LeanTracerProvider)
    assert lean and all(type(span) is LeanSpan for span in lean)
    _assert_same_bytes(lean)
    mixed = [span for pair in zip(lean, _varied_spans(seed), strict=True) for span in pair]
    _assert_same_bytes(mixed)


def test_an_empty_batch_and_hand_made_spans_match_too() -> None:
    scope = InstrumentationScope("lib", "0.1")
    remote_parent = SpanContext(7, 8, is_remote=True)
    spans = [
        ReadableSpan(name="no scope, no times", context=SpanContext(1, 2, False)),
        ReadableSpan(
            name="remote parent",
            context=SpanContext(2**128 - 1, 2**64 - 1, False, TraceFlags(1)),
            parent=remote_parent,
            kind=SpanKind.CONSUMER,
            start_time=1,
            end_time=2**64 - 1,
            attributes={"k": "v"},
            events=[Event("e", {"nested": {"a": 1, "b": [None, "x"]}}, timestamp=5)],
            links=[Link(remote_parent, {"cause": "order"})],
            status=Status(StatusCode.OK, "fine"),
            instrumentation_scope=scope,
        ),
        ReadableSpan(
            name="local parent",
            context=SpanContext(3, 4, False),
            parent=SpanContext(3, 5, False),
            instrumentation_scope=scope,
            attributes={"empty.mapping": {}, "none": None, "raw": b"\x00\xff"},
        ),
    ]
    _assert_same_bytes([])
    _assert_same_bytes(spans)


def test_a_value_the_sdk_cannot_encode_is_left_out_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans = [
        ReadableSpan(
            name="odd values",
            context=SpanContext(1, 2, False),
            attributes={
                "ok": 1,
                "too.big": 2**64,
                "too.small": -(2**63) - 1,
                "object": object(),
                "in.a.list": [1, 2**70],
                "after": "kept",
            },
        )
    ]
    with caplog.at_level(logging.ERROR):
        _assert_same_bytes(spans)
    decoded = ExportTraceServiceRequest.FromString(otlp.encode_spans(spans))
    keys = [kv.key for kv in decoded.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert keys == ["ok", "after"]
    assert "Failed to encode key too.big" in caplog.text


def _lean_spans(attribute_sets: list[dict[str, Any]]) -> list[ReadableSpan]:
    provider = LeanTracerProvider(shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("blocks")
    for attributes in attribute_sets:
        tracer.start_span("site", attributes=attributes).end()
    return list(exporter.get_finished_spans())


def test_a_repeated_attribute_block_encodes_as_the_sdk_encodes_it_each_time() -> None:
    """Blocks of str and int values are kept by their items: a block equal to a kept one but
    for a value's type (True == 1, 1.0 == 1) is not taken for it."""
    sets: list[dict[str, Any]] = [
        {"http.route": "/orders", "server.port": 1},
        {"http.route": "/orders", "server.port": True},
        {"http.route": "/orders", "server.port": 1.0},
        {"server.port": 1, "http.route": "/orders"},  # the same items in another order
        {"http.route": "/orders", "server.port": 1},
    ]
    spans = _lean_spans(sets * 2)
    for span in spans:  # one by one (each a hit after the first round), then all in one batch
        _assert_same_bytes([span])
    _assert_same_bytes(spans)


def test_a_block_with_a_value_the_sdk_cannot_encode_is_logged_every_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans = _lean_spans([{"ok": 1, "too.big": 2**64}])
    _assert_same_bytes(spans)
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            otlp.encode_spans(spans)
        assert [r.getMessage() for r in caplog.records if r.name == otlp.__name__] == [
            "Failed to encode key too.big: Value out of range: 18446744073709551616"
        ]


class _Transport(BaseHTTPTransport):
    """Records what an exporter posts and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.posted: list[tuple[str, Mapping[str, str], bytes]] = []

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        self.posted.append((url, dict(headers or {}), data or b""))
        return _Result(status_code=self.status, reason="OK")

    def close(self) -> None:
        return None

    def is_connection_error(self, exception: Exception | None) -> bool:
        return False


class _Result(BaseHTTPResult):
    def content(self) -> bytes:
        return b""

    def headers(self) -> Mapping[str, str]:
        return {}


def test_the_exporter_posts_what_the_sdk_exporter_posts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=shop")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none")
    spans = _varied_spans(99, count=20)
    ours, sdks = _Transport(), _Transport()
    assert otlp.OTLPSpanExporter(_transport=ours).export(spans) is SpanExportResult.SUCCESS
    assert SdkOTLPSpanExporter(_transport=sdks).export(spans) is SpanExportResult.SUCCESS
    assert ours.posted == sdks.posted
    url, headers, _ = ours.posted[0]
    assert url == "http://collector:4318/v1/traces" and headers["x-tenant"] == "shop"


def test_the_exporter_fails_a_refused_batch_and_refuses_after_shutdown() -> None:
    spans = _varied_spans(7, count=3)
    refused = otlp.OTLPSpanExporter(endpoint="http://c/v1/traces", _transport=_Transport(400))
    assert refused.export(spans) is SpanExportResult.FAILURE
    tiny = otlp.OTLPSpanExporter(
        endpoint="http://c/v1/traces", max_request_size=10, _transport=_Transport()
    )
    assert tiny.export(spans) is SpanExportResult.FAILURE
    exporter = otlp.OTLPSpanExporter(endpoint="http://c/v1/traces", _transport=_Transport())
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE
