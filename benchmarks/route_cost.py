"""In-process CPU per request of the journey's hot routes, for this checkout and a base one.

Each service app is called as ASGI in-process (no socket, no uvicorn), replaying a request
whose work is already done (the same order read, the same order placed again, a duplicate
notification, a payment created and paid again, a reservation and a confirm repeated), so
what differs between two checkouts is the per-request shell.  A bare Starlette route is the
yardstick.  Checkouts are measured in turn, in fresh processes, `--rounds` times each:

    PYTHONPATH=. python -m benchmarks.route_cost --base /path/to/worktree-of-main [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Any, Any], Awaitable[None]]
CONTENT_JSON = (b"content-type", b"application/json")


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:1"), *(headers or [])],
        "client": ("127.0.0.1", 5),
        "server": ("127.0.0.1", 1),
    }


async def _call(app: ASGI, scope: Scope, body: bytes) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({**scope, "state": {}}, receive, send)
    return sent


def _answer(app: ASGI, scope: Scope, body: bytes = b"") -> tuple[int, Any]:
    sent = asyncio.run(_call(app, scope, body))
    return sent[0]["status"], json.loads(sent[1]["body"] or b"null")


def _cpu_us(app: ASGI, scope: Scope, body: bytes, n: int) -> float:
    """Best of three loops of `n` requests: CPU µs per request."""

    async def loop(count: int) -> None:
        for _ in range(count):
            await _call(app, scope, body)

    asyncio.run(loop(min(n, 300)))
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        asyncio.run(loop(n))
        best = min(best, (time.process_time() - started) / n)
    return best * 1e6


def measure(n: int) -> dict[str, float]:
    """µs per request of every hot route of the checkout on sys.path (and the yardstick)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from services.channel.app import create_app as channel_app
    from services.common.settings import Settings
    from services.common.signing import sign
    from services.inventory.app import create_app as inventory_app
    from services.order.app import create_app as order_app
    from services.order.domain import request_hash

    async def ping(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    work = tempfile.mkdtemp(prefix="route-cost-")

    def settings(service: str) -> Settings:
        return Settings(service=service, db_path=os.path.join(work, f"{service}.db"))

    def dumps(body: dict[str, Any]) -> bytes:
        return json.dumps(body).encode()

    order = order_app(settings("order"), run_workers=False)
    digest = request_hash(sku="s", qty=1, amount=100)
    with order.state.service.store.transaction() as tx:
        tx.insert_order(
            order_id="o1",
            key="k1",
            request_hash=digest,
            sku="s",
            qty=1,
            amount=100,
            traceparent=None,
        )
        tx.set_payment("o1", "p1")
        tx.move("o1", "AWAITING_PAYMENT", cause="bench", only_from=None)
    note = dumps(
        {
            "notify_id": "n1",
            "payment_id": "p1",
            "merchant_order_id": "o1",
            "txn_id": "t1",
            "amount": 100,
            "status": "SUCCEEDED",
            "paid_at": 1.0,
        }
    )
    signature = sign(Settings(service="order").notify_secret, int(time.time()), note)
    notify = _scope(
        "POST",
        "/notifications/payment",
        [CONTENT_JSON, (b"chaosbed-signature", signature.encode())],
    )
    assert _answer(order, notify, note)[0] == 200  # settled once: the loop replays a duplicate
    channel = channel_app(settings("channel"))
    create = _scope("POST", "/payments", [CONTENT_JSON])
    payment = dumps({"merchant_order_id": "o1", "amount": 100})
    payment_id = _answer(channel, create, payment)[1]["payment_id"]
    pay = _scope("POST", f"/payments/{payment_id}/pay", [CONTENT_JSON])
    assert _answer(channel, pay)[0] == 200
    inventory = inventory_app(settings("inventory"), seed_stock={"s": 10**9})
    cases: dict[str, tuple[ASGI, Scope, bytes]] = {
        "bare Starlette GET": (
            Starlette(routes=[Route("/ping", ping)]),
            _scope("GET", "/ping"),
            b"",
        ),
        "order GET /orders/{order_id}": (order, _scope("GET", "/orders/o1"), b""),
        "order POST /orders": (
            order,
            _scope("POST", "/orders", [CONTENT_JSON, (b"idempotency-key", b"k1")]),
            dumps({"sku": "s", "qty": 1, "amount": 100}),
        ),
        "order POST /notifications/payment": (order, notify, note),
        "channel POST /payments": (channel, create, payment),
        "channel POST /payments/{payment_id}/pay": (channel, pay, b""),
        "inventory POST /reservations": (
            inventory,
            _scope("POST", "/reservations", [CONTENT_JSON]),
            dumps({"order_id": "o1", "sku": "s", "qty": 1}),
        ),
        "inventory POST /reservations/confirm": (
            inventory,
            _scope("POST", "/reservations/confirm", [CONTENT_JSON]),
            dumps({"order_ids": ["o1"]}),
        ),
    }
    for name, (app, scope, body) in cases.items():
        status = _answer(app, scope, body)[0]
        if status not in (200, 201):
            raise RuntimeError(f"{name}: answered {status}, not a replay of done work")
    return {name: _cpu_us(app, scope, body, n) for name, (app, scope, body) in cases.items()}


def _measure_in(root: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        # this file, run against `root`'s services (a base checkout may not have it)
        [sys.executable, __file__, "--measure", "-n", str(n)],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, help="checkout of the 'before' code")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("-n", type=int, default=2000, help="requests per loop")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.n)))
        return
    here = Path(__file__).resolve().parent.parent
    sides = {"after": here} if args.base is None else {"before": args.base.resolve(), "after": here}
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, root in sides.items():
            runs[side].append(_measure_in(root, args.n))
    medians = {
        side: {route: statistics.median(r[route] for r in results) for route in results[0]}
        for side, results in runs.items()
    }
    print(
        json.dumps(
            {"rounds": args.rounds, "requests_per_loop": args.n, "cpu_us": medians}, indent=2
        )
    )
    if "before" in medians:
        print(f"\n{'route':42} {'before µs':>10} {'after µs':>10} {'after/before':>13}")
        for route, after in medians["after"].items():
            before = medians["before"][route]
            print(f"{route:42} {before:10.1f} {after:10.1f} {after / before:13.2f}")


if __name__ == "__main__":
    main()
