"""Order service, in-process: the payment flow against fake inventory and channel peers.

The fakes are small FastAPI apps following docs/contracts.md, reached through
httpx's ASGI transport; `Link.down` makes a peer unreachable like a disabled proxy.
Workers are driven by calling their single passes directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from loadtests import forgery as load_forgery
from services.channel import workers as channel_workers
from services.common.forgery import FORGERY_KINDS, ForgeryKind, refusal_codes
from services.common.http import Ambiguous, Unreachable
from services.common.settings import Settings
from services.common.signing import SIGNATURE_HEADER, sign
from services.order import workers
from services.order.app import create_app
from services.order.domain import OrderService
from services.order.peers import Peers

pytestmark = pytest.mark.anyio

SECRET = "test-notify-secret"
ADMIN = "test-admin-token"


# fake peers --------------------------------------------------------------------------------


def _error(status: int, code: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": code}, status_code=status)


class FakeInventory:
    def __init__(self, stock: dict[str, int]) -> None:
        self.available = dict(stock)
        self.reservations: dict[str, dict[str, Any]] = {}
        self.tombstones: set[str] = set()
        self.confirm_batches: list[list[str]] = []
        self.app = FastAPI()
        app = self.app

        @app.post("/reservations")
        async def reserve(body: dict[str, Any]) -> Any:
            order_id, sku, qty = body["order_id"], body["sku"], body["qty"]
            if order_id in self.tombstones:
                return _error(409, "reservation_cancelled")
            if order_id in self.reservations:
                return self.reservations[order_id]
            if sku not in self.available:
                return _error(404, "unknown_sku")
            if self.available[sku] < qty:
                return _error(409, "out_of_stock")
            self.available[sku] -= qty
            self.reservations[order_id] = {
                "order_id": order_id,
                "sku": sku,
                "qty": qty,
                "state": "TRY",
            }
            return self.reservations[order_id]

        @app.post("/reservations/confirm")
        async def confirm_batch(body: dict[str, Any]) -> Any:
            self.confirm_batches.append(list(body["order_ids"]))
            results = []
            for order_id in body["order_ids"]:
                reservation = self.reservations.get(order_id)
                if reservation is None:
                    results.append({"order_id": order_id, "error": "unknown_reservation"})
                elif reservation["state"] == "CANCELLED":
                    results.append({"order_id": order_id, "error": "reservation_cancelled"})
                else:
                    reservation["state"] = "CONFIRMED"
                    results.append({"order_id": order_id, "state": "CONFIRMED"})
            return {"results": results}

        @app.post("/reservations/{order_id}/confirm")
        async def confirm(order_id: str) -> Any:
            reservation = self.reservations.get(order_id)
            if reservation is None:
                return _error(404, "unknown_reservation")
            if reservation["state"] == "CANCELLED":
                return _error(409, "reservation_cancelled")
            reservation["state"] = "CONFIRMED"
            return {"state": "CONFIRMED"}

        @app.post("/reservations/{order_id}/cancel")
        async def cancel(order_id: str) -> Any:
            reservation = self.reservations.get(order_id)
            if reservation is None:
                self.tombstones.add(order_id)
                return {"state": "CANCELLED", "empty_rollback": True}
            if reservation["state"] == "CONFIRMED":
                return _error(409, "reservation_confirmed")
            if reservation["state"] == "TRY":
                self.available[reservation["sku"]] += reservation["qty"]
            reservation["state"] = "CANCELLED"
            return {"state": "CANCELLED", "empty_rollback": False}

    def state_of(self, order_id: str) -> str | None:
        reservation = self.reservations.get(order_id)
        return None if reservation is None else str(reservation["state"])


class FakeChannel:
    def __init__(self) -> None:
        self.payments: dict[str, dict[str, Any]] = {}
        self.ledger: list[dict[str, Any]] = []
        self.refunds: dict[str, dict[str, Any]] = {}
        self.app = FastAPI()
        app = self.app

        @app.post("/payments")
        async def create(body: dict[str, Any]) -> Any:
            for payment in self.payments.values():
                if payment["merchant_order_id"] == body["merchant_order_id"]:
                    if payment["amount"] != body["amount"]:
                        return _error(409, "amount_mismatch")
                    return JSONResponse(payment, status_code=200)
            payment_id = f"pay-{len(self.payments) + 1}"
            self.payments[payment_id] = {
                "payment_id": payment_id,
                "merchant_order_id": body["merchant_order_id"],
                "amount": body["amount"],
                "status": "PENDING",
                "txn_id": None,
                "paid_at": None,
                "refunded": 0,
            }
            return JSONResponse(self.payments[payment_id], status_code=201)

        @app.get("/payments")
        async def find(merchant_order_id: str) -> Any:
            for payment in self.payments.values():
                if payment["merchant_order_id"] == merchant_order_id:
                    return payment
            return _error(404, "unknown_payment")

        @app.get("/payments/{payment_id}")
        async def get(payment_id: str) -> Any:
            if payment_id not in self.payments:
                return _error(404, "unknown_payment")
            return self.payments[payment_id]

        @app.post("/payments/{payment_id}/close")
        async def close(payment_id: str) -> Any:
            payment = self.payments[payment_id]
            if payment["status"] == "SUCCEEDED":
                return _error(409, "already_paid")
            payment["status"] = "CLOSED"
            return {"status": "CLOSED"}

        @app.post("/payments/{payment_id}/refunds")
        async def refund(payment_id: str, body: dict[str, Any]) -> Any:
            payment = self.payments[payment_id]
            if payment["txn_id"] is None:
                return _error(409, "not_paid")
            if body["refund_id"] not in self.refunds:
                self.refunds[body["refund_id"]] = {"payment_id": payment_id, **body}
                payment["refunded"] += body["amount"]
                self._book(payment, "refund", f"r-{body['refund_id']}")
            return {"refund_id": body["refund_id"], "status": "SUCCEEDED", "amount": body["amount"]}

        @app.get("/bills")
        async def bills(cursor: int = 0, limit: int = 500) -> Any:
            entries = [e for e in self.ledger if e["seq"] > cursor][:limit]
            return {"entries": entries, "next_cursor": entries[-1]["seq"] if entries else cursor}

    def _book(self, payment: dict[str, Any], kind: str, txn_id: str) -> None:
        self.ledger.append(
            {
                "seq": len(self.ledger) + 1,
                "txn_id": txn_id,
                "payment_id": payment["payment_id"],
                "merchant_order_id": payment["merchant_order_id"],
                "kind": kind,
                "amount": payment["amount"],
                "t": time.time(),
            }
        )

    def pay(self, payment_id: str, *, after_close: bool = False) -> str:
        """The shopper pays (no notification is sent: tests deliver those themselves)."""
        payment = self.payments[payment_id]
        assert payment["status"] == "PENDING" or (after_close and payment["status"] == "CLOSED")
        payment.update(status="SUCCEEDED", txn_id=f"txn-{payment_id}", paid_at=time.time())
        self._book(payment, "charge", payment["txn_id"])
        return str(payment["txn_id"])

    def charges(self, merchant_prefix: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.ledger
            if e["kind"] == "charge" and e["merchant_order_id"].startswith(merchant_prefix)
        ]


class Link:
    """An in-process stand-in for a Toxiproxy link to one fake peer."""

    def __init__(self, app: FastAPI, peer: str) -> None:
        self.peer = peer
        self.down = False
        self.lose_answer_to: tuple[str, str] | None = None  # processed, but the answer is lost
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=f"http://{peer}"
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if self.down:
            raise Unreachable(f"{self.peer}: link down")
        response = await self.client.request(
            method, path, json=json, content=content, headers=headers
        )
        if (method, path) == self.lose_answer_to:
            self.lose_answer_to = None
            raise Ambiguous(f"{self.peer}: answer to {method} {path} lost")
        return response


@dataclasses.dataclass
class Shop:
    app: FastAPI
    service: OrderService
    inventory: FakeInventory
    channel: FakeChannel
    to_inventory: Link
    to_channel: Link
    client: httpx.AsyncClient

    async def place(
        self, key: str | None = "k-1", body: dict[str, Any] | None = None
    ) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return await self.client.post(
            "/orders", json=body or {"sku": "sku-1", "qty": 2, "amount": 1500}, headers=headers
        )

    async def placed(self, key: str = "k-1") -> dict[str, Any]:
        response = await self.place(key)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def notify(
        self,
        order: dict[str, Any],
        *,
        txn_id: str | None = None,
        notify_id: str = "n-1",
        amount: int | None = None,
        secret: str = SECRET,
        signed_at: int | None = None,
        raw: bytes | None = None,
    ) -> httpx.Response:
        payment = self.channel.payments[order["payment_id"]]
        body = (
            raw
            or json.dumps(
                {
                    "notify_id": notify_id,
                    "payment_id": order["payment_id"],
                    "merchant_order_id": order["order_id"],
                    "txn_id": txn_id or payment["txn_id"],
                    "amount": order["amount"] if amount is None else amount,
                    "status": "SUCCEEDED",
                    "paid_at": payment["paid_at"],
                }
            ).encode()
        )
        at = int(time.time()) if signed_at is None else signed_at
        headers = {SIGNATURE_HEADER: sign(secret, at, body), "Content-Type": "application/json"}
        return await self.client.post("/notifications/payment", content=body, headers=headers)

    def order(self, order_id: str) -> dict[str, Any]:
        order = self.service.store.get(order_id)
        assert order is not None
        return dataclasses.asdict(order)

    def transitions(self, order_id: str) -> list[tuple[str | None, str, str]]:
        return [
            (t["from_status"], t["to_status"], t["cause"])
            for t in self.service.store.transitions(order_id)
        ]

    def outbox(self, order_id: str) -> list[str]:
        return [row["kind"] for row in self.service.store.outbox(order_id)]

    def table(self, name: str) -> list[dict[str, Any]]:
        rows = self.service.store.conn.execute(f"SELECT * FROM {name}").fetchall()
        return [dict(r) for r in rows]

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        tables = ("orders", "transitions", "inbox", "outbox", "refunds")
        return {name: self.table(name) for name in tables}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _settings_base() -> Settings:
    return Settings(
        service="order",
        admin_token=ADMIN,
        notify_secret=SECRET,
        query_after_s=1000.0,
        close_after_s=1000.0,
        worker_tick_s=0.01,
    )


def _settings(tmp_path: Any, **overrides: Any) -> Settings:
    return dataclasses.replace(_settings_base(), db_path=str(tmp_path / "order.db"), **overrides)


@pytest.fixture
def shop_factory(tmp_path: Any) -> Any:
    made: list[Shop] = []

    async def make(**overrides: Any) -> Shop:
        inventory = FakeInventory({"sku-1": 10, "sku-rare": 1})
        channel = FakeChannel()
        to_inventory = Link(inventory.app, "inventory")
        to_channel = Link(channel.app, "channel")
        settings = _settings(tmp_path / f"shop{len(made)}", **overrides)
        (tmp_path / f"shop{len(made)}").mkdir()
        app = create_app(settings, peers=Peers(to_inventory, to_channel), run_workers=False)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://order")
        shop = Shop(app, app.state.service, inventory, channel, to_inventory, to_channel, client)
        made.append(shop)
        return shop

    return make


@pytest.fixture
async def shop(shop_factory: Any) -> AsyncIterator[Shop]:
    yield await shop_factory()


# place order -------------------------------------------------------------------------------


async def test_place_reserves_and_creates_payment(shop: Shop) -> None:
    order = await shop.placed()
    assert order["status"] == "AWAITING_PAYMENT"
    assert order["payment_id"] in shop.channel.payments
    assert shop.channel.payments[order["payment_id"]]["merchant_order_id"] == order["order_id"]
    assert shop.inventory.state_of(order["order_id"]) == "TRY"
    assert shop.inventory.available["sku-1"] == 8
    assert shop.transitions(order["order_id"]) == [
        (None, "CREATED", "place"),
        ("CREATED", "AWAITING_PAYMENT", "place"),
    ]


async def test_same_key_same_body_returns_the_same_order(shop: Shop) -> None:
    first = await shop.placed()
    again = await shop.place()
    assert again.status_code == 200
    assert again.json() == first
    assert len(shop.table("orders")) == 1
    assert len(shop.channel.payments) == 1
    assert shop.inventory.available["sku-1"] == 8


async def test_same_key_different_body_is_refused(shop: Shop) -> None:
    await shop.placed()
    before = shop.snapshot()
    response = await shop.place(body={"sku": "sku-1", "qty": 3, "amount": 1500})
    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    assert shop.snapshot() == before


async def test_missing_idempotency_key_is_refused(shop: Shop) -> None:
    response = await shop.place(key=None)
    assert response.status_code == 400
    assert response.json()["error"] == "missing_idempotency_key"
    assert shop.table("orders") == []


async def test_malformed_idempotency_key_is_refused(shop: Shop) -> None:
    response = await shop.place(key="has spaces/and slashes")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_idempotency_key"
    assert shop.table("orders") == []


async def test_out_of_stock_is_rejected_without_payment(shop: Shop) -> None:
    response = await shop.place(body={"sku": "sku-rare", "qty": 2, "amount": 100})
    assert response.status_code == 201
    order = response.json()
    assert order["status"] == "REJECTED"
    assert order["payment_id"] is None
    assert shop.channel.payments == {}
    assert shop.inventory.reservations == {}
    assert shop.order(order["order_id"])["t_final"] is not None


async def test_peer_down_leaves_created_and_a_retry_resumes(shop: Shop) -> None:
    shop.to_channel.down = True
    response = await shop.place()
    assert response.status_code == 503
    assert response.json()["error"] == "dependency_unavailable"
    assert response.headers["Retry-After"] == "1"
    (row,) = shop.table("orders")
    assert row["status"] == "CREATED"

    shop.to_channel.down = False
    again = await shop.place()
    assert again.status_code == 200
    assert again.json()["order_id"] == row["order_id"]
    assert again.json()["status"] == "AWAITING_PAYMENT"
    assert len(shop.channel.payments) == 1
    assert shop.inventory.available["sku-1"] == 8  # the try was replayed, not repeated


async def test_lost_answer_to_create_payment_is_resolved_without_a_second_payment(
    shop_factory: Any,
) -> None:
    shop = await shop_factory(query_after_s=0.0)
    shop.to_channel.lose_answer_to = ("POST", "/payments")
    assert (await shop.place()).status_code == 503
    assert len(shop.channel.payments) == 1  # the channel did create it
    await workers.sweep_orders_once(shop.service)
    (row,) = shop.table("orders")
    assert row["status"] == "AWAITING_PAYMENT"
    assert row["payment_id"] == "pay-1"
    assert len(shop.channel.payments) == 1


async def test_resumer_finishes_a_created_order(shop_factory: Any) -> None:
    shop = await shop_factory(query_after_s=0.0)
    shop.to_inventory.down = True
    assert (await shop.place()).status_code == 503
    shop.to_inventory.down = False
    await workers.sweep_orders_once(shop.service)
    (row,) = shop.table("orders")
    assert row["status"] == "AWAITING_PAYMENT"


async def test_resumer_gives_up_and_cancels_the_reservation(shop_factory: Any) -> None:
    shop = await shop_factory(query_after_s=0.0, close_after_s=0.0)
    shop.to_inventory.down = True
    assert (await shop.place()).status_code == 503
    await workers.sweep_orders_once(shop.service)  # inventory still down: give up
    (row,) = shop.table("orders")
    assert row["status"] == "REJECTED"
    assert shop.outbox(row["order_id"]) == ["cancel"]

    shop.to_inventory.down = False
    await workers.relay_outbox_once(shop.service)
    assert row["order_id"] in shop.inventory.tombstones  # a late try will be refused
    assert shop.channel.payments == {}


# notifications -----------------------------------------------------------------------------


async def test_valid_notification_pays_and_confirms(shop: Shop) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    response = await shop.notify(order)
    assert response.status_code == 200
    assert response.json() == {"result": "success"}
    stored = shop.order(order["order_id"])
    assert stored["status"] == "PAID"
    assert stored["txn_id"] == f"txn-{order['payment_id']}"
    assert shop.outbox(order["order_id"]) == ["confirm"]
    (inbox,) = shop.table("inbox")
    assert inbox["outcome"] == "paid"

    await workers.relay_outbox_once(shop.service)
    assert shop.inventory.state_of(order["order_id"]) == "CONFIRMED"
    assert shop.order(order["order_id"])["t_final"] is not None
    (row,) = shop.table("outbox")
    assert row["delivered_at"] is not None


async def test_duplicate_notification_has_one_effect(shop: Shop) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    assert (await shop.notify(order)).status_code == 200
    assert (await shop.notify(order)).status_code == 200
    assert (await shop.notify(order, notify_id="n-2")).status_code == 200
    paid = [t for t in shop.transitions(order["order_id"]) if t[1] == "PAID"]
    assert paid == [("AWAITING_PAYMENT", "PAID", "notify")]
    assert shop.outbox(order["order_id"]) == ["confirm"]


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"secret": "wrong-secret"}, 400, "bad_signature"),
        ({"signed_at": int(time.time()) - 3600}, 400, "stale_timestamp"),
        ({"amount": 1}, 400, "amount_mismatch"),
        ({"raw": b'{"merchant_order_id": "o-nope"}'}, 422, "invalid_request"),
    ],
)
async def test_refused_notification_changes_nothing(
    shop: Shop, change: dict[str, Any], status: int, code: str
) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    before = shop.snapshot()
    response = await shop.notify(order, **change)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert shop.snapshot() == before
    (rejection,) = shop.table("notification_rejections")
    assert rejection["reason"] in (code, "invalid_body")


def _genuine_body(shop: Shop, order: dict[str, Any]) -> dict[str, Any]:
    payment = shop.channel.payments[order["payment_id"]]
    return {
        "notify_id": "n-1",
        "payment_id": order["payment_id"],
        "merchant_order_id": order["order_id"],
        "txn_id": payment["txn_id"],
        "amount": order["amount"],
        "status": "SUCCEEDED",
        "paid_at": payment["paid_at"],
    }


@pytest.mark.parametrize("kind", FORGERY_KINDS)
async def test_a_channel_forgery_is_refused_with_the_code_its_kind_maps_to(
    shop: Shop, kind: ForgeryKind
) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    body = _genuine_body(shop, order)
    payload, headers = channel_workers.forge(
        kind, body, secret=SECRET, now=int(time.time()), tolerance_s=300
    )
    before = shop.snapshot()
    response = await shop.client.post("/notifications/payment", content=payload, headers=headers)
    # the channel signs only its stale forgery with the real secret
    expected = refusal_codes(kind, signed_with_secret=kind is ForgeryKind.STALE_TIMESTAMP)
    assert response.status_code == 400
    assert response.json()["error"] in expected
    assert shop.snapshot() == before


@pytest.mark.parametrize("secret", [SECRET, None])
@pytest.mark.parametrize("kind", FORGERY_KINDS)
async def test_a_load_generator_forgery_is_refused_with_the_code_its_kind_maps_to(
    shop: Shop, kind: ForgeryKind, secret: str | None
) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    assert (await shop.notify(order)).status_code == 200
    txn_id = _genuine_body(shop, order)["txn_id"]
    known = load_forgery.KnownOrder(
        order["order_id"], order["payment_id"], order["amount"], txn_id=txn_id
    )
    forged = load_forgery.forge(kind, known, secret=secret, rng=random.Random(7))
    before = shop.snapshot()
    response = await shop.client.post(
        "/notifications/payment",
        content=forged.body,
        headers={**forged.headers, "Content-Type": "application/json"},
    )
    signed_with_secret = secret is not None and kind is not ForgeryKind.WRONG_KEY
    assert forged.kind == kind.value
    assert response.status_code == 400
    assert response.json()["error"] in refusal_codes(kind, signed_with_secret=signed_with_secret)
    assert shop.snapshot() == before


async def test_notification_for_unknown_order_is_404(shop: Shop) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    before = shop.snapshot()
    response = await shop.notify({**order, "order_id": "o-unknown"})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_order"
    assert shop.snapshot() == before


async def test_notification_naming_another_orders_payment_is_404(shop: Shop) -> None:
    order = await shop.placed("k-1")
    other = await shop.placed("k-2")
    shop.channel.pay(other["payment_id"])
    before = shop.snapshot()
    response = await shop.notify({**order, "payment_id": other["payment_id"]})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_payment"
    assert shop.snapshot() == before


async def test_replayed_notify_id_with_altered_content_is_refused(shop: Shop) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    assert (await shop.notify(order)).status_code == 200
    before = shop.snapshot()
    response = await shop.notify(order, txn_id="txn-forged")
    assert response.status_code == 400
    assert response.json()["error"] == "notify_replayed_altered"
    assert shop.snapshot() == before
    (rejection,) = shop.table("notification_rejections")
    assert rejection["notify_id"] == "n-1"


async def test_notification_for_closed_order_schedules_a_refund(shop_factory: Any) -> None:
    shop = await shop_factory(close_after_s=0.0)
    order = await shop.placed()
    await workers.sweep_orders_once(shop.service)
    assert shop.order(order["order_id"])["status"] == "CLOSED"
    shop.channel.pay(order["payment_id"], after_close=True)

    response = await shop.notify(order)
    assert response.status_code == 200
    assert shop.order(order["order_id"])["status"] == "CLOSED"
    (refund,) = shop.table("refunds")
    assert refund["reason"] == "paid_after_close"
    assert shop.outbox(order["order_id"]) == ["cancel", "refund"]

    await workers.relay_outbox_once(shop.service)
    assert shop.channel.payments[order["payment_id"]]["refunded"] == order["amount"]
    assert shop.inventory.state_of(order["order_id"]) == "CANCELLED"


# workers -----------------------------------------------------------------------------------


async def test_active_query_completes_a_paid_order_without_notification(
    shop_factory: Any,
) -> None:
    shop = await shop_factory(query_after_s=0.0)
    order = await shop.placed()
    await workers.sweep_orders_once(shop.service)
    assert shop.order(order["order_id"])["status"] == "AWAITING_PAYMENT"  # not paid yet

    shop.channel.pay(order["payment_id"])
    shop.service.store.conn.execute("UPDATE orders SET next_check_at=0")
    await workers.sweep_orders_once(shop.service)
    assert shop.order(order["order_id"])["status"] == "PAID"
    assert shop.transitions(order["order_id"])[-1] == ("AWAITING_PAYMENT", "PAID", "query")
    assert shop.outbox(order["order_id"]) == ["confirm"]

    assert (await shop.notify(order)).status_code == 200  # the late notification: no effect
    assert shop.outbox(order["order_id"]) == ["confirm"]


async def test_timeout_close_closes_payment_and_cancels_reservation(shop_factory: Any) -> None:
    shop = await shop_factory(close_after_s=0.0)
    order = await shop.placed()
    await workers.sweep_orders_once(shop.service)
    stored = shop.order(order["order_id"])
    assert stored["status"] == "CLOSED"
    assert stored["t_final"] is not None
    assert shop.channel.payments[order["payment_id"]]["status"] == "CLOSED"
    assert shop.transitions(order["order_id"])[-1] == ("AWAITING_PAYMENT", "CLOSED", "close")

    await workers.relay_outbox_once(shop.service)
    assert shop.inventory.state_of(order["order_id"]) == "CANCELLED"
    assert shop.inventory.available["sku-1"] == 10


async def test_timeout_close_queries_first_and_completes_a_paid_order(shop_factory: Any) -> None:
    shop = await shop_factory(close_after_s=0.0)
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    await workers.sweep_orders_once(shop.service)
    assert shop.order(order["order_id"])["status"] == "PAID"
    assert shop.channel.payments[order["payment_id"]]["status"] == "SUCCEEDED"


async def test_close_waits_while_the_channel_is_down(shop_factory: Any) -> None:
    shop = await shop_factory(close_after_s=0.0)
    order = await shop.placed()
    shop.to_channel.down = True
    await workers.sweep_orders_once(shop.service)
    assert shop.order(order["order_id"])["status"] == "AWAITING_PAYMENT"
    assert shop.outbox(order["order_id"]) == []


async def test_relay_retries_until_inventory_answers(shop: Shop) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    await shop.notify(order)
    shop.to_inventory.down = True
    await workers.relay_outbox_once(shop.service)
    (row,) = shop.table("outbox")
    assert row["delivered_at"] is None
    assert row["attempts"] == 1

    shop.to_inventory.down = False
    shop.service.store.conn.execute("UPDATE outbox SET next_attempt_at=0")
    await workers.relay_outbox_once(shop.service)
    assert shop.inventory.state_of(order["order_id"]) == "CONFIRMED"


async def test_confirm_of_a_released_reservation_is_flagged_not_retried(shop: Shop) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    await shop.notify(order)
    shop.inventory.reservations[order["order_id"]]["state"] = "CANCELLED"  # e.g. the sweeper
    await workers.relay_outbox_once(shop.service)
    (row,) = shop.table("outbox")
    assert row["delivered_at"] is None
    assert row["failed_reason"] == "reservation_cancelled"
    assert "confirm_failed:reservation_cancelled" in shop.order(order["order_id"])["flags"]
    assert shop.service.store.due_outbox(time.time() + 60, 10) == []


async def test_relay_confirms_paid_orders_in_one_batch_each_row_on_its_own(shop: Shop) -> None:
    paid = [await shop.placed(f"k-{i}") for i in range(3)]
    for order in paid:
        shop.channel.pay(order["payment_id"])
        await shop.notify(order, notify_id=f"n-{order['order_id']}")
    released = paid[1]["order_id"]
    shop.inventory.reservations[released]["state"] = "CANCELLED"
    await workers.relay_outbox_once(shop.service)
    assert shop.inventory.confirm_batches == [[o["order_id"] for o in paid]]
    rows = {r["order_id"]: r for r in shop.table("outbox")}
    for order in (paid[0], paid[2]):
        assert rows[order["order_id"]]["delivered_at"] is not None
        assert shop.order(order["order_id"])["t_final"] is not None
    assert rows[released]["delivered_at"] is None
    assert rows[released]["failed_reason"] == "reservation_cancelled"
    assert shop.order(released)["flags"] == ("confirm_failed:reservation_cancelled",)


async def test_relay_batch_lost_answer_retries_every_row(shop: Shop) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    await shop.notify(order)
    shop.to_inventory.lose_answer_to = ("POST", "/reservations/confirm")
    await workers.relay_outbox_once(shop.service)
    (row,) = shop.table("outbox")
    assert (row["delivered_at"], row["attempts"]) == (None, 1)
    shop.service.store.conn.execute("UPDATE outbox SET next_attempt_at=0")
    await workers.relay_outbox_once(shop.service)  # the confirm is idempotent: replayed
    (row,) = shop.table("outbox")
    assert row["delivered_at"] is not None
    assert len(shop.inventory.confirm_batches) == 2


async def test_relay_wakes_when_an_outbox_row_commits(shop: Shop) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    # a tick far longer than the test: only the commit's wake-up can deliver the confirm
    shop.service.settings = dataclasses.replace(shop.service.settings, worker_tick_s=3600.0)
    relay = asyncio.create_task(workers.relay_forever(shop.service))
    try:
        await asyncio.sleep(0.05)  # the first (empty) pass, then it waits for work
        assert shop.inventory.confirm_batches == []
        await shop.notify(order)
        for _ in range(500):  # bounded: without the wake-up the relay sleeps for an hour
            if shop.inventory.confirm_batches:
                break
            await asyncio.sleep(0.01)
    finally:
        relay.cancel()
    assert shop.inventory.confirm_batches == [[order["order_id"]]]


async def test_reconciliation_applies_a_bill_page_in_one_transaction(shop: Shop) -> None:
    orders = [await shop.placed(f"k-{i}") for i in range(4)]
    for order in orders:
        shop.channel.pay(order["payment_id"])  # notifications lost: the bill completes them
    begins: list[str] = []
    shop.service.store.conn.set_trace_callback(
        lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None
    )
    await workers.reconcile_once(shop.service)
    shop.service.store.conn.set_trace_callback(None)
    assert all(shop.order(o["order_id"])["status"] == "PAID" for o in orders)
    # one for the page (charges, repairs, cursor) and one for the unfunded check
    assert len(begins) == 2


async def test_reconciliation_completes_orphan_and_refunds_closed(shop_factory: Any) -> None:
    shop = await shop_factory()
    orphan = await shop.placed("k-orphan")
    late = await shop.placed("k-late")
    shop.channel.pay(orphan["payment_id"])  # notification lost
    await shop.service.close_expired(late["order_id"])
    shop.channel.pay(late["payment_id"], after_close=True)

    await workers.reconcile_once(shop.service)
    assert shop.order(orphan["order_id"])["status"] == "PAID"
    assert shop.transitions(orphan["order_id"])[-1] == ("AWAITING_PAYMENT", "PAID", "reconcile")
    assert shop.order(late["order_id"])["status"] == "CLOSED"
    (refund,) = shop.table("refunds")
    assert refund["order_id"] == late["order_id"]

    before = shop.snapshot()
    await workers.reconcile_once(shop.service)  # the cursor moved on: nothing new to do
    assert shop.snapshot() == before
    assert shop.service.store.recon_cursor() == 2

    await workers.relay_outbox_once(shop.service)
    assert shop.channel.payments[late["payment_id"]]["refunded"] == late["amount"]
    assert not any("unfunded" in shop.order(o["order_id"])["flags"] for o in (orphan, late))


async def test_workers_run_in_the_lifespan(shop_factory: Any, tmp_path: Any) -> None:
    shop = await shop_factory()
    settings = dataclasses.replace(shop.service.settings, db_path=str(tmp_path / "life.db"))
    app = create_app(settings, peers=Peers(shop.to_inventory, shop.to_channel))
    async with app.router.lifespan_context(app):
        assert len(app.state.service.store.count_by_state()) == 0


# malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sku": "sku-1", "qty": 0, "amount": 100}, "qty"),
        ({"sku": "sku-1", "qty": 1001, "amount": 100}, "qty"),
        ({"sku": "sku-1", "qty": "2", "amount": 100}, "qty"),
        ({"sku": "sku-1", "qty": 1, "amount": -5}, "amount"),
        ({"sku": "sku-1", "qty": 1, "amount": 100_000_001}, "amount"),
        ({"sku": "bad sku!", "qty": 1, "amount": 100}, "sku"),
        ({"sku": "sku-1", "qty": 1}, "amount"),
        ({"sku": "sku-1", "qty": 1, "amount": 100, "coupon": "x"}, "coupon"),
    ],
)
async def test_malformed_order_names_the_field_and_changes_nothing(
    shop: Shop, body: dict[str, Any], field: str
) -> None:
    response = await shop.place(body=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == "invalid_request"
    assert field in [problem["field"] for problem in error["fields"]]
    assert shop.snapshot()["orders"] == []
    assert shop.channel.payments == {}


async def test_non_json_order_body_is_refused(shop: Shop) -> None:
    response = await shop.client.post(
        "/orders",
        content=b"{not json",
        headers={"Idempotency-Key": "k-1", "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert shop.table("orders") == []


async def test_unknown_order_is_404(shop: Shop) -> None:
    response = await shop.client.get("/orders/o-missing")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_order"


async def test_get_order_returns_it(shop: Shop) -> None:
    order = await shop.placed()
    response = await shop.client.get(f"/orders/{order['order_id']}")
    assert response.status_code == 200
    assert response.json() == order


# audit export and metrics ------------------------------------------------------------------


async def test_audit_export_needs_the_admin_token(shop: Shop) -> None:
    await shop.placed()
    assert (await shop.client.get("/audit/export")).status_code == 401
    response = await shop.client.get("/audit/export", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    records = [json.loads(line) for line in response.text.splitlines()]
    types = {r["type"] for r in records}
    assert {"order", "transition"} <= types
    (order,) = [r for r in records if r["type"] == "order"]
    assert set(order) == {
        "type", "order_id", "idempotency_key", "sku", "qty", "amount", "status",
        "payment_id", "txn_id", "created_at", "t_paid", "t_final", "trace_id", "flags",
    }  # fmt: skip


async def test_metrics_expose_business_counters(shop: Shop) -> None:
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    await shop.notify(order)
    await workers.relay_outbox_once(shop.service)
    text = (await shop.client.get("/metrics")).text
    assert 'chaosbed_orders_total{state="PAID"}' in text
    assert 'chaosbed_notifications_received_total{outcome="accepted"}' in text
    assert "chaosbed_outbox_pending 0.0" in text
    assert 'chaosbed_orders_by_state{state="PAID"} 1.0' in text


# planted bugs ------------------------------------------------------------------------------


async def test_bug_notify_not_idempotent_pays_twice(shop_factory: Any) -> None:
    shop = await shop_factory(bugs=frozenset({"notify-not-idempotent"}))
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    assert (await shop.notify(order)).status_code == 200
    assert (await shop.notify(order)).status_code == 200
    paid = [t for t in shop.transitions(order["order_id"]) if t[1] == "PAID"]
    assert len(paid) == 2
    assert shop.outbox(order["order_id"]) == ["confirm", "confirm"]


async def test_bug_skip_signature_check_accepts_forgery(shop_factory: Any) -> None:
    shop = await shop_factory(bugs=frozenset({"skip-signature-check"}))
    order = await shop.placed()
    response = await shop.notify(order, txn_id="txn-forged", secret="not-the-secret")
    assert response.status_code == 200
    assert shop.order(order["order_id"])["status"] == "PAID"
    await workers.reconcile_once(shop.service)  # the bill shows no charge for it
    assert "unfunded" in shop.order(order["order_id"])["flags"]


async def test_bug_ack_before_commit_answers_before_the_commit(shop_factory: Any) -> None:
    shop = await shop_factory(bugs=frozenset({"ack-before-commit"}))
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])
    response = await shop.notify(order)
    assert response.status_code == 200
    # acknowledged, yet nothing is committed: a SIGKILL now loses the payment
    assert shop.order(order["order_id"])["status"] == "AWAITING_PAYMENT"
    assert shop.table("inbox") == []
    await shop.service.aclose()


async def test_bug_no_refund_on_late_pay_keeps_the_money(shop_factory: Any) -> None:
    shop = await shop_factory(bugs=frozenset({"no-refund-on-late-pay"}), close_after_s=0.0)
    order = await shop.placed()
    await workers.sweep_orders_once(shop.service)
    shop.channel.pay(order["payment_id"], after_close=True)
    assert (await shop.notify(order)).status_code == 200
    assert shop.table("refunds") == []
    assert "refund" not in shop.outbox(order["order_id"])
    (inbox,) = shop.table("inbox")
    assert inbox["outcome"] == "ignored"


async def test_bug_no_active_query_leaves_the_charge_orphaned(shop_factory: Any) -> None:
    shop = await shop_factory(
        bugs=frozenset({"no-active-query"}), query_after_s=0.0, close_after_s=0.0
    )
    order = await shop.placed()
    shop.channel.pay(order["payment_id"])  # notification lost
    await workers.sweep_orders_once(shop.service)
    assert shop.order(order["order_id"])["status"] == "AWAITING_PAYMENT"
    assert shop.channel.charges(order["order_id"])  # charged, never recovered


async def test_bug_new_payment_on_retry_allows_a_double_charge(shop_factory: Any) -> None:
    shop = await shop_factory(bugs=frozenset({"new-payment-on-retry"}))
    first = await shop.placed()
    shop.channel.pay(first["payment_id"])  # the shopper paid, then the client retried
    again = await shop.place()
    assert again.status_code == 200
    second_payment = again.json()["payment_id"]
    assert second_payment != first["payment_id"]
    assert shop.channel.payments[second_payment]["merchant_order_id"] == (
        f"{first['order_id']}:retry-1"
    )
    shop.channel.pay(second_payment)
    assert len(shop.channel.charges(first["order_id"])) == 2


async def test_without_bugs_a_retry_reuses_the_payment(shop: Shop) -> None:
    first = await shop.placed()
    shop.channel.pay(first["payment_id"])
    again = await shop.place()
    assert again.json()["payment_id"] == first["payment_id"]
    assert len(shop.channel.payments) == 1


# schema fuzzing ----------------------------------------------------------------------------


def _fuzzed_app() -> FastAPI:
    peers = Peers(
        Link(FakeInventory({"sku-1": 1000}).app, "inventory"), Link(FakeChannel().app, "channel")
    )
    settings = dataclasses.replace(_settings_base(), db_path=":memory:")
    return create_app(settings, peers=peers, run_workers=False)


order_api = schemathesis.openapi.from_asgi("/openapi.json", _fuzzed_app())
FUZZ = hypothesis.settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
# positive-data acceptance does not fit: the service is stateful (a reused key with another
# body is refused) and a notification needs a signature the fuzzer cannot make
NOT_CHECKED = [schemathesis.checks.positive_data_acceptance]


@order_api.parametrize()
@FUZZ
def test_api_answers_match_the_schema(case: schemathesis.Case) -> None:
    """No 5xx, and every answer (incl. 4xx) is declared in the OpenAPI document."""
    case.call_and_validate(
        headers={"Authorization": f"Bearer {ADMIN}"}, excluded_checks=NOT_CHECKED
    )


@order_api.parametrize()
@FUZZ
def test_api_answers_match_the_schema_without_token(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=NOT_CHECKED)
