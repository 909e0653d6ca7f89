"""Throughput of the payment flow through Toxiproxy vs. services wired directly.

Two stacks run side by side (one behind Toxiproxy, one `direct=True`) and the same
closed-loop load is sent to both, interleaved in rounds so machine noise hits both:
- place: `POST /orders` only (order → inventory try → channel create);
- flow: place → pay at the channel → poll the order until PAID (notification path).
The ratio proxied/direct is the price of putting every link through Toxiproxy.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from chaosbed.stack import Stack

CONCURRENCY = 16
PLACE_REQUESTS = 300
FLOWS = 80
ROUNDS = 2
POLL_EVERY_S = 0.01
FLOW_TIMEOUT_S = 20.0
SKU = "bench"


async def _place(orders: httpx.AsyncClient) -> dict[str, Any]:
    response = await orders.post(
        "/orders",
        json={"sku": SKU, "qty": 1, "amount": 100},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    if response.status_code not in (200, 201):
        raise RuntimeError(f"place answered {response.status_code}: {response.text[:200]}")
    return dict(response.json())


async def _flow(orders: httpx.AsyncClient, wallet: httpx.AsyncClient) -> None:
    order = await _place(orders)
    paid = await wallet.post(f"/payments/{order['payment_id']}/pay", json={})
    if paid.status_code != 200:
        raise RuntimeError(f"pay answered {paid.status_code}: {paid.text[:200]}")
    deadline = time.monotonic() + FLOW_TIMEOUT_S
    while time.monotonic() < deadline:
        status = (await orders.get(f"/orders/{order['order_id']}")).json()["status"]
        if status == "PAID":
            return
        await asyncio.sleep(POLL_EVERY_S)
    raise RuntimeError(f"order {order['order_id']} not PAID after {FLOW_TIMEOUT_S:.0f}s")


async def _closed_loop(
    total: int, operation: Callable[[], Awaitable[Any]]
) -> tuple[float, list[float]]:
    """Run `total` operations with CONCURRENCY workers; (ops per second, latencies)."""
    remaining = total
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await operation()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return total / (time.perf_counter() - started), latencies


async def _measure(stack: Stack, kind: str, total: int) -> tuple[float, list[float]]:
    limits = httpx.Limits(max_connections=CONCURRENCY * 2)
    async with (
        httpx.AsyncClient(
            base_url=stack.proxy_url("client_order"), timeout=10, limits=limits
        ) as orders,
        httpx.AsyncClient(
            base_url=stack.proxy_url("client_channel"), timeout=10, limits=limits
        ) as wallet,
    ):
        await _place(orders)  # warm up connections and the code paths
        if kind == "place":
            return await _closed_loop(total, lambda: _place(orders))
        return await _closed_loop(total, lambda: _flow(orders, wallet))


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def main() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        proxied = Stack.start(Path(tmp) / "proxied", seed_stock={SKU: 1_000_000})
        try:
            direct = Stack.start(Path(tmp) / "direct", seed_stock={SKU: 1_000_000}, direct=True)
            try:
                return _run(proxied, direct)
            finally:
                direct.stop()
        finally:
            proxied.stop()


def _run(proxied: Stack, direct: Stack) -> dict[str, object]:
    rps: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for kind, total in (("place", PLACE_REQUESTS), ("flow", FLOWS)):
            for label, stack in (("toxiproxy", proxied), ("direct", direct)):
                rate, lat = asyncio.run(_measure(stack, kind, total))
                rps.setdefault(f"{kind}_{label}", []).append(rate)
                latencies.setdefault(f"{kind}_{label}", []).extend(lat)
    figures: dict[str, object] = {"concurrency": CONCURRENCY, "rounds": ROUNDS}
    for key, rates in rps.items():
        figures[f"{key}_rps"] = round(statistics.median(rates), 1)
        figures[f"{key}_p50_ms"] = _ms(latencies[key], 0.50)
        figures[f"{key}_p95_ms"] = _ms(latencies[key], 0.95)
    for kind in ("place", "flow"):
        through = statistics.median(rps[f"{kind}_toxiproxy"])
        straight = statistics.median(rps[f"{kind}_direct"])
        figures[f"{kind}_toxiproxy_vs_direct"] = round(through / straight, 3)
    return figures


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}: {value}")
