"""bench_flow's CPU figures for two checkouts at once: this one and `--base DIR` (e.g. a
`git worktree add --detach DIR <commit>` of the commit to compare with).

Both stacks (behind Toxiproxy) and both trivial servers run at the same time, each from its
own checkout (the services and the trivial server are started with that checkout as their
working directory, so they run its code); the same driver (this checkout's
benchmarks/journeys.py) alternates between them in short rounds, so the other tenants' load
hits both alike.  Wall-clock runs of the two checkouts one after the other differ by more
than the change on a shared machine; this is the comparison to quote.

    PYTHONPATH=. python -m benchmarks.ab_flow --base /tmp/base [--rounds 6]

Prints one JSON object: per side, `journey_cpu_ms` per process and its total,
`trivial_request_cpu_ms`, `journey_cost_in_trivial_requests`; and `after_over_before` for
the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx

from benchmarks.bench_flow import CONCURRENCY, STOCK, WARMUP_JOURNEYS, _journeys, _trivial
from benchmarks.journeys import KEEPALIVE_S, SKU, CpuTally, Shoppers, stack_pids
from chaosbed import proc
from chaosbed.stack import Stack

JOURNEYS = 200  # per side and round
TRIVIAL_REQUESTS = 3000  # per side and round


@contextmanager
def _trivial_server(root: Path, log: Path) -> Iterator[tuple[int, str]]:
    """`python -m benchmarks.trivial_server` run from `root`: (pid, url)."""
    port = proc.free_port()
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.trivial_server", str(port)],
            cwd=root, stdout=out, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/ping", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"trivial server from {root} did not start (see {log})")
                time.sleep(0.05)
            yield child.pid, url
        finally:
            child.terminate()
            child.wait(10)


@contextmanager
def _stack_from(root: Path, run_dir: Path) -> Iterator[Stack]:
    """A stack whose services run `root`'s code (their working directory)."""
    own_root = proc.PROJECT_ROOT
    proc.PROJECT_ROOT = root
    try:
        stack = Stack.start(run_dir, seed_stock={SKU: STOCK})
    finally:
        proc.PROJECT_ROOT = own_root
    with stack:
        for name in ("order", "channel", "inventory"):
            cwd = Path(f"/proc/{stack.pid(name)}/cwd").resolve()
            if cwd != root.resolve():
                raise RuntimeError(f"{name} runs from {cwd}, not {root}")
        yield stack


async def _compare(sides: dict[str, tuple[Stack, int, str]], rounds: int) -> dict[str, object]:
    journeys = {name: CpuTally(stack_pids(stack)) for name, (stack, _, _) in sides.items()}
    trivial = {name: CpuTally({"trivial": pid}) for name, (_, pid, _) in sides.items()}
    failed = 0
    shoppers = {
        name: Shoppers(
            stack.proxy_url("client_order"), stack.proxy_url("client_channel"),
            concurrency=CONCURRENCY,
        )
        for name, (stack, _, _) in sides.items()
    }
    pings = {
        name: aiohttp.ClientSession(
            base_url=url,
            connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2, keepalive_timeout=KEEPALIVE_S),
        )
        for name, (_, _, url) in sides.items()
    }
    try:
        for group in shoppers.values():
            await group.__aenter__()
            await _journeys(group, WARMUP_JOURNEYS)
        for session in pings.values():
            await _trivial(session, TRIVIAL_REQUESTS // 10, CONCURRENCY)
        for round_no in range(rounds):
            order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
            for name in order:
                failed += (await journeys[name].measure(_journeys(shoppers[name], JOURNEYS))).failed
                result = await trivial[name].measure(
                    _trivial(pings[name], TRIVIAL_REQUESTS, CONCURRENCY)
                )
                failed += result.failed
    finally:
        for group in shoppers.values():
            await group.__aexit__(None, None, None)
        for session in pings.values():
            await session.close()
    figures: dict[str, object] = {"rounds": rounds, "journeys_per_round": JOURNEYS}
    totals = {}
    for name in sides:
        per = journeys[name].per_unit_ms()
        total = round(sum(per.values()), 3)
        trivial_ms = trivial[name].per_unit_ms()["trivial"]
        totals[name] = total
        figures[name] = {
            "journey_cpu_ms": per,
            "journey_cpu_ms_total": total,
            "trivial_request_cpu_ms": trivial_ms,
            "journey_cost_in_trivial_requests": round(total / trivial_ms, 1),
        }
    figures["after_over_before"] = round(totals["after"] / totals["before"], 3)
    figures["failed"] = failed
    return figures


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout of the 'before' code")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    base = args.base.resolve()
    if not (base / "services" / "order").is_dir():
        raise SystemExit(f"--base {base}: not a chaosbed checkout (no services/order)")
    here = proc.PROJECT_ROOT
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        work = Path(tmp)
        with (
            _stack_from(base, work / "before") as before,
            _stack_from(here, work / "after") as after,
            _trivial_server(base, work / "trivial-before.log") as (before_pid, before_url),
            _trivial_server(here, work / "trivial-after.log") as (after_pid, after_url),
        ):
            sides = {
                "before": (before, before_pid, before_url),
                "after": (after, after_pid, after_url),
            }
            return asyncio.run(_compare(sides, args.rounds))


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
