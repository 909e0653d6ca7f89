"""Telemetry overhead: throughput with no instrumentation vs our telemetry vs the stock
`opentelemetry-instrumentation-fastapi`, measured in one run, interleaved in rounds.

Two request paths, each driven in-process straight through the ASGI interface (no HTTP
client in the measurement, so the telemetry's share is not diluted):
- `minimal`: a place-order-shaped FastAPI route (validated JSON body, an SQLite insert,
  a JSON answer), one request at a time: the worst case for relative overhead;
- `order`: the real order service's `POST /orders` (inventory try + channel create over
  loopback HTTP to a real direct stack, 16 in flight).

Variants (each in its own subprocess, so global tracer providers never mix; each with the
services' GC settings, `services.common.server.tune_gc`, as `serve()` sets them):
- `bare`: no spans, no metrics, no access log (telemetry.setup and client metrics stubbed);
- `ours`: services.common.telemetry as deployed — server + client spans through a
  BatchSpanProcessor and the services' OTLP/HTTP exporter (services.common.otlp) whose
  transport answers 200 without a network (the CPU an export costs, minus the POST), RED
  histograms with exemplars, JSON access log;
- `ours_default_gc`: `ours` with CPython's default GC settings (what `tune_gc` saves);
- `stock`: FastAPIInstrumentor (exclude_spans receive/send) + a BatchSpanProcessor with the
  SDK's own OTLP/HTTP exporter on the same transport, no Prometheus metrics; skipped when
  the package is not installed.

Figures per path and variant: `rps` (wall clock) and `cpu_rps` (requests per CPU second of
the measured process: steadier on a shared machine); `gc_us` (time in cyclic-GC collections
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

ROUNDS = 3
REQUESTS = {"minimal": 3000, "order": 600}
WARMUP = {"minimal": 300, "order": 60}
CONCURRENCY = {"minimal": 1, "order": 16}
VARIANTS = ("bare", "ours", "ours_default_gc", "stock")
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

    if variant == "ours_default_gc":
        variant = "ours"
    if variant in ("bare", "stock"):
        _stub_telemetry()
    if variant == "stock":
        provider = TracerProvider()
        provider.add_span_processor(_span_processor(variant))
        trace.set_tracer_provider(provider)
    if variant == "ours":
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
    """rps (wall clock), cpu_rps (per CPU second of this process), gc_us per request and
    gc_max_pause_ms."""
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
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        gc.callbacks.remove(tally)
    return {
        "rps": total / (time.perf_counter() - started),
        "cpu_rps": total / max(time.process_time() - cpu_started, 1e-9),
        "gc_us": tally.total_s / total * 1e6,
        "gc_max_pause_ms": tally.longest_s * 1e3,
    }


async def _child_main(args: argparse.Namespace) -> dict[str, float]:
    from services.common.server import tune_gc

    app = _build(args.variant, args.target, args)
    if args.variant != "ours_default_gc":
        tune_gc()  # the services' process settings, as serve() sets them
    async with app.router.lifespan_context(app):
        await _drive(app, WARMUP[args.target], CONCURRENCY[args.target])
        return await _drive(app, REQUESTS[args.target], CONCURRENCY[args.target])


def child(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--target", choices=tuple(REQUESTS), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--inventory", default="")
    parser.add_argument("--channel", default="")
    parser.add_argument("--db", default=":memory:")
    args = parser.parse_args(argv)
    Path(args.out).write_text(json.dumps(asyncio.run(_child_main(args))))


# --- parent side ---------------------------------------------------------------------------


def _stock_available() -> bool:
    try:
        import opentelemetry.instrumentation.fastapi  # noqa: F401
    except ImportError:
        return False
    return True


def _run_child(variant: str, target: str, workdir: Path, extra: list[str]) -> dict[str, float]:
    out = workdir / f"{target}-{variant}-{uuid.uuid4().hex[:6]}.json"
    argv = [
        sys.executable, "-m", "benchmarks.bench_overhead", "--child",
        "--variant", variant, "--target", target, "--out", str(out), *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["CHAOSBED_LOG_LEVEL"] = "INFO"
    result = subprocess.run(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{target}/{variant} failed:\n{result.stderr[-3000:]}")
    return {k: float(v) for k, v in json.loads(out.read_text()).items()}


def main() -> dict[str, object]:
    from chaosbed.stack import Stack

    variants = [v for v in VARIANTS if v != "stock" or _stock_available()]
    figures: dict[str, object] = {"variants": ",".join(variants), "rounds": ROUNDS}
    samples: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="chaosbed-bench-overhead-") as tmp:
        workdir = Path(tmp)
        stock = {"bench": 100_000_000}
        with Stack.start(workdir / "stack", direct=True, seed_stock=stock) as stack:
            order_extra = ["--inventory", stack.url("inventory"), "--channel", stack.url("channel")]
            for round_no in range(ROUNDS):
                for target in REQUESTS:
                    for variant in variants:
                        extra = (
                            [*order_extra, "--db", str(workdir / f"order-{variant}-{round_no}.db")]
                            if target == "order" else []
                        )
                        for kind, value in _run_child(variant, target, workdir, extra).items():
                            samples.setdefault((target, variant, kind), []).append(value)
    for target in REQUESTS:
        for variant in variants:
            for kind in ("gc_us", "gc_max_pause_ms"):
                value = statistics.median(samples[(target, variant, kind)])
                figures[f"{target}_{variant}_{kind}"] = round(value, 2)
        for kind in ("rps", "cpu_rps"):
            bare = statistics.median(samples[(target, "bare", kind)])
            for variant in variants:
                value = statistics.median(samples[(target, variant, kind)])
                figures[f"{target}_{variant}_{kind}"] = round(value, 1)
                if variant != "bare":
                    suffix = "ratio" if kind == "rps" else "cpu_ratio"
                    figures[f"{target}_{variant}_{suffix}"] = round(value / bare, 3)
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
