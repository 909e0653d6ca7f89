"""Does a journey get dearer as history grows?  A fresh stack vs one with 100k finished orders.

Two stacks behind Toxiproxy, started with the services' default settings: one on empty
databases, one on databases that already hold `HISTORY_ORDERS` finished (paid, notified,
confirmed, reconciled) orders in channel, order and inventory alike
(benchmarks/history_seed.py: real journeys of a template stack, cloned in SQL before the
services start).  The same closed-loop paid journeys (benchmarks/journeys.py) are sent to
both in interleaved rounds; while one stack is measured the other is paused (SIGSTOP), so
its background work does not steal the CPU of the one being measured.

`history_100k_over_fresh` = paid journeys per wall second with the history / without it,
the median of the rounds' own ratios (each round measures both stacks back to back, so a
noisy minute on the shared machine moves one round's ratio, not the figure; goal >= 0.9);
`history_100k_over_fresh_range` is the lowest and highest round.  `history_cpu_ms_total` /
`fresh_cpu_ms_total` are the stacks' CPU per paid journey (/proc, every process incl.
Toxiproxy, background work included) and `history_cpu_over_fresh` their ratio: steadier than
wall time on a shared machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks import history_seed
from benchmarks.journeys import SKU, CpuTally, LoopResult, Shoppers, closed_loop, stack_pids
from chaosbed.stack import SERVICES, Stack

HISTORY_ORDERS = 100_000
TEMPLATE_JOURNEYS = 200
CONCURRENCY = 32
ROUNDS = 6  # even: each stack goes first in half of them
JOURNEYS = 1000  # per stack and round (a few seconds each now: wall-clock rates need that)
WARMUP_S = 4.0  # journeys before measuring: startup catch-up and first background passes
STOCK = 100_000_000


@contextlib.contextmanager
def paused(stack: Stack) -> Iterator[None]:
    """SIGSTOP every service of the stack for the duration of the block."""
    for name in SERVICES:
        stack.pause(name)
    try:
        yield
    finally:
        for name in SERVICES:
            stack.resume(name)


def seed_history(run_dir: Path, orders: int = HISTORY_ORDERS) -> dict[str, object]:
    """Leave `orders` finished orders (at least) in run_dir/{channel,order,inventory}.db."""
    started = time.monotonic()
    copies = math.ceil(orders / TEMPLATE_JOURNEYS) - 1
    with Stack.start(
        run_dir, seed_stock={SKU: STOCK}, direct=True,
        service_env={"CHAOSBED_RECONCILE_EVERY_S": "0.3", "CHAOSBED_WORKER_TICK_S": "0.1"},
    ) as template:
        result = asyncio.run(_template_journeys(template))
        if result.done != TEMPLATE_JOURNEYS:
            raise history_seed.HistorySeedError(
                f"template: {result.done} of {TEMPLATE_JOURNEYS} journeys paid: {result.errors}"
            )
        dbs = {name: Path(template.info["services"][name]["db"]) for name in SERVICES}
        history_seed.wait_settled(dbs)
    template_s = time.monotonic() - started
    tables: dict[str, int] = {}
    for name in SERVICES:
        for clone in history_seed.clone_database(dbs[name], copies):
            tables[f"{name}.{clone.table}"] = clone.rows_after
    cursor = history_seed.advance_recon_cursor(dbs["order"], dbs["channel"])
    finished = history_seed.scalar(dbs["order"], "SELECT COUNT(*) FROM orders")
    return {
        "history_orders": finished,
        "history_seed_s": round(time.monotonic() - started, 1),
        "history_template_s": round(template_s, 1),
        "history_recon_cursor": cursor,
        "history_rows": tables,
    }


async def _template_journeys(stack: Stack) -> LoopResult:
    async with Shoppers(
        stack.proxy_url("client_order"), stack.proxy_url("client_channel"), concurrency=16
    ) as shoppers:
        return await closed_loop(TEMPLATE_JOURNEYS, 16, shoppers.journey)


async def _warm(shoppers: Shoppers) -> None:
    deadline = time.monotonic() + WARMUP_S
    while time.monotonic() < deadline:
        await closed_loop(CONCURRENCY, CONCURRENCY, shoppers.journey)


def _measure(stack: Stack, tally: CpuTally, warm: bool) -> LoopResult:
    async def run() -> LoopResult:
        async with Shoppers(
            stack.proxy_url("client_order"), stack.proxy_url("client_channel"),
            concurrency=CONCURRENCY,
        ) as shoppers:
            if warm:
                await _warm(shoppers)
            return await tally.measure(closed_loop(JOURNEYS, CONCURRENCY, shoppers.journey))

    return asyncio.run(run())


def round_ratios(history: list[float], fresh: list[float]) -> list[float]:
    """Each round's history rate over its fresh rate (rounds paired by position)."""
    if len(history) != len(fresh) or not fresh:
        raise ValueError(f"need as many history as fresh rounds, got {len(history)}/{len(fresh)}")
    if min(fresh) <= 0:
        raise ValueError(f"a fresh round completed no journeys: {fresh}")
    return [h / f for h, f in zip(history, fresh, strict=True)]


def main() -> dict[str, object]:
    figures: dict[str, object] = {"concurrency": CONCURRENCY, "rounds": ROUNDS}
    stock = {SKU: STOCK}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        work = Path(tmp)
        figures.update(seed_history(work / "history"))
        with (
            Stack.start(work / "fresh", seed_stock=stock) as fresh,
            Stack.start(work / "history", seed_stock=stock) as history,
        ):
            stacks = {"fresh": fresh, "history": history}
            tallies = {label: CpuTally(stack_pids(stack)) for label, stack in stacks.items()}
            rates: dict[str, list[float]] = {label: [] for label in stacks}
            failed = 0
            for round_no in range(ROUNDS):
                order = ("fresh", "history") if round_no % 2 == 0 else ("history", "fresh")
                for label in order:  # alternating, so neither always runs on a warmer machine
                    stack, other = stacks[label], stacks["history" if label == "fresh" else "fresh"]
                    with paused(other):
                        result = _measure(stack, tallies[label], warm=round_no == 0)
                    rates[label].append(result.rate)
                    failed += result.failed
    for label in ("fresh", "history"):
        per = tallies[label].per_unit_ms()
        figures[f"{label}_rps"] = round(statistics.median(rates[label]), 1)
        figures[f"{label}_cpu_ms"] = per
        figures[f"{label}_cpu_ms_total"] = round(sum(per.values()), 3)
    ratios = round_ratios(rates["history"], rates["fresh"])
    figures["history_100k_over_fresh"] = round(statistics.median(ratios), 3)
    figures["history_100k_over_fresh_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    fresh_total = float(figures["fresh_cpu_ms_total"])  # type: ignore[arg-type]
    history_total = float(figures["history_cpu_ms_total"])  # type: ignore[arg-type]
    figures["history_cpu_over_fresh"] = round(history_total / fresh_total, 3)
    figures["failed"] = failed
    return figures


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}: {value}")
