"""The mock payment channel's HTTP API (docs/contracts.md, "channel").  Routes stay thin."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Body, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.channel import domain
from services.channel.behaviour import Behaviour, Knobs, KnobsUpdate
from services.channel.domain import Channel, PaymentStatus, PaymentView, slow_notify_s
from services.channel.fields import MAX_SQLITE_INT, Amount, Card, Id
from services.channel.store import ChannelStore
from services.channel.workers import Notifier, http_sender
from services.common import telemetry
from services.common.api import admin_guard, error_responses, ndjson
from services.common.fields import ID_PATTERN
from services.common.server import base_app
from services.common.settings import Settings

log = logging.getLogger("chaosbed.channel")

PaymentIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]


class CreatePayment(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    merchant_order_id: Id
    amount: Amount
    description: str | None = Field(default=None, max_length=256)


class PayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    card: Card = "default"  # a test card choosing the payment's path (services/channel/domain.py)


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    refund_id: Id
    amount: Amount


class PaymentOut(BaseModel):
    payment_id: str
    merchant_order_id: str
    amount: int
    status: PaymentStatus
    txn_id: str | None
    paid_at: float | None
    refunded: int


class PayOut(BaseModel):
    payment_id: str
    status: Literal["SUCCEEDED"]
    txn_id: str


class CloseOut(BaseModel):
    payment_id: str
    status: Literal["CLOSED"]


class RefundOut(BaseModel):
    refund_id: str
    payment_id: str
    txn_id: str | None
    status: Literal["SUCCEEDED"]
    amount: int


class BillEntry(BaseModel):
    seq: int
    txn_id: str
    payment_id: str
    merchant_order_id: str
    kind: Literal["charge", "refund"]
    amount: int
    t: float


class BillsOut(BaseModel):
    entries: list[BillEntry]
    next_cursor: int


def _payment_out(view: PaymentView) -> PaymentOut:
    return PaymentOut(
        payment_id=view.payment_id,
        merchant_order_id=view.merchant_order_id,
        amount=view.amount,
        status=view.status,
        txn_id=view.txn_id,
        paid_at=view.paid_at,
        refunded=view.refunded,
    )


def payment_body(view: PaymentView) -> dict[str, object]:
    """`PaymentOut` as a plain dict, for the hot route that skips the response model."""
    return {
        "payment_id": view.payment_id,
        "merchant_order_id": view.merchant_order_id,
        "amount": view.amount,
        "status": view.status,
        "txn_id": view.txn_id,
        "paid_at": view.paid_at,
        "refunded": view.refunded,
    }


# the two routes of every journey answer plain dicts (no response model re-validating what
# the domain built); their models stay in `responses`, so the OpenAPI document is unchanged
_OK = "Successful Response"


def _allow_every_method_of_a_path(app: FastAPI) -> None:
    """A 405's Allow header lists the methods of every route on the path.

    Starlette names only the first route that matched the path, and two of ours
    (/payments, /admin/behaviour) share a path between two routes.
    """
    shared_handler = app.exception_handlers[StarletteHTTPException]

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 405:
            methods: set[str] = set()
            for route in app.routes:
                match, _ = route.matches(request.scope)
                if match != Match.NONE and isinstance(route, APIRoute):
                    methods |= route.methods or set()
            exc = StarletteHTTPException(405, exc.detail, {"Allow": ", ".join(sorted(methods))})
        response = shared_handler(request, exc)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(StarletteHTTPException, http_error)


def create_app(settings: Settings) -> FastAPI:
    store = ChannelStore.open(settings.db_path)
    behaviour = Behaviour.from_settings(settings)
    channel = Channel(store, behaviour, slow_notify_s=slow_notify_s(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.notify_url:
            log.warning("CHAOSBED_NOTIFY_URL is not set: notifications stay pending")
            app.state.notifier = None
            yield
            return
        send, client = http_sender(settings)
        await client.open()
        notifier = Notifier(store, behaviour, settings, send)
        app.state.notifier = notifier
        channel.on_notification_scheduled = notifier.wake
        task = asyncio.create_task(notifier.run(), name="notifier")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await notifier.stop()
            await client.close()
            channel.on_notification_scheduled = lambda: None

    app = base_app(
        settings,
        title="chaosbed channel",
        description="Mock payment channel: payments, notifications with faults, bills.",
        lifespan=lifespan,
    )
    app.state.channel = channel
    app.state.behaviour = behaviour
    admin = Depends(admin_guard(settings))

    _allow_every_method_of_a_path(app)

    # Handlers are `async def` on purpose: the store's single connection belongs to the
    # event-loop thread (see services/common/storage.py).

    @app.post(
        "/payments",
        status_code=201,
        response_model=None,
        responses={
            201: {"model": PaymentOut, "description": _OK},
            200: {"model": PaymentOut, "description": "replay"},
            **error_responses(409),
        },
        tags=["payments"],
    )
    async def create_payment(body: CreatePayment) -> Response:
        view, created = channel.create(
            body.merchant_order_id, body.amount, body.description, telemetry.current_traceparent()
        )
        return JSONResponse(payment_body(view), status_code=201 if created else 200)

    @app.get(
        "/payments", response_model=PaymentOut, responses=error_responses(404), tags=["payments"]
    )
    async def query_by_order(
        merchant_order_id: Annotated[str, Query(min_length=1, max_length=128, pattern=ID_PATTERN)],
    ) -> PaymentOut:
        return _payment_out(channel.query_by_order(merchant_order_id))

    @app.get(
        "/payments/{payment_id}",
        response_model=PaymentOut,
        responses=error_responses(404),
        tags=["payments"],
    )
    async def query(payment_id: PaymentIdPath) -> PaymentOut:
        return _payment_out(channel.query(payment_id))

    @app.post(
        "/payments/{payment_id}/pay",
        response_model=None,
        responses={
            200: {"model": PayOut, "description": _OK},
            **error_responses(402, 404, 409),
        },
        tags=["payments"],
    )
    async def pay(
        payment_id: PaymentIdPath, body: Annotated[PayRequest | None, Body()] = None
    ) -> Response:
        view = channel.pay(payment_id, body.card if body is not None else "default")
        paid = {"payment_id": view.payment_id, "status": "SUCCEEDED", "txn_id": view.txn_id or ""}
        return JSONResponse(paid)

    @app.post(
        "/payments/{payment_id}/close",
        response_model=CloseOut,
        responses=error_responses(404, 409),
        tags=["payments"],
    )
    async def close(payment_id: PaymentIdPath) -> CloseOut:
        view = channel.close(payment_id)
        return CloseOut(payment_id=view.payment_id, status="CLOSED")

    @app.post(
        "/payments/{payment_id}/refunds",
        response_model=RefundOut,
        responses=error_responses(404, 409),
        tags=["payments"],
    )
    async def refund(payment_id: PaymentIdPath, body: RefundRequest) -> RefundOut:
        event = channel.refund(payment_id, body.refund_id, body.amount)
        return RefundOut(
            refund_id=body.refund_id,
            payment_id=payment_id,
            txn_id=event.txn_id,
            status="SUCCEEDED",
            amount=event.amount,
        )

    @app.get("/bills", response_model=BillsOut, responses=error_responses(), tags=["bills"])
    async def bills(
        cursor: Annotated[int, Query(ge=0, le=MAX_SQLITE_INT)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    ) -> BillsOut:
        page = channel.bills(cursor, limit)
        return BillsOut(
            entries=[BillEntry(**e) for e in page.entries], next_cursor=page.next_cursor
        )

    @app.get(
        "/admin/behaviour",
        response_model=Knobs,
        responses=error_responses(401),
        dependencies=[admin],
        tags=["admin"],
    )
    async def get_behaviour() -> Knobs:
        return behaviour.knobs

    @app.put(
        "/admin/behaviour",
        response_model=Knobs,
        responses=error_responses(401),
        dependencies=[admin],
        tags=["admin"],
    )
    async def put_behaviour(change: KnobsUpdate) -> Knobs:
        knobs = behaviour.update(change)
        log.info("behaviour changed", extra=telemetry.log_fields(knobs=knobs.model_dump()))
        return knobs

    @app.get(
        "/audit/export",
        response_class=Response,
        responses={
            200: {
                "description": "NDJSON: payment, ledger and notification records",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
            **error_responses(401),
        },
        dependencies=[admin],
        tags=["audit"],
    )
    async def audit_export() -> Response:
        return ndjson(list(domain.export_records(store)))

    return app
