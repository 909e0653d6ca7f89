"""Hostile callers against the real stack (issue 10, items 1-5), each request sent both
directly to the service and through its Toxiproxy link, over real sockets: oversized
headers, wrongly typed signed notifications, chunked bodies over the limit, anonymous admin
calls with undecodable bodies; then the run directory's permissions and a search of every
file it holds for the stack's secrets."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chaosbed.stack import Stack, describe
from services.common.signing import SIGNATURE_HEADER, sign

pytestmark = pytest.mark.integration

# the Toxiproxy link in front of each service
LINK = {"order": "client_order", "channel": "client_channel", "inventory": "order_inventory"}
SMALL = 300  # bytes: an error body never grows with what the caller sent


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # a directory the stack creates itself, so its mode is the stack's doing
    with Stack.start(tmp_path_factory.mktemp("hostile") / "run") as started:
        yield started


def base(stack: Stack, service: str, via: str) -> str:
    return stack.url(service) if via == "direct" else stack.proxy_url(LINK[service])


VIA = pytest.mark.parametrize("via", ["direct", "toxiproxy"])


def _notification(**change: Any) -> bytes:
    note = {
        "notify_id": "n-hostile",
        "payment_id": "pay-hostile",
        "merchant_order_id": "o-hostile",
        "txn_id": "t-hostile",
        "amount": 1234,
        "status": "SUCCEEDED",
        "paid_at": time.time(),
    }
    return json.dumps({**note, **change}).encode()


@VIA
def test_oversized_headers_are_431_and_the_service_stays_healthy(stack: Stack, via: str) -> None:
    url = base(stack, "order", via)
    huge = {SIGNATURE_HEADER: "v" * (8 * 1024 * 1024)}
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{url}/notifications/payment", content=b"{}", headers=huge)
        assert response.status_code == 431
        assert response.json()["error"] == "headers_too_large"
        assert len(response.content) < SMALL
        for service in LINK:
            padded = {"x-padding": "p" * 20_000}
            assert (
                client.get(f"{base(stack, service, via)}/healthz", headers=padded).status_code
                == 431
            )
            assert client.get(f"{base(stack, service, via)}/healthz").status_code == 200


@VIA
@pytest.mark.parametrize("change", [{"amount": "1234"}, {"paid_at": True}])
def test_a_signed_notification_with_wrong_types_is_422(
    stack: Stack, via: str, change: dict[str, Any]
) -> None:
    url = base(stack, "order", via)
    secret = stack.info["notify_secret"]
    for body, status in ((_notification(**change), 422), (_notification(), 404)):
        headers = {SIGNATURE_HEADER: sign(secret, int(time.time()), body)}
        response = httpx.post(f"{url}/notifications/payment", content=body, headers=headers)
        # the well-typed twin reaches the order lookup: the signature was good
        assert response.status_code == status, response.text


BODY_ROUTES = [
    ("order", "POST", "/orders"),
    ("order", "POST", "/notifications/payment"),
    ("inventory", "POST", "/reservations"),
    ("inventory", "PUT", "/admin/stock"),
    ("channel", "POST", "/payments"),
    ("channel", "POST", "/payments/p-hostile/refunds"),
    ("channel", "PUT", "/admin/behaviour"),
]


def _chunked(total: int = 200_000, size: int = 4096) -> Iterator[bytes]:
    yield b'{"pad": "'
    for _ in range(total // size):
        yield b"x" * size


@VIA
@pytest.mark.parametrize(("service", "method", "path"), BODY_ROUTES)
def test_a_chunked_body_over_the_limit_is_413(
    stack: Stack, via: str, service: str, method: str, path: str
) -> None:
    headers = {**stack.admin_headers(), "content-type": "application/json", "Idempotency-Key": "k"}
    response = httpx.request(
        method, base(stack, service, via) + path, content=_chunked(), headers=headers, timeout=30
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "body_too_large"


@VIA
@pytest.mark.parametrize(
    ("service", "path"), [("channel", "/admin/behaviour"), ("inventory", "/admin/stock")]
)
def test_admin_routes_answer_401_before_reading_the_body(
    stack: Stack, via: str, service: str, path: str
) -> None:
    url = base(stack, service, via) + path
    for auth in ({}, {"Authorization": "Bearer not-the-token"}):
        headers = {**auth, "content-type": "application/json"}
        response = httpx.put(url, content=b"\xff{not json", headers=headers)
        assert response.status_code == 401, response.text
    response = httpx.put(
        url,
        content=b"\xff{not json",
        headers={**stack.admin_headers(), "content-type": "application/json"},
    )
    assert response.status_code == 400  # the token holder gets the real answer


def test_run_directory_is_private_and_no_log_holds_a_secret(stack: Stack) -> None:
    # runs last in this module: the requests above (wrong tokens, forged and huge
    # signatures) have been logged by now
    run_dir = stack.run_dir
    assert run_dir.stat().st_mode & 0o777 == 0o700
    assert (run_dir / "stack.json").stat().st_mode & 0o777 == 0o600
    secrets = [stack.info["admin_token"], stack.info["notify_secret"]]
    holders = [
        path.name
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
        and path.name != "stack.json"
        and any(secret.encode() in path.read_bytes() for secret in secrets)
    ]
    assert holders == []
    # the search would see them: stack.json, which it skips, holds both
    assert all(secret.encode() in (run_dir / "stack.json").read_bytes() for secret in secrets)
    assert list(run_dir.glob("*.log")), "no service logs to search"
    assert not any(secret in describe(stack) for secret in secrets)
