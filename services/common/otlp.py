"""OTLP/HTTP span export that encodes spans without building protobuf messages.

`encode_spans(spans)` writes the `ExportTraceServiceRequest` bytes that the SDK's
`trace_encoder.encode_spans(spans).SerializePartialToString()` makes (the same fields,
in the same order, the same omissions: proto3 defaults left out, a link's tracestate not
sent, an attribute the SDK cannot encode logged and skipped), straight from the spans:
no message object per span, attribute and value, and each resource, scope and attribute
key encoded once.  tests/unit/test_otlp.py compares the two byte for byte.

`OTLPSpanExporter` is the SDK's OTLP/HTTP exporter (endpoint, headers, timeout,
compression, session and retries from the OTEL_* variables) with this encoder.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http._common import (
    RequestPayloadTooLargeError,
    _is_request_too_large,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkOTLPSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind
from opentelemetry.trace.span import SpanContext

from services.common.tracer import (
    IS_REMOTE,
    NO_TRACE_STATE,
    SPAN_ID,
    TRACE_ID,
    TRACE_STATE,
    UNSET_STATUS,
    LeanSpan,
)

_logger = logging.getLogger(__name__)
_sdk_logger = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64 = (1 << 64) - 1
_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack

# SpanFlags: the "has is_remote" bit always, the "is remote" bit for a remote parent/link
_FLAGS_LOCAL = _pack_fixed32(0x100)
_FLAGS_REMOTE = _pack_fixed32(0x300)
_KIND = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
_BOOL = {True: b"\x10\x01", False: b"\x10\x00"}


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (_ONE_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _string(tag: bytes, value: str | None) -> bytes:
    """A proto3 string field: left out when empty."""
    return _delimited(tag, value.encode()) if value else b""


def _any_value(value: Any) -> bytes:
    """The AnyValue payload of an attribute value (the SDK's `_encode_value`, same order of
    type checks, ValueError where the SDK's message would refuse the value)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _BOOL[value]
    if isinstance(value, str):
        return _delimited(b"\x0a", value.encode())
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + _varint(value & _UINT64)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _delimited(b"\x3a", value)
    if isinstance(value, Sequence):
        items = b"".join([_delimited(b"\x0a", _any_value(v)) for v in value])
        return _delimited(b"\x2a", items)
    if isinstance(value, Mapping):
        pairs = b"".join([_delimited(b"\x0a", _key_value(str(k), v)) for k, v in value.items()])
        return _delimited(b"\x32", pairs)
    raise TypeError(f"Invalid type {type(value)} of value {value}")


# key -> its KeyValue.key field; a service uses a few dozen keys
_KEYS: dict[str, bytes] = {}
_KEYS_KEPT = 1024
# (key, value) -> its length-prefixed KeyValue, by the value's exact type (a float is not
# cached: -0.0 == 0.0, and NaN never hits); most server span attributes repeat
_PAIRS: dict[type, dict[tuple[str, Any], bytes]] = {str: {}, int: {}, bool: {}}
_PAIRS_KEPT = 4096


def _key_value(key: str, value: Any) -> bytes:
    field = _KEYS.get(key)
    if field is None:
        if len(_KEYS) >= _KEYS_KEPT:
            _KEYS.clear()
        field = _KEYS[key] = _string(b"\x0a", key)
    return field + _delimited(b"\x12", _any_value(value))


def _pair(key: str, value: Any) -> bytes:
    """A KeyValue with its length prefix, cached when its value is a str, int or bool."""
    cache = _PAIRS.get(type(value))
    if cache is None:
        return _delimited(b"", _key_value(key, value))
    entry = cache.get((key, value))
    if entry is None:
        if len(cache) >= _PAIRS_KEPT:
            cache.clear()
        entry = cache[(key, value)] = _delimited(b"", _key_value(key, value))
    return entry


# an attribute block already encoded (tag, items) -> its bytes: a span site's attributes
# mostly repeat whole (the same route, peer and status), so such a span's attributes cost one
# lookup.  Only blocks whose values are all exactly str or int (not bool, float or a
# subclass: True == 1 == 1.0) and that encoded without an error are kept.
_BLOCKS: dict[tuple[bytes, tuple[tuple[str, Any], ...]], bytes] = {}
_BLOCKS_KEPT = 1024


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated KeyValue fields under `tag`; a value that cannot be encoded is logged and
    left out, as the SDK's `_encode_attributes` does."""
    if not attributes:
        return b""
    if type(attributes) is not dict:  # the SDK's: a mapping proxy of BoundedAttributes
        copy = getattr(attributes, "copy", None)  # whose copy() is a plain dict
        return _encoded_items(tag, (copy() if copy is not None else attributes).items())[0]
    # an ended LeanSpan's own dict: nothing changes it any more
    items = tuple(attributes.items())
    types = tuple(map(type, attributes.values()))
    if types.count(str) + types.count(int) != len(types):
        return _encoded_items(tag, items)[0]
    key = (tag, items)
    block = _BLOCKS.get(key)
    if block is None:
        block, clean = _encoded_items(tag, items)
        if clean:
            if len(_BLOCKS) >= _BLOCKS_KEPT:
                _BLOCKS.clear()
            _BLOCKS[key] = block
    return block


def _encoded_items(tag: bytes, items: Iterable[tuple[str, Any]]) -> tuple[bytes, bool]:
    """The fields of `items`, and whether every one of them could be encoded."""
    parts = []
    clean = True
    for key, value in items:
        cache = _PAIRS.get(type(value))  # the hit inlined: most attributes repeat
        if cache is not None and (entry := cache.get((key, value))) is not None:
            parts.append(tag + entry)
            continue
        try:
            parts.append(tag + _pair(key, value))
        except Exception as error:  # noqa: BLE001 - the SDK's encoder skips any such value
            _logger.exception("Failed to encode key %s: %s", key, error)
            clean = False
    return b"".join(parts), clean


def _uint(tag: bytes, n: int) -> bytes:
    return tag + _varint(n) if n else b""


# span name -> its Span.name field (server span names are a method and a route template)
_NAMES: dict[str, bytes] = {}
_NAMES_KEPT = 1024
# a status without description, by code: UNSET is an empty but present Status message
_STATUS_CODE_ONLY = {code: _delimited(b"\x7a", _uint(b"\x18", code)) for code in (0, 1, 2)}


def _span(span: ReadableSpan) -> bytes:
    if type(span) is LeanSpan:  # its fields as they are: no property calls, no copies
        return _encode_span(
            span._context, span._parent, span._name, span._kind, span._start_time,
            span._end_time, span._attributes, span._dropped_attributes, span._events,
            span._dropped_events, span._links, span._dropped_links, span._status,
        )  # fmt: skip
    return _encode_span(
        span.get_span_context(), span.parent, span.name, span.kind, span.start_time,
        span.end_time, span.attributes, span.dropped_attributes, span.events,
        span.dropped_events, span.links, span.dropped_links, span.status,
    )  # fmt: skip


def _encode_span(
    context: SpanContext | None,
    parent: SpanContext | None,
    name: str,
    kind: SpanKind,
    start: int | None,
    end: int | None,
    attributes: Mapping[str, Any] | None,
    dropped_attributes: int,
    events: Sequence[Any],
    dropped_events: int,
    links: Sequence[Any],
    dropped_links: int,
    status: Any,
) -> bytes:
    if context is None:  # the SDK's encoder fails the batch on it too
        raise ValueError(f"span {name!r} has no span context")
    # SpanContext tuples read by index (services/common/tracer.py)
    parts = [
        b"\x0a\x10"
        + context[TRACE_ID].to_bytes(16, "big")
        + b"\x12\x08"
        + context[SPAN_ID].to_bytes(8, "big")
    ]
    trace_state = context[TRACE_STATE]
    if trace_state is not NO_TRACE_STATE and trace_state:  # an empty one joins to "": left out
        parts.append(_string(b"\x1a", ",".join([f"{k}={v}" for k, v in trace_state.items()])))
    if parent:
        parts.append(b"\x22\x08" + parent[SPAN_ID].to_bytes(8, "big"))
    name_field = _NAMES.get(name)
    if name_field is None:
        if len(_NAMES) >= _NAMES_KEPT:
            _NAMES.clear()
        name_field = _NAMES[name] = _string(b"\x2a", name)
    parts.append(name_field)
    parts.append(_KIND[kind])
    if start:
        parts.append(b"\x39" + _pack_fixed64(start))
    if end:
        parts.append(b"\x41" + _pack_fixed64(end))
    parts.append(_attributes(b"\x4a", attributes))
    if dropped_attributes:
        parts.append(b"\x50" + _varint(dropped_attributes))
    for event in events:
        parts.append(_delimited(b"\x5a", _event(event)))
    if dropped_events:
        parts.append(b"\x60" + _varint(dropped_events))
    for link in links:
        parts.append(_delimited(b"\x6a", _link(link)))
    if dropped_links:
        parts.append(b"\x70" + _varint(dropped_links))
    if status is UNSET_STATUS:  # the lean spans' own: most spans' status
        parts.append(_STATUS_CODE_ONLY[0])
    elif status is not None:
        code = status.status_code.value
        if status.description:
            status_field = _string(b"\x12", status.description) + _uint(b"\x18", code)
            parts.append(_delimited(b"\x7a", status_field))
        else:
            parts.append(_STATUS_CODE_ONLY[code])
    # flags: field 16, fixed32
    parts.append(
        b"\x85\x01" + (_FLAGS_REMOTE if parent is not None and parent[IS_REMOTE] else _FLAGS_LOCAL)
    )
    return b"".join(parts)


def _event(event: Any) -> bytes:
    time_field = b"\x09" + _pack_fixed64(event.timestamp) if event.timestamp else b""
    return (
        time_field
        + _string(b"\x12", event.name)
        + _attributes(b"\x1a", event.attributes)
        + _uint(b"\x20", event.dropped_attributes)
    )


def _link(link: Any) -> bytes:
    context: SpanContext = link.context
    return (
        b"\x0a\x10"
        + context.trace_id.to_bytes(16, "big")
        + b"\x12\x08"
        + context.span_id.to_bytes(8, "big")
        + _attributes(b"\x22", link.attributes)
        + _uint(b"\x28", link.dropped_attributes)
        + b"\x35"  # flags: field 6, fixed32
        + (_FLAGS_REMOTE if context.is_remote else _FLAGS_LOCAL)
    )


def _resource(resource: Resource) -> bytes:
    return _attributes(b"\x0a", resource.attributes)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    return (
        _string(b"\x0a", scope.name)
        + _string(b"\x12", scope.version)
        + _attributes(b"\x1a", scope.attributes)
    )


class _Encoded:
    """Resources and scopes already encoded, by identity (a process has one resource and a
    few tracers); the object is kept so that its id is not reused while cached."""

    def __init__(self) -> None:
        self.resources: dict[int, tuple[Resource, bytes]] = {}
        self.scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def resource(self, resource: Resource) -> bytes:
        known = self.resources.get(id(resource))
        if known is None:
            if len(self.resources) >= 64:
                self.resources.clear()
            known = self.resources[id(resource)] = (resource, _resource(resource))
        return known[1]

    def scope(self, scope: InstrumentationScope | None) -> bytes:
        known = self.scopes.get(id(scope))
        if known is None:
            if len(self.scopes) >= 256:
                self.scopes.clear()
            known = self.scopes[id(scope)] = (scope, _scope(scope))
        return known[1]


_encoded = _Encoded()


def _grouped(
    spans: Sequence[ReadableSpan],
) -> list[tuple[Resource, list[tuple[InstrumentationScope | None, list[bytes]]]]]:
    """Encoded spans grouped by resource, then scope, in first-seen order, as the SDK groups
    them (equal resources or scopes share a group; compared by identity first, since hashing
    a Resource dumps it to JSON)."""
    resources: list[tuple[Resource, list[tuple[InstrumentationScope | None, list[bytes]]]]] = []
    by_resource: dict[int, list[tuple[InstrumentationScope | None, list[bytes]]]] = {}
    by_scope: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        resource = span.resource
        scopes = by_resource.get(id(resource))
        if scopes is None:
            for known, known_scopes in resources:
                if known == resource:
                    scopes = known_scopes
                    break
            else:
                scopes = []
                resources.append((resource, scopes))
            by_resource[id(resource)] = scopes
        scope = span.instrumentation_scope or None
        key = (id(scopes), id(scope))
        encoded = by_scope.get(key)
        if encoded is None:
            for known_scope, known_spans in scopes:
                if known_scope == scope:
                    encoded = known_spans
                    break
            else:
                encoded = []
                scopes.append((scope, encoded))
            by_scope[key] = encoded
        encoded.append(_span(span))
    return resources


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized `ExportTraceServiceRequest` of `spans`."""
    out = []
    for resource, scopes in _grouped(spans):
        scope_spans = []
        for scope, encoded in scopes:
            body = [_delimited(b"\x0a", _encoded.scope(scope))]
            body.extend([_delimited(b"\x12", span) for span in encoded])
            if scope is not None:
                body.append(_string(b"\x1a", scope.schema_url))
            scope_spans.append(_delimited(b"\x12", b"".join(body)))
        resource_spans = (
            _delimited(b"\x0a", _encoded.resource(resource))
            + b"".join(scope_spans)
            + _string(b"\x1a", resource.schema_url)
        )
        out.append(_delimited(b"\x0a", resource_spans))
    return b"".join(out)


class OTLPSpanExporter(SdkOTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding with `encode_spans` above; `export` is the
    SDK's own (opentelemetry-exporter-otlp-proto-http 1.45) with only the encoder swapped."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _sdk_logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE

        with self._metrics.export_operation(len(spans)) as result:
            try:
                serialized_data = encode_spans(spans)
            except Exception as error:  # noqa: BLE001 - as the SDK: a failed batch, not a crash
                _sdk_logger.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE

            if _is_request_too_large(serialized_data, self._max_request_size):
                _sdk_logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size "
                    "%d bytes.",
                    len(serialized_data),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(serialized_data)} bytes exceeds "
                    f"max_request_size {self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE

            export_result = self._client.export(serialized_data)
            if not export_result.success:
                result.error = export_result.error
                result.error_attrs = (
                    {"http.response.status_code": export_result.status_code}
                    if export_result.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
