"""Telemetry overhead: throughput with no instrumentation vs our telemetry vs the stock
`opentelemetry-instrumentation-fastapi`, measured side by side in one run.

Two request paths, each driven in-process straight through the ASGI interface (no HTTP
client in the measurement, so the telemetry's share is not diluted):
- `minimal`: a place-order-shaped FastAPI route (validated JSON body, an SQLite insert,
  a JSON answer), one request at a time: the worst case for relative overhead;
- `order`: the real order service's `POST /orders` (inventory try + channel create over
  loopback HTTP to a real direct stack, 16 in flight).

Variants (each in its own subprocess, so global tracer providers never mix; each with the
services' GC settings, `services.common.server.tune_gc`, as `serve()` sets them).  All of a
path's variants are started and warmed up, then take turns in bursts of ~0.1 s (BURSTS each,
the order rotating every round), so a shared machine's slow moments hit every variant alike;
a burst ends with a flush of the spans it queued, so the export's CPU is inside it:
- `bare`: no spans, no metrics, no access log (telemetry.setup and client metrics stubbed);
- `ours`: services.common.telemetry as deployed — server + client spans through a
  BatchSpanProcessor and the services' OTLP/HTTP exporter (services.common.otlp) whose
  transport answers 200 without a network (the CPU an export costs, minus the POST), RED
  histograms with exemplars, JSON access log;
- `ours_untraced`: `ours` with no exporter configured, the services' default: RED histograms,
  the incoming traceparent passed on, no span objects (what the spans cost, over it);
- `ours_sampled`: `ours` keeping a tenth of the traces (OTEL_TRACES_SAMPLER=
  parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1): what sampling saves, for a run that
  does not need every journey's trace;
- `ours_default_gc`: `ours` with CPython's default GC settings (what `tune_gc` saves);
- `ours_sdk_tracer`: `ours` with the SDK's TracerProvider instead of the services' lean one
  (services/common/tracer.py: what it saves);
- `stock`: FastAPIInstrumentor (exclude_spans receive/send) + a BatchSpanProcessor with the
  SDK's own OTLP/HTTP exporter on the same transport, no Prometheus metrics; skipped when
  the package is not installed.

Figures per path and variant, over all its bursts: `rps` (wall clock) and `cpu_rps`
(requests per CPU second of the measured process); `_ratio_iqr`, the quartiles of the
burst-by-burst ratio to bare (its spread); `gc_us` (time in cyclic-GC collections
per request, from `gc.callbacks`) and `gc_max_pause_ms` (the longest collection: an event loop
stalled that long delays every request in flight).  The goals (issue 8) are on the
wall-clock ratios ours / bare: `order_ours_ratio` >= 0.90 on the place-order path and
`minimal_ours_ratio` >= 0.70 against an almost empty handler (the fixed per-request cost);
`order_ours_goal_ok` / `minimal_ours_goal_ok` say whether this run met them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header
from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
from pydantic import BaseModel, Field

# the variants take turns in bursts of about 0.1 s, BURSTS each: a shared machine's slow
# moments then fall on every variant alike (whole runs one after the other differed by 2x)
BURSTS = 30
BURST = {"minimal": 500, "order": 80}
WARMUP = {"minimal": 500, "order": 80}
PROTOCOL = "@bench "  # the child's answers, among the app's own log lines on stdout
CONCURRENCY = {"minimal": 1, "order": 16}
VARIANTS = (
    "bare", "ours", "ours_untraced", "ours_sampled", "ours_default_gc", "ours_sdk_tracer", "stock",
)
SAMPLED_RATIO = 0.1  # ours_sampled: the share of traces kept
GOALS = {"order_ours_ratio": 0.90, "minimal_ours_ratio": 0.70}  # ours / bare, wall clock
ROOT = Path(__file__).resolve().parent.parent


# --- child side: build one variant of one app and measure it -------------------------------


class _Answered(BaseHTTPResult):
    def content(self) -> bytes:
        return b""

    def headers(self) -> dict[str, str]:
        return {}


class _DiscardingTransport(BaseHTTPTransport):
    """The OTLP/HTTP exporter's transport, answering 200 without a network: an export pays
    the exporter's whole path (encoding, size check, retry client) minus the POST."""

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        return _Answered(status_code=200, reason="OK")

    def close(self) -> None:
        return None

    def is_connection_error(self, exception: Exception | None) -> bool:
        return False


def _span_processor(variant: str) -> Any:
    """`ours`: the services' OTLP/HTTP exporter; `stock`: the SDK's own."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from services.common import otlp

    exporter_class = otlp.OTLPSpanExporter if variant == "ours" else OTLPSpanExporter
    exporter = exporter_class(
        endpoint="http://127.0.0.1:4318/v1/traces",
        _transport=_DiscardingTransport(),
    )
    return BatchSpanProcessor(exporter)


def _stub_telemetry() -> None:
    """`bare` and `stock`: our middleware, metrics and access log switched off, and FastAPI's
    own telemetry too (bare is no instrumentation at all: its per-request check included)."""
    from services.common import http, telemetry

    def setup(app: FastAPI, service_name: str) -> None:
        telemetry._disable_native_fastapi_telemetry(app)

    telemetry.setup = setup
    http.observe_client = lambda *args, **kwargs: None


class PlaceOrder(BaseModel):
    sku: str = Field(min_length=1, max_length=128)
    qty: int = Field(ge=1, le=1000)
    amount: int = Field(ge=1, le=100_000_000)


def _minimal_app() -> Any:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, key TEXT UNIQUE, sku, qty, amount)")
    app = FastAPI()

    @app.post("/orders", status_code=201)
    async def place(
        body: PlaceOrder, idempotency_key: Annotated[str, Header()]
    ) -> dict[str, Any]:
        order_id = uuid.uuid4().hex
        with db:
            db.execute(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
                (order_id, idempotency_key, body.sku, body.qty, body.amount),
            )
        return {"order_id": order_id, "status": "CREATED", **body.model_dump()}

    return app


def _order_app(inventory_url: str, channel_url: str, db_path: str) -> Any:
    from services.common.settings import Settings
    from services.order.app import create_app

    settings = Settings(
        service="order", db_path=db_path, inventory_url=inventory_url, channel_url=channel_url,
        notify_url="", http_timeout_s=10.0,
    )
    return create_app(settings, run_workers=False)


def _build(variant: str, target: str, args: argparse.Namespace) -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if variant == "ours_sdk_tracer":
        from services.common import telemetry

        telemetry.LeanTracerProvider = TracerProvider  # type: ignore[misc,assignment]  # here only
    traced = variant != "ours_untraced"
    if variant == "ours_sampled":  # read by the tracer provider configure_tracing makes
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = str(SAMPLED_RATIO)
    if variant in ("ours_untraced", "ours_sampled", "ours_default_gc", "ours_sdk_tracer"):
        variant = "ours"
    if variant in ("bare", "stock"):
        _stub_telemetry()
    if variant == "stock":
        provider = TracerProvider()
        provider.add_span_processor(_span_processor(variant))
        trace.set_tracer_provider(provider)
    if variant == "ours" and traced:
        from services.common import telemetry

        telemetry.configure_tracing(target)
        telemetry.add_span_processor(_span_processor(variant))

    if target == "minimal":
        app = _minimal_app()
        if variant == "ours":
            from services.common import telemetry

            telemetry.setup(app, "minimal")
        elif variant == "bare":
            from services.common.telemetry import _disable_native_fastapi_telemetry

            _disable_native_fastapi_telemetry(app)
    else:
        app = _order_app(args.inventory, args.channel, args.db)
    if variant == "stock":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        from services.common.telemetry import _disable_native_fastapi_telemetry

        _disable_native_fastapi_telemetry(app)
        FastAPIInstrumentor.instrument_app(app, exclude_spans=["receive", "send"])
    return app


async def _call(app: Any, body: bytes, key: str) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/orders", "raw_path": b"/orders", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), (b"idempotency-key", key.encode()),
        ],
    }
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


class _GcTally:
    """Time spent in cyclic-GC collections while installed (gc.callbacks)."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self.longest_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            took = time.perf_counter() - self._started
            self.total_s += took
            self.longest_s = max(self.longest_s, took)


async def _drive(app: Any, total: int, concurrency: int) -> dict[str, float]:
    """`total` requests, `concurrency` at a time; the cyclic GC's share: gc_us per request and
    gc_max_pause_ms (the burst's wall and CPU time are taken around it, with the flush)."""
    body = json.dumps({"sku": "bench", "qty": 1, "amount": 100}).encode()
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await _call(app, body, uuid.uuid4().hex)
            if status not in (200, 201):
                raise RuntimeError(f"POST /orders answered {status}")

    tally = _GcTally()
    gc.callbacks.append(tally)
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        gc.callbacks.remove(tally)
    return {
        "gc_us": tally.total_s / total * 1e6,
        "gc_max_pause_ms": tally.longest_s * 1e3,
    }


def _flush() -> None:
    """Export what the burst's spans left queued, inside the burst: the exporter's CPU is
    then counted where it was caused (a batch processor would do it on its thread later)."""
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush()


async def _child_main(args: argparse.Namespace) -> None:
    """Build the app, warm it up, then run a burst of requests for every `run` line on stdin,
    answering each with one JSON line of the burst's figures."""
    from services.common.server import tune_gc

    app = _build(args.variant, args.target, args)
    if args.variant != "ours_default_gc":
        tune_gc()  # the services' process settings, as serve() sets them
    async with app.router.lifespan_context(app):
        await _drive(app, WARMUP[args.target], CONCURRENCY[args.target])
        _flush()
        print(f"{PROTOCOL}ready", flush=True)
        for line in sys.stdin:  # blocking between bursts: nothing else runs meanwhile
            if line.strip() != "run":
                break
            cpu_started = time.process_time()
            started = time.perf_counter()
            burst = await _drive(app, BURST[args.target], CONCURRENCY[args.target])
            _flush()
            burst["wall_s"] = time.perf_counter() - started
            burst["cpu_s"] = time.process_time() - cpu_started
            print(PROTOCOL + json.dumps(burst), flush=True)


def child(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--target", choices=tuple(BURST), required=True)
    parser.add_argument("--inventory", default="")
    parser.add_argument("--channel", default="")
    parser.add_argument("--db", default=":memory:")
    asyncio.run(_child_main(parser.parse_args(argv)))


# --- parent side ---------------------------------------------------------------------------


def _stock_available() -> bool:
    try:
        import opentelemetry.instrumentation.fastapi  # noqa: F401
    except ImportError:
        return False
    return True


class _Child:
    """One variant's process, driven burst by burst over its stdin and stdout."""

    def __init__(
        self,
        variant: str,
        target: str,
        workdir: Path,
        extra: list[str],
        *,
        wrapper: Sequence[str] = (),
        label: str = "",
    ) -> None:
        """`wrapper`: a command the child runs under (benchmarks.bench_instructions: valgrind);
        `label`: added to the child's name and log file (several children of one variant)."""
        self.name = f"{target}/{variant}{label}"
        argv = [
            *wrapper,
            sys.executable, "-m", "benchmarks.bench_overhead", "--child",
            "--variant", variant, "--target", target, *extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["CHAOSBED_LOG_LEVEL"] = "INFO"
        self.log = workdir / f"{target}-{variant}{label}.log"
        with self.log.open("wb") as log:
            self.popen = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, text=True,
            )  # fmt: skip

    def _answer(self) -> str:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:  # the app's own log lines go by
            if line.startswith(PROTOCOL):
                return line[len(PROTOCOL) :].strip()
        raise RuntimeError(f"{self.name} ended:\n{self.log.read_text()[-3000:]}")

    def ready(self) -> None:
        if self._answer() != "ready":
            raise RuntimeError(f"{self.name}: no ready line")

    def burst(self) -> dict[str, float]:
        assert self.popen.stdin is not None
        self.popen.stdin.write("run\n")
        self.popen.stdin.flush()
        return {k: float(v) for k, v in json.loads(self._answer()).items()}

    def stop(self, timeout_s: float = 30) -> None:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _measure(
    target: str, variants: list[str], workdir: Path, extra: dict[str, list[str]]
) -> dict[str, list[dict[str, float]]]:
    """Every variant's bursts, the variants taking turns (the order rotating each round), so
    what the machine's other tenants do hits them all alike."""
    children = [_Child(v, target, workdir, extra.get(v, [])) for v in variants]
    try:
        for child_ in children:
            child_.ready()
        bursts: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for round_no in range(BURSTS):
            turn = round_no % len(children)
            for variant, child_ in list(zip(variants, children, strict=True))[turn:] + list(
                zip(variants, children, strict=True)
            )[:turn]:
                bursts[variant].append(child_.burst())
        return bursts
    finally:
        for child_ in children:
            child_.stop()


def main() -> dict[str, object]:
    from chaosbed.stack import Stack

    variants = [v for v in VARIANTS if v != "stock" or _stock_available()]
    figures: dict[str, object] = {"variants": ",".join(variants), "bursts": BURSTS}
    measured: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="chaosbed-bench-overhead-") as tmp:
        workdir = Path(tmp)
        stock = {"bench": 100_000_000}
        with Stack.start(workdir / "stack", direct=True, seed_stock=stock) as stack:
            peers = ["--inventory", stack.url("inventory"), "--channel", stack.url("channel")]
            for target in BURST:
                extra = {
                    v: [*peers, "--db", str(workdir / f"order-{v}.db")] if target == "order" else []
                    for v in variants
                }
                measured[target] = _measure(target, variants, workdir, extra)
    for target, bursts in measured.items():
        totals = {
            v: {
                "requests": BURST[target] * len(b),
                "wall_s": sum(x["wall_s"] for x in b),
                "cpu_s": sum(x["cpu_s"] for x in b),
                "gc_s": sum(x["gc_us"] * BURST[target] / 1e6 for x in b),
                "gc_max_pause_ms": max(x["gc_max_pause_ms"] for x in b),
            }
            for v, b in bursts.items()
        }
        for v, t in totals.items():
            figures[f"{target}_{v}_rps"] = round(t["requests"] / t["wall_s"], 1)
            figures[f"{target}_{v}_cpu_rps"] = round(t["requests"] / t["cpu_s"], 1)
            figures[f"{target}_{v}_gc_us"] = round(t["gc_s"] / t["requests"] * 1e6, 2)
            figures[f"{target}_{v}_gc_max_pause_ms"] = round(t["gc_max_pause_ms"], 2)
        bare = totals["bare"]
        for v, t in totals.items():
            if v == "bare":
                continue
            figures[f"{target}_{v}_ratio"] = round(bare["wall_s"] / t["wall_s"], 3)
            figures[f"{target}_{v}_cpu_ratio"] = round(bare["cpu_s"] / t["cpu_s"], 3)
            # the spread: the same ratio burst by burst (a burst and bare's of the same round)
            per_round = sorted(
                b["wall_s"] / x["wall_s"] for b, x in zip(bursts["bare"], bursts[v], strict=True)
            )
            quartiles = statistics.quantiles(per_round, n=4)
            figures[f"{target}_{v}_ratio_iqr"] = f"{quartiles[0]:.3f}-{quartiles[2]:.3f}"
    if "stock" not in variants:
        figures["stock"] = "skipped: opentelemetry-instrumentation-fastapi is not installed"
    for name, goal in GOALS.items():
        ratio = figures[name]
        assert isinstance(ratio, float)
        figures[f"{name.removesuffix('_ratio')}_goal_ok"] = ratio >= goal
    return figures


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        for key, value in main().items():
            print(f"{key}: {value}")
