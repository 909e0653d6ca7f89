"""The channel's HTTP API in-process: payments, ledger-derived state, refunds, bills, admin."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.channel.app import create_app
from services.common.settings import Settings

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "channel.sqlite")


@pytest.fixture
def client(db_path: str) -> Iterator[TestClient]:
    # no notify_url: the notifier does not run, notifications stay queued for inspection
    settings = Settings(service="channel", db_path=db_path, admin_token=TOKEN)
    with TestClient(create_app(settings)) as c:
        yield c


def snapshot(db_path: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db_path)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table}").fetchall()
            for table in ("payments", "ledger", "notifications", "notify_log")
        }
    finally:
        conn.close()


def create(client: TestClient, order: str = "o-1", amount: int = 1000) -> dict[str, Any]:
    response = client.post("/payments", json={"merchant_order_id": order, "amount": amount})
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def knobs(client: TestClient, **change: Any) -> dict[str, Any]:
    response = client.put("/admin/behaviour", json=change, headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def export(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/audit/export", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


# create


def test_create_is_idempotent_by_merchant_order_id(client: TestClient, db_path: str) -> None:
    first = client.post("/payments", json={"merchant_order_id": "o-1", "amount": 1000})
    again = client.post("/payments", json={"merchant_order_id": "o-1", "amount": 1000})
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["payment_id"] == first.json()["payment_id"]
    assert first.json()["status"] == "PENDING"
    assert len(snapshot(db_path)["payments"]) == 1


def test_create_replay_with_another_amount_is_refused(client: TestClient, db_path: str) -> None:
    create(client, "o-1", 1000)
    before = snapshot(db_path)
    response = client.post("/payments", json={"merchant_order_id": "o-1", "amount": 999})
    assert response.status_code == 409
    assert response.json()["error"] == "amount_mismatch"
    assert "1000" in response.json()["detail"]
    assert snapshot(db_path) == before


def test_query_by_id_and_by_merchant_order(client: TestClient) -> None:
    payment = create(client, "o-7", 700)
    by_id = client.get(f"/payments/{payment['payment_id']}").json()
    by_order = client.get("/payments", params={"merchant_order_id": "o-7"}).json()
    assert by_id == by_order
    assert by_id["amount"] == 700 and by_id["txn_id"] is None and by_id["refunded"] == 0
    assert client.get("/payments/nope").status_code == 404
    missing = client.get("/payments", params={"merchant_order_id": "nope"})
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_payment"


# pay / close: state derived from the ledger


def test_pay_charges_once_and_queues_one_notification(client: TestClient, db_path: str) -> None:
    pid = create(client)["payment_id"]
    paid = client.post(f"/payments/{pid}/pay", json={})
    replay = client.post(f"/payments/{pid}/pay")
    assert paid.status_code == 200 and replay.status_code == 200
    assert paid.json()["status"] == "SUCCEEDED"
    assert replay.json()["txn_id"] == paid.json()["txn_id"]
    state = client.get(f"/payments/{pid}").json()
    assert state["status"] == "SUCCEEDED"
    assert state["txn_id"] == paid.json()["txn_id"] and state["paid_at"] is not None
    db = snapshot(db_path)
    assert [(row[2], row[3], row[5]) for row in db["ledger"]] == [(pid, "charge", "succeeded")]
    assert len(db["notifications"]) == 1
    assert db["notifications"][0][2] == paid.json()["txn_id"]


def test_pay_unknown_payment_is_404(client: TestClient) -> None:
    response = client.post("/payments/pay_missing/pay")
    assert response.status_code == 404 and response.json()["error"] == "unknown_payment"


def test_declined_pay_records_a_failed_charge_and_takes_no_money(
    client: TestClient, db_path: str
) -> None:
    pid = create(client)["payment_id"]
    knobs(client, pay_failure_rate=1.0)
    response = client.post(f"/payments/{pid}/pay")
    assert response.status_code == 402 and response.json()["error"] == "payment_declined"
    assert client.get(f"/payments/{pid}").json()["status"] == "PENDING"
    db = snapshot(db_path)
    assert [(row[3], row[5]) for row in db["ledger"]] == [("charge", "failed")]
    assert db["notifications"] == []
    assert client.get("/bills").json()["entries"] == []
    knobs(client, pay_failure_rate=0.0)
    assert client.post(f"/payments/{pid}/pay").status_code == 200


def test_close_unpaid_then_pay_is_refused(client: TestClient, db_path: str) -> None:
    pid = create(client)["payment_id"]
    assert client.post(f"/payments/{pid}/close").json()["status"] == "CLOSED"
    assert client.post(f"/payments/{pid}/close").status_code == 200  # idempotent
    response = client.post(f"/payments/{pid}/pay")
    assert response.status_code == 409 and response.json()["error"] == "payment_closed"
    assert client.get(f"/payments/{pid}").json()["status"] == "CLOSED"
    db = snapshot(db_path)
    assert [row[3] for row in db["ledger"]] == ["close"]  # one close event, no charge


def test_pay_after_close_settles_when_the_knob_allows(client: TestClient, db_path: str) -> None:
    pid = create(client)["payment_id"]
    client.post(f"/payments/{pid}/close")
    knobs(client, accept_pay_after_close=True)
    response = client.post(f"/payments/{pid}/pay")
    assert response.status_code == 200
    # the charge wins over the close: the money was taken, the order must refund it
    assert client.get(f"/payments/{pid}").json()["status"] == "SUCCEEDED"
    assert len(snapshot(db_path)["notifications"]) == 1


def test_delay_knob_set_over_http_delays_the_first_attempt(
    client: TestClient, db_path: str
) -> None:
    knobs(client, notify_delay_ms={"min": 30_000, "max": 30_000})
    pid = create(client)["payment_id"]
    assert client.post(f"/payments/{pid}/pay").status_code == 200
    conn = sqlite3.connect(db_path)
    try:
        due, created = conn.execute(
            "SELECT next_attempt_at, created_at FROM notifications"
        ).fetchone()
    finally:
        conn.close()
    assert due - created == pytest.approx(30.0)


# test cards: the shopper's card chooses the payment's path


def test_declined_card_is_refused_with_a_failed_charge(client: TestClient, db_path: str) -> None:
    pid = create(client)["payment_id"]
    response = client.post(f"/payments/{pid}/pay", json={"card": "declined"})
    assert response.status_code == 402 and response.json()["error"] == "payment_declined"
    assert client.get(f"/payments/{pid}").json()["status"] == "PENDING"
    db = snapshot(db_path)
    assert [(row[3], row[5]) for row in db["ledger"]] == [("charge", "failed")]
    assert db["notifications"] == []
    assert client.post(f"/payments/{pid}/pay", json={"card": "default"}).status_code == 200


def test_offline_card_is_charged_after_close_the_default_card_is_not(
    client: TestClient, db_path: str
) -> None:
    refused, offline = create(client, "o-1")["payment_id"], create(client, "o-2")["payment_id"]
    for pid in (refused, offline):
        client.post(f"/payments/{pid}/close")
    assert client.post(f"/payments/{refused}/pay", json={}).status_code == 409
    assert client.post(f"/payments/{offline}/pay", json={"card": "offline"}).status_code == 200
    assert client.get(f"/payments/{offline}").json()["status"] == "SUCCEEDED"
    assert client.get(f"/payments/{refused}").json()["status"] == "CLOSED"
    kinds = [(row[2], row[3]) for row in snapshot(db_path)["ledger"]]
    assert kinds.index((offline, "close")) < kinds.index((offline, "charge"))


def test_slow_notify_card_holds_the_notification_past_the_active_query(db_path: str) -> None:
    settings = Settings(service="channel", db_path=db_path, admin_token=TOKEN, query_after_s=2.0)
    with TestClient(create_app(settings)) as client:
        slow, quick = create(client, "o-1")["payment_id"], create(client, "o-2")["payment_id"]
        assert client.post(f"/payments/{slow}/pay", json={"card": "slow_notify"}).status_code == 200
        assert client.post(f"/payments/{quick}/pay", json={}).status_code == 200
    conn = sqlite3.connect(db_path)
    try:
        held = dict(conn.execute(
            "SELECT payment_id, next_attempt_at - created_at FROM notifications").fetchall())
    finally:
        conn.close()
    assert held[slow] == pytest.approx(4.0) and held[quick] == pytest.approx(0.0)


def test_an_unknown_card_is_refused_and_nothing_changes(client: TestClient, db_path: str) -> None:
    pid = create(client)["payment_id"]
    before = snapshot(db_path)
    response = client.post(f"/payments/{pid}/pay", json={"card": "gold"})
    assert response.status_code == 422 and "card" in response.text
    assert snapshot(db_path) == before


def test_close_paid_payment_is_refused(client: TestClient) -> None:
    pid = create(client)["payment_id"]
    client.post(f"/payments/{pid}/pay")
    response = client.post(f"/payments/{pid}/close")
    assert response.status_code == 409 and response.json()["error"] == "already_paid"
    assert client.get(f"/payments/{pid}").json()["status"] == "SUCCEEDED"


# refunds


def test_refund_is_idempotent_by_refund_id(client: TestClient, db_path: str) -> None:
    pid = create(client, amount=1000)["payment_id"]
    client.post(f"/payments/{pid}/pay")
    first = client.post(f"/payments/{pid}/refunds", json={"refund_id": "r-1", "amount": 400})
    again = client.post(f"/payments/{pid}/refunds", json={"refund_id": "r-1", "amount": 400})
    assert first.status_code == 200 and again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["status"] == "SUCCEEDED"
    assert [row[3] for row in snapshot(db_path)["ledger"]] == ["charge", "refund"]
    state = client.get(f"/payments/{pid}").json()
    assert state["refunded"] == 400 and state["status"] == "SUCCEEDED"


def test_refund_id_reused_with_another_amount_conflicts(client: TestClient) -> None:
    pid = create(client, amount=1000)["payment_id"]
    client.post(f"/payments/{pid}/pay")
    client.post(f"/payments/{pid}/refunds", json={"refund_id": "r-1", "amount": 400})
    response = client.post(f"/payments/{pid}/refunds", json={"refund_id": "r-1", "amount": 500})
    assert response.status_code == 409 and response.json()["error"] == "refund_conflict"


def test_refunds_are_bounded_by_the_charge(client: TestClient, db_path: str) -> None:
    pid = create(client, amount=1000)["payment_id"]
    client.post(f"/payments/{pid}/pay")
    client.post(f"/payments/{pid}/refunds", json={"refund_id": "r-1", "amount": 600})
    before = snapshot(db_path)
    over = client.post(f"/payments/{pid}/refunds", json={"refund_id": "r-2", "amount": 401})
    assert over.status_code == 409 and over.json()["error"] == "refund_exceeds_charge"
    assert snapshot(db_path) == before
    rest = client.post(f"/payments/{pid}/refunds", json={"refund_id": "r-3", "amount": 400})
    assert rest.status_code == 200
    state = client.get(f"/payments/{pid}").json()
    assert state["status"] == "REFUNDED" and state["refunded"] == 1000


def test_refund_of_unpaid_payment_is_refused(client: TestClient, db_path: str) -> None:
    pid = create(client)["payment_id"]
    response = client.post(f"/payments/{pid}/refunds", json={"refund_id": "r-1", "amount": 1})
    assert response.status_code == 409 and response.json()["error"] == "not_paid"
    assert snapshot(db_path)["ledger"] == []


# bills


def test_bills_page_through_succeeded_charges_and_refunds(client: TestClient) -> None:
    paid = []
    for i in range(3):
        pid = create(client, f"o-{i}", 100 + i)["payment_id"]
        client.post(f"/payments/{pid}/pay")
        paid.append(pid)
    client.post(f"/payments/{paid[0]}/refunds", json={"refund_id": "r-0", "amount": 50})
    closed = create(client, "o-closed")["payment_id"]
    client.post(f"/payments/{closed}/close")
    knobs(client, pay_failure_rate=1.0)
    declined = create(client, "o-declined")["payment_id"]
    client.post(f"/payments/{declined}/pay")

    page1 = client.get("/bills", params={"cursor": 0, "limit": 2}).json()
    page2 = client.get("/bills", params={"cursor": page1["next_cursor"], "limit": 2}).json()
    page3 = client.get("/bills", params={"cursor": page2["next_cursor"], "limit": 2}).json()
    entries = page1["entries"] + page2["entries"]
    assert [(e["payment_id"], e["kind"]) for e in entries] == [
        (paid[0], "charge"),
        (paid[1], "charge"),
        (paid[2], "charge"),
        (paid[0], "refund"),
    ]
    assert [e["merchant_order_id"] for e in entries[:3]] == ["o-0", "o-1", "o-2"]
    assert entries[3]["amount"] == 50 and entries[3]["txn_id"] == entries[0]["txn_id"]
    assert page3 == {"entries": [], "next_cursor": page2["next_cursor"]}
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)


# bad input changes nothing


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"merchant_order_id": "o-1", "amount": 0}, "amount"),
        ({"merchant_order_id": "o-1", "amount": -5}, "amount"),
        ({"merchant_order_id": "o-1", "amount": 100_000_001}, "amount"),
        ({"merchant_order_id": "o-1", "amount": "100"}, "amount"),
        ({"merchant_order_id": "o-1", "amount": 1.5}, "amount"),
        ({"merchant_order_id": "o 1", "amount": 100}, "merchant_order_id"),
        ({"merchant_order_id": "x" * 129, "amount": 100}, "merchant_order_id"),
        ({"amount": 100}, "merchant_order_id"),
        ({"merchant_order_id": "o-1", "amount": 100, "currency": "EUR"}, "currency"),
    ],
)
def test_bad_create_names_the_field_and_changes_nothing(
    client: TestClient, db_path: str, body: dict[str, Any], field: str
) -> None:
    response = client.post("/payments", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert field in [p["field"] for p in response.json()["fields"]]
    assert snapshot(db_path)["payments"] == []


def test_malformed_json_and_oversized_bodies_are_refused(client: TestClient, db_path: str) -> None:
    malformed = client.post(
        "/payments", content=b'{"merchant_order_id": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422
    body = {"merchant_order_id": "o-1", "amount": 1, "description": "x" * 100_000}
    huge = client.post("/payments", json=body)
    assert huge.status_code == 413 and huge.json()["error"] == "body_too_large"
    assert snapshot(db_path)["payments"] == []


def test_bad_refund_names_the_field_and_changes_nothing(client: TestClient, db_path: str) -> None:
    pid = create(client)["payment_id"]
    client.post(f"/payments/{pid}/pay")
    before = snapshot(db_path)
    response = client.post(f"/payments/{pid}/refunds", json={"refund_id": "r/1", "amount": 0})
    assert response.status_code == 422
    assert {p["field"] for p in response.json()["fields"]} == {"refund_id", "amount"}
    assert snapshot(db_path) == before


def test_wrong_method_lists_every_allowed_method(client: TestClient) -> None:
    response = client.delete("/payments")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert response.json()["error"] == "method_not_allowed"


def test_bad_bills_cursor_is_422(client: TestClient) -> None:
    response = client.get("/bills", params={"cursor": -1})
    assert response.status_code == 422 and "cursor" in response.json()["detail"]
    assert client.get("/bills", params={"limit": 5000}).status_code == 422


# admin: behaviour knobs and export


def test_admin_routes_need_the_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert client.get("/admin/behaviour", headers=headers).status_code == 401
        assert client.get("/audit/export", headers=headers).status_code == 401
        put = client.put("/admin/behaviour", json={"pay_failure_rate": 1.0}, headers=headers)
        assert put.status_code == 401 and put.json()["error"] == "unauthorized"
    assert client.get("/admin/behaviour", headers=ADMIN).json()["pay_failure_rate"] == 0.0


def test_knobs_partial_update_keeps_the_others(client: TestClient) -> None:
    knobs(client, notify_drop_rate=0.25, retry_schedule="alipay")
    after = knobs(client, notify_delay_ms={"min": 10, "max": 20})
    assert after["notify_drop_rate"] == 0.25
    assert after["retry_schedule"] == "alipay"
    assert after["notify_delay_ms"] == {"min": 10, "max": 20}
    assert client.get("/admin/behaviour", headers=ADMIN).json() == after


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"notify_drop_rate": 1.5, "pay_failure_rate": 0.5}, "notify_drop_rate"),
        ({"forged_notify_rate": -0.1}, "forged_notify_rate"),
        ({"retry_schedule": "paypal"}, "retry_schedule"),
        ({"time_scale": 0}, "time_scale"),
        ({"notify_delay_ms": {"min": 50, "max": 10}}, "notify_delay_ms"),
        ({"notify_delay_ms": {"min": 1}}, "notify_delay_ms.max"),
        ({"notify_reorder": None}, "notify_reorder"),
        ({"chaos_monkey": True, "pay_failure_rate": 0.5}, "chaos_monkey"),
    ],
)
def test_bad_knobs_are_refused_and_nothing_changes(
    client: TestClient, change: dict[str, Any], field: str
) -> None:
    before = client.get("/admin/behaviour", headers=ADMIN).json()
    response = client.put("/admin/behaviour", json=change, headers=ADMIN)
    assert response.status_code == 422
    assert field in [p["field"] for p in response.json()["fields"]]
    assert client.get("/admin/behaviour", headers=ADMIN).json() == before


def test_export_has_the_contract_records(client: TestClient) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = client.post(
        "/payments",
        json={"merchant_order_id": "o-1", "amount": 500},
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    pid = response.json()["payment_id"]
    client.post(f"/payments/{pid}/pay")
    client.post(f"/payments/{pid}/refunds", json={"refund_id": "r-1", "amount": 100})
    records = export(client)
    payment = [r for r in records if r["type"] == "payment"]
    ledger = [r for r in records if r["type"] == "ledger"]
    assert payment == [
        {
            "type": "payment",
            "payment_id": pid,
            "merchant_order_id": "o-1",
            "amount": 500,
            "created_at": payment[0]["created_at"],
            "trace_id": trace_id,
        }
    ]
    assert set(ledger[0]) >= {
        "seq", "txn_id", "payment_id", "merchant_order_id", "kind", "amount", "status", "t",
    }  # fmt: skip
    assert [(r["kind"], r["status"], r["amount"]) for r in ledger] == [
        ("charge", "succeeded", 500),
        ("refund", "succeeded", 100),
    ]
    assert ledger[1]["refund_id"] == "r-1" and "refund_id" not in ledger[0]
