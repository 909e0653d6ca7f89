"""The channel's notifier against a real HTTP receiver on 127.0.0.1: signing, retries, knobs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.channel.app import create_app
from services.channel.behaviour import Behaviour, Knobs
from services.channel.domain import Channel
from services.channel.schedules import PRESETS, max_attempts, retry_delay_s
from services.channel.store import ChannelStore
from services.channel.workers import Delivery, Notifier, forge, http_sender
from services.common.forgery import FORGERY_KINDS, ForgeryKind
from services.common.settings import Settings
from services.common.signing import SIGNATURE_HEADER, SignatureError, verify

SECRET = "test-notify-secret"
TOLERANCE_S = 300.0


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def verify(self) -> int:
        header = self.headers.get(SIGNATURE_HEADER.lower())
        return verify(SECRET, header, self.body, now=time.time(), tolerance_s=TOLERANCE_S)

    def genuine(self) -> bool:
        try:
            self.verify()
        except SignatureError:
            return False
        return True


@dataclass
class Receiver:
    """A tiny order-side endpoint: records each POST, answers from a script (then 200)."""

    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with state.lock:
                headers = {k.lower(): v for k, v in self.headers.items()}
                state.received.append(Received(headers, body))
                status = state.statuses.pop(0) if state.statuses else 200
            payload = b'{"result":"success"}'
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the notifier opens many connections at once

    server = Server(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/notifications/payment"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def settings_for(tmp_path: Path, receiver: Receiver, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "service": "channel",
        "db_path": str(tmp_path / "channel.sqlite"),
        "notify_url": receiver.url,
        "notify_secret": SECRET,
        "signature_tolerance_s": TOLERANCE_S,
        "http_timeout_s": 2.0,
        "admin_token": "tok",
        **overrides,
    }
    return Settings(**values)


@dataclass
class Rig:
    store: ChannelStore
    behaviour: Behaviour
    channel: Channel
    settings: Settings

    def paid(self, order: str, amount: int = 1000, traceparent: str | None = None) -> str:
        view, _ = self.channel.create(order, amount, None, traceparent)
        self.channel.pay(view.payment_id)
        return view.payment_id

    def log(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.store.conn.execute("SELECT * FROM notify_log ORDER BY id")]

    def states(self) -> list[str]:
        return [r[0] for r in self.store.conn.execute("SELECT state FROM notifications")]


def make_rig(settings: Settings, **knobs: Any) -> Rig:
    store = ChannelStore.open(settings.db_path)
    behaviour = Behaviour(Knobs(**knobs), seed=7)
    return Rig(store, behaviour, Channel(store, behaviour), settings)


async def with_notifier(rig: Rig, body: Any) -> Any:
    send, client = http_sender(rig.settings)
    try:
        return await body(Notifier(rig.store, rig.behaviour, rig.settings, send))
    finally:
        await client.close()


async def drain_until_settled(notifier: Notifier, rig: Rig, deadline_s: float = 20.0) -> None:
    """Run due notifications until none is pending (bounded)."""
    deadline = time.monotonic() + deadline_s
    while "pending" in rig.states():
        assert time.monotonic() < deadline, f"still pending: {rig.log()}"
        await notifier.drain()
        next_due = rig.store.next_due_at()
        if next_due is not None:
            await asyncio.sleep(min(max(next_due - time.time(), 0.0), 1.0))


# schedules


def test_schedule_presets_are_scaled_and_end() -> None:
    assert retry_delay_s("wechat", 1, 0.01) == pytest.approx(0.15)
    assert retry_delay_s("wechat", 4, 0.01) == pytest.approx(1.8)
    assert retry_delay_s("alipay", 1, 1.0) == 240.0
    assert retry_delay_s("alipay", 7, 1.0) == 15 * 3600
    assert retry_delay_s("alipay", 8, 1.0) is None
    assert retry_delay_s("adyen", 1, 1.0) == 0.0
    assert max_attempts("adyen") == 20
    assert retry_delay_s("adyen", 19, 1.0) == 8 * 3600
    stripe = PRESETS["stripe"]
    assert list(stripe) == sorted(stripe) and sum(stripe) <= 3 * 24 * 3600
    assert [p for p in PRESETS if retry_delay_s(p, 0, 1.0) is not None] == []


# signing, forging


def test_forged_variants_all_fail_verification() -> None:
    body = {"notify_id": "n", "amount": 100, "status": "SUCCEEDED"}
    now = int(time.time())
    for kind in FORGERY_KINDS:
        payload, headers = forge(kind, body, secret=SECRET, now=now, tolerance_s=TOLERANCE_S)
        with pytest.raises(SignatureError):
            verify(SECRET, headers.get(SIGNATURE_HEADER), payload, now=now, tolerance_s=TOLERANCE_S)
    altered, _ = forge(
        ForgeryKind.ALTERED_REPLAY, body, secret=SECRET, now=now, tolerance_s=TOLERANCE_S
    )
    assert json.loads(altered)["notify_id"] == "n" and json.loads(altered)["amount"] != 100


def test_notification_is_signed_and_acked(tmp_path: Path, receiver: Receiver) -> None:
    rig = make_rig(settings_for(tmp_path, receiver))
    pid = rig.paid("o-1", 1234)

    async def run(notifier: Notifier) -> None:
        assert await notifier.drain() == 1

    asyncio.run(with_notifier(rig, run))
    assert len(receiver.received) == 1
    got = receiver.received[0]
    got.verify()
    assert got.headers["content-type"] == "application/json"
    view = rig.channel.query(pid)
    body = got.json()
    assert body == {
        "notify_id": body["notify_id"],
        "payment_id": pid,
        "merchant_order_id": "o-1",
        "txn_id": view.txn_id,
        "amount": 1234,
        "status": "SUCCEEDED",
        "paid_at": view.paid_at,
    }
    assert rig.states() == ["acked"]
    assert [(r["attempt"], r["acked"], r["status_code"]) for r in rig.log()] == [(1, 1, 200)]


def test_failed_notification_is_retried_on_the_scaled_schedule(
    tmp_path: Path, receiver: Receiver
) -> None:
    scale = 0.004  # wechat: 15 s -> 60 ms
    rig = make_rig(settings_for(tmp_path, receiver), time_scale=scale, retry_schedule="wechat")
    receiver.statuses = [500, 503]
    rig.paid("o-1")

    async def run(notifier: Notifier) -> None:
        await notifier.drain()
        assert await notifier.drain() == 0  # the retry is not due yet
        await drain_until_settled(notifier, rig)

    asyncio.run(with_notifier(rig, run))
    log = rig.log()
    assert [(r["attempt"], r["acked"], r["status_code"]) for r in log] == [
        (1, 0, 500),
        (2, 0, 503),
        (3, 1, 200),
    ]
    # an attempt is never made before its scheduled wait has passed
    assert log[1]["t"] - log[0]["t"] >= 15 * scale
    assert log[2]["t"] - log[1]["t"] >= 15 * scale
    assert all(r.genuine() for r in receiver.received)
    assert len({r.json()["notify_id"] for r in receiver.received}) == 1
    assert rig.states() == ["acked"]


def test_unreachable_receiver_schedules_the_preset_wait(tmp_path: Path, receiver: Receiver) -> None:
    settings = settings_for(tmp_path, receiver, notify_url="http://127.0.0.1:9/notify")
    rig = make_rig(settings, retry_schedule="alipay", time_scale=1.0)
    rig.paid("o-1")

    async def run(notifier: Notifier) -> None:
        await notifier.drain()
        assert await notifier.drain() == 0

    asyncio.run(with_notifier(rig, run))
    query = "SELECT attempt, next_attempt_at, state FROM notifications"
    row = rig.store.conn.execute(query).fetchone()
    log = rig.log()
    assert (row["attempt"], row["state"]) == (1, "pending")
    assert log[0]["status_code"] is None and log[0]["error"]
    assert row["next_attempt_at"] - log[0]["t"] == pytest.approx(240.0, abs=1.0)


def test_exhausted_schedule_gives_up(tmp_path: Path, receiver: Receiver) -> None:
    rig = make_rig(settings_for(tmp_path, receiver), retry_schedule="alipay", time_scale=1e-6)
    receiver.statuses = [500] * 8
    rig.paid("o-1")

    async def run(notifier: Notifier) -> None:
        await drain_until_settled(notifier, rig)

    asyncio.run(with_notifier(rig, run))
    assert rig.states() == ["exhausted"]
    assert [r["attempt"] for r in rig.log()] == list(range(1, max_attempts("alipay") + 1))


def test_drop_knob_never_sends_and_never_retries(tmp_path: Path, receiver: Receiver) -> None:
    rig = make_rig(settings_for(tmp_path, receiver), notify_drop_rate=1.0)
    rig.paid("o-1")

    async def run(notifier: Notifier) -> None:
        assert await notifier.drain() == 1
        assert await notifier.drain() == 0

    asyncio.run(with_notifier(rig, run))
    assert receiver.received == []
    assert rig.states() == ["dropped"]
    assert [(r["dropped"], r["acked"]) for r in rig.log()] == [(1, 0)]
    assert rig.store.charged_not_notified() == 1


def test_duplicate_knob_sends_the_same_notification_twice(
    tmp_path: Path, receiver: Receiver
) -> None:
    rig = make_rig(settings_for(tmp_path, receiver), notify_duplicate_rate=1.0)
    rig.paid("o-1")

    async def run(notifier: Notifier) -> None:
        await notifier.drain()

    asyncio.run(with_notifier(rig, run))
    assert len(receiver.received) == 2
    assert receiver.received[0].json() == receiver.received[1].json()
    assert all(r.genuine() for r in receiver.received)
    assert sorted(r["duplicate"] for r in rig.log()) == [0, 1]
    assert rig.states() == ["acked"]


def test_forged_knob_adds_a_forged_request_that_fails_verification(
    tmp_path: Path, receiver: Receiver
) -> None:
    rig = make_rig(settings_for(tmp_path, receiver), forged_notify_rate=1.0)
    for i in range(8):
        rig.paid(f"o-{i}")

    async def run(notifier: Notifier) -> None:
        await notifier.drain()

    asyncio.run(with_notifier(rig, run))
    genuine = [r for r in receiver.received if r.genuine()]
    forged = [r for r in receiver.received if not r.genuine()]
    assert len(genuine) == 8 and len(forged) == 8
    log = rig.log()
    assert sum(r["forged"] for r in log) == 8
    assert {r["forgery"] for r in log if r["forged"]} <= set(FORGERY_KINDS)
    assert len({r["forgery"] for r in log if r["forged"]}) > 1  # the variants are mixed
    assert rig.states() == ["acked"] * 8


def test_delay_knob_holds_the_first_attempt(tmp_path: Path, receiver: Receiver) -> None:
    rig = make_rig(settings_for(tmp_path, receiver), notify_delay_ms={"min": 60_000, "max": 90_000})
    rig.paid("o-1")
    row = rig.store.conn.execute("SELECT next_attempt_at, created_at FROM notifications").fetchone()
    assert 60.0 <= row["next_attempt_at"] - row["created_at"] <= 90.0

    async def run(notifier: Notifier) -> None:
        assert await notifier.drain() == 0

    asyncio.run(with_notifier(rig, run))
    assert receiver.received == []


def test_reorder_knob_shuffles_ready_notifications(tmp_path: Path, receiver: Receiver) -> None:
    settings = settings_for(tmp_path, receiver)
    order = [f"o-{i}" for i in range(8)]

    def send_order(**knobs: Any) -> list[str]:
        db = str(tmp_path / f"reorder-{len(knobs)}-{knobs['notify_reorder']}.sqlite")
        rig = make_rig(dataclasses.replace(settings, db_path=db), **knobs)
        for o in order:
            rig.paid(o)
        sent: list[str] = []

        async def send(payload: bytes, _: dict[str, str]) -> Delivery:
            sent.append(json.loads(payload)["merchant_order_id"])
            return Delivery(200)

        async def run() -> None:
            await Notifier(rig.store, rig.behaviour, settings, send).drain()

        asyncio.run(run())
        return sent

    assert send_order(notify_reorder=False) == order
    shuffled = send_order(notify_reorder=True)
    assert sorted(shuffled) == order and shuffled != order


def test_pending_notifications_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    settings = settings_for(tmp_path, receiver)
    before = make_rig(settings)
    pid = before.paid("o-1")
    before.store.close()  # the process dies before the notifier ran

    after = make_rig(settings)

    async def run(notifier: Notifier) -> None:
        assert await notifier.drain() == 1

    asyncio.run(with_notifier(after, run))
    assert [r.json()["payment_id"] for r in receiver.received] == [pid]
    assert after.states() == ["acked"]


# the running service


def wait_for(predicate: Any, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_running_service_notifies_within_the_payment_trace(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = settings_for(tmp_path, receiver)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    receiver.statuses = [500]
    with TestClient(create_app(settings)) as client:
        created = client.post(
            "/payments",
            json={"merchant_order_id": "o-1", "amount": 500},
            headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
        pid = created.json()["payment_id"]
        assert client.post(f"/payments/{pid}/pay").status_code == 200
        wait_for(lambda: len(receiver.received) >= 2, "a failed and a retried notification")
        admin = {"Authorization": "Bearer tok"}
        wait_for(
            lambda: any(
                '"acked":true' in line
                for line in client.get("/audit/export", headers=admin).text.splitlines()
            ),
            "the acked attempt in the export",
        )
        exported = client.get("/audit/export", headers=admin).text
        records = [json.loads(line) for line in exported.splitlines()]
        metrics = client.get("/metrics").text
    for got in receiver.received:
        got.verify()
        assert got.headers["traceparent"].split("-")[1] == trace_id
    notes = [r for r in records if r["type"] == "notification"]
    assert [(n["attempt"], n["acked"], n["status_code"]) for n in notes] == [
        (1, False, 500),
        (2, True, 200),
    ]
    for note in notes:
        assert note["trace_id"] == trace_id
        assert set(note) >= {
            "notify_id", "payment_id", "merchant_order_id", "txn_id", "attempt", "t",
            "acked", "status_code", "forged", "dropped", "trace_id",
        }  # fmt: skip
        assert note["forged"] is False and note["dropped"] is False
    assert 'chaosbed_notify_attempts_total{outcome="acked"}' in metrics
    assert "chaosbed_notify_retries_total" in metrics
    assert "chaosbed_charged_not_notified" in metrics
    assert 'chaosbed_payments_total{event="charged"}' in metrics
