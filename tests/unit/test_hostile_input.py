"""Hostile callers in-process (issue 10): bounded request heads, strict bodies, 413 for
chunked bodies, auth before the body, JSON errors that quote no more than a prefix."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from fastapi.testclient import TestClient

from services.channel.app import create_app as channel_app
from services.common.settings import Settings
from services.common.signing import SIGNATURE_HEADER, sign
from services.inventory.app import create_app as inventory_app
from services.order.app import create_app as order_app

TOKEN = "hostile-admin-token"
SECRET = "hostile-notify-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}
SMALL = 300  # bytes: an error body never grows with what the caller sent


def _settings(service: str, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        service=service,
        db_path=str(tmp_path / f"{service}.db"),
        admin_token=TOKEN,
        notify_secret=SECRET,
        **overrides,
    )


def _app(service: str, tmp_path: Path, **overrides: Any) -> Any:
    settings = _settings(service, tmp_path, **overrides)
    if service == "order":
        return order_app(settings, run_workers=False)
    if service == "inventory":
        return inventory_app(settings, seed_stock={"sku-1": 10})
    return channel_app(settings)


@pytest.fixture(params=["order", "channel", "inventory"])
def service_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(_app(request.param, tmp_path)) as client:
        yield client


@pytest.fixture
def order(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(_app("order", tmp_path)) as client:
        yield client


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(_app("channel", tmp_path)) as client:
        yield client


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(_app("inventory", tmp_path)) as client:
        yield client


def signed(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(SECRET, int(time.time()), body), **JSON}


def notification(**change: Any) -> bytes:
    note = {
        "notify_id": "n-1",
        "payment_id": "pay-1",
        "merchant_order_id": "o-1",
        "txn_id": "t-1",
        "amount": 1234,
        "status": "SUCCEEDED",
        "paid_at": 1.0,
    }
    return json.dumps({**note, **change}).encode()


# 1. request heads ----------------------------------------------------------------------


def test_oversized_headers_are_431_with_a_small_json_error(service_client: TestClient) -> None:
    response = service_client.get("/healthz", headers={"x-padding": "a" * 20_000})
    assert response.status_code == 431
    assert response.json()["error"] == "headers_too_large"
    assert len(response.content) < SMALL
    # many small fields add up: the limit is on all of them together
    many = {f"x-field-{i}": "b" * 100 for i in range(200)}
    assert service_client.get("/healthz", headers=many).status_code == 431
    assert service_client.get("/healthz", headers={"x-padding": "a" * 15_000}).status_code == 200


def test_header_limit_is_configurable(tmp_path: Path) -> None:
    with TestClient(_app("channel", tmp_path, max_header_bytes=2048)) as client:
        assert client.get("/healthz", headers={"x-padding": "a" * 3000}).status_code == 431
        assert client.get("/healthz", headers={"x-padding": "a" * 1000}).status_code == 200


def test_oversized_request_target_is_414(channel: TestClient) -> None:
    response = channel.get("/payments", params={"merchant_order_id": "o" * 20_000})
    assert response.status_code == 414
    assert response.json()["error"] == "uri_too_long"
    assert len(response.content) < SMALL


def test_a_huge_malformed_signature_is_not_quoted_back(order: TestClient) -> None:
    # under the header limit, but far more than an error may quote
    body = notification()
    response = order.post(
        "/notifications/payment", content=body, headers={SIGNATURE_HEADER: "x" * 10_000, **JSON}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_signature"
    assert len(response.content) < SMALL
    stamp = f"t={'9' * 10_000},v1=00"
    response = order.post("/notifications/payment", content=body, headers={SIGNATURE_HEADER: stamp})
    assert response.status_code == 400 and len(response.content) < SMALL


def test_a_huge_unknown_field_name_is_not_quoted_back(channel: TestClient) -> None:
    response = channel.post(
        "/payments", json={"merchant_order_id": "o-1", "amount": 100, "k" * 50_000: 1}
    )
    assert response.status_code == 422
    assert len(response.content) < 2 * SMALL
    assert "50000 characters" in response.json()["fields"][0]["field"]


# 2. strict bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [{"amount": "1234"}, {"paid_at": True}, {"amount": True}, {"paid_at": "1.0"}, {"amount": 12.5}],
)
def test_a_signed_notification_with_wrong_types_is_422(
    order: TestClient, change: dict[str, Any]
) -> None:
    body = notification(**change)
    response = order.post("/notifications/payment", content=body, headers=signed(body))
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == next(iter(change))


def test_a_signed_notification_with_right_types_passes_validation(order: TestClient) -> None:
    body = notification(amount=1234.0)  # JSON Schema's integer: reaches the order lookup
    response = order.post("/notifications/payment", content=body, headers=signed(body))
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_order"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/orders", {"sku": "sku-1", "qty": "1", "amount": 100}),
        ("/orders", {"sku": "sku-1", "qty": 1, "amount": True}),
    ],
)
def test_order_bodies_are_strict(order: TestClient, path: str, body: dict[str, Any]) -> None:
    response = order.post(path, json=body, headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/payments", {"merchant_order_id": "o-1", "amount": "100"}),
        ("POST", "/payments", {"merchant_order_id": "o-1", "amount": 100, "description": 7}),
        ("POST", "/payments/p-1/refunds", {"refund_id": "r-1", "amount": "1"}),
        ("PUT", "/admin/behaviour", {"notify_reorder": 1}),
        ("PUT", "/admin/behaviour", {"pay_failure_rate": "0.5"}),
        ("PUT", "/admin/behaviour", {"notify_delay_ms": {"min": "0", "max": 1}}),
    ],
)
def test_channel_bodies_are_strict(
    channel: TestClient, method: str, path: str, body: dict[str, Any]
) -> None:
    response = channel.request(method, path, json=body, headers=ADMIN)
    assert response.status_code == 422, response.text


# 3. body limit -------------------------------------------------------------------------


def _chunks(total: int = 70_000, size: int = 1000) -> Iterator[bytes]:
    # a generator body goes without Content-Length: the limit must count what arrives
    yield b'{"pad": "'
    for _ in range(total // size):
        yield b"x" * size


@pytest.mark.parametrize(
    ("service", "method", "path"),
    [
        ("order", "POST", "/orders"),
        ("order", "POST", "/notifications/payment"),
        ("inventory", "POST", "/reservations"),
        ("inventory", "PUT", "/admin/stock"),
        ("channel", "POST", "/payments"),
        ("channel", "POST", "/payments/p-1/refunds"),
        ("channel", "PUT", "/admin/behaviour"),
    ],
)
def test_a_chunked_body_over_the_limit_is_413(
    tmp_path: Path, service: str, method: str, path: str
) -> None:
    with TestClient(_app(service, tmp_path)) as client:
        headers = {**ADMIN, **JSON, "Idempotency-Key": "k-1"}
        response = client.request(method, path, content=_chunks(), headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "body_too_large"


# 4. auth before the body ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "path"), [("channel", "/admin/behaviour"), ("inventory", "/admin/stock")]
)
@pytest.mark.parametrize("content", [b"\xff\xfe{", b"{not json", b'{"items": "x"}'])
@pytest.mark.parametrize("auth", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_admin_routes_refuse_anonymous_callers_before_reading_the_body(
    tmp_path: Path, service: str, path: str, content: bytes, auth: dict[str, str]
) -> None:
    with TestClient(_app(service, tmp_path)) as client:
        response = client.put(path, content=content, headers={**auth, **JSON})
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthorized"
        # with the token the same body is judged on its merits
        authorised = client.put(path, content=content, headers={**ADMIN, **JSON})
        assert authorised.status_code in (400, 422), authorised.text


# 7. JSON errors ------------------------------------------------------------------------


def test_undecodable_json_says_so_instead_of_a_byte_offset(channel: TestClient) -> None:
    response = channel.post("/payments", content=b'{"amount": ', headers=JSON)
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "body is not valid JSON"
    assert body["fields"] == [{"field": "body", "message": "body is not valid JSON"}]
    not_utf8 = channel.post("/payments", content=b'{"amount": "\xff"}', headers=JSON)
    assert not_utf8.status_code == 400
    assert not_utf8.json() == {
        "error": "bad_request",
        "detail": "body is not valid JSON (not UTF-8)",
    }


def test_undecodable_notification_says_so(order: TestClient) -> None:
    response = order.post("/notifications/payment", content=b"{", headers=signed(b"{"))
    assert response.status_code == 422
    assert response.json()["detail"] == "body is not valid JSON"


def test_a_trailing_slash_is_a_json_404_not_an_empty_redirect(channel: TestClient) -> None:
    response = channel.get("/admin/behaviour/", headers=ADMIN, follow_redirects=False)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# 6. OpenAPI ----------------------------------------------------------------------------


def test_openapi_declares_the_bearer_scheme_on_every_admin_route(
    service_client: TestClient,
) -> None:
    document = service_client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes == {"adminToken": {"type": "http", "scheme": "bearer", "description": ANY}}
    admin_ops = [
        (path, method, op)
        for path, methods in document["paths"].items()
        for method, op in methods.items()
        if path.startswith(("/admin", "/audit"))
    ]
    assert admin_ops
    for path, method, op in admin_ops:
        assert op.get("security") == [{"adminToken": []}], (method, path)
        assert "401" in op["responses"], (method, path)
    public = document["paths"]["/healthz"]["get"]
    assert "security" not in public


def test_openapi_marks_the_signature_header_required(order: TestClient) -> None:
    op = order.get("/openapi.json").json()["paths"]["/notifications/payment"]["post"]
    header = next(p for p in op["parameters"] if p["name"] == SIGNATURE_HEADER)
    assert header["required"] is True
