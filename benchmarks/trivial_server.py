"""A bare Starlette route on uvicorn, served exactly as the services are served: the unit
"one trivial request" that a journey's CPU cost is expressed in.

`python -m benchmarks.trivial_server PORT` serves `GET /ping` on 127.0.0.1:PORT;
`TrivialServer` runs it as a child process for a benchmark.

`python -m benchmarks.trivial_server PORT --null-stack` serves, besides, a journey that costs
next to nothing: the order service's `POST /orders` (idempotent by its key) and
`GET /orders/{id}`, and the channel's `POST /payments/{id}/pay`, all in one dict.  bench_load
drives Locust against it to show the load generator's own scaling where the stack is not the
limit; it checks nothing and is never a target of the gate.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rundir import Closing

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


async def ping(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def app() -> Starlette:
    return Starlette(routes=[Route("/ping", ping)])


class NullStack:
    """Orders by id and their ids by idempotency key and payment id: a paid journey's three
    calls answered from memory, as the bundled adapter and the shopper expect them."""

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, str] = {}
        self.by_payment: dict[str, str] = {}

    async def place(self, request: Request) -> JSONResponse:
        key = request.headers.get("idempotency-key")
        if not key:
            return JSONResponse({"detail": "Idempotency-Key header required"}, status_code=400)
        known = self.by_key.get(key)
        if known is not None:
            return JSONResponse(self.orders[known], status_code=200)
        body = await request.json()
        n = len(self.orders) + 1
        order = {
            "order_id": f"o-{n}",
            "status": "AWAITING_PAYMENT",
            "payment_id": f"pay-{n}",
            "amount": body.get("amount"),
        }
        self.orders[order["order_id"]] = order
        self.by_key[key] = self.by_payment[order["payment_id"]] = order["order_id"]
        return JSONResponse(order, status_code=201)

    async def read(self, request: Request) -> JSONResponse:
        order = self.orders.get(request.path_params["order_id"])
        if order is None:
            return JSONResponse({"detail": "no such order"}, status_code=404)
        return JSONResponse(order)

    async def pay(self, request: Request) -> JSONResponse:
        order_id = self.by_payment.get(request.path_params["payment_id"])
        if order_id is None:
            return JSONResponse({"detail": "no such payment"}, status_code=404)
        await request.body()
        self.orders[order_id]["status"] = "PAID"
        return JSONResponse({"txn_id": f"t-{order_id}", "status": "CHARGED"})


def null_stack_app() -> Starlette:
    stack = NullStack()
    return Starlette(
        routes=[
            Route("/ping", ping),
            Route("/healthz", ping),
            Route("/orders", stack.place, methods=["POST"]),
            Route("/orders/{order_id}", stack.read, methods=["GET"]),
            Route("/payments/{payment_id}/pay", stack.pay, methods=["POST"]),
        ]
    )


def serve(port: int, *, null_stack: bool = False) -> None:
    from services.common.server import serve as serve_service
    from services.common.settings import Settings

    # the services' own serve(): same uvicorn loop, parser and options, whatever they become
    served = null_stack_app() if null_stack else app()
    serve_service(cast(Any, served), Settings(service="trivial", port=port))


class TrivialServer(Closing):
    """The trivial server as a child process; `pid` for its CPU time, `url` to call it."""

    def __init__(self, port: int, log_path: Path, *, null_stack: bool = False) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log_path.open("wb")
        self._popen = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.trivial_server", str(port)]
            + (["--null-stack"] if null_stack else []),
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.pid = self._popen.pid
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._popen.poll() is not None:
                code = self._popen.returncode
                raise RuntimeError(f"trivial server exited at start (code {code})")
            try:
                if httpx.get(self.url + "/ping", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"trivial server not answering on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        self._log.close()

    def close(self) -> None:
        self.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]), null_stack="--null-stack" in sys.argv[2:])
