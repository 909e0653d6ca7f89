"""The lean handler and router (services/common/lean.py) answer what FastAPI's generic
handler and router answer.

Each service is built twice, lean and with FastAPI's own handler and router, over databases
in the same state; the same requests, good and bad, go to both and every answer (status,
headers, body bytes) must be the same.  Only the values a service generates (ids, clocks)
are masked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.channel.app import create_app as channel_app
from services.common import server
from services.common.api import ServiceRoute
from services.common.lean import LeanRouter
from services.common.settings import Settings
from services.common.signing import SIGNATURE_HEADER, sign
from services.inventory.app import create_app as inventory_app
from services.order.app import create_app as order_app
from services.order.domain import request_hash

SECRET = "lean-secret"
JSON = {"content-type": "application/json"}
LONG_ID = "x" * 129
# generated per app: masked before two answers are compared
VOLATILE = {"payment_id", "txn_id", "t_try", "t_end", "paid_at", "created_at"}

Request = tuple[str, str, dict[str, str], bytes]


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "*" if k in VOLATILE else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def _answer(client: TestClient, request: Request) -> tuple[int, dict[str, str], Any]:
    """Status, headers and body bytes; a body with generated values masked, parsed."""
    method, path, headers, body = request
    response = client.request(method, path, headers=headers, content=body)
    kept = dict(response.headers)
    try:
        parsed = response.json()
    except ValueError:
        return response.status_code, kept, response.content
    masked = _mask(parsed)
    if masked == parsed:
        return response.status_code, kept, response.content
    kept.pop("content-length", None)
    return response.status_code, kept, masked


def _bad_bodies(good: dict[str, Any]) -> Iterator[tuple[dict[str, str], bytes]]:
    """Bodies (with their headers) that the generic handler refuses one way or another."""
    raw = json.dumps(good).encode()
    yield JSON, b""
    yield JSON, b'{"sku": '
    yield JSON, b"\xff\xfe{}"
    yield JSON, b'{"sku": "\xe9"}'  # latin-1, not UTF-8
    yield JSON, b"[]"
    yield JSON, b"null"
    yield JSON, b"NaN"
    yield JSON, b'"text"'
    yield JSON, json.dumps({**good, "extra": 1}).encode()
    yield JSON, json.dumps({k: v for k, v in list(good.items())[1:]}).encode()
    yield (
        JSON,
        json.dumps({k: str(v) if isinstance(v, int) else 7 for k, v in good.items()}).encode(),
    )
    yield JSON, json.dumps({k: 1.5 if isinstance(v, int) else [] for k, v in good.items()}).encode()
    yield JSON, json.dumps({k: None for k in good}).encode()
    yield (
        JSON,
        json.dumps({k: LONG_ID if isinstance(v, str) else v for k, v in good.items()}).encode(),
    )
    yield {}, raw
    yield {"content-type": "text/plain"}, raw
    yield {"content-type": "application/json; charset=utf-8"}, raw
    yield {"content-type": "application/merge-patch+json"}, raw
    yield {"content-type": "Application/JSON"}, raw
    yield {"content-type": "application/x-www-form-urlencoded"}, b"sku=a&qty=1"


def _cases(path: str, good: dict[str, Any], headers: dict[str, str] | None = None) -> list[Request]:
    extra = headers or {}
    cases: list[Request] = [("POST", path, {**JSON, **extra}, json.dumps(good).encode())]
    cases += [("POST", path, {**h, **extra}, b) for h, b in _bad_bodies(good)]
    return cases


def _pair(build: Callable[[], FastAPI], monkeypatch: pytest.MonkeyPatch) -> tuple[FastAPI, FastAPI]:
    lean = build()
    assert isinstance(lean.router, LeanRouter)
    with monkeypatch.context() as m:
        m.setattr(ServiceRoute, "lean", False)
        m.setattr(server, "lean_router", lambda app: None)
        m.setattr(server, "without_exit_stack", lambda app, route_class: None)
        generic = build()
    assert not isinstance(generic.router, LeanRouter)
    return lean, generic


def _lean_paths(app: FastAPI) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, ServiceRoute) and route._lean is not None
        for method in route.methods or ()
    }


def _same_answers(lean: FastAPI, generic: FastAPI, requests: list[Request]) -> None:
    with (
        TestClient(lean, raise_server_exceptions=False) as a,
        TestClient(generic, raise_server_exceptions=False) as b,
    ):
        for request in requests:
            assert _answer(a, request) == _answer(b, request), request


def _settings(tmp_path: Path, service: str, side: str) -> Settings:
    return Settings(
        service=service,
        db_path=str(tmp_path / f"{service}-{side}.db"),
        notify_secret=SECRET,
        signature_tolerance_s=1e9,
    )


def test_order_routes_answer_as_the_generic_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sides = iter(("lean", "generic"))

    def build() -> FastAPI:
        app = order_app(_settings(tmp_path, "order", next(sides)), run_workers=False)
        store = app.state.service.store
        digest = request_hash(sku="s-1", qty=2, amount=500)
        with store.transaction() as tx:
            tx.insert_order(
                order_id="o-1",
                key="k-1",
                request_hash=digest,
                sku="s-1",
                qty=2,
                amount=500,
                traceparent=None,
            )
            tx.set_payment("o-1", "p-1")
            tx.move("o-1", "AWAITING_PAYMENT", cause="test", only_from=None)
        return app

    lean, generic = _pair(build, monkeypatch)
    assert {
        ("GET", "/orders/{order_id}"),
        ("POST", "/orders"),
        ("POST", "/notifications/payment"),
    } <= _lean_paths(lean)
    assert not _lean_paths(generic)
    note = {
        "notify_id": "n-1",
        "payment_id": "p-1",
        "merchant_order_id": "o-1",
        "txn_id": "t-1",
        "amount": 500,
        "status": "SUCCEEDED",
        "paid_at": 1.0,
    }
    requests: list[Request] = [
        ("GET", "/orders/o-1", {}, b""),
        ("GET", "/orders/nope", {}, b""),
        ("GET", f"/orders/{LONG_ID}", {}, b""),
        ("GET", "/orders/a%20b", {}, b""),
        ("GET", "/orders/%C3%A9", {}, b""),
        ("GET", "/orders/", {}, b""),
        ("DELETE", "/orders/o-1", {}, b""),
        ("POST", "/orders", JSON, json.dumps({"sku": "s-1", "qty": 2, "amount": 500}).encode()),
    ]
    requests += _cases(
        "/orders", {"sku": "s-1", "qty": 2, "amount": 500}, {"idempotency-key": "k-1"}
    )
    requests += _cases(
        "/orders", {"sku": "s-1", "qty": 2, "amount": 500}, {"idempotency-key": "bad key"}
    )
    for headers, body in [(JSON, json.dumps(note).encode()), *_bad_bodies(note)]:
        signed = {**headers, SIGNATURE_HEADER: sign(SECRET, int(time.time()), body)}
        requests.append(("POST", "/notifications/payment", signed, body))
        requests.append(("POST", "/notifications/payment", headers, body))
    requests.append(("GET", "/orders/o-1", {}, b""))
    _same_answers(lean, generic, requests)


def test_channel_routes_answer_as_the_generic_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sides = iter(("lean", "generic"))
    lean, generic = _pair(
        lambda: channel_app(_settings(tmp_path, "channel", next(sides))), monkeypatch
    )
    assert {("POST", "/payments"), ("POST", "/payments/{payment_id}/pay")} <= _lean_paths(lean)
    good = {"merchant_order_id": "o-1", "amount": 500, "description": "shoes"}
    requests = _cases("/payments", good)
    requests += [
        ("GET", "/payments?merchant_order_id=o-1", {}, b""),
        ("GET", "/payments?merchant_order_id=", {}, b""),
        ("PUT", "/payments", JSON, b"{}"),
        ("DELETE", "/admin/behaviour", {}, b""),
        ("GET", "/admin/behaviour", {}, b""),
        ("GET", "/nope", {}, b""),
        ("GET", "/", {}, b""),
        ("GET", "//payments", {}, b""),
        ("GET", "/healthz", {}, b""),
        ("GET", "/openapi.json", {}, b""),
        ("GET", "/bills?limit=0", {}, b""),
    ]
    requests += _cases("/payments", {"merchant_order_id": "o-2", "amount": 700})
    _same_answers(lean, generic, requests)
    # the same payment id on both sides: one created through each app, then paid
    with TestClient(lean) as a, TestClient(generic) as b:
        ids = [
            c.post("/payments", json={"merchant_order_id": "o-3", "amount": 9}).json()["payment_id"]
            for c in (a, b)
        ]
    for side, payment_id in zip((lean, generic), ids, strict=True):
        side.state.pay_id = payment_id
    pay_cases: list[Request] = []
    for headers, body in [
        (JSON, b""),
        (JSON, b'{"card": "default"}'),
        ({}, b""),
        *_bad_bodies({"card": "default"}),
    ]:
        pay_cases.append(("POST", "/payments/{id}/pay", headers, body))
    pay_cases += [
        ("POST", "/payments/unknown/pay", JSON, b""),
        ("POST", f"/payments/{LONG_ID}/pay", JSON, b""),
        ("POST", "/payments/a%20b/pay", JSON, b'{"card": 1}'),
        ("GET", "/payments/{id}/pay", {}, b""),
    ]
    with (
        TestClient(lean, raise_server_exceptions=False) as a,
        TestClient(generic, raise_server_exceptions=False) as b,
    ):
        for method, path, headers, body in pay_cases:
            answers = [
                _answer(c, (method, path.replace("{id}", app.state.pay_id), headers, body))
                for c, app in ((a, lean), (b, generic))
            ]
            assert answers[0] == answers[1], (method, path, headers, body)


def test_inventory_routes_answer_as_the_generic_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sides = iter(("lean", "generic"))

    def build() -> FastAPI:
        return inventory_app(_settings(tmp_path, "inventory", next(sides)), seed_stock={"s-1": 5})

    lean, generic = _pair(build, monkeypatch)
    assert {("POST", "/reservations"), ("POST", "/reservations/confirm")} <= _lean_paths(lean)
    requests = _cases("/reservations", {"order_id": "o-1", "sku": "s-1", "qty": 2})
    requests += _cases("/reservations", {"order_id": "o-2", "sku": "s-1", "qty": 9, "ttl_s": 5.5})
    requests += _cases("/reservations/confirm", {"order_ids": ["o-1", "o-2", "o-3"]})
    requests += [
        ("POST", "/reservations/confirm", JSON, json.dumps({"order_ids": []}).encode()),
        ("POST", "/reservations/confirm", JSON, json.dumps({"order_ids": [LONG_ID, 5]}).encode()),
        ("POST", "/reservations/o-1/confirm", {}, b""),
        ("POST", f"/reservations/{LONG_ID}/cancel", {}, b""),
        ("GET", "/reservations/o-1", {}, b""),
    ]
    _same_answers(lean, generic, requests)


def test_an_included_generic_route_keeps_fastapis_exit_stack(tmp_path: Path) -> None:
    from fastapi import APIRouter
    from fastapi.routing import APIRoute

    app = inventory_app(_settings(tmp_path, "inventory", "included"))
    plain = APIRouter(route_class=APIRoute)

    @plain.get("/plain")
    async def plain_route() -> dict[str, str]:
        return {"plain": "yes"}

    app.include_router(plain)
    with TestClient(app) as client:
        assert client.get("/plain").json() == {"plain": "yes"}
        assert client.post("/reservations/confirm", json={"order_ids": ["o-1"]}).status_code == 200
