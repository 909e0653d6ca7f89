"""Inventory TCC: domain rules on a temp-file database, and the HTTP API in-process."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.common.settings import Settings
from services.inventory import domain, workers
from services.inventory.app import create_app
from services.inventory.store import InventoryStore, Reservation, State

ADMIN = {"Authorization": "Bearer test-admin-token"}


# fixtures and helpers


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "inventory.sqlite")


@pytest.fixture
def store(db_path: str) -> InventoryStore:
    s = InventoryStore.open(db_path)
    domain.seed_stock(s, {"sku-1": 10, "sku-2": 3})
    return s


def settings_for(db_path: str, **overrides: Any) -> Settings:
    return Settings(
        service="inventory", db_path=db_path, admin_token="test-admin-token", **overrides
    )


def app_with_stock(db_path: str, stock: dict[str, int] | None = None, **overrides: Any) -> FastAPI:
    return create_app(settings_for(db_path, **overrides), seed_stock=stock or {"sku-1": 10})


def snapshot(db_path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read through a second connection."""
    conn = sqlite3.connect(db_path)
    try:
        tables = ("stock", "reservations", "tombstones", "events")
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    finally:
        conn.close()


def available(store: InventoryStore, sku: str = "sku-1") -> int:
    stock = store.stock(sku)
    assert stock is not None
    return stock.available


def events(store: InventoryStore, order_id: str) -> list[tuple[str, int]]:
    return [
        (r["kind"], r["stock_delta"])
        for r in store.export_records()
        if r["type"] == "event" and r["order_id"] == order_id
    ]


# domain: transitions


def test_try_reserves_stock_atomically(store: InventoryStore) -> None:
    r = domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    assert (r.state, r.qty, r.ttl, r.t_end) == (State.TRY, 4, 30, None)
    assert available(store) == 6
    assert events(store, "o1") == [("try", -4)]


def test_try_then_confirm(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    confirmed = domain.confirm(store, "o1")
    assert confirmed.state is State.CONFIRMED
    assert confirmed.t_end is not None
    assert available(store) == 6


def test_try_then_cancel_returns_stock(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    outcome = domain.cancel(store, "o1")
    assert (outcome.state, outcome.empty_rollback) == (State.CANCELLED, False)
    r = store.reservation("o1")
    assert r is not None and r.state is State.CANCELLED and r.cancel_reason == "order"
    assert available(store) == 10
    assert events(store, "o1") == [("try", -4), ("cancel", 4)]


def test_try_replay_returns_existing_without_touching_stock(store: InventoryStore) -> None:
    first = domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    again = domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    assert again == first
    assert available(store) == 6
    assert events(store, "o1") == [("try", -4), ("try", 0)]


def test_try_replay_after_confirm_returns_confirmed(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    domain.confirm(store, "o1")
    assert domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30).state is State.CONFIRMED
    assert available(store) == 6


@pytest.mark.parametrize(("sku", "qty"), [("sku-1", 5), ("sku-2", 4)])
def test_try_replay_with_other_sku_or_qty_conflicts(
    store: InventoryStore, sku: str, qty: int
) -> None:
    domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    before = store.all_stock()
    with pytest.raises(domain.ReservationConflict, match="qty=4"):
        domain.try_reserve(store, "o1", sku, qty, ttl_s=30)
    assert store.all_stock() == before


def test_try_out_of_stock_changes_no_stock(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-2", 2, ttl_s=30)
    with pytest.raises(domain.OutOfStock, match="requested 2, available 1"):
        domain.try_reserve(store, "o2", "sku-2", 2, ttl_s=30)
    assert available(store, "sku-2") == 1
    assert store.reservation("o2") is None
    assert events(store, "o2") == [("try_refused", 0)]


def test_try_can_take_the_last_unit(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-2", 3, ttl_s=30)
    assert available(store, "sku-2") == 0


def test_try_unknown_sku(store: InventoryStore) -> None:
    with pytest.raises(domain.UnknownSku, match="nope"):
        domain.try_reserve(store, "o1", "nope", 1, ttl_s=30)
    assert store.reservation("o1") is None
    assert events(store, "o1") == []


def test_confirm_is_idempotent(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    first = domain.confirm(store, "o1")
    again = domain.confirm(store, "o1")
    assert again == first
    assert available(store) == 6
    assert events(store, "o1") == [("try", -4), ("confirm", 0), ("confirm", 0)]


def test_confirm_unknown_reservation(store: InventoryStore) -> None:
    with pytest.raises(domain.UnknownReservation):
        domain.confirm(store, "o1")


def test_confirm_after_cancel_is_refused(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    domain.cancel(store, "o1")
    with pytest.raises(domain.ReservationCancelled):
        domain.confirm(store, "o1")
    r = store.reservation("o1")
    assert r is not None and r.state is State.CANCELLED
    assert available(store) == 10


def test_cancel_is_idempotent(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    domain.cancel(store, "o1")
    again = domain.cancel(store, "o1")
    assert (again.state, again.empty_rollback) == (State.CANCELLED, False)
    assert available(store) == 10  # stock returned once only
    assert events(store, "o1") == [("try", -4), ("cancel", 4), ("cancel", 0)]


def test_cancel_after_confirm_is_refused(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    domain.confirm(store, "o1")
    with pytest.raises(domain.ReservationConfirmed):
        domain.cancel(store, "o1")
    assert available(store) == 6


def test_try_replay_after_cancel_is_refused(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    domain.cancel(store, "o1")
    with pytest.raises(domain.ReservationCancelled):
        domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    assert available(store) == 10


def test_cancel_before_try_leaves_tombstone_and_refuses_late_try(store: InventoryStore) -> None:
    outcome = domain.cancel(store, "o1")
    assert (outcome.state, outcome.empty_rollback) == (State.CANCELLED, True)
    assert store.tombstone("o1") is not None
    assert available(store) == 10
    with pytest.raises(domain.ReservationCancelled, match="before the try"):
        domain.try_reserve(store, "o1", "sku-1", 4, ttl_s=30)
    assert store.reservation("o1") is None
    assert available(store) == 10
    with pytest.raises(domain.ReservationCancelled):
        domain.confirm(store, "o1")
    again = domain.cancel(store, "o1")
    assert again.empty_rollback
    assert events(store, "o1") == [
        ("empty_rollback", 0),
        ("try_refused", 0),
        ("empty_rollback", 0),
    ]


# domain: sweeper


def test_sweep_cancels_only_expired_tries(store: InventoryStore) -> None:
    t0 = 1_000_000.0
    domain.try_reserve(store, "old", "sku-1", 3, ttl_s=10, now=t0)
    domain.try_reserve(store, "young", "sku-1", 2, ttl_s=10, now=t0 + 8)
    domain.try_reserve(store, "sold", "sku-1", 1, ttl_s=10, now=t0)
    domain.confirm(store, "sold", now=t0 + 1)
    assert domain.sweep(store, t0 + 9) == []
    swept = domain.sweep(store, t0 + 11)
    assert [r.order_id for r in swept] == ["old"]
    old = store.reservation("old")
    assert old is not None
    assert (old.state, old.cancel_reason, old.t_end) == (State.CANCELLED, "sweeper", t0 + 11)
    assert available(store) == 10 - 2 - 1
    assert store.reservation("young").state is State.TRY  # type: ignore[union-attr]
    with pytest.raises(domain.ReservationCancelled):
        domain.confirm(store, "old")


def test_sweep_once_clears_a_backlog_larger_than_one_batch(
    store: InventoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(domain, "SWEEP_BATCH", 2)
    for i in range(5):
        domain.try_reserve(store, f"o{i}", "sku-1", 1, ttl_s=0.1, now=time.time() - 10)
    assert workers.sweep_once(store) == 5
    assert available(store) == 10
    assert workers.sweep_once(store) == 0


def test_sweeper_loop_survives_a_failing_sweep(
    store: InventoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    real_sweep = domain.sweep

    def flaky_sweep(s: InventoryStore, now: float, **kw: Any) -> list[Any]:
        calls.append(now)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_sweep(s, now, **kw)

    monkeypatch.setattr(domain, "sweep", flaky_sweep)

    async def run() -> None:
        task = asyncio.create_task(workers.sweep_forever(store, 0.001))
        for _ in range(2000):
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert len(calls) >= 3


def test_app_lifespan_runs_the_sweeper(db_path: str) -> None:
    app = app_with_stock(db_path, sweep_every_s=0.05)
    with TestClient(app) as client:
        r = client.post(
            "/reservations", json={"order_id": "o1", "sku": "sku-1", "qty": 2, "ttl_s": 0.1}
        )
        assert r.status_code == 200
        state = r.json()["state"]
        for _ in range(200):
            state = client.get("/reservations/o1").json()["state"]
            if state != "TRY":
                break
            time.sleep(0.025)
        body = client.get("/reservations/o1").json()
        assert (body["state"], body["cancel_reason"]) == ("CANCELLED", "sweeper")
        assert client.get("/stock/sku-1").json()["available"] == 10


# HTTP: contract


def test_http_tcc_round_trip(db_path: str) -> None:
    client = TestClient(app_with_stock(db_path))
    r = client.post("/reservations", json={"order_id": "o1", "sku": "sku-1", "qty": 3})
    assert r.status_code == 200
    assert {k: r.json()[k] for k in ("order_id", "sku", "qty", "state")} == {
        "order_id": "o1",
        "sku": "sku-1",
        "qty": 3,
        "state": "TRY",
    }
    assert r.json()["ttl"] == 60.0  # settings.reservation_ttl_s
    assert (
        client.post("/reservations", json={"order_id": "o1", "sku": "sku-1", "qty": 3}).json()
        == r.json()
    )
    assert client.post("/reservations/o1/confirm").json()["state"] == "CONFIRMED"
    assert client.post("/reservations/o1/confirm").json()["state"] == "CONFIRMED"
    assert client.get("/reservations/o1").json()["state"] == "CONFIRMED"
    assert client.get("/stock/sku-1").json() == {"sku": "sku-1", "initial": 10, "available": 7}
    assert client.get("/stock").json() == {
        "items": [{"sku": "sku-1", "initial": 10, "available": 7}]
    }

    refused = client.post("/reservations/o1/cancel")
    assert (refused.status_code, refused.json()["error"]) == (409, "reservation_confirmed")


def test_confirm_many_settles_each_order_in_one_transaction(store: InventoryStore) -> None:
    domain.try_reserve(store, "o1", "sku-1", 2, ttl_s=30)
    domain.try_reserve(store, "o2", "sku-1", 1, ttl_s=30)
    domain.cancel(store, "o2")
    domain.cancel(store, "o3")  # tombstone
    begins: list[str] = []
    store.conn.set_trace_callback(lambda sql: begins.append(sql) if "BEGIN" in sql else None)
    outcomes = domain.confirm_many(store, ["o1", "o2", "o3", "o4", "o1"])
    store.conn.set_trace_callback(None)
    assert len(begins) == 1
    kinds = [o.state if isinstance(o, Reservation) else type(o).__name__ for o in outcomes]
    assert kinds == [
        State.CONFIRMED, "ReservationCancelled", "ReservationCancelled", "UnknownReservation",
        State.CONFIRMED,
    ]  # fmt: skip
    assert events(store, "o1") == [("try", -2), ("confirm", 0), ("confirm", 0)]
    assert available(store) == 8  # confirmed stock stays sold, the cancelled unit came back


def test_http_confirm_batch_answers_per_order(db_path: str) -> None:
    with TestClient(app_with_stock(db_path)) as client:
        for order_id in ("o1", "o2"):
            body = {"order_id": order_id, "sku": "sku-1", "qty": 1}
            assert client.post("/reservations", json=body).status_code == 200
        assert client.post("/reservations/o2/cancel").status_code == 200
        answer = client.post("/reservations/confirm", json={"order_ids": ["o1", "o2", "o9"]})
        assert answer.status_code == 200
        results = answer.json()["results"]
        assert [(r["order_id"], r["state"], r["error"]) for r in results] == [
            ("o1", "CONFIRMED", None),
            ("o2", None, "reservation_cancelled"),
            ("o9", None, "unknown_reservation"),
        ]
        again = client.post("/reservations/confirm", json={"order_ids": ["o1"]})
        assert again.json()["results"][0]["state"] == "CONFIRMED"  # idempotent
        assert client.get("/reservations/o1").json()["state"] == "CONFIRMED"
        empty = client.post("/reservations/confirm", json={"order_ids": []})
        assert empty.status_code == 422 and empty.json()["fields"][0]["field"] == "order_ids"


@pytest.mark.parametrize(
    ("setup", "call", "status", "error"),
    [
        (
            [],
            ("POST", "/reservations", {"order_id": "o1", "sku": "nope", "qty": 1}),
            404,
            "unknown_sku",
        ),
        (
            [],
            ("POST", "/reservations", {"order_id": "o1", "sku": "sku-1", "qty": 11}),
            409,
            "out_of_stock",
        ),
        (
            [("POST", "/reservations", {"order_id": "o1", "sku": "sku-1", "qty": 1})],
            ("POST", "/reservations", {"order_id": "o1", "sku": "sku-1", "qty": 2}),
            409,
            "reservation_conflict",
        ),
        (
            [("POST", "/reservations/o1/cancel", None)],
            ("POST", "/reservations", {"order_id": "o1", "sku": "sku-1", "qty": 1}),
            409,
            "reservation_cancelled",
        ),
        ([], ("POST", "/reservations/o1/confirm", None), 404, "unknown_reservation"),
        (
            [
                ("POST", "/reservations", {"order_id": "o1", "sku": "sku-1", "qty": 1}),
                ("POST", "/reservations/o1/cancel", None),
            ],
            ("POST", "/reservations/o1/confirm", None),
            409,
            "reservation_cancelled",
        ),
        ([], ("GET", "/reservations/o1", None), 404, "unknown_reservation"),
        ([], ("GET", "/stock/nope", None), 404, "unknown_sku"),
    ],
)
def test_http_domain_errors_map_to_contract_codes(
    db_path: str,
    setup: list[tuple[str, str, Any]],
    call: tuple[str, str, Any],
    status: int,
    error: str,
) -> None:
    client = TestClient(app_with_stock(db_path))
    for method, path, body in setup:
        assert client.request(method, path, json=body).status_code == 200
    method, path, body = call
    r = client.request(method, path, json=body)
    assert r.status_code == status
    assert r.json()["error"] == error
    assert r.json()["detail"]


def test_http_cancel_before_try_is_empty_rollback(db_path: str) -> None:
    client = TestClient(app_with_stock(db_path))
    r = client.post("/reservations/o1/cancel")
    assert r.json() == {"order_id": "o1", "state": "CANCELLED", "empty_rollback": True}
    late = client.post("/reservations", json={"order_id": "o1", "sku": "sku-1", "qty": 4})
    assert (late.status_code, late.json()["error"]) == (409, "reservation_cancelled")
    assert client.get("/stock/sku-1").json()["available"] == 10


# HTTP: concurrency (the planted bug's reason to exist)


async def _concurrent_tries(app: FastAPI, n: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://inventory") as client:
        return await asyncio.gather(
            *(
                client.post("/reservations", json={"order_id": f"o{i}", "sku": "sku-1", "qty": 1})
                for i in range(n)
            )
        )


def test_concurrent_tries_never_oversell(db_path: str) -> None:
    app = app_with_stock(db_path)
    responses = asyncio.run(_concurrent_tries(app, 50))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 10 + [409] * 40
    assert {r.json()["error"] for r in responses if r.status_code == 409} == {"out_of_stock"}
    rows = snapshot(db_path)
    assert rows["stock"] == [("sku-1", 10, 0)]
    assert len(rows["reservations"]) == 10


def test_planted_bug_check_then_act_oversells(db_path: str) -> None:
    app = app_with_stock(db_path, bugs=frozenset({"stock-check-then-act"}))
    responses = asyncio.run(_concurrent_tries(app, 50))
    reserved = [r.json()["order_id"] for r in responses if r.status_code == 200]
    assert len(reserved) > 10
    client = TestClient(app)
    for order_id in reserved:
        assert client.post(f"/reservations/{order_id}/confirm").status_code == 200
    confirmed = client.get("/audit/export", headers=ADMIN).text.splitlines()
    sold = sum(
        rec["qty"]
        for rec in map(json.loads, confirmed)
        if rec["type"] == "reservation" and rec["state"] == "CONFIRMED"
    )
    stock = client.get("/stock/sku-1").json()
    assert sold > stock["initial"]  # I1 oversell
    assert stock["initial"] - stock["available"] != sold  # I2 stock not conserved (lost updates)


def test_planted_bug_keeps_replays_idempotent(db_path: str) -> None:
    app = app_with_stock(db_path, bugs=frozenset({"stock-check-then-act"}))

    async def replays() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inventory") as client:
            body = {"order_id": "o1", "sku": "sku-1", "qty": 1}
            return await asyncio.gather(
                *(client.post("/reservations", json=body) for _ in range(5))
            )

    responses = asyncio.run(replays())
    assert {r.status_code for r in responses} == {200}
    assert len(snapshot(db_path)["reservations"]) == 1


# HTTP: bad input changes nothing


def _field_names(body: dict[str, Any]) -> set[str]:
    return {p["field"] for p in body.get("fields", [])}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"order_id": "o1", "sku": "sku-1", "qty": 0}, "qty"),
        ({"order_id": "o1", "sku": "sku-1", "qty": -1}, "qty"),
        ({"order_id": "o1", "sku": "sku-1", "qty": 1001}, "qty"),
        ({"order_id": "o1", "sku": "sku-1", "qty": 10**30}, "qty"),
        ({"order_id": "o1", "sku": "sku-1", "qty": "5"}, "qty"),
        ({"order_id": "o1", "sku": "sku-1", "qty": 1.5}, "qty"),
        ({"order_id": "o1", "sku": "sku-1", "qty": True}, "qty"),
        ({"order_id": "o1", "sku": "sku-1", "qty": None}, "qty"),
        ({"order_id": "o1", "sku": "sku-1"}, "qty"),
        ({"order_id": 7, "sku": "sku-1", "qty": 1}, "order_id"),
        ({"order_id": "bad id", "sku": "sku-1", "qty": 1}, "order_id"),
        ({"order_id": "o" * 129, "sku": "sku-1", "qty": 1}, "order_id"),
        ({"order_id": "", "sku": "sku-1", "qty": 1}, "order_id"),
        ({"order_id": "o1", "sku": ["sku-1"], "qty": 1}, "sku"),
        ({"order_id": "o1", "sku": "sku-1", "qty": 1, "ttl_s": 0}, "ttl_s"),
        ({"order_id": "o1", "sku": "sku-1", "qty": 1, "ttl_s": "soon"}, "ttl_s"),
        ({"order_id": "o1", "sku": "sku-1", "qty": 1, "price": 5}, "price"),
        ([{"order_id": "o1", "sku": "sku-1", "qty": 1}], "body"),
    ],
)
def test_invalid_try_names_the_field_and_changes_nothing(
    db_path: str, payload: Any, field: str
) -> None:
    client = TestClient(app_with_stock(db_path))
    before = snapshot(db_path)
    r = client.post("/reservations", json=payload)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_request"
    assert field in _field_names(body)
    assert field in body["detail"]
    assert snapshot(db_path) == before


@pytest.mark.parametrize(
    ("content", "status", "error"),
    [
        (b'{"order_id": "o1", "sku": ', 422, "invalid_request"),
        (b"not json at all", 422, "invalid_request"),
        (b"", 422, "invalid_request"),
        (b'{"qty": "\xff"}', 400, "bad_request"),
    ],
)
def test_malformed_json_is_4xx_and_changes_nothing(
    db_path: str, content: bytes, status: int, error: str
) -> None:
    client = TestClient(app_with_stock(db_path))
    before = snapshot(db_path)
    r = client.post("/reservations", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.json()["error"] == error
    assert r.json()["detail"]
    assert snapshot(db_path) == before


def test_unknown_sku_changes_nothing(db_path: str) -> None:
    client = TestClient(app_with_stock(db_path))
    before = snapshot(db_path)
    r = client.post("/reservations", json={"order_id": "o1", "sku": "ghost", "qty": 1})
    assert (r.status_code, r.json()["error"]) == (404, "unknown_sku")
    assert "ghost" in r.json()["detail"]
    assert snapshot(db_path) == before


def test_oversized_body_is_413_and_changes_nothing(db_path: str) -> None:
    client = TestClient(app_with_stock(db_path, max_body_bytes=1024))
    before = snapshot(db_path)
    payload = {"order_id": "o1", "sku": "sku-1", "qty": 1, "pad": "x" * 4096}
    r = client.post("/reservations", json=payload)
    assert (r.status_code, r.json()["error"]) == (413, "body_too_large")
    assert snapshot(db_path) == before


@pytest.mark.parametrize(
    "path", ["/reservations/bad%20id/confirm", "/reservations/bad%20id/cancel"]
)
def test_invalid_path_id_changes_nothing(db_path: str, path: str) -> None:
    client = TestClient(app_with_stock(db_path))
    before = snapshot(db_path)
    r = client.post(path)
    assert r.status_code == 422
    assert "order_id" in r.json()["detail"]
    assert snapshot(db_path) == before


# HTTP: admin


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
def test_admin_routes_need_the_token(db_path: str, headers: dict[str, str]) -> None:
    client = TestClient(app_with_stock(db_path))
    before = snapshot(db_path)
    r = client.put("/admin/stock", json={"items": [{"sku": "sku-1", "qty": 99}]}, headers=headers)
    assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
    bad = client.put("/admin/stock", json={"items": "junk"}, headers=headers)
    assert bad.status_code == 401
    export = client.get("/audit/export", headers=headers)
    assert (export.status_code, export.json()["error"]) == (401, "unauthorized")
    assert snapshot(db_path) == before


def test_admin_put_stock_seeds_and_resets(db_path: str) -> None:
    client = TestClient(app_with_stock(db_path))
    body = {"items": [{"sku": "sku-9", "qty": 5}, {"sku": "sku-1", "qty": 20}]}
    r = client.put("/admin/stock", json=body, headers=ADMIN)
    assert r.status_code == 200
    assert client.get("/stock/sku-9").json() == {"sku": "sku-9", "initial": 5, "available": 5}
    assert client.get("/stock/sku-1").json() == {"sku": "sku-1", "initial": 20, "available": 20}
    repeated = {"items": [{"sku": "sku-9", "qty": 1}, {"sku": "sku-9", "qty": 2}]}
    assert client.put("/admin/stock", json=repeated, headers=ADMIN).json()["items"] == [
        {"sku": "sku-9", "initial": 2, "available": 2}
    ]


def test_admin_put_stock_refuses_skus_with_reservations(db_path: str) -> None:
    client = TestClient(app_with_stock(db_path))
    client.post("/reservations", json={"order_id": "o1", "sku": "sku-1", "qty": 1})
    before = snapshot(db_path)
    body = {"items": [{"sku": "sku-9", "qty": 5}, {"sku": "sku-1", "qty": 20}]}
    r = client.put("/admin/stock", json=body, headers=ADMIN)
    assert (r.status_code, r.json()["error"]) == (409, "stock_in_use")
    assert "sku-1" in r.json()["detail"]
    assert snapshot(db_path) == before  # all or nothing: sku-9 not created either


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{"sku": "a", "qty": -1}]}, "items.0.qty"),
        ({"items": [{"sku": "a b", "qty": 1}]}, "items.0.sku"),
        ({"items": [{"sku": "a", "qty": 1}], "reset": True}, "reset"),
    ],
)
def test_admin_put_stock_bad_input_changes_nothing(
    db_path: str, body: dict[str, Any], field: str
) -> None:
    client = TestClient(app_with_stock(db_path))
    before = snapshot(db_path)
    r = client.put("/admin/stock", json=body, headers=ADMIN)
    assert r.status_code == 422
    assert field in _field_names(r.json())
    assert snapshot(db_path) == before


# audit export, seeding, metrics, OpenAPI

CONTRACT_FIELDS = {
    "stock": {"sku", "initial", "available"},
    "reservation": {"order_id", "sku", "qty", "state", "t_try", "t_end", "ttl", "cancel_reason"},
    "tombstone": {"order_id", "t"},
    "event": {"order_id", "kind", "t", "stock_delta"},
}


def test_audit_export_has_the_contract_records(db_path: str) -> None:
    client = TestClient(app_with_stock(db_path))
    client.post("/reservations", json={"order_id": "o1", "sku": "sku-1", "qty": 2})
    client.post("/reservations/o1/confirm")
    client.post("/reservations", json={"order_id": "o2", "sku": "sku-1", "qty": 1})
    client.post("/reservations/o2/cancel")
    client.post("/reservations/o3/cancel")
    r = client.get("/audit/export", headers=ADMIN)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in r.text.splitlines()]
    for rec in records:
        assert CONTRACT_FIELDS[rec["type"]] <= rec.keys(), rec
    by_type: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_type.setdefault(rec["type"], []).append(rec)
    assert by_type["stock"] == [{"type": "stock", "sku": "sku-1", "initial": 10, "available": 8}]
    states = {r["order_id"]: (r["state"], r["cancel_reason"]) for r in by_type["reservation"]}
    assert states == {"o1": ("CONFIRMED", None), "o2": ("CANCELLED", "order")}
    assert [t["order_id"] for t in by_type["tombstone"]] == ["o3"]
    kinds = [(e["order_id"], e["kind"], e["stock_delta"]) for e in by_type["event"]]
    assert kinds == [
        ("o1", "try", -2),
        ("o1", "confirm", 0),
        ("o2", "try", -1),
        ("o2", "cancel", 1),
        ("o3", "empty_rollback", 0),
    ]


def test_seed_stock_only_adds_missing_skus(db_path: str) -> None:
    client = TestClient(app_with_stock(db_path, {"sku-1": 10}))
    client.post("/reservations", json={"order_id": "o1", "sku": "sku-1", "qty": 4})
    restarted = TestClient(app_with_stock(db_path, {"sku-1": 10, "sku-2": 5}))
    assert restarted.get("/stock/sku-1").json() == {"sku": "sku-1", "initial": 10, "available": 6}
    assert restarted.get("/stock/sku-2").json()["available"] == 5
    assert restarted.get("/reservations/o1").json()["state"] == "TRY"


def test_parse_seed_stock() -> None:
    assert domain.parse_seed_stock("") == {}
    assert domain.parse_seed_stock('{"sku-1": 100, "b": 0}') == {"sku-1": 100, "b": 0}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("{", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"a b": 1}', "must match"),
        ('{"a": -1}', "integer"),
        ('{"a": "1"}', "integer"),
        ('{"a": true}', "integer"),
    ],
)
def test_parse_seed_stock_rejects_bad_values(raw: str, problem: str) -> None:
    with pytest.raises(domain.SeedStockError, match=problem):
        domain.parse_seed_stock(raw)


def test_metrics_expose_stock_and_reservations(db_path: str) -> None:
    client = TestClient(app_with_stock(db_path, {"sku-1": 10}))
    client.post("/reservations", json={"order_id": "o1", "sku": "sku-1", "qty": 4})
    client.post("/reservations", json={"order_id": "o2", "sku": "sku-1", "qty": 1})
    client.post("/reservations/o2/confirm")
    lines = client.get("/metrics").text.splitlines()
    assert 'chaosbed_stock_available{sku="sku-1"} 5.0' in lines
    assert 'chaosbed_reservations_by_state{state="TRY"} 1.0' in lines
    assert 'chaosbed_reservations_by_state{state="CONFIRMED"} 1.0' in lines
    assert 'chaosbed_reservations_by_state{state="CANCELLED"} 0.0' in lines
    assert any(line.startswith("chaosbed_sweeper_cancellations_total ") for line in lines)


def test_openapi_declares_the_error_responses(db_path: str) -> None:
    spec = TestClient(app_with_stock(db_path)).get("/openapi.json").json()
    responses = {
        (method, path): set(op["responses"])
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }
    assert {"200", "404", "409", "413", "422"} <= responses[("post", "/reservations")]
    assert {"200", "404", "409", "422"} <= responses[("post", "/reservations/{order_id}/confirm")]
    assert {"200", "409", "422"} <= responses[("post", "/reservations/{order_id}/cancel")]
    assert {"200", "401", "409", "422"} <= responses[("put", "/admin/stock")]
    assert {"200", "401"} <= responses[("get", "/audit/export")]
    error_422 = spec["paths"]["/reservations"]["post"]["responses"]["422"]
    assert error_422["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
