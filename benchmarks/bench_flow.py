"""What a paid journey costs: CPU per service, in trivial requests, and through Toxiproxy.

Side by side in one run, interleaved in rounds so machine noise hits every part alike:
- a stack behind Toxiproxy and a `direct=True` one, each driven by the same closed-loop
  paid journeys (benchmarks/journeys.py: place -> pay -> notified -> seen PAID, aiohttp);
- a bare Starlette route on uvicorn (benchmarks/trivial_server.py), served like the services
  and driven by the same client at the same concurrency.

CPU comes from /proc/<pid>/stat (utime + stime) of every process, read before and after each
measured loop: `journey_cpu_ms` per service (Toxiproxy included) and `journey_cpu_ms_total`
are CPU milliseconds per paid journey of the proxied stack; `trivial_request_cpu_ms` the CPU
of the trivial server per request at the journeys' concurrency (`_serial`: one request at a
time, no wake-ups shared between requests); `journey_cost_in_trivial_requests` the quotient
journey / trivial request (how many trivial requests one paid journey costs).
`flow_toxiproxy_rps` / `flow_direct_rps` are paid journeys per wall second (median of the
rounds), `flow_toxiproxy_vs_direct` their ratio; `flow_cpu_direct_over_toxiproxy` is the
same comparison in CPU per journey (direct / proxied), steadier when the machine is busy.
The driver's own CPU per journey is reported too (`driver_cpu_ms_per_journey`): it must stay
small next to the stack's, or the benchmark measures itself.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from pathlib import Path

import aiohttp

from benchmarks.journeys import (
    KEEPALIVE_S,
    SKU,
    CpuTally,
    LoopResult,
    Shoppers,
    closed_loop,
    get_ok,
    quantile_ms,
    stack_pids,
)
from benchmarks.trivial_server import TrivialServer
from chaosbed.proc import free_port
from chaosbed.stack import Stack

CONCURRENCY = 32
ROUNDS = 3
JOURNEYS = 1000  # per stack and round (a few seconds each now: wall-clock rates need that)
WARMUP_JOURNEYS = 40
TRIVIAL_REQUESTS = 6000  # per round, at CONCURRENCY (enough clock ticks of CPU to count)
SERIAL_TRIVIAL_REQUESTS = 3000  # per round, one at a time
STOCK = 100_000_000


def journey_figures(tally: CpuTally, prefix: str) -> dict[str, object]:
    per = tally.per_unit_ms()
    return {prefix: per, f"{prefix}_total": round(sum(per.values()), 3)}


async def _journeys(shoppers: Shoppers, total: int) -> LoopResult:
    return await closed_loop(total, shoppers.concurrency, shoppers.journey)


async def _trivial(session: aiohttp.ClientSession, total: int, concurrency: int) -> LoopResult:
    async def one() -> None:
        await get_ok(session, "/ping")

    return await closed_loop(total, concurrency, one)


async def _run(proxied: Stack, direct: Stack, trivial: TrivialServer) -> dict[str, object]:
    tallies = {"toxiproxy": CpuTally(stack_pids(proxied)), "direct": CpuTally(stack_pids(direct))}
    trivial_tally = CpuTally({"trivial": trivial.pid})
    serial_tally = CpuTally({"trivial": trivial.pid})
    rates: dict[str, list[float]] = {"toxiproxy": [], "direct": []}
    latencies: dict[str, list[float]] = {"toxiproxy": [], "direct": []}
    driver_cpu_s, polls, failed, errors = 0.0, 0, 0, []
    shoppers = {
        label: Shoppers(
            stack.proxy_url("client_order"), stack.proxy_url("client_channel"),
            concurrency=CONCURRENCY,
        )
        for label, stack in (("toxiproxy", proxied), ("direct", direct))
    }
    connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2, keepalive_timeout=KEEPALIVE_S)
    async with (
        shoppers["toxiproxy"], shoppers["direct"],
        aiohttp.ClientSession(base_url=trivial.url, connector=connector) as ping,
    ):
        for group in shoppers.values():  # connections and code paths warm
            await _journeys(group, WARMUP_JOURNEYS)
        await _trivial(ping, TRIVIAL_REQUESTS // 10, CONCURRENCY)
        for _ in range(ROUNDS):
            for label, group in shoppers.items():
                result = await tallies[label].measure(_journeys(group, JOURNEYS))
                rates[label].append(result.rate)
                latencies[label].extend(result.latencies)
                driver_cpu_s += result.driver_cpu_s
                polls += result.polls
                failed += result.failed
                errors.extend(result.errors)
            for tally, concurrency in ((trivial_tally, CONCURRENCY), (serial_tally, 1)):
                requests = TRIVIAL_REQUESTS if concurrency > 1 else SERIAL_TRIVIAL_REQUESTS
                trivial_result = await tally.measure(_trivial(ping, requests, concurrency))
                failed += trivial_result.failed
                errors.extend(trivial_result.errors)
    paid = tallies["toxiproxy"].units + tallies["direct"].units
    figures: dict[str, object] = {"concurrency": CONCURRENCY, "rounds": ROUNDS}
    figures.update(journey_figures(tallies["toxiproxy"], "journey_cpu_ms"))
    figures.update(journey_figures(tallies["direct"], "journey_cpu_ms_direct"))
    total = float(figures["journey_cpu_ms_total"])  # type: ignore[arg-type]
    for suffix, tally in (("", trivial_tally), ("_serial", serial_tally)):
        trivial_ms = tally.per_unit_ms()["trivial"]
        figures[f"trivial_request_cpu_ms{suffix}"] = trivial_ms
        figures[f"journey_cost_in_trivial_requests{suffix}"] = (
            round(total / trivial_ms, 1) if trivial_ms else None
        )
    for label in ("toxiproxy", "direct"):
        figures[f"flow_{label}_rps"] = round(statistics.median(rates[label]), 1)
        figures[f"flow_{label}_p50_ms"] = quantile_ms(latencies[label], 0.50)
        figures[f"flow_{label}_p95_ms"] = quantile_ms(latencies[label], 0.95)
    figures["flow_toxiproxy_vs_direct"] = round(
        statistics.median(rates["toxiproxy"]) / statistics.median(rates["direct"]), 3
    )
    # what the throughput ratio would be on a machine where CPU alone sets the pace
    figures["flow_cpu_direct_over_toxiproxy"] = round(
        float(figures["journey_cpu_ms_direct_total"]) / total, 3  # type: ignore[arg-type]
    )
    figures["polls_per_journey"] = round(polls / paid, 2) if paid else None
    figures["driver_cpu_ms_per_journey"] = round(1000 * driver_cpu_s / paid, 3) if paid else None
    figures["failed"] = failed
    if errors:
        figures["first_errors"] = errors[:3]
    return figures


def main() -> dict[str, object]:
    stock = {SKU: STOCK}
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        work = Path(tmp)
        with (
            Stack.start(work / "proxied", seed_stock=stock) as proxied,
            Stack.start(work / "direct", seed_stock=stock, direct=True) as direct,
            TrivialServer(free_port(), work / "trivial.log") as trivial,
        ):
            return asyncio.run(_run(proxied, direct, trivial))


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}: {value}")
