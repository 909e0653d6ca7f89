"""A shopper and an auditor for integration tests: the payment flow through a Stack.

Shoppers go through the client proxies (client_order, client_channel) like the load
generator; audits read the services' /audit/export directly.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import httpx
import pytest

from chaosbed.stack import Stack
from services.common.signing import SIGNATURE_HEADER, sign

FINAL = {"PAID", "REJECTED", "CLOSED"}


def new_key(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class Shopper:
    """Async client for one stack: place, pay, look at orders (through Toxiproxy)."""

    def __init__(self, stack: Stack, *, timeout_s: float = 5.0) -> None:
        limits = httpx.Limits(max_connections=64)
        self.orders = httpx.AsyncClient(
            base_url=stack.proxy_url("client_order"), timeout=timeout_s, limits=limits
        )
        self.wallet = httpx.AsyncClient(
            base_url=stack.proxy_url("client_channel"), timeout=timeout_s, limits=limits
        )

    async def __aenter__(self) -> Shopper:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.orders.aclose()
        await self.wallet.aclose()

    async def place(
        self, key: str, *, sku: str = "sku-1", qty: int = 1, amount: int = 100
    ) -> httpx.Response:
        return await self.orders.post(
            "/orders",
            json={"sku": sku, "qty": qty, "amount": amount},
            headers={"Idempotency-Key": key},
        )

    async def place_ok(self, key: str, **body: Any) -> dict[str, Any]:
        response = await self.place(key, **body)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    async def pay(self, payment_id: str) -> httpx.Response:
        return await self.wallet.post(f"/payments/{payment_id}/pay", json={})

    async def pay_ok(self, payment_id: str) -> dict[str, Any]:
        response = await self.pay(payment_id)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.orders.get(f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def buy(self, key: str, **body: Any) -> dict[str, Any]:
        """Place and pay one order; returns the placed order."""
        order = await self.place_ok(key, **body)
        assert order["status"] == "AWAITING_PAYMENT", order
        await self.pay_ok(order["payment_id"])
        return order


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- admin and audit --------------------------------------------------------------


def set_knobs(stack: Stack, **knobs: Any) -> dict[str, Any]:
    response = httpx.put(
        stack.url("channel") + "/admin/behaviour",
        json=knobs,
        headers=stack.admin_headers(),
        timeout=5.0,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def pay_after_close(stack: Stack, order: dict[str, Any], wait_until: Any) -> None:
    """Let the unpaid order time out, then have the channel take its payment anyway."""
    wait_until(
        lambda: orders_by_id(stack)[order["order_id"]]["status"] == "CLOSED",
        timeout_s=20,
        what="the unpaid order to be closed",
    )
    set_knobs(stack, accept_pay_after_close=True)

    async def pay() -> None:
        async with Shopper(stack) as shopper:
            await shopper.pay_ok(order["payment_id"])

    asyncio.run(pay())


def of_type(records: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == kind]


def orders_by_id(stack: Stack) -> dict[str, dict[str, Any]]:
    return {o["order_id"]: o for o in of_type(stack.export("order"), "order")}


def is_final(order: dict[str, Any], outbox: list[dict[str, Any]]) -> bool:
    """PAID counts as final once its confirm reached the inventory (docs/contracts.md)."""
    if order["status"] not in FINAL:
        return False
    pending = [
        row for row in outbox if row["order_id"] == order["order_id"] and not row["delivered_at"]
    ]
    return not pending


def wait_final(
    stack: Stack, order_ids: Iterable[str], *, timeout_s: float = 30.0
) -> dict[str, dict[str, Any]]:
    """Wait until every order is in a final state with its outbox drained; return the orders."""
    wanted = set(order_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        records = stack.export("order")
        orders = {o["order_id"]: o for o in of_type(records, "order") if o["order_id"] in wanted}
        outbox = of_type(records, "outbox")
        missing = wanted - orders.keys()
        waiting = sorted(k for k, o in orders.items() if not is_final(o, outbox))
        if not missing and not waiting:
            return orders
        if time.monotonic() > deadline:
            states = Counter(orders[k]["status"] for k in waiting)
            pytest.fail(
                f"orders not final after {timeout_s:.0f}s: {len(missing)} missing, "
                f"{len(waiting)} waiting {dict(states)} e.g. {waiting[:3]}"
            )
        time.sleep(0.2)


def charges_by_order(channel_records: Iterable[dict[str, Any]]) -> Counter[str]:
    """Successful charges per merchant order id (the channel's ledger)."""
    return Counter(
        r["merchant_order_id"]
        for r in of_type(channel_records, "ledger")
        if r["kind"] == "charge" and r["status"] == "succeeded"
    )


def refunds_by_order(channel_records: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(
        r["merchant_order_id"]
        for r in of_type(channel_records, "ledger")
        if r["kind"] == "refund" and r["status"] == "succeeded"
    )


def transitions_into(order_records: Iterable[dict[str, Any]], state: str) -> Counter[str]:
    return Counter(
        r["order_id"] for r in of_type(order_records, "transition") if r["to"] == state
    )


def stock(stack: Stack, sku: str) -> dict[str, Any]:
    records = of_type(stack.export("inventory"), "stock")
    return next(r for r in records if r["sku"] == sku)


def confirmed_qty(inventory_records: Iterable[dict[str, Any]], sku: str) -> int:
    return sum(
        r["qty"]
        for r in of_type(inventory_records, "reservation")
        if r["sku"] == sku and r["state"] == "CONFIRMED"
    )


def signed_notification(
    stack: Stack, body: dict[str, Any], *, secret: str | None = None, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    timestamp = int(time.time()) if at is None else at
    header = sign(secret if secret is not None else stack.info["notify_secret"], timestamp, raw)
    return raw, {"Content-Type": "application/json", SIGNATURE_HEADER: header}


# short timings so a flow test takes seconds (CHAOSBED_* variables, services/common/settings.py)
FAST_ENV = {
    "CHAOSBED_QUERY_AFTER_S": "1",
    "CHAOSBED_CLOSE_AFTER_S": "4",
    "CHAOSBED_TIME_SCALE": "0.001",
    "CHAOSBED_RECONCILE_EVERY_S": "1",
    "CHAOSBED_WORKER_TICK_S": "0.1",
    "CHAOSBED_SWEEP_EVERY_S": "0.5",
}

DEFAULT_KNOBS = {
    "notify_duplicate_rate": 0.0,
    "notify_drop_rate": 0.0,
    "forged_notify_rate": 0.0,
    "pay_failure_rate": 0.0,
    "accept_pay_after_close": False,
}
