"""Order HTTP API (place order, read order, payment notifications, audit export): thin routes.

Every route is `async def` so store calls run on the event-loop thread, one at a time,
as services.common.storage requires.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.api import admin_guard, error_responses, ndjson
from services.common.fields import ID_PATTERN, JSON_INT, MAX_QTY
from services.common.server import base_app
from services.common.settings import Settings
from services.common.signing import SIGNATURE_HEADER
from services.order import metrics, workers
from services.order.domain import Amount, Id, Notification, OrderService, trace_id_of
from services.order.peers import PaymentStatus, Peers
from services.order.store import Order, OrderStore

PathId = Annotated[str, Path(pattern=ID_PATTERN, min_length=1, max_length=128)]


class PlaceOrder(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sku: Id
    qty: Annotated[int, Field(ge=1, le=MAX_QTY), JSON_INT]
    amount: Amount


class OrderOut(BaseModel):
    order_id: str
    idempotency_key: str
    sku: str
    qty: int
    amount: int
    status: Literal["CREATED", "AWAITING_PAYMENT", "PAID", "REJECTED", "CLOSED"]
    payment_id: str | None



def order_out(order: Order) -> dict[str, Any]:
    """The `OrderOut` body of an order, as a plain dict (the hot routes skip the model)."""
    return {
        "order_id": order.order_id,
        "idempotency_key": order.idempotency_key,
        "sku": order.sku,
        "qty": order.qty,
        "amount": order.amount,
        "status": order.status,
        "payment_id": order.payment_id,
    }


class NotifyAck(BaseModel):
    result: Literal["success"]


# the hot routes answer plain dicts (no response model re-validating what the domain built);
# their models stay in `responses`, so the OpenAPI document is the one response_model made
_OK = "Successful Response"
NOTIFY_ACK = b'{"result":"success"}'


IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY_PARAM = {
    "name": IDEMPOTENCY_KEY_HEADER,
    "in": "header",
    "required": True,
    "schema": {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 128},
    "description": "the shopper's key for this logical order; replays return the same order",
}


def _notification_schema() -> dict[str, Any]:
    """The notification body as published: only a SUCCEEDED payment is accepted (any other
    status is refused 400 unsupported_status, so the model itself takes any short string)."""
    schema = Notification.model_json_schema()
    schema["properties"]["status"] = {"type": "string", "enum": [PaymentStatus.SUCCEEDED.value]}
    return schema


def create_app(
    settings: Settings, *, peers: Peers | None = None, run_workers: bool = True
) -> FastAPI:
    """The order service; `peers` and `run_workers` let tests use fakes and drive workers."""
    # the store and peers live as long as the app (a lifespan may run more than once in
    # tests); only HTTP clients the app made itself are closed at shutdown
    store = OrderStore(settings.db_path, on_transition=metrics.count_transition)
    own_peers = peers is None
    service = OrderService(settings, store, peers or Peers.connect(settings))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if own_peers:
            await service.peers.open()
        tasks = workers.start(service) if run_workers else []
        try:
            yield
        finally:
            await workers.stop(tasks)
            await service.aclose()
            if own_peers:
                await service.peers.aclose()

    app = base_app(
        settings,
        title="chaosbed order",
        description="Places orders (TCC reserve + payment), settles payment notifications.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.post(
        "/orders",
        status_code=201,
        response_model=None,
        tags=["orders"],
        responses={
            201: {"model": OrderOut, "description": _OK},
            200: {"model": OrderOut, "description": "replay of the same key and body"},
            **error_responses(400, 413, 422, 503),
        },
        openapi_extra={"parameters": [_IDEMPOTENCY_KEY_PARAM]},
    )
    async def place_order(body: PlaceOrder, request: Request) -> Response:
        # read by hand so a missing key is the contract's 400, not a generic 422
        key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        order, created = await service.place(key, sku=body.sku, qty=body.qty, amount=body.amount)
        return JSONResponse(order_out(order), status_code=201 if created else 200)

    @app.get(
        "/orders/{order_id}",
        response_model=None,
        tags=["orders"],
        responses={200: {"model": OrderOut, "description": _OK}, **error_responses(404, 422)},
    )
    async def get_order(order_id: PathId) -> Response:
        return JSONResponse(order_out(service.get(order_id)))

    @app.post(
        "/notifications/payment",
        response_model=None,
        tags=["notifications"],
        responses={
            200: {"model": NotifyAck, "description": _OK},
            **error_responses(400, 404, 413, 422),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _notification_schema()}},
            },
            "parameters": [
                {
                    "name": SIGNATURE_HEADER,
                    "in": "header",
                    # read by hand so a missing one is the contract's 400 bad_signature
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "t=<unix seconds>,v1=<HMAC-SHA256 hex of '<t>.<body>'>",
                }
            ],
        },
    )
    async def payment_notification(request: Request) -> Response:
        body = await request.body()
        try:
            await service.notify(body, request.headers.get(SIGNATURE_HEADER))
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        return Response(NOTIFY_ACK, media_type="application/json")

    @app.get(
        "/audit/export",
        tags=["audit"],
        dependencies=[Depends(admin_guard(settings))],
        response_class=Response,
        responses={
            200: {
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                "description": "order records, one JSON object per line",
            },
            **error_responses(401),
        },
    )
    async def audit_export() -> Response:
        return ndjson(store.export(trace_id_of))

    return app
