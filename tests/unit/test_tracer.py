"""The services' tracer makes the SDK tracer's spans: both driven through the same calls (ids
and clock made deterministic) give the same OTLP bytes, the same console JSON, the same
non-recording spans and the same contexts to propagate."""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    TraceIdRatioBased,
)
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

from services.common import otlp, tracer
from services.common.tracer import LeanSpan, LeanTracerProvider


class SeededIds(IdGenerator):
    """Ids from a seeded generator (random-looking or not, as the flag under test wants)."""

    def __init__(self, seed: int, random_ids: bool) -> None:
        self.rng = random.Random(seed)
        self.random_ids = random_ids

    def generate_span_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self.rng.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return self.random_ids


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000_000

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


class Odd:
    """A value the SDK turns into its str()."""

    def __str__(self) -> str:
        return "odd"


VALUES: list[Any] = [
    "", "POST", "ünïcode ✓", "x" * 40, True, False, 0, -1, 2**63 - 1, 1.5, -0.0, math.inf,
    b"\x00\xff", None, ["a", "b"], (1, 2), [True, None], {"nested": {"k": [1, "v"]}}, Odd(),
    object(),
]  # fmt: skip
KEYS: list[Any] = ["http.route", "a", "b", "c", "d", "e", "", 7]
KINDS = list(SpanKind)
STATUSES: list[tuple[Any, ...]] = [
    (Status(StatusCode.ERROR),),
    (Status(StatusCode.ERROR, "boom"),),
    (Status(StatusCode.OK),),
    (Status(StatusCode.UNSET),),
    (StatusCode.ERROR, "refused"),
    (StatusCode.OK,),
    (StatusCode.UNSET,),
    (Status(StatusCode.ERROR), "ignored description"),
]


def _error() -> ValueError:
    try:
        raise ValueError("no stock for sku-1")
    except ValueError as exc:
        return exc


ERROR = _error()


def _attributes(rng: random.Random, most: int = 6) -> dict[Any, Any]:
    return {rng.choice(KEYS): rng.choice(VALUES) for _ in range(rng.randrange(most))}


def _context(rng: random.Random, *, remote: bool, sampled: bool | None = None) -> SpanContext:
    state = rng.choice([None, TraceState(), TraceState([("vendor", "v1")])])
    flags = rng.choice([0, 1, 3]) if sampled is None else (1 if sampled else 0)
    return SpanContext(
        rng.getrandbits(128) or 1,
        rng.getrandbits(64) or 1,
        is_remote=remote,
        trace_flags=TraceFlags(flags),
        trace_state=state,
    )


def _drive(tracer_: trace.Tracer, seed: int, count: int) -> list[tuple[Any, ...]]:
    """The same calls, in the same order, whatever the tracer; what each start returned."""
    rng = random.Random(seed)
    started: list[tuple[Any, ...]] = []
    live: list[trace.Span] = []
    for _ in range(count):
        parent = rng.choice(["root", "remote", "local", "live", "invalid"])
        context = None
        if parent in ("remote", "local"):
            span_context = _context(rng, remote=parent == "remote")
            context = trace.set_span_in_context(NonRecordingSpan(span_context))
        elif parent == "live" and live:
            context = trace.set_span_in_context(rng.choice(live))
        elif parent == "invalid":
            context = trace.set_span_in_context(trace.INVALID_SPAN)
        links = [
            Link(
                rng.choice([_context(rng, remote=True), trace.INVALID_SPAN_CONTEXT]),
                _attributes(rng, 3) or None,
            )
            for _ in range(rng.randrange(4))
        ]
        kwargs: dict[str, Any] = {
            "context": context,
            "kind": rng.choice(KINDS),
            "attributes": _attributes(rng) or rng.choice([None, {}]),
            "links": links,
        }
        if rng.random() < 0.3:
            kwargs["start_time"] = rng.choice([1, 2**62])
        if rng.random() < 0.2:
            with pytest.raises(ValueError), tracer_.start_as_current_span(
                rng.choice(["storm", ""]),
                record_exception=rng.random() < 0.7,
                set_status_on_exception=rng.random() < 0.7,
                **kwargs,
            ) as current:
                started.append(_seen(current))
                raise ValueError("no stock for sku-2")
            continue
        span = tracer_.start_span(rng.choice(["GET /orders/{order_id}", "POST", ""]), **kwargs)
        started.append(_seen(span))
        for _ in range(rng.randrange(6)):
            _change(span, rng)
        if rng.random() < 0.4:
            live.append(span)
            continue  # ended later, after other spans
        span.end(end_time=rng.choice([None, None, 2**63]))
        if rng.random() < 0.2:
            _change(span, rng)  # on an ended span: ignored
            span.end()
    for span in live:
        span.end()
    return started


def _seen(span: trace.Span) -> tuple[Any, ...]:
    context = span.get_span_context()
    return (
        span.is_recording(),
        context.trace_id,
        context.span_id,
        int(context.trace_flags),
        context.trace_state.to_header(),
        context.is_remote,
    )


def _change(span: trace.Span, rng: random.Random) -> None:
    what = rng.randrange(8)
    if what == 0:
        span.set_attribute(rng.choice(KEYS), rng.choice(VALUES))
    elif what == 1:
        span.set_attributes(_attributes(rng))
    elif what == 2:
        span.add_event(
            rng.choice(["retry", ""]),
            _attributes(rng, 4) or None,
            timestamp=rng.choice([None, 5]),
        )
    elif what == 3:
        span.add_link(_context(rng, remote=True), _attributes(rng, 3) or None)
    elif what == 4:
        span.update_name(rng.choice(["renamed", ""]))
    elif what == 5:
        span.set_status(*rng.choice(STATUSES))
    elif what == 6:
        span.record_exception(
            ERROR, _attributes(rng, 2) or None, rng.choice([None, 9]), rng.random() < 0.5
        )
    else:
        span.add_link(trace.INVALID_SPAN_CONTEXT, rng.choice([None, {"k": "v"}]))


Made = tuple[list[tuple[Any, ...]], list[Any]]

# the one frame of an exception event's stack trace that is each tracer's own
_TRACER_FRAME = re.compile(
    r'  File "[^"]*(?:sdk/trace/__init__\.py|services/common/tracer\.py)", line \d+, '
    r"in start_as_current_span\n    yield \w+\n"
)


def _without_tracer_frames(spans: list[Any]) -> list[Any]:
    for span in spans:
        for event in span.events:
            stack = event.attributes.get("exception.stacktrace")
            if isinstance(stack, str) and _TRACER_FRAME.search(stack):
                kept = BoundedAttributes(
                    None, {**event.attributes, "exception.stacktrace": _TRACER_FRAME.sub("", stack)}
                )
                kept.dropped = event.dropped_attributes
                event._attributes = kept
    return spans


def _ids(seed: int, config: dict[str, Any]) -> IdGenerator:
    """Seeded ids: the SDK's own generator on a reseeded `random` (the lean tracer makes its
    ids inline then), or SeededIds."""
    if config.pop("sdk_ids", False):
        random.seed(seed)
        return RandomIdGenerator()
    return SeededIds(seed, random_ids=config.pop("random_ids", True))


def _run(
    make: Callable[..., Any], seed: int, monkeypatch: pytest.MonkeyPatch, **config: Any
) -> Made:
    clock = Clock()
    monkeypatch.setattr(sdk_trace, "time_ns", clock)
    monkeypatch.setattr(tracer, "time_ns", clock)
    exporter = InMemorySpanExporter()
    provider = make(
        resource=Resource.create({"service.name": "order"}),
        id_generator=_ids(seed, config),
        shutdown_on_exit=False,
        **config,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracers = [
        provider.get_tracer("chaosbed.order"),
        provider.get_tracer("chaosbed.http", "1.2", "https://schema/1", {"scope": "attr"}),
    ]
    started: list[tuple[Any, ...]] = []
    rng = random.Random(seed)
    for round_no in range(4):
        started += _drive(rng.choice(tracers), seed * 10 + round_no, 25)
    return started, _without_tracer_frames(list(exporter.get_finished_spans()))


def _json(span: Any) -> str:
    """What the console exporter prints (or how it fails: the SDK's to_json() cannot write
    bytes values either)."""
    try:
        return str(span.to_json())
    except TypeError as exc:
        return f"TypeError: {exc}"


CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "tight limits": {
        "span_limits": SpanLimits(
            max_span_attributes=3,
            max_events=2,
            max_links=1,
            max_event_attributes=1,
            max_link_attributes=1,
            max_attribute_length=4,
            max_span_attribute_length=6,
        )
    },
    "zero limits": {
        "span_limits": SpanLimits(
            max_span_attributes=0, max_events=0, max_links=0, max_event_attributes=0,
            max_link_attributes=0,
        )  # fmt: skip
    },
    "ids not random": {"random_ids": False},
    "the sdk's id generator": {"sdk_ids": True},
    "the sdk's id generator, tight limits": {
        "sdk_ids": True,
        "span_limits": SpanLimits(max_span_attributes=2, max_span_attribute_length=3),
    },
    "always off": {"sampler": ALWAYS_OFF},
    "always on": {"sampler": ALWAYS_ON},
    "ratio": {"sampler": TraceIdRatioBased(0.5)},
    "parent based ratio": {"sampler": ParentBased(TraceIdRatioBased(0.3))},
    "parent based ratio, a tenth": {"sampler": ParentBased(TraceIdRatioBased(0.1))},
    "parent based ratio, other delegates": {
        "sampler": ParentBased(TraceIdRatioBased(0.5), remote_parent_not_sampled=ALWAYS_ON)
    },
    "parent based off": {"sampler": ParentBased(ALWAYS_OFF)},
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("seed", range(6))
def test_lean_spans_are_the_sdks_spans(
    config: str, seed: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sdk_started, sdk_spans = _run(TracerProvider, seed, monkeypatch, **dict(CONFIGS[config]))
    sdk_warnings = [r.getMessage() for r in caplog.records]
    caplog.clear()
    lean_started, lean_spans = _run(LeanTracerProvider, seed, monkeypatch, **dict(CONFIGS[config]))
    lean_warnings = [r.getMessage() for r in caplog.records]
    assert lean_started == sdk_started
    assert all(isinstance(span, LeanSpan) for span in lean_spans)
    assert len(lean_spans) == len(sdk_spans)
    if config != "always off":
        assert sdk_spans, "nothing to compare"
    assert sdk_encode(lean_spans).SerializeToString() == sdk_encode(sdk_spans).SerializeToString()
    assert otlp.encode_spans(lean_spans) == otlp.encode_spans(sdk_spans)
    assert [_json(s) for s in lean_spans] == [_json(s) for s in sdk_spans]
    for lean, sdk in zip(lean_spans, sdk_spans, strict=True):
        assert (lean.dropped_attributes, lean.dropped_events, lean.dropped_links) == (
            sdk.dropped_attributes, sdk.dropped_events, sdk.dropped_links)  # fmt: skip
    assert sorted(set(lean_warnings)) == sorted(set(sdk_warnings))


@pytest.mark.parametrize("limit", [None, 0, 2, 5])
def test_clean_attributes_past_the_limit_drop_the_oldest_as_the_sdk_does(
    limit: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The services' own attributes (str, int, bool) take a fast path into a fresh span."""
    clean = {"a": "x", "b": 1, "c": True, "d": "yyyy", "e": 2**40}
    encoded = []
    for make in (TracerProvider, LeanTracerProvider):
        clock = Clock()
        monkeypatch.setattr(sdk_trace, "time_ns", clock)
        monkeypatch.setattr(tracer, "time_ns", clock)
        exporter = InMemorySpanExporter()
        provider = make(
            span_limits=SpanLimits(max_span_attributes=limit),
            id_generator=SeededIds(3, random_ids=True),
            shutdown_on_exit=False,
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer_ = provider.get_tracer("t")
        tracer_.start_span("at start", attributes=clean).end()
        later = tracer_.start_span("later")
        later.set_attributes(clean)
        later.set_attributes({"f": "z"})
        later.end()
        spans = list(exporter.get_finished_spans())
        encoded.append(sdk_encode(spans).SerializeToString())
        counts = [(dict(span.attributes), span.dropped_attributes) for span in spans]
        if make is TracerProvider:
            expected = counts
    assert counts == expected
    assert encoded[0] == encoded[1]


def test_a_sampled_remote_parent_is_continued_and_its_trace_state_kept() -> None:
    provider = LeanTracerProvider(shutdown_on_exit=False)
    parent = SpanContext(5, 6, True, TraceFlags(1), TraceState([("vendor", "v1")]))
    span = provider.get_tracer("t").start_span(
        "s", context=trace.set_span_in_context(NonRecordingSpan(parent))
    )
    context = span.get_span_context()
    assert span.is_recording() and context.trace_id == 5 and context.span_id not in (0, 6)
    assert context.trace_state.to_header() == "vendor=v1" and isinstance(span, LeanSpan)
    assert span.parent == parent
    unsampled = SpanContext(5, 6, True, TraceFlags(0))
    dropped = provider.get_tracer("t").start_span(
        "s", context=trace.set_span_in_context(NonRecordingSpan(unsampled))
    )
    assert not dropped.is_recording() and not dropped.get_span_context().trace_flags.sampled


class Recording(SimpleSpanProcessor):
    def __init__(self) -> None:
        super().__init__(InMemorySpanExporter())
        self.calls: list[str] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.calls.append(f"start {span.name} {parent_context is not None}")

    def on_end(self, span: Any) -> None:
        self.calls.append(f"end {span.name}")
        super().on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.calls.append("flush")
        return True

    def shutdown(self) -> None:
        self.calls.append("shutdown")


def test_processors_see_every_start_and_end_then_flush_and_shut_down_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = LeanTracerProvider(shutdown_on_exit=False)
    first, second = Recording(), Recording()
    provider.add_span_processor(first)
    provider.add_span_processor(second)
    tracer_ = provider.get_tracer("t")
    assert provider.get_tracer("t") is tracer_  # one tracer per scope, not one per call
    with tracer_.start_as_current_span("outer"):
        tracer_.start_span("inner", context=trace.set_span_in_context(trace.INVALID_SPAN)).end()
    assert first.calls == second.calls == [
        "start outer False", "start inner True", "end inner", "end outer"]  # fmt: skip
    assert provider.force_flush()
    provider.shutdown()
    provider.shutdown()
    assert first.calls[-2:] == ["flush", "shutdown"] and first.calls.count("shutdown") == 1
    assert "shutdown can only be called once" in caplog.text


def test_the_services_tracing_is_on_lean_spans() -> None:
    from services.common import telemetry

    telemetry.configure_tracing("order")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, LeanTracerProvider)
    assert provider.resource.attributes["service.name"]


def test_the_span_context_layout_the_services_read_by_index() -> None:
    """services/common (tracer, telemetry, otlp) read a SpanContext's fields by the indexes
    tracer.py names. A new API that changed the tuple would fail here first."""
    state = TraceState([("vendor", "v1")])
    context = SpanContext(7, 8, True, TraceFlags(1), state)
    assert tuple(context) == (7, 8, True, TraceFlags(1), state, True)
    by_index = {
        tracer.TRACE_ID: context.trace_id, tracer.SPAN_ID: context.span_id,
        tracer.IS_REMOTE: context.is_remote, tracer.FLAGS: context.trace_flags,
        tracer.TRACE_STATE: context.trace_state, tracer.IS_VALID: context.is_valid,
    }  # fmt: skip
    assert all(context[index] == value for index, value in by_index.items())
    assert sorted(by_index) == list(range(6))
    assert trace.INVALID_SPAN_CONTEXT[tracer.IS_VALID] is False
    assert SpanContext(1, 2, False).trace_state is tracer.NO_TRACE_STATE
