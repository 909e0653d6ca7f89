"""The payment flow end to end through the real Toxiproxy, under the channel's faults."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chaosbed.stack import Stack
from tests.integration.shop import (
    DEFAULT_KNOBS,
    FAST_ENV,
    Shopper,
    charges_by_order,
    confirmed_qty,
    new_key,
    of_type,
    orders_by_id,
    pay_after_close,
    refunds_by_order,
    set_knobs,
    signed_notification,
    stock,
    transitions_into,
    wait_final,
)

pytestmark = pytest.mark.integration

SEED = {"burst": 1000, "dup": 1000, "forged": 1000, "drop": 1000, "late": 1000, "crash": 1000}


@pytest.fixture(scope="module")
def flow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack.start(
        tmp_path_factory.mktemp("flow"), service_env=FAST_ENV, seed_stock=SEED
    ) as stack:
        yield stack


@pytest.fixture
def stack(flow_stack: Stack) -> Iterator[Stack]:
    """The module's stack, with the channel's knobs back to defaults after each test."""
    yield flow_stack
    set_knobs(flow_stack, **DEFAULT_KNOBS)


async def _buy_many(stack: Stack, count: int, *, sku: str, prefix: str) -> list[dict]:
    async with Shopper(stack) as shopper:
        return list(
            await asyncio.gather(
                *(shopper.buy(new_key(prefix), sku=sku, amount=100 + i) for i in range(count))
            )
        )


def test_concurrent_orders_are_all_paid_once_and_stock_is_conserved(stack: Stack) -> None:
    placed = asyncio.run(_buy_many(stack, 40, sku="burst", prefix="burst"))
    ids = [o["order_id"] for o in placed]
    assert len(set(ids)) == 40

    orders = wait_final(stack, ids)
    assert Counter(o["status"] for o in orders.values()) == {"PAID": 40}
    assert all(orders[o["order_id"]]["amount"] == o["amount"] for o in placed)

    channel = stack.export("channel")
    charges = charges_by_order(channel)
    assert {k: charges[k] for k in ids} == dict.fromkeys(ids, 1)
    paid = transitions_into(stack.export("order"), "PAID")
    assert {k: paid[k] for k in ids} == dict.fromkeys(ids, 1)

    inventory = stack.export("inventory")
    shelf = stock(stack, "burst")
    assert shelf["initial"] == 1000
    assert shelf["initial"] - shelf["available"] == confirmed_qty(inventory, "burst") == 40


def test_duplicate_notifications_have_one_effect(stack: Stack) -> None:
    set_knobs(stack, notify_duplicate_rate=1.0)
    ids = [o["order_id"] for o in asyncio.run(_buy_many(stack, 10, sku="dup", prefix="dup"))]
    orders = wait_final(stack, ids)
    assert {o["status"] for o in orders.values()} == {"PAID"}

    records = stack.export("order")
    paid = transitions_into(records, "PAID")
    assert all(paid[k] == 1 for k in ids), paid
    confirms = Counter(
        r["order_id"] for r in of_type(records, "outbox") if r["kind"] == "confirm"
    )
    assert all(confirms[k] == 1 for k in ids), confirms
    # the knob really delivered duplicates: more than one acknowledged notification per order
    acked = Counter(
        n["merchant_order_id"]
        for n in of_type(stack.export("channel"), "notification")
        if n["acked"] and not n["forged"]
    )
    assert sum(1 for k in ids if acked[k] > 1) >= len(ids) // 2, acked
    assert confirmed_qty(stack.export("inventory"), "dup") == 10


def test_forged_notifications_from_the_channel_are_refused(stack: Stack) -> None:
    set_knobs(stack, forged_notify_rate=1.0)
    ids = [o["order_id"] for o in asyncio.run(_buy_many(stack, 5, sku="forged", prefix="fg"))]
    orders = wait_final(stack, ids)
    assert {o["status"] for o in orders.values()} == {"PAID"}
    assert all(transitions_into(stack.export("order"), "PAID")[k] == 1 for k in ids)

    forged = [
        n
        for n in of_type(stack.export("channel"), "notification")
        if n["forged"] and n["merchant_order_id"] in ids
    ]
    assert forged, "the knob sent no forged notification"
    assert not [n for n in forged if n["acked"]], "a forged notification was acknowledged"
    rejected = of_type(stack.export("order"), "notification_rejected")
    assert {r["order_id"] for r in rejected} & set(ids)


def test_hand_forged_notifications_change_nothing(stack: Stack) -> None:
    async def place() -> dict:
        async with Shopper(stack) as shopper:
            return await shopper.place_ok(new_key("hand"), sku="forged", amount=777)

    order = asyncio.run(place())
    body = {
        "notify_id": new_key("n"),
        "payment_id": order["payment_id"],
        "merchant_order_id": order["order_id"],
        "txn_id": new_key("txn"),
        "amount": 777,
        "status": "SUCCEEDED",
        "paid_at": time.time(),
    }
    url = stack.proxy_url("channel_notify") + "/notifications/payment"
    raw, good_headers = signed_notification(stack, body)
    attempts = {
        "unsigned": (raw, {"Content-Type": "application/json"}),
        "wrong secret": signed_notification(stack, body, secret="not-the-secret"),
        "stale timestamp": signed_notification(stack, body, at=int(time.time()) - 3600),
        "signature of another body": (raw.replace(b"777", b"778"), good_headers),
        "altered amount": signed_notification(stack, {**body, "amount": 1}),
    }
    for label, (content, headers) in attempts.items():
        response = httpx.post(url, content=content, headers=headers, timeout=5.0)
        assert 400 <= response.status_code < 500, (label, response.status_code, response.text)
        assert "error" in response.json(), label

    records = stack.export("order")
    assert orders_by_id(stack)[order["order_id"]]["status"] == "AWAITING_PAYMENT"
    assert not [t for t in of_type(records, "transition") if t["order_id"] == order["order_id"]
                and t["to"] == "PAID"]
    assert not [i for i in of_type(records, "inbox") if i["order_id"] == order["order_id"]]

    async def pay() -> None:
        async with Shopper(stack) as shopper:
            await shopper.pay_ok(order["payment_id"])

    asyncio.run(pay())  # the order was live all along: a real payment completes it
    assert wait_final(stack, [order["order_id"]])[order["order_id"]]["status"] == "PAID"


def test_dropped_notifications_are_recovered_by_active_query(stack: Stack) -> None:
    set_knobs(stack, notify_drop_rate=1.0)
    ids = [o["order_id"] for o in asyncio.run(_buy_many(stack, 5, sku="drop", prefix="drop"))]
    orders = wait_final(stack, ids)
    assert {o["status"] for o in orders.values()} == {"PAID"}
    causes = {
        t["order_id"]: t["cause"]
        for t in of_type(stack.export("order"), "transition")
        if t["to"] == "PAID" and t["order_id"] in ids
    }
    assert set(causes.values()) <= {"query", "reconcile"}, causes
    notified = [
        n
        for n in of_type(stack.export("channel"), "notification")
        if n["merchant_order_id"] in ids and n["acked"]
    ]
    assert notified == [], "a notification got through although all were dropped"


def test_payment_after_close_is_refunded(stack: Stack, wait_until: Any) -> None:
    async def place() -> dict:
        async with Shopper(stack) as shopper:
            return await shopper.place_ok(new_key("late"), sku="late", amount=4242)

    order = asyncio.run(place())
    pay_after_close(stack, order, wait_until)
    wait_until(
        lambda: refunds_by_order(stack.export("channel"))[order["order_id"]] == 1,
        timeout_s=20,
        what="the late payment to be refunded",
    )
    channel = stack.export("channel")
    assert charges_by_order(channel)[order["order_id"]] == 1
    assert orders_by_id(stack)[order["order_id"]]["status"] == "CLOSED"
    refunded = [
        r for r in of_type(channel, "ledger")
        if r["kind"] == "refund" and r["merchant_order_id"] == order["order_id"]
    ]
    assert [r["amount"] for r in refunded] == [4242]


def test_killed_order_service_keeps_every_acknowledged_order(start_stack: Any) -> None:
    stack: Stack = start_stack("crash", service_env=FAST_ENV, seed_stock={"crash": 1000})
    keys = [new_key("crash") for _ in range(40)]
    acknowledged: dict[str, dict] = {}
    old_pid = stack.pid("order")
    enough = asyncio.Event()  # binds to the running loop on first use

    async def shop(key: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with Shopper(stack, timeout_s=2.0) as shopper:
            try:
                response = await shopper.place(key, sku="crash")
            except httpx.HTTPError:
                return  # unknown outcome: the order may or may not exist
            if response.status_code in (200, 201):
                acknowledged[key] = response.json()
                if len(acknowledged) >= 5:
                    enough.set()
                with contextlib.suppress(httpx.HTTPError):
                    await shopper.pay(response.json()["payment_id"])

    async def burst() -> None:
        tasks = [asyncio.create_task(shop(k, i * 0.05)) for i, k in enumerate(keys)]
        await asyncio.wait_for(enough.wait(), timeout=30)  # kill mid-burst, after some acks
        await asyncio.to_thread(stack.kill, "order")
        await asyncio.gather(*tasks)

    asyncio.run(burst())
    assert stack.info["services"]["order"]["pid"] is None
    new_pid = stack.start_service("order")
    assert new_pid != old_pid
    assert acknowledged, "no order was acknowledged before the kill"
    assert len(acknowledged) < len(keys), "the kill came too late to interrupt the burst"

    records = stack.export("order")
    by_key = {o["idempotency_key"]: o for o in of_type(records, "order")}
    lost = sorted(set(acknowledged) - set(by_key))
    assert lost == [], f"acknowledged orders lost in the crash: {lost}"
    ids = [o["order_id"] for o in by_key.values() if o["idempotency_key"] in keys]
    orders = wait_final(stack, ids, timeout_s=40)
    charges = charges_by_order(stack.export("channel"))
    refunds = refunds_by_order(stack.export("channel"))
    for order_id, order in orders.items():
        assert charges[order_id] - refunds[order_id] == (1 if order["status"] == "PAID" else 0)
    inventory = stack.export("inventory")
    shelf = stock(stack, "crash")
    paid = sum(1 for o in orders.values() if o["status"] == "PAID")
    assert paid > 0, "no order survived the crash to be paid"
    assert shelf["initial"] - shelf["available"] == confirmed_qty(inventory, "crash") == paid
