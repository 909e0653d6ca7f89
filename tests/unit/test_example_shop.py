"""The example target examples/shop, in-process against chaosbed's real channel and inventory.

The channel and inventory apps are served by uvicorn on loopback ports, the shop by aiohttp on
another, so every call the shop makes is the documented HTTP API, and the channel's own notifier
delivers the signed notifications.  The shop's workers are driven by calling `Shop.tick`; time
passing is simulated by ageing an order's row (no sleeping until a timeout).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web

from examples.shop import shop
from examples.shop.adapter import STATUSES, ShopAdapter
from loadtests.adapter import KNOWN_STATUSES, PlainHttp, Result, load_adapter
from loadtests.target import load_target, render
from services.channel.app import create_app as channel_app
from services.common.settings import Settings
from services.common.signing import SIGNATURE_HEADER, sign
from services.inventory.app import create_app as inventory_app
from slos.records import load_run

pytestmark = pytest.mark.anyio

SECRET = "shop-test-secret"
ADMIN = "shop-test-admin"
ROOT = Path(__file__).resolve().parents[2]
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@contextlib.asynccontextmanager
async def _uvicorn(app: Any, sock: socket.socket) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@dataclass
class Rig:
    shop: shop.Shop
    url: str
    channel: str
    inventory: str
    http: aiohttp.ClientSession

    async def send(
        self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self.http.request(method, url, json=body, headers=headers) as reply:
            text = await reply.text()
            is_json = reply.content_type == "application/json"
            return reply.status, json.loads(text) if is_json else text

    async def place(self, key: str, qty: int = 1, total: int = 1000, sku: str = "sku-1") -> Any:
        body = {"client_key": key, "sku": sku, "quantity": qty, "total_cents": total}
        return await self.send("POST", f"{self.url}/api/orders", body)

    async def order(self, order_id: str) -> dict[str, Any]:
        status, body = await self.send("GET", f"{self.url}/api/orders/{order_id}")
        assert status == 200, body
        return dict(body)

    async def pay(self, payment_id: str) -> tuple[int, Any]:
        return await self.send("POST", f"{self.channel}/payments/{payment_id}/pay", {})

    async def payment(self, payment_id: str) -> dict[str, Any]:
        status, body = await self.send("GET", f"{self.channel}/payments/{payment_id}")
        assert status == 200, body
        return dict(body)

    async def knobs(self, **knobs: Any) -> None:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        status, body = await self.send("PUT", f"{self.channel}/admin/behaviour", knobs, admin)
        assert status == 200, body

    async def export(self, base: str) -> list[dict[str, Any]]:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        status, text = await self.send("GET", f"{base}/audit/export", headers=admin)
        assert status == 200, text
        return [json.loads(line) for line in text.splitlines() if line]

    async def stock_events(self, order_id: str) -> list[str]:
        events = [r for r in await self.export(self.inventory) if r["type"] == "event"]
        return [e["kind"] for e in events if e["order_id"] == order_id]

    async def ledger(self, order_id: str) -> list[str]:
        records = await self.export(self.channel)
        return [
            r["kind"]
            for r in records
            if r["type"] == "ledger"
            and r["merchant_order_id"] == order_id
            and r["status"] == "succeeded"
        ]

    def age(self, order_id: str, seconds: float = 1000.0) -> None:
        """As if the order had been placed `seconds` earlier (its timers due now)."""
        self.shop.store.db.execute(
            "UPDATE orders SET created_at = created_at - ?, next_check_at = 0 WHERE id = ?",
            (seconds, order_id),
        )

    async def until(self, predicate: Callable[[], Any], what: str) -> None:
        """Tick the shop's workers until `predicate()` (awaited) is true; 10 s at most."""
        deadline = time.monotonic() + 10.0
        while not await predicate():
            assert time.monotonic() < deadline, f"never happened: {what}"
            await self.shop.tick()
            await asyncio.sleep(0.05)

    async def state_is(self, order_id: str, state: str) -> None:
        async def reached() -> bool:
            return (await self.order(order_id))["state"] == state

        await self.until(reached, f"order {order_id} {state}")


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    bug: str = "",
    inventory_url: str | None = None,
    db: str = "shop.db",
    admin_token: str = ADMIN,
) -> AsyncIterator[Rig]:
    shop_sock, channel_sock, inventory_sock = _socket(), _socket(), _socket()
    shop_url = f"http://127.0.0.1:{shop_sock.getsockname()[1]}"
    channel_url = f"http://127.0.0.1:{channel_sock.getsockname()[1]}"
    inventory_base = f"http://127.0.0.1:{inventory_sock.getsockname()[1]}"
    common = {"admin_token": ADMIN, "notify_secret": SECRET, "time_scale": 0.01}
    channel = channel_app(
        Settings(
            service="channel",
            db_path=str(tmp_path / "channel.db"),
            notify_url=f"{shop_url}/hooks/payment",
            **common,
        )
    )
    inventory = inventory_app(
        Settings(service="inventory", db_path=str(tmp_path / "inventory.db"), **common),
        seed_stock={"sku-1": 100, "sku-2": 1},
    )
    config = shop.Config(
        host="127.0.0.1",
        port=shop_sock.getsockname()[1],
        db=str(tmp_path / db),
        channel_url=channel_url,
        inventory_url=inventory_url or inventory_base,
        notify_secret=SECRET,
        query_after_s=2.0,
        close_after_s=10.0,
        tick_s=0.05,
        reconcile_every_s=3600.0,  # bills are read only where a test calls reconcile()
        bug=bug,
        admin_token=admin_token,
    )
    app = shop.create_app(config, workers=False)
    runner = web.AppRunner(app)
    async with _uvicorn(channel, channel_sock), _uvicorn(inventory, inventory_sock):
        await runner.setup()
        await web.SockSite(runner, shop_sock).start()
        try:
            async with aiohttp.ClientSession() as http:
                yield Rig(app[shop.SHOP], shop_url, channel_url, inventory_base, http)
        finally:
            await runner.cleanup()


def signed(body: dict[str, Any], *, secret: str = SECRET, age_s: int = 0) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    timestamp = int(time.time()) - age_s
    return {"data": raw, "headers": {SIGNATURE_HEADER: sign(secret, timestamp, raw)}}


# --- placing orders ------------------------------------------------------------------------


async def test_an_order_reserves_stock_and_creates_its_payment(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        status, order = await r.place("key-1", qty=2, total=2500)
        assert status == 201, order
        assert order["state"] == "awaiting_payment"
        payment = await r.payment(order["payment_id"])
        assert (payment["merchant_order_id"], payment["amount"]) == (order["id"], 2500)
        assert await r.stock_events(order["id"]) == ["try"]
        again_status, again = await r.place("key-1", qty=2, total=2500)
        assert (again_status, again["id"], again["payment_id"]) == (
            200,
            order["id"],
            order["payment_id"],
        )
        assert await r.stock_events(order["id"]) == ["try"]  # a replay reserves nothing more


async def test_a_key_reused_for_another_order_and_bad_input_are_refused(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.place("key-1")
        status, body = await r.place("key-1", qty=3)
        assert (status, body["error"]) == (409, "key_reused")
        status, body = await r.send(
            "POST", f"{r.url}/api/orders", {"client_key": "k", "sku": "sku-1", "quantity": "1"}
        )
        assert status == 422
        assert body["detail"] == "bad or missing: quantity, total_cents"


async def test_out_of_stock_is_rejected_without_a_payment(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        _, first = await r.place("key-1", sku="sku-2")
        status, second = await r.place("key-2", sku="sku-2")
        assert first["state"] == "awaiting_payment"
        assert (status, second["state"], second["payment_id"]) == (201, "rejected", None)
        assert second["reason"] == "out_of_stock"


async def test_an_order_whose_peer_was_down_resumes_on_retry(tmp_path: Path) -> None:
    async with rig(tmp_path, inventory_url="http://127.0.0.1:9") as r:
        status, body = await r.place("key-1")
        assert (status, body["error"]) == (503, "dependency_down")
        row = r.shop.store.order_by_key("key-1")
        assert row is not None and row["state"] == "new"
    # the same database, the inventory back: the shopper's retry carries the order on
    async with rig(tmp_path) as r:
        status, body = await r.place("key-1")
        assert status == 200, body
        assert (body["id"], body["state"]) == (row["id"], "awaiting_payment")
        assert await r.stock_events(body["id"]) == ["try"]


async def test_an_abandoned_new_order_is_rejected_and_its_stock_released(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        _, order = await r.place("key-1")
        # as if the shop had crashed between creating the payment and recording it
        r.shop.store.db.execute(
            "UPDATE orders SET state = 'new', payment_id = NULL WHERE id = ?", (order["id"],)
        )
        r.age(order["id"])
        await r.state_is(order["id"], "rejected")
        assert (await r.payment(order["payment_id"]))["status"] == "CLOSED"

        async def released() -> bool:
            return await r.stock_events(order["id"]) == ["try", "cancel"]

        await r.until(released, "the reservation cancelled")


# --- notifications -------------------------------------------------------------------------


async def test_a_paid_order_is_paid_once_and_its_stock_confirmed_once(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.knobs(notify_duplicate_rate=1.0)  # every notification sent twice, concurrently
        _, order = await r.place("key-1")
        status, paid = await r.pay(order["payment_id"])
        assert status == 200, paid
        await r.state_is(order["id"], "paid")

        async def confirmed() -> bool:
            return "confirm" in await r.stock_events(order["id"])

        await r.until(confirmed, "stock confirmed")
        for _ in range(5):
            await r.shop.tick()
        assert (await r.order(order["id"]))["txn_id"] == paid["txn_id"]
        assert await r.stock_events(order["id"]) == ["try", "confirm"]
        assert await r.ledger(order["id"]) == ["charge"]
        received = r.shop.store.db.execute("SELECT count(*) FROM webhooks").fetchone()[0]
        assert received == 1


async def test_forged_and_replayed_notifications_change_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.knobs(notify_drop_rate=1.0)
        _, order = await r.place("key-1")
        body = {
            "notify_id": "n-1",
            "payment_id": order["payment_id"],
            "merchant_order_id": order["id"],
            "txn_id": "txn-forged",
            "amount": 1000,
            "status": "SUCCEEDED",
            "paid_at": time.time(),
        }
        hook = f"{r.url}/hooks/payment"
        raw = json.dumps(body).encode()
        cases = {
            "unsigned": ({"data": raw}, "bad_signature"),
            "wrong key": (signed(body, secret="guessed"), "bad_signature"),
            "stale": (signed(body, age_s=3600), "stale_timestamp"),
            "other amount": (signed({**body, "amount": 999}), "amount_mismatch"),
            "other payment": (signed({**body, "payment_id": "pay-x"}), "unknown_payment"),
            "not paid": (signed({**body, "status": "CLOSED"}), "unsupported_status"),
        }
        for name, (request, code) in cases.items():
            async with r.http.post(hook, **request) as reply:
                answer = await reply.json()
                assert (reply.status, answer["error"]) == (
                    400 if "payment" not in name else 404,
                    code,
                ), name
        assert (await r.order(order["id"]))["state"] == "awaiting_payment"
        # a genuine-looking one is taken in; its replay with another amount is not
        async with r.http.post(hook, **signed(body)) as reply:
            assert reply.status == 200
        async with r.http.post(hook, **signed({**body, "txn_id": "txn-2"})) as reply:
            assert (reply.status, (await reply.json())["error"]) == (400, "replayed_altered")
        charges = r.shop.store.db.execute("SELECT txn_id FROM charges").fetchall()
        assert [c[0] for c in charges] == ["txn-forged"]


async def test_the_signature_check_agrees_with_the_channels_signing() -> None:
    raw = b'{"a":1}'
    now = time.time()
    shop.check_signature(SECRET, sign(SECRET, int(now), raw), raw, now=now, tolerance_s=300)
    with pytest.raises(shop.BadSignature, match="does not match"):
        shop.check_signature(
            SECRET, sign(SECRET, int(now), raw), raw + b" ", now=now, tolerance_s=300
        )
    with pytest.raises(shop.BadSignature, match="malformed"):
        shop.check_signature(SECRET, "v1=abc", raw, now=now, tolerance_s=300)


# --- late notifications, timeouts, late charges ----------------------------------------------


async def test_a_lost_notification_is_recovered_by_asking_the_channel(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.knobs(notify_drop_rate=1.0)
        _, order = await r.place("key-1")
        await r.pay(order["payment_id"])
        await r.shop.tick()
        assert (await r.order(order["id"]))["state"] == "awaiting_payment"  # not due yet
        r.age(order["id"], 3.0)
        await r.state_is(order["id"], "paid")

        async def confirmed() -> bool:
            return await r.stock_events(order["id"]) == ["try", "confirm"]

        await r.until(confirmed, "stock confirmed")
        learnt = r.shop.store.db.execute("SELECT learnt_from FROM charges").fetchone()[0]
        assert learnt == "query"


async def test_an_unpaid_order_is_closed_and_its_stock_released(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        _, order = await r.place("key-1")
        r.age(order["id"], 3.0)
        for _ in range(3):
            await r.shop.tick()
        assert (await r.order(order["id"]))["state"] == "awaiting_payment"  # queried, not due
        r.age(order["id"])
        await r.state_is(order["id"], "closed")
        assert (await r.payment(order["payment_id"]))["status"] == "CLOSED"

        async def released() -> bool:
            return await r.stock_events(order["id"]) == ["try", "cancel"]

        await r.until(released, "the reservation cancelled")


async def test_a_charge_after_close_is_refunded(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.knobs(accept_pay_after_close=True)
        _, order = await r.place("key-1")
        r.age(order["id"])
        await r.state_is(order["id"], "closed")
        status, _ = await r.pay(order["payment_id"])
        assert status == 200  # the channel took the money anyway

        async def refunded() -> bool:
            return (await r.payment(order["payment_id"]))["status"] == "REFUNDED"

        await r.until(refunded, "the late charge refunded")
        assert await r.ledger(order["id"]) == ["close", "charge", "refund"]
        assert (await r.order(order["id"]))["state"] == "closed"


async def test_a_late_charge_whose_notification_was_lost_is_found_in_the_bills(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        await r.knobs(accept_pay_after_close=True, notify_drop_rate=1.0)
        _, order = await r.place("key-1")
        r.age(order["id"])
        await r.state_is(order["id"], "closed")
        status, _ = await r.pay(order["payment_id"])
        assert status == 200
        for _ in range(3):
            await r.shop.tick()
        # no notification, and a closed order is not queried: only the bills tell
        assert await r.ledger(order["id"]) == ["close", "charge"]
        await r.shop.reconcile()

        async def refunded() -> bool:
            return (await r.payment(order["payment_id"]))["status"] == "REFUNDED"

        await r.until(refunded, "the late charge found in the bills and refunded")
        assert await r.ledger(order["id"]) == ["close", "charge", "refund"]
        learnt = r.shop.store.db.execute("SELECT learnt_from FROM charges").fetchone()[0]
        assert learnt == "bill"
        await r.shop.reconcile()  # the cursor moved on: read twice, refunded once
        for _ in range(3):
            await r.shop.tick()
        assert await r.ledger(order["id"]) == ["close", "charge", "refund"]


# --- the planted bug -----------------------------------------------------------------------


@pytest.mark.parametrize(("bug", "final"), [("", "paid"), ("no-query-on-timeout", "closed")])
async def test_the_bug_switch_closes_a_paid_order_whose_notification_was_lost(
    tmp_path: Path, bug: str, final: str
) -> None:
    async with rig(tmp_path, bug=bug) as r:
        await r.knobs(notify_drop_rate=1.0)
        _, order = await r.place("key-1")
        await r.pay(order["payment_id"])
        r.age(order["id"])
        await r.state_is(order["id"], final)
        # what the black-box audit sees: a charge kept by the channel, and the order's state
        assert await r.ledger(order["id"]) == ["charge"]


# --- configuration and independence --------------------------------------------------------


def test_configuration_errors_name_the_variable() -> None:
    env = {"PAYMENT_API_URL": "http://c", "INVENTORY_URL": "http://i", "NOTIFY_SECRET": "s"}
    assert shop.Config.from_env({**env, "SHOP_CLOSE_AFTER_S": "12"}).close_after_s == 12.0
    for change, message in [
        ({"NOTIFY_SECRET": ""}, "NOTIFY_SECRET is not set"),
        ({"PORT": "99999"}, "PORT='99999' is not a TCP port"),
        ({"SHOP_QUERY_AFTER_S": "soon"}, "SHOP_QUERY_AFTER_S='soon' is not a number"),
        ({"SHOP_BUG": "typo"}, "SHOP_BUG='typo' is unknown; known: no-query-on-timeout"),
    ]:
        with pytest.raises(shop.ConfigError, match=message.replace("(", r"\(")):
            shop.Config.from_env({**env, **change})


def test_the_shop_imports_nothing_of_chaosbed() -> None:
    tree = ast.parse((ROOT / "examples/shop/shop.py").read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert imported & ours == set()
    assert "aiohttp" in imported and "sqlite3" in imported


# --- the adapter, against the real shop ----------------------------------------------------


async def test_the_adapter_maps_the_shop_onto_chaosbeds_operations(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        adapter = ShopAdapter(PlainHttp(r.url), {"health_path": "/health"})

        def place(key: str, sku: str = "sku-1", qty: int = 1) -> Result:
            return adapter.place_order(key=key, sku=sku, qty=qty, amount=700, traceparent=TRACE)

        placed = await asyncio.to_thread(place, "key-1")
        assert placed.type == "ok" and placed.order is not None, placed
        assert (placed.order.status, placed.order.amount) == ("AWAITING_PAYMENT", 700)
        assert placed.order.payment_id == (await r.order(placed.order.order_id))["payment_id"]
        again = await asyncio.to_thread(place, "key-1")
        assert again.order is not None and again.order.order_id == placed.order.order_id
        reused = await asyncio.to_thread(place, "key-1", qty=2)
        assert (reused.type, reused.http_status) == ("fail", 409)
        sold_out = [await asyncio.to_thread(place, f"key-s{i}", "sku-2") for i in range(2)]
        assert [s.order.status for s in sold_out if s.order] == ["AWAITING_PAYMENT", "REJECTED"]

        await r.pay(placed.order.payment_id or "")
        await r.state_is(placed.order.order_id, "paid")
        read = await asyncio.to_thread(adapter.read_order, placed.order.order_id)
        assert read.order is not None and read.order.status == "PAID"
        missing = await asyncio.to_thread(adapter.read_order, "shop-nope")
        assert (missing.type, missing.http_status) == ("fail", 404)
        health = await asyncio.to_thread(adapter.check_health)
        assert health.type == "ok"


async def test_the_adapter_answers_info_when_the_shop_cannot_tell(tmp_path: Path) -> None:
    async with rig(tmp_path, inventory_url="http://127.0.0.1:9") as r:
        adapter = ShopAdapter(PlainHttp(r.url), {})
        result = await asyncio.to_thread(
            adapter.place_order, key="key-1", sku="sku-1", qty=1, amount=700
        )
        assert (result.type, result.http_status) == ("info", 503)


def test_every_shop_state_has_a_chaosbed_status() -> None:
    states = {shop.NEW, shop.AWAITING, *shop.FINAL}
    assert set(STATUSES) == states
    assert {STATUSES[s] for s in shop.FINAL} <= KNOWN_STATUSES


# --- the target file -----------------------------------------------------------------------


def test_chaosbed_targets_lists_the_example_beside_bundled() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chaosbed", "targets"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    assert {"bundled", "example-shop", "example-shop-blackbox"} <= set(names)


def test_the_target_file_starts_the_shop_with_the_scenarios_timings(tmp_path: Path) -> None:
    target = load_target(ROOT / "examples/shop/target.yaml")
    assert (target.started, target.export, target.notify_path) == (True, True, "/hooks/payment")
    assert target.start is not None and target.start.env["SHOP_ADMIN_TOKEN"] == "{admin_token}"
    blackbox = load_target(ROOT / "examples/shop/target-blackbox.yaml")
    assert blackbox.start is not None and not blackbox.export
    # the same shop, started the same way, only without its export
    assert blackbox.start.command == target.start.command
    assert blackbox.start.env == {
        k: v for k, v in target.start.env.items() if k != "SHOP_ADMIN_TOKEN"
    }
    assert load_adapter(target.adapter, target.base_dir).__name__ == "ShopAdapter"
    assert target.start is not None
    values = {
        "python": sys.executable,
        "target_dir": str(ROOT / "examples/shop"),
        "admin_token": "t",
    }
    argv = [render(part, values) for part in target.start.command]
    env = {
        **{
            name: render(
                value,
                {
                    **values,
                    "port": "1",
                    "db_dir": str(tmp_path),
                    "channel": "http://c",
                    "inventory": "http://i",
                    "notify_secret": "s",
                },
            )
            for name, value in target.start.env.items()
        },
        "CHAOSBED_QUERY_AFTER_S": "1.5",  # as a scenario's `services:` passes them
        "CHAOSBED_CLOSE_AFTER_S": "7",
        "PATH": "/usr/bin:/bin",
    }
    # the same command, with the shop swapped for a script printing what it was given
    probe = "import os; print(os.environ['SHOP_QUERY_AFTER_S'], os.environ['SHOP_CLOSE_AFTER_S'])"
    argv = [part.replace("shop.py", "-c " + shlex.quote(probe)) for part in argv]
    done = subprocess.run(
        argv, cwd=ROOT / "examples/shop", env=env, capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout.split()) == (0, ["1.5", "7"]), done.stderr
    defaults = {k: v for k, v in env.items() if not k.startswith("CHAOSBED_")}
    done = subprocess.run(
        argv, cwd=ROOT / "examples/shop", env=defaults, capture_output=True, text=True, check=False
    )
    assert done.stdout.split() == ["2", "10"], done.stderr


# --- the audit export (the opt-in to chaosbed's full audit) --------------------------------


async def test_the_export_needs_the_admin_token_and_is_off_without_one(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        status, _ = await r.send("GET", f"{r.url}/audit/export")
        assert status == 401
        bad = {"Authorization": "Bearer guessed"}
        assert (await r.send("GET", f"{r.url}/audit/export", headers=bad))[0] == 401
        assert len(await r.export(r.url)) == 0
    async with rig(tmp_path, admin_token="", db="other.db") as r:
        status, body = await r.send("GET", f"{r.url}/audit/export")
        assert (status, body["error"]) == (404, "not_found")


async def test_the_export_is_chaosbeds_order_records_of_what_happened(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.knobs(notify_duplicate_rate=1.0, accept_pay_after_close=True)
        _, paid = await r.place("key-paid")
        _, late = await r.place("key-late")
        await r.pay(paid["payment_id"])
        await r.state_is(paid["id"], "paid")
        r.age(late["id"])
        await r.state_is(late["id"], "closed")
        await r.pay(late["payment_id"])

        async def settled() -> bool:
            jobs = r.shop.store.db.execute("SELECT count(*) FROM jobs WHERE done_at IS NULL")
            return (await r.payment(late["payment_id"]))["status"] == "REFUNDED" and (
                jobs.fetchone()[0] == 0
            )

        await r.until(settled, "the late charge refunded and every job done")
        exports = tmp_path / "run" / "exports"
        exports.mkdir(parents=True)
        for name, base in (("order", r.url), ("channel", r.channel), ("inventory", r.inventory)):
            lines = [json.dumps(rec) for rec in await r.export(base)]
            (exports / f"{name}.ndjson").write_text("".join(f"{line}\n" for line in lines))
        (tmp_path / "run" / "history.ndjson").write_text("")
    # read by the audit's own loader, as a run's exports are
    records = load_run(tmp_path / "run")
    orders = {o.order_id: o for o in records.orders}
    assert (orders[paid["id"]].status, orders[late["id"]].status) == ("PAID", "CLOSED")
    assert orders[paid["id"]].t_paid is not None and orders[late["id"]].t_paid is None
    to_paid = [t.order_id for t in records.transitions if t.to_state == "PAID"]
    assert to_paid == [paid["id"]]  # once, though every notification came twice
    outbox = sorted(
        (o.order_id == paid["id"], o.kind, o.delivered_at is not None) for o in records.outbox
    )
    assert outbox == [(False, "cancel", True), (False, "refund", True), (True, "confirm", True)]
    acked = {n.notify_id for n in records.notifications if n.acked and not n.forged}
    assert acked and acked <= {receipt.notify_id for receipt in records.receipts}
    assert [(x.order_id, x.reason) for x in records.order_refunds] == [
        (late["id"], "paid_after_close")
    ]
    assert sorted(i.outcome or "" for i in records.inbox) == ["paid", "refund"]


def test_the_shop_and_its_adapter_agree_on_chaosbeds_statuses() -> None:
    assert shop.EXPORT_STATUS == STATUSES
