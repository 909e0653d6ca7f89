"""The benchmarks' own shoppers: closed-loop paid journeys on aiohttp, cheap enough not to
be what they measure.

A paid journey is: place the order (`POST /orders`), pay it in the wallet
(`POST /payments/{id}/pay` at the channel), then poll the order until it is PAID (the
channel's notification reached the order service).  Polling starts soon and backs off, so
a journey costs the order service one or two reads, not one every 10 ms.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from benchmarks import proc_cpu
from chaosbed.stack import SERVICES, Stack

SKU = "bench"
POLL_FIRST_S = 0.01  # the notification usually lands within milliseconds of the pay ...
POLL_MAX_S = 0.32  # ... so back off quickly to a few reads per second at most
JOURNEY_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 10.0
KEEPALIVE_S = 4.0


class JourneyError(RuntimeError):
    """A request of the journey was answered with an unexpected status, or it never ended."""


@dataclass
class LoopResult:
    """What one closed-loop run did: completed operations, failures, time, latencies."""

    done: int = 0
    failed: int = 0
    wall_s: float = 0.0
    driver_cpu_s: float = 0.0
    polls: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else 0.0


def _session(base_url: str, concurrency: int) -> aiohttp.ClientSession:
    # idle connections dropped before uvicorn's 5 s keep-alive ends (services.common.http
    # does the same): a request sent as the server closes it would fail as a disconnect
    connector = aiohttp.TCPConnector(
        limit=concurrency * 2, limit_per_host=concurrency * 2, keepalive_timeout=KEEPALIVE_S
    )
    return aiohttp.ClientSession(
        base_url=base_url,
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        cookie_jar=aiohttp.DummyCookieJar(),  # as the services' client: no jar to consult
    )


class Shoppers:
    """Two keep-alive sessions: one to the order service, one to the channel's wallet."""

    def __init__(self, order_url: str, channel_url: str, *, concurrency: int) -> None:
        self.order_url = order_url
        self.channel_url = channel_url
        self.concurrency = concurrency
        self._orders: aiohttp.ClientSession | None = None
        self._wallet: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Shoppers:
        self._orders = _session(self.order_url, self.concurrency)
        self._wallet = _session(self.channel_url, self.concurrency)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for session in (self._orders, self._wallet):
            if session is not None:
                await session.close()

    @property
    def orders(self) -> aiohttp.ClientSession:
        if self._orders is None:
            raise RuntimeError("Shoppers used outside `async with`")
        return self._orders

    @property
    def wallet(self) -> aiohttp.ClientSession:
        if self._wallet is None:
            raise RuntimeError("Shoppers used outside `async with`")
        return self._wallet

    async def place(self) -> dict[str, Any]:
        async with self.orders.post(
            "/orders",
            json={"sku": SKU, "qty": 1, "amount": 100},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        ) as response:
            if response.status not in (200, 201):
                text = await response.text()
                raise JourneyError(f"place answered {response.status}: {text[:200]}")
            return dict(await response.json())

    async def journey(self) -> int:
        """One paid journey; returns how many times it polled the order."""
        order = await self.place()
        async with self.wallet.post(f"/payments/{order['payment_id']}/pay", json={}) as paid:
            if paid.status != 200:
                text = await paid.text()
                raise JourneyError(f"pay answered {paid.status}: {text[:200]}")
            await paid.read()
        deadline = time.monotonic() + JOURNEY_TIMEOUT_S
        delay, polls = POLL_FIRST_S, 0
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            polls += 1
            async with self.orders.get(f"/orders/{order['order_id']}") as response:
                status = (await response.json())["status"]
            if status == "PAID":
                return polls
            delay = min(delay * 2, POLL_MAX_S)
        raise JourneyError(f"order {order['order_id']} not PAID after {JOURNEY_TIMEOUT_S:.0f}s")


async def closed_loop(
    total: int, concurrency: int, operation: Callable[[], Awaitable[int | None]]
) -> LoopResult:
    """`total` operations by `concurrency` workers, each starting the next when one ends.

    An operation that raises counts as failed (first few messages kept); one that returns
    an int adds it to `polls`.
    """
    result = LoopResult()
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                polls = await operation()
            except (JourneyError, aiohttp.ClientError, TimeoutError) as exc:
                result.failed += 1
                if len(result.errors) < 5:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            result.latencies.append(time.perf_counter() - started)
            result.done += 1
            result.polls += polls or 0

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - wall
    result.driver_cpu_s = time.process_time() - cpu
    return result


async def get_ok(session: aiohttp.ClientSession, path: str) -> None:
    """One GET that must answer 200 (the trivial request)."""
    async with session.get(path) as response:
        if response.status != 200:
            raise JourneyError(f"GET {path} answered {response.status}")
        await response.read()


def quantile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def stack_pids(stack: Stack) -> dict[str, int]:
    """The pid of every process of the stack: the services and, unless direct, Toxiproxy."""
    pids = {name: stack.pid(name) for name in SERVICES}
    toxiproxy = stack.info.get("toxiproxy")
    if toxiproxy:
        pids["toxiproxy"] = int(toxiproxy["pid"])
    return pids


class CpuTally:
    """CPU seconds of named processes summed over measured loops, and the work they did."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.cpu_s = dict.fromkeys(self.pids, 0.0)
        self.units = 0

    async def measure(self, units_of: Awaitable[LoopResult]) -> LoopResult:
        """Run the awaitable `units_of` (a closed loop) between two CPU reads."""
        before = proc_cpu.snapshot(self.pids)
        result = await units_of
        after = proc_cpu.snapshot(self.pids)
        for name in self.pids:
            self.cpu_s[name] += after[name] - before[name]
        self.units += result.done
        return result

    def per_unit_ms(self) -> dict[str, float]:
        if self.units == 0:
            raise RuntimeError("no completed work to divide the CPU time by")
        return {name: round(1000 * cpu / self.units, 3) for name, cpu in self.cpu_s.items()}
