"""The services' tracer: the OpenTelemetry API's TracerProvider, Tracer and Span, making the
SDK's spans for less CPU.

Why: on the place-order path (a SERVER span and two CLIENT spans) the SDK's tracer cost about
a third of the order service's CPU per request (docs/perf.md); most of it is machinery the
services never use: a lock per span and per attribute container, a copy of every span at
`end()`, a processor chain, a new Tracer object per `get_tracer` call, self-metrics hooks.

What stays the SDK's: the configuration (resource, sampler from OTEL_TRACES_SAMPLER, span
limits from OTEL_SPAN_*/OTEL_ATTRIBUTE_*, id generator from OTEL_PYTHON_ID_GENERATOR, all read
by an SDK `TracerProvider` made for the purpose), the span processors and exporters (a
`LeanSpan` is an SDK `ReadableSpan`, so `BatchSpanProcessor`, the OTLP exporters, the console
exporter and `InMemorySpanExporter` take it as it is), and the API's context and propagation.
A span is what the SDK would have made: same ids, flags, trace state, sampling decisions,
attribute cleaning, limits (oldest attribute dropped first, strings truncated), events, links,
status rules, exception events.  tests/unit/test_tracer.py drives both tracers through the
same calls and compares their OTLP encodings byte for byte.

What is not the SDK's: a span is changed by one thread at a time (the services' spans live on
their event loop), it is handed to the processors itself at `end()` (no copy; an ended span
ignores changes, as the SDK's does), and the SDK's opt-in self-metrics
(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) and tracer configurators are not supported.
"""

from __future__ import annotations

import atexit
import logging
import random
import traceback
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from time import time_ns
from typing import Any, Final, cast

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes, _clean_attribute_value
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationInfo, InstrumentationScope
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager

_logger = logging.getLogger(__name__)

UNSET_STATUS = Status(StatusCode.UNSET)  # every lean span's status until one is set
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
# W3C Trace Context level 2's "random trace id" flag, where the API knows it
_RANDOM: int = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
_DEFAULT_SAMPLER = ParentBased(ALWAYS_ON).get_description()
_TRACE_ID_LOW_64 = TraceIdRatioBased.TRACE_ID_LIMIT  # the bits a ratio sampler decides on
# A SpanContext is the tuple (trace id, span id, is remote, flags, trace state, is valid). The
# hot paths (here, services.common.telemetry and .otlp) read it by these indexes: a property
# costs ~400 instructions on this interpreter (docs/perf.md); tests/unit/test_tracer.py pins
# the layout.
TRACE_ID: Final = 0
SPAN_ID: Final = 1
IS_REMOTE: Final = 2
FLAGS: Final = 3
TRACE_STATE: Final = 4
IS_VALID: Final = 5
SAMPLED_BIT = int(TraceFlags.SAMPLED)
NO_TRACE_STATE = DEFAULT_TRACE_STATE  # the API's empty trace state, shared by its contexts
_getrandbits = random.getrandbits
_current_span = trace_api.get_current_span
_span_context = cast(Any, partial(tuple.__new__, SpanContext))


class LeanSpan(trace_api.Span, ReadableSpan):
    """A recording span, readable by the SDK's processors and exporters as it is."""

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: types.Attributes,
        links: Sequence[Link] | None,
        start_time: int | None,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> None:
        # ReadableSpan's fields, by its names: its properties and to_json() read them
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = tracer.instrumentation_info
        self._instrumentation_scope = tracer.scope
        self._parent = parent
        self._start_time = start_time if start_time is not None else time_ns()
        self._end_time: int | None = None
        self._attributes: dict[str, types.AnyValue] = {}
        self._events: list[Event] = []
        self._links: list[Link] = []
        self._resource = tracer.provider.resource
        self._status = UNSET_STATUS
        self._limits = limits = tracer.provider.limits
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        self._dropped_attributes = 0
        self._dropped_events = 0
        self._dropped_links = 0
        self._on_end = tracer.provider._on_end
        if attributes:
            self._set_items(attributes)
        if links:
            self._add_links(links, limits)

    # --- what the SDK's ReadableSpan counts in its bounded containers ----------------------

    @property
    def dropped_attributes(self) -> int:
        return self._dropped_attributes

    @property
    def dropped_events(self) -> int:
        return self._dropped_events

    @property
    def dropped_links(self) -> int:
        return self._dropped_links

    # --- attributes: BoundedAttributes' rules on a plain dict ------------------------------

    def _set_item(self, key: str, value: types.AnyValue) -> None:
        limits = self._limits
        if limits.max_span_attributes == 0:
            self._dropped_attributes += 1
            return
        if not key or not isinstance(key, str):
            _logger.warning(
                "invalid key `%s`. must be non-empty string. Dropping key from attributes.", key
            )
            self._dropped_attributes += 1
            return
        if type(value) is str:
            longest = limits.max_span_attribute_length
            if longest is not None and len(value) > longest:
                value = _clean_attribute_value(value, longest)
        elif type(value) is not int and type(value) is not bool:
            value = _clean_attribute_value(value, limits.max_span_attribute_length)
        self._store(key, value)

    def _store(self, key: str, value: types.AnyValue) -> None:
        attributes = self._attributes
        if key in attributes:
            del attributes[key]
        maxlen = self._limits.max_span_attributes
        if maxlen is not None and len(attributes) >= maxlen:
            _logger.warning(
                "Attributes dict is full. Dropping the oldest key-value pair from attributes "
                "to make space for the new key-value pair."
            )
            del attributes[next(iter(attributes))]
            self._dropped_attributes += 1
        attributes[key] = value

    def _set_items(self, attributes: Mapping[str, types.AnyValue]) -> None:
        limits = self._limits
        if limits.max_span_attributes == 0:
            self._dropped_attributes += len(attributes)
            return
        longest = limits.max_span_attribute_length
        for key, value in attributes.items():
            kind = type(value)
            if type(key) is not str or not key:
                break
            if kind is str:
                if longest is not None and len(value) > longest:  # type: ignore[arg-type]
                    break
            elif kind is not int and kind is not bool:
                break
        else:  # nothing for the SDK's cleaning to change (the services' own attributes)
            maxlen = limits.max_span_attributes
            if not self._attributes and (maxlen is None or len(attributes) <= maxlen):
                self._attributes.update(attributes)  # what _store would do, item by item
                return
            for key, value in attributes.items():
                self._store(key, value)
            return
        cleaned = _clean_attribute_value(attributes, longest)
        self._dropped_attributes += len(attributes) - len(cleaned)
        for key, value in cleaned.items():
            self._store(key, value)

    def _ended(self, what: str) -> bool:
        if self._end_time is None:
            return False
        _logger.warning("Tried calling %s on an ended span.", what)
        return True

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end_time is not None:
            _logger.warning("Setting attribute on ended span.")
            return
        self._set_item(key, value)

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._end_time is not None:
            _logger.warning("Setting attribute on ended span.")
            return
        self._set_items(attributes)

    # --- events and links ------------------------------------------------------------------

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        limits = self._limits
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        event = Event(name, bounded, timestamp)  # stamped now, even if the span has ended
        if self._ended("_add_event"):
            return
        self._append(self._events, event, limits.max_events, "events")

    def _append(self, items: list[Any], item: Any, maxlen: int | None, kind: str) -> None:
        """BoundedList.append: when full, the oldest goes and is counted as dropped."""
        if maxlen is not None and len(items) >= maxlen:
            if items:
                del items[0]
            if kind == "events":
                self._dropped_events += 1
            else:
                self._dropped_links += 1
            if maxlen == 0:
                return
        items.append(item)

    def _add_links(self, links: Sequence[Link], limits: SpanLimits) -> None:
        valid = []
        for link in links:
            if link and _is_valid_link(link.context, link.attributes):
                link._attributes = BoundedAttributes(
                    limits.max_link_attributes,
                    link.attributes,
                    max_value_len=limits.max_attribute_length,
                    immutable=True,
                )
                valid.append(link)
        maxlen = limits.max_links
        if maxlen is not None and len(valid) > maxlen:  # BoundedList.from_seq keeps the last
            self._dropped_links = len(valid) - maxlen
            valid = valid[len(valid) - maxlen :] if maxlen else []
        self._links = valid

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not _is_valid_link(context, attributes):
            return
        limits = self._limits
        bounded = BoundedAttributes(
            limits.max_link_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        if self._ended("_add_link"):
            return
        self._append(self._links, Link(context, bounded), limits.max_links, "links")

    # --- the rest of the API -----------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return cast(SpanContext, self._context)

    def update_name(self, name: str) -> None:
        if not self._ended("update_name"):
            self._name = name

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._ended("set_status"):
            return
        if isinstance(status, Status):
            if self._status.status_code is StatusCode.OK or status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                _logger.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            self._status = status
        elif isinstance(status, StatusCode):
            if self._status.status_code is StatusCode.OK or status is StatusCode.UNSET:
                return
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        stacktrace = "".join(traceback.format_exception(exception))
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        exception_type = f"{module}.{qualname}" if module and module != "builtins" else qualname
        event: dict[str, types.AnyValue] = {
            EXCEPTION_TYPE: exception_type,
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: stacktrace,
            EXCEPTION_ESCAPED: str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            _logger.warning("Calling end() on an ended span.")
            return
        self._end_time = end_time if end_time is not None else time_ns()
        self._on_end(self)

    def __exit__(self, exc_type: Any, exc_val: BaseException | None, exc_tb: Any) -> None:
        if exc_val is not None and self.is_recording():
            if self._record_exception:
                self.record_exception(exception=exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(
                    Status(StatusCode.ERROR, description=f"{type(exc_val).__name__}: {exc_val}")
                )
        super().__exit__(exc_type, exc_val, exc_tb)


def _is_valid_link(context: SpanContext, attributes: types.Attributes) -> bool:
    return bool(context and (context.is_valid or (attributes or context.trace_state)))


class LeanTracer(trace_api.Tracer):
    """Makes LeanSpans; one per instrumentation scope, kept by the provider."""

    def __init__(self, provider: LeanTracerProvider, scope: InstrumentationScope) -> None:
        self.provider = provider
        self.scope = scope
        self.instrumentation_info = InstrumentationInfo(scope.name, scope.version, scope.schema_url)

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        provider = self.provider
        parent: SpanContext | None = _current_span(context).get_span_context()
        if parent is not None and not isinstance(parent, SpanContext):
            raise TypeError("parent_span_context must be a SpanContext or None.")
        if parent is None or not parent[IS_VALID]:
            parent = None
            trace_id = provider.new_trace_id()
            random_id = provider.random_ids
            parent_flags = 0
        else:
            trace_id = parent[TRACE_ID]
            parent_flags = parent[FLAGS]
            random_id = bool(parent_flags & _RANDOM) if _RANDOM else False
        trace_state: TraceState | None
        if provider.default_sampler:  # ParentBased(ALWAYS_ON or a ratio), without asking it
            if parent is None:
                bound = provider.root_bound
                sampled = bound is None or (trace_id & _TRACE_ID_LOW_64) < bound
                trace_state = None
            else:
                sampled = bool(parent_flags & SAMPLED_BIT)
                trace_state = parent[TRACE_STATE]
            recording = sampled
            sampler_attributes: types.Attributes = attributes if sampled else None
        else:
            result = provider.sampler.should_sample(
                context, trace_id, name, kind, attributes, links
            )
            sampled = result.decision.is_sampled()
            recording = result.decision.is_recording()
            trace_state = result.trace_state
            sampler_attributes = result.attributes
        flags = _SAMPLED if sampled else _NOT_SAMPLED
        if random_id and _RANDOM:
            flags = TraceFlags(flags | _RANDOM)
        if provider.fast_ids:  # valid ids by construction: SpanContext without its checks
            span_context = _span_context(
                (
                    trace_id,
                    provider.new_span_id(),
                    False,
                    flags,
                    NO_TRACE_STATE if trace_state is None else trace_state,
                    True,
                )
            )
        else:
            span_context = SpanContext(
                trace_id, provider.new_span_id(), is_remote=False, trace_flags=flags,
                trace_state=trace_state,
            )  # fmt: skip
        if not recording:
            return trace_api.NonRecordingSpan(context=span_context)
        span = LeanSpan(
            self,
            name,
            span_context,
            parent,
            kind,
            sampler_attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        for on_start in provider._on_start:
            on_start(span, parent_context=context)
        return span

    @_agnosticcontextmanager  # what the SDK's is: also usable as a decorator of a coroutine
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace_api.Span]:
        span = self.start_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            links=links,
            start_time=start_time,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        )
        with trace_api.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class LeanTracerProvider(trace_api.TracerProvider):
    """The SDK TracerProvider's configuration and processors, with LeanTracers.

    `resource` as for the SDK's (merged with the OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME
    detectors by `Resource.create`); sampler, limits and ids from the standard variables unless
    given.  Shut down at exit, flushing its processors, as the SDK's provider is."""

    def __init__(
        self,
        resource: Resource | None = None,
        *,
        sampler: Sampler | None = None,
        span_limits: SpanLimits | None = None,
        id_generator: IdGenerator | None = None,
        shutdown_on_exit: bool = True,
    ) -> None:
        sdk = TracerProvider(  # reads the OTEL_* variables the SDK reads, exactly as it does
            resource=resource, sampler=sampler, span_limits=span_limits,
            id_generator=id_generator, shutdown_on_exit=False,
        )  # fmt: skip
        self.resource: Resource = sdk.resource
        self.sampler: Sampler = sdk.sampler
        self.limits: SpanLimits = span_limits or SpanLimits()
        self.id_generator: IdGenerator = sdk.id_generator
        # ParentBased(ALWAYS_ON), the default, or ParentBased(TraceIdRatioBased(rate)) (what
        # OTEL_TRACES_SAMPLER=parentbased_traceidratio makes) with the default delegates: the
        # decision is made inline, without the sampler's result objects (`start_span`)
        self.root_bound: int | None = None
        self.default_sampler = isinstance(self.sampler, ParentBased) and (
            self.sampler.get_description() == _DEFAULT_SAMPLER
        )
        root = getattr(self.sampler, "_root", None)
        if isinstance(self.sampler, ParentBased) and type(root) is TraceIdRatioBased:
            ratio = ParentBased(TraceIdRatioBased(root.rate)).get_description()
            if self.sampler.get_description() == ratio:
                self.default_sampler = True
                self.root_bound = root.bound
        self.random_ids = self.id_generator.is_trace_id_random()
        self.fast_ids = fast_ids = type(self.id_generator) is RandomIdGenerator
        self.new_trace_id = _random_trace_id if fast_ids else self.id_generator.generate_trace_id
        self.new_span_id = _random_span_id if fast_ids else self.id_generator.generate_span_id
        self._processors: list[SpanProcessor] = []
        self._on_start: list[Any] = []
        self._on_ending: list[Any] = []
        self._tracers: dict[tuple[str, str | None, str | None], LeanTracer] = {}
        self._shut_down = False
        if shutdown_on_exit:
            atexit.register(self.shutdown)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes | None = None,
    ) -> trace_api.Tracer:
        if not instrumenting_module_name:
            _logger.error("get_tracer called with missing module name.")
            instrumenting_module_name = ""
        key = (instrumenting_module_name, instrumenting_library_version, schema_url)
        if attributes:  # a scope with attributes is its own, as the SDK makes it
            scope = InstrumentationScope(*key, attributes)
            return LeanTracer(self, scope)
        tracer = self._tracers.get(key)
        if tracer is None:
            tracer = self._tracers[key] = LeanTracer(self, InstrumentationScope(*key))
        return tracer

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Processors run in the order added, as in the SDK's synchronous chain."""
        self._processors.append(processor)
        self._on_start.append(processor.on_start)
        ending = getattr(processor, "_on_ending", None)
        if ending is not None:
            self._on_ending.append(ending)

    def _on_end(self, span: LeanSpan) -> None:
        for ending in self._on_ending:
            ending(span)
        for processor in self._processors:
            processor.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(processor.force_flush(timeout_millis) for processor in self._processors)

    def shutdown(self) -> None:
        if self._shut_down:
            _logger.warning("shutdown can only be called once")
            return
        self._shut_down = True
        for processor in self._processors:
            processor.shutdown()


def _random_trace_id() -> int:
    """RandomIdGenerator.generate_trace_id, inline."""
    trace_id = _getrandbits(128)
    while trace_id == trace_api.INVALID_TRACE_ID:
        trace_id = _getrandbits(128)
    return trace_id


def _random_span_id() -> int:
    span_id = _getrandbits(64)
    while span_id == trace_api.INVALID_SPAN_ID:
        span_id = _getrandbits(64)
    return span_id


__all__ = ["LeanSpan", "LeanTracer", "LeanTracerProvider"]
