"""The only module that knows about exporters: traces, RED metrics, JSON logs.

`setup(app, service_name)` installs a lean pure-ASGI middleware (no
BaseHTTPMiddleware, no receive/send spans) that, per request, observes a RED
histogram and, when tracing, opens one SERVER span from the incoming W3C
`traceparent` whose trace id becomes the histogram's exemplar.

Tracing is on when an exporter is configured by the standard variables or a span
processor is added (tests, benchmarks):
- OTEL_TRACES_EXPORTER: a comma list of `otlp`, `console` (spans as JSON on stdout), or
  `none`.  Unset: `otlp` when OTEL_EXPORTER_OTLP_ENDPOINT or
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, else none (the spec's default would export to
  localhost:4318 from every unconfigured service).
- OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL: `http/protobuf`
  (default) or `grpc` (needs the opentelemetry-exporter-otlp-proto-grpc package).
- the endpoint, headers, timeout, sampler (OTEL_TRACES_SAMPLER) and batch settings are read
  by the SDK itself.  The http/protobuf exporter is the SDK's with a faster encoder of the
  same bytes (services/common/otlp.py); the spans come from services/common/tracer.py (the
  SDK's spans, configured by the same variables, for less CPU).
A value this module cannot honour is a `TelemetryConfigError` naming the variable, at startup.
With tracing off no span objects exist: the incoming `traceparent` is only remembered, so
stored records, log lines and calls to peers still carry the caller's trace id.

Spans follow the HTTP semantic conventions: a SERVER span per request named
`{method} {route}` (`{method}` alone for an unknown route), a CLIENT span per call to a
peer named `{method}`, each with the stable `http.*`, `url.*`, `server.*`, `client.*`
and `error.type` attributes.

The JSON access log writes every 5xx and failed request; CHAOSBED_ACCESS_LOG=all
writes every request (off by default: under load it costs more than the route).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import prometheus_client
from fastapi import FastAPI
from fastapi.responses import Response
from opentelemetry import baggage as baggage_api
from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.samples import Exemplar
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.settings import SettingsError
from services.common.tracer import (
    FLAGS,
    IS_VALID,
    NO_TRACE_STATE,
    SAMPLED_BIT,
    TRACE_ID,
    LeanTracerProvider,
)

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
_tracing = False  # spans are recorded: an exporter or an extra span processor is set up
_log_every_request = False
# with tracing off: the caller's W3C traceparent, passed on unchanged (as the OTel no-op API does)
_incoming_traceparent: ContextVar[str | None] = ContextVar("incoming_traceparent", default=None)
_client_tracer = trace.get_tracer("chaosbed.http")


TRACES_EXPORTERS = ("otlp", "console", "none")
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
GRPC_EXPORTER_PACKAGE = "opentelemetry-exporter-otlp-proto-grpc"


class TelemetryConfigError(SettingsError):
    """An OTEL_* or CHAOSBED_ACCESS_LOG value the service cannot honour; names the variable."""


@dataclass(frozen=True)
class TracesConfig:
    """What OTEL_TRACES_EXPORTER and the OTLP protocol variables ask for."""

    exporters: tuple[str, ...]  # "otlp" and/or "console"; empty: tracing off
    protocol: str = "http/protobuf"  # of the otlp exporter


def _grpc_exporter_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None
    except ModuleNotFoundError:
        return False


def _otlp_protocol(env: Mapping[str, str]) -> str:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        raw = env.get(variable, "").strip()
        if not raw:
            continue
        protocol = raw.lower()
        if protocol not in OTLP_PROTOCOLS:
            raise TelemetryConfigError(
                f"{variable}={raw!r}: supported OTLP protocols are http/protobuf and grpc"
            )
        if protocol == "grpc" and not _grpc_exporter_installed():
            raise TelemetryConfigError(
                f"{variable}=grpc needs the {GRPC_EXPORTER_PACKAGE} package, which is not "
                f"installed: install it, or set {variable}=http/protobuf"
            )
        return protocol
    return "http/protobuf"


def traces_config(env: Mapping[str, str] | None = None) -> TracesConfig:
    """The exporters and OTLP protocol the standard variables ask for (TelemetryConfigError
    on a value this module cannot honour)."""
    env = os.environ if env is None else env
    raw = env.get("OTEL_TRACES_EXPORTER", "")
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    if not names and (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    for name in names:
        if name not in TRACES_EXPORTERS:
            raise TelemetryConfigError(
                f"OTEL_TRACES_EXPORTER={raw!r}: unknown exporter {name!r}; "
                f"supported: {', '.join(TRACES_EXPORTERS)} (a comma-separated list)"
            )
    if "none" in names and len(set(names)) > 1:
        raise TelemetryConfigError(
            f"OTEL_TRACES_EXPORTER={raw!r}: 'none' cannot be combined with other exporters"
        )
    exporters = tuple(dict.fromkeys(name for name in names if name != "none"))
    if "otlp" not in exporters:
        return TracesConfig(exporters)
    return TracesConfig(exporters, _otlp_protocol(env))


def _span_exporter(name: str, protocol: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        exporter: SpanExporter = GrpcSpanExporter()
        return exporter
    from services.common.otlp import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(service_name: str) -> None:
    """Install the global tracer provider once per process, exporting only when asked
    (TelemetryConfigError on a bad OTEL_* value, before anything is installed)."""
    global _configured, _tracing, _client_tracer
    if _configured:
        return
    config = traces_config()
    _configured = True
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    # the SDK's spans, configuration and processors for less CPU (services/common/tracer.py);
    # sampler from OTEL_TRACES_SAMPLER
    provider = LeanTracerProvider(resource=resource)
    for name in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(name, config.protocol)))
        _tracing = True
    trace.set_tracer_provider(provider)
    _client_tracer = trace.get_tracer("chaosbed.http")  # the real one, not the API's proxy


def add_span_processor(processor: SpanProcessor, service_name: str = "chaosbed") -> None:
    """Attach an extra span processor (tests: an in-memory exporter) and switch tracing on."""
    global _tracing
    configure_tracing(service_name)
    provider = trace.get_tracer_provider()
    if not isinstance(provider, LeanTracerProvider | TracerProvider):
        kind = type(provider).__name__
        raise RuntimeError(f"the global tracer provider is {kind}, not the services' or the SDK's")
    provider.add_span_processor(processor)
    _tracing = True


def tracing() -> bool:
    """True when spans are recorded (something consumes them); else no span is created."""
    return _tracing


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
        elif (incoming := _trace_id_in(_incoming_traceparent.get())) is not None:
            entry["trace_id"] = incoming
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service_name: str) -> None:
    """JSON lines on stdout; CHAOSBED_LOG_LEVEL sets the level, CHAOSBED_ACCESS_LOG=all adds
    an access line for every request (by default only for 5xx and failed requests)."""
    global _log_every_request
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
    _log_every_request = _access_log_mode() == "all"
    _access_log.setLevel(logging.INFO)


ACCESS_LOG_MODES = ("errors", "all")


def _access_log_mode() -> str:
    raw = os.environ.get("CHAOSBED_ACCESS_LOG", "").strip().lower()
    mode = {"": "errors", "1": "all", "true": "all", "0": "errors", "false": "errors"}.get(raw, raw)
    if mode not in ACCESS_LOG_MODES:
        expected = ", ".join(ACCESS_LOG_MODES)
        raise TelemetryConfigError(f"CHAOSBED_ACCESS_LOG={raw!r}: expected one of {expected}")
    return mode


def _trace_id_in(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        return format(ctx.trace_id, "032x")
    return _trace_id_in(_incoming_traceparent.get())


def exemplar_for(span: Span | None = None) -> dict[str, str] | None:
    """The trace-id exemplar of `span` (default: the active one), only when it is sampled.

    An unsampled trace never reaches Jaeger, so linking to it from a metric would dangle.
    The last trace's labels are kept (shared: not to be changed): a request's server and
    client observations share them.
    """
    ctx = (trace.get_current_span() if span is None else span).get_span_context()
    if ctx[IS_VALID] and ctx[FLAGS] & SAMPLED_BIT:  # by index: services/common/tracer.py
        trace_id = ctx[TRACE_ID]
        last = _last_exemplar[0]  # read once: a thread's update cannot mix two traces
        if last[0] != trace_id:
            last = _last_exemplar[0] = (trace_id, {"trace_id": format(trace_id, "032x")})
        return last[1]
    return None



_last_exemplar: list[tuple[int, dict[str, str]]] = [(0, {})]  # (trace id, its exemplar labels)


class _HistogramChild:
    """A labelled child of a prometheus_client Histogram, observed as its `observe` does it
    (the sum, then the first bucket whose bound is not below the amount, and that bucket's
    exemplar), with a bisection instead of a scan of the bounds and without the exemplar
    check: the services' exemplars are `exemplar_for`'s trace id (40 runes, within
    OpenMetrics' 128).  tests/unit/test_telemetry.py compares the exposition with `observe`'s."""

    __slots__ = ("buckets", "bounds", "child", "sum")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = child._upper_bounds
        self.buckets: list[Any] = child._buckets
        self.sum: Any = child._sum

    def observe(self, amount: float, exemplar: dict[str, str] | None) -> None:
        if amount != amount:  # NaN: `observe` counts it in no bucket
            self.child.observe(amount, exemplar)
            return
        self.sum.inc(amount)
        bucket = self.buckets[bisect_left(self.bounds, amount)]
        bucket.inc(1)
        if exemplar:
            bucket.set_exemplar(Exemplar(exemplar, amount, time.time()))


# (service, peer, method, status) -> its histogram child: `labels()` looks it up under a lock
# each time; peers, methods and statuses are few, so this stays small
_client_latency: dict[tuple[str, str, str, str], _HistogramChild] = {}


def observe_client(
    peer: str, method: str, status: int | None, seconds: float, span: Span | None = None
) -> None:
    """Client-side latency of one call to `peer`; status None = transport error.  The
    exemplar is `span`'s trace (the call's CLIENT span), else the active span's."""
    key = (_service, peer, method, "error" if status is None else str(status))
    child = _client_latency.get(key)
    if child is None:
        child = _client_latency[key] = _HistogramChild(CLIENT_REQUEST_SECONDS.labels(*key))
    child.observe(seconds, exemplar_for(span) if _tracing else None)


@dataclass(frozen=True)
class Peer:
    """A peer service as its client spans name it: parsed once from its base URL."""

    name: str
    base_url: str
    address: str | None
    port: int | None

    @classmethod
    def of(cls, name: str, base_url: str) -> Peer:
        """A peer whose URL has no host (an unconfigured test service) has no server.*."""
        parts = urlsplit(base_url)
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            port = None
        return cls(name, base_url.rstrip("/"), parts.hostname, port if parts.hostname else None)


def start_client_span(peer: Peer, method: str, path: str) -> Span | None:
    """The CLIENT span of one call to a peer, a child of the active span; None when not
    tracing.  The caller ends it.  It is not made the active span: nothing that runs during
    a call reads the context, and `outgoing_headers` and `observe_client` are given it."""
    if not _tracing:
        return None
    known = method if method in _KNOWN_METHODS else "_OTHER"
    attributes: dict[str, Any] = {
        "http.request.method": known,
        "url.full": peer.base_url + path,
        "peer.service": peer.name,
    }
    if peer.address:
        attributes["server.address"] = peer.address
    if peer.port:
        attributes["server.port"] = peer.port
    if known != method:
        attributes["http.request.method_original"] = method
    return _client_tracer.start_span(
        known if known != "_OTHER" else "HTTP",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def client_span_answered(span: Span | None, status: int) -> None:
    if span is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 400:  # semconv: a 4xx is an error on the client side (not the server's)
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))


def client_span_failed(span: Span | None, exc: BaseException) -> None:
    if span is not None:
        span.set_attribute("error.type", _error_type(exc))
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _error_type(exc: BaseException) -> str:
    """semconv `error.type` of an exception: its fully qualified class name."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _default_textmap(textmap: object) -> W3CBaggagePropagator | None:
    """The baggage half of `textmap` when it is the default OTEL_PROPAGATORS
    (tracecontext,baggage), else None."""
    if not isinstance(textmap, CompositePropagator):
        return None
    parts = getattr(textmap, "_propagators", None)
    if (
        isinstance(parts, list | tuple)
        and len(parts) == 2
        and type(parts[0]) is TraceContextTextMapPropagator
        and type(parts[1]) is W3CBaggagePropagator
    ):
        return parts[1]
    return None


_known_textmap: list[Any] = [None, None]  # [the global textmap seen, its baggage half or None]


def inject(carrier: dict[str, str], span: Span | None = None) -> None:
    """`propagate.inject(carrier)` with `span` as the active span (default: the active one).
    With the default propagators, the traceparent and tracestate are written straight from
    the span (what TraceContextTextMapPropagator writes, without its setter and context
    lookups twice over); any other textmap is used as it is, given a context holding `span`."""
    textmap = propagate.get_global_textmap()
    if _known_textmap[0] is not textmap:
        _known_textmap[:] = [textmap, _default_textmap(textmap)]
    baggage = _known_textmap[1]
    if baggage is None:
        propagate.inject(carrier, None if span is None else trace.set_span_in_context(span))
        return
    span_context = (trace.get_current_span() if span is None else span).get_span_context()
    if span_context != trace.INVALID_SPAN_CONTEXT:
        # unpacked at once, not read through a property each (services/common/tracer.py)
        trace_id, span_id, _, flags, trace_state, _ = span_context
        carrier["traceparent"] = _traceparent(trace_id, span_id, flags)
        if trace_state is not NO_TRACE_STATE and trace_state:
            carrier["tracestate"] = trace_state.to_header()
    if not _BAGGAGE_KEY or context_api.get_value(_BAGGAGE_KEY):
        baggage.inject(carrier)  # the active context's baggage, whatever the span


# the API keeps a context's baggage under this key (the baggage propagator writes nothing
# without it); unknown, the propagator is asked every time
_BAGGAGE_KEY: str = getattr(baggage_api, "_BAGGAGE_KEY", "")
_FLAGS_FIELD = tuple(f"-{flags:02x}" for flags in range(256))


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """`00-{trace_id:032x}-{span_id:016x}-{flags:02x}`, with bytes.hex for the ids (a third of
    the instructions of formatting them), for ids and flags that fit their fields."""
    if trace_id >> 128 or span_id >> 64 or not 0 <= flags < 256 or trace_id < 0 or span_id < 0:
        return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
    return (
        "00-" + trace_id.to_bytes(16, "big").hex() + "-" + span_id.to_bytes(8, "big").hex()
        + _FLAGS_FIELD[flags]
    )  # fmt: skip


def outgoing_headers(headers: Mapping[str, str] | None, span: Span | None = None) -> dict[str, str]:
    """`headers` plus the W3C context for a call to a peer: `span`'s (the call's CLIENT span)
    or the active span's, or the caller's traceparent passed on when not tracing."""
    carrier = dict(headers) if headers else {}
    if _tracing:
        inject(carrier, span)
    elif (traceparent := _incoming_traceparent.get()) is not None:
        carrier["traceparent"] = traceparent
    return carrier


_KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _matched_route(scope: Scope) -> str | None:
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


def _route_template(scope: Scope) -> str:
    """The route label of the RED metrics ("unmatched" for an unknown path)."""
    return _matched_route(scope) or "unmatched"


def _server_attributes(scope: Scope, method: str, status: int) -> dict[str, Any]:
    """The HTTP semantic-convention attributes of a SERVER span (error.type aside)."""
    scheme = str(scope.get("scheme") or "http")
    attributes: dict[str, Any] = {
        "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
        "http.response.status_code": status,
        "url.path": scope["path"],
        "url.scheme": scheme,
    }
    if method not in _KNOWN_METHODS:
        attributes["http.request.method_original"] = method
    if query := scope.get("query_string"):
        attributes["url.query"] = query.decode("latin-1")
    address, port = _server_address(scope, scheme)
    if address:
        attributes["server.address"] = address
    if port:
        attributes["server.port"] = port
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    if version := scope.get("http_version"):
        attributes["network.protocol.version"] = version
    return attributes


def _server_address(scope: Scope, scheme: str) -> tuple[str | None, int | None]:
    """The server as the client addressed it (Host header), else the listening socket."""
    for name, value in scope.get("headers") or ():
        if name == b"host":
            key = (value, scheme)
            known = _HOSTS.get(key)
            if known is None:
                if len(_HOSTS) >= _HOSTS_KEPT:  # Host is the caller's: never an unbounded map
                    _HOSTS.clear()
                known = _HOSTS[key] = _parse_host(value.decode("latin-1"), scheme)
            return known
    server = scope.get("server")
    if server:
        return str(server[0]), int(server[1]) if server[1] is not None else None
    return None, None


# Host header values already parsed (a service sees the same one or two on every request)
_HOSTS: dict[tuple[bytes, str], tuple[str | None, int | None]] = {}
_HOSTS_KEPT = 64


def _parse_host(host: str, scheme: str) -> tuple[str | None, int | None]:
    parts = urlsplit(f"//{host}")
    try:
        port = parts.port
    except ValueError:  # a malformed Host header: no port rather than no span
        port = None
    return parts.hostname or host, port or _DEFAULT_PORTS.get(scheme)


def _incoming(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"traceparent":
            return value.decode("latin-1")
    return None


def _parent_context(scope: Scope) -> Context | None:
    """The remote parent from W3C headers, or None (cheap path: no propagation headers)."""
    carrier: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        if name in _PROPAGATION_HEADERS:
            carrier[name.decode("latin-1")] = value.decode("latin-1")
    return propagate.extract(carrier) if carrier else None


class TelemetryMiddleware:
    """RED metrics (+ a server span when tracing) + error access log, as a pure ASGI middleware.

    Hand-rolled span scope (start_span + attach/detach) and cached histogram children keep
    the per-request cost low; see benchmarks/bench_overhead.py.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self.tracer = trace.get_tracer(f"chaosbed.{service}")
        self._latency: dict[tuple[str, str, int], _HistogramChild] = {}

    def _observe(
        self, method: str, route: str, status: int, elapsed: float, span: Span | None
    ) -> None:
        key = (method, route, status)
        child = self._latency.get(key)
        if child is None:
            child = self._latency[key] = _HistogramChild(
                REQUEST_SECONDS.labels(self.service, method, route, str(status))
            )
        child.observe(elapsed, None if span is None else exemplar_for(span))
        if status >= 500:
            REQUEST_ERRORS.labels(self.service, method, route).inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTRACED_PATHS:
            await self.app(scope, receive, send)
        elif _tracing:
            await self._traced(scope, receive, send)
        else:
            await self._untraced(scope, receive, send)

    async def _untraced(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500
        failed = False
        started = time.perf_counter()
        traceparent = _incoming(scope)
        token = None if traceparent is None else _incoming_traceparent.set(traceparent)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            failed = True
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            self._observe(scope["method"], route, status, elapsed, None)
            if failed or status >= 500 or _log_every_request:
                _log_access(scope, route, status, elapsed, failed)
            if token is not None:
                _incoming_traceparent.reset(token)

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        status = 500
        failed = False
        started = time.perf_counter()
        parent = _parent_context(scope)
        span = self.tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
        token = context_api.attach(trace.set_span_in_context(span, parent))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            failed = True
            error = exc
            span.record_exception(exc)
            raise
        finally:
            elapsed = time.perf_counter() - started
            matched = _matched_route(scope)
            route = matched or "unmatched"
            if span.is_recording():
                known = method if method in _KNOWN_METHODS else "HTTP"
                # semconv: no route, no target in the name (an unknown path is not a route)
                span.update_name(f"{known} {matched}" if matched else known)
                attributes = _server_attributes(scope, method, status)
                if matched:
                    attributes["http.route"] = matched
                if error is not None:
                    attributes["error.type"] = _error_type(error)
                elif status >= 500:
                    attributes["error.type"] = str(status)
                span.set_attributes(attributes)  # the lean span's fast path: no cleaning
                if failed or status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            self._observe(method, route, status, elapsed, span)
            if failed or status >= 500 or _log_every_request:
                _log_access(scope, route, status, elapsed, failed)
            context_api.detach(token)
            span.end()


def _log_access(scope: Scope, route: str, status: int, elapsed: float, failed: bool) -> None:
    _access_log.log(
        logging.ERROR if failed or status >= 500 else logging.INFO,
        "request",
        extra={
            "fields": {
                "method": scope["method"],
                "route": route,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
            }
        },
    )


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
    """The W3C traceparent of the active span (when not tracing: the caller's), to store with
    a record for later links."""
    if not _tracing:
        return _incoming_traceparent.get()
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def traceparent_headers(traceparent: str | None) -> dict[str, str]:
    return {"traceparent": traceparent} if traceparent else {}


def linked_span(
    name: str,
    traceparent: str | None,
    *,
    kind: SpanKind = SpanKind.CONSUMER,
    also_linked: Iterable[str | None] = (),
    **attributes: Any,
) -> AbstractContextManager[Span]:
    """A new root span for background work, linked to the trace that caused it.

    Background workers (notifier, outbox relay, active query, reconciliation) use this so
    their work shows up connected to the order's trace without becoming its child.
    With tracing off it is a no-op yielding the invalid span.
    """
    if not _tracing:
        return nullcontext(trace.INVALID_SPAN)
    links = []
    for cause in (traceparent, *also_linked):  # a batch links every order it carries
        if cause:
            remote = propagate.extract({"traceparent": cause})
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


def span_since(
    name: str, started_ns: int, *, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any
) -> AbstractContextManager[Span]:
    """A new root span for background work that began at `started_ns` (time.time_ns()) and
    turned out to be worth a span: a periodic tick opens one only once it has done work,
    so idle ticks make no trace.  A no-op yielding the invalid span when not tracing."""
    if not _tracing:
        return nullcontext(trace.INVALID_SPAN)
    tracer = trace.get_tracer("chaosbed.workers")
    return tracer.start_as_current_span(
        name,
        context=trace.set_span_in_context(trace.INVALID_SPAN),
        kind=kind,
        start_time=started_ns,
        attributes=attributes,
    )


@contextmanager
def _passed_on(traceparent: str | None) -> Iterator[Span]:
    token = _incoming_traceparent.set(traceparent)
    try:
        yield trace.INVALID_SPAN
    finally:
        _incoming_traceparent.reset(token)


def continued_span(
    name: str, traceparent: str | None, *, kind: SpanKind, **attributes: Any
) -> AbstractContextManager[Span]:
    """A span that continues the trace of a stored `traceparent` (e.g. a payment's
    notification); with tracing off, the traceparent is passed on to peers called inside."""
    if not _tracing:
        return _passed_on(traceparent)
    parent = propagate.extract({"traceparent": traceparent}) if traceparent else Context()
    tracer = trace.get_tracer("chaosbed.workers")
    return tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes)


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
