"""Inventory HTTP API (TCC try / confirm / cancel, stock, audit export): thin routes.

Every route is `async def` so store calls run on the event-loop thread, one at a
time, as services.common.storage requires; only the planted bug awaits mid-try.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Path
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StringConstraints

from services.common.api import admin_guard, error_responses, ndjson
from services.common.fields import ID_PATTERN, MAX_QTY
from services.common.server import base_app
from services.common.settings import Settings
from services.inventory import domain, metrics, workers
from services.inventory.domain import MAX_STOCK, MAX_TTL_S
from services.inventory.store import InventoryStore, Reservation, State, Stock

MAX_CONFIRM_BATCH = 500


def _json_integer(value: object) -> object:
    """Accept what JSON calls an integer (7 or 7.0), refuse strings and booleans."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"Input should be an integer, got {type(value).__name__}")
    return value


Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=128)]
# constraints before the validator, or pydantic documents them as "ge"/"le", not JSON Schema
Qty = Annotated[int, Strict(False), Field(ge=1, le=MAX_QTY), BeforeValidator(_json_integer)]
StockQty = Annotated[int, Strict(False), Field(ge=0, le=MAX_STOCK), BeforeValidator(_json_integer)]
PathId = Annotated[str, Path(pattern=ID_PATTERN, min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ReserveRequest(_Strict):
    order_id: Id
    sku: Id
    qty: Qty
    ttl_s: Annotated[float, Field(gt=0, le=MAX_TTL_S)] | None = None


class ConfirmBatch(_Strict):
    order_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_CONFIRM_BATCH)]


class StockItem(_Strict):
    sku: Id
    qty: StockQty


class StockRequest(_Strict):
    items: Annotated[list[StockItem], Field(min_length=1, max_length=1000)]


class ReservationOut(BaseModel):
    order_id: str
    sku: str
    qty: int
    state: State
    t_try: float
    t_end: float | None
    ttl: float
    cancel_reason: str | None

    @classmethod
    def of(cls, r: Reservation) -> ReservationOut:
        return cls(**r.__dict__)


def reservation_body(r: Reservation) -> dict[str, object]:
    """`ReservationOut` as a plain dict, for the hot route that skips the response model."""
    return {
        "order_id": r.order_id,
        "sku": r.sku,
        "qty": r.qty,
        "state": r.state.value,
        "t_try": r.t_try,
        "t_end": r.t_end,
        "ttl": r.ttl,
        "cancel_reason": r.cancel_reason,
    }


class ConfirmResult(BaseModel):
    """One order of a confirm batch: its state, or the error code a single confirm answers."""

    order_id: str
    state: State | None = None
    error: str | None = None
    detail: str | None = None


class ConfirmBatchOut(BaseModel):
    results: list[ConfirmResult]


class CancelOut(BaseModel):
    order_id: str
    state: State
    empty_rollback: bool


class StockOut(BaseModel):
    sku: str
    initial: int
    available: int

    @classmethod
    def of(cls, s: Stock) -> StockOut:
        return cls(sku=s.sku, initial=s.initial, available=s.available)


class StockListOut(BaseModel):
    items: list[StockOut]


# the two routes of every journey answer plain dicts (no response model re-validating what
# the domain built); their models stay in `responses`, so the OpenAPI document is unchanged
_OK = "Successful Response"
NDJSON = "application/x-ndjson"
ERROR_SCHEMA_REF = "#/components/schemas/ErrorOut"


class NdjsonResponse(Response):
    media_type = NDJSON


def create_app(settings: Settings, *, seed_stock: Mapping[str, int] | None = None) -> FastAPI:
    """The inventory service; `seed_stock` adds skus that do not exist yet."""
    store = InventoryStore.open(settings.db_path)
    if seed_stock:
        domain.seed_missing_stock(store, seed_stock)
    metrics.observe_store(store)
    check_then_act = settings.bug("stock-check-then-act")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(workers.sweep_forever(store, settings.sweep_every_s))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    app = base_app(
        settings,
        title="chaosbed inventory",
        description="TCC stock reservations: try, confirm, cancel; TTL sweeper; audit export.",
        lifespan=lifespan,
    )
    app.state.store = store
    admin = [Depends(admin_guard(settings))]

    @app.post(
        "/reservations",
        response_model=None,
        responses={
            200: {"model": ReservationOut, "description": _OK},
            **error_responses(400, 404, 409, 413, 422),
        },
        tags=["tcc"],
    )
    async def reserve(body: ReserveRequest) -> Response:
        """TCC try, idempotent by order id."""
        ttl_s = body.ttl_s if body.ttl_s is not None else settings.reservation_ttl_s
        if check_then_act:
            reservation = await domain.try_reserve_check_then_act(
                store, body.order_id, body.sku, body.qty, ttl_s=ttl_s
            )
        else:
            reservation = domain.try_reserve(store, body.order_id, body.sku, body.qty, ttl_s=ttl_s)
        return JSONResponse(reservation_body(reservation))

    @app.post(
        "/reservations/confirm",
        response_model=None,
        responses={
            200: {"model": ConfirmBatchOut, "description": _OK},
            **error_responses(413, 422),
        },
        tags=["tcc"],
    )
    async def confirm_batch(body: ConfirmBatch) -> Response:
        """TCC confirm of several orders in one transaction, idempotent per order; each
        result is the reservation's state or the error a single confirm would answer."""
        results = []
        for order_id, outcome in zip(
            body.order_ids, domain.confirm_many(store, body.order_ids), strict=True
        ):
            # every ConfirmResult field, null where it does not apply (as the model dumps it)
            if isinstance(outcome, domain.InventoryError):
                result = {"state": None, "error": outcome.code, "detail": str(outcome)}
            else:
                result = {"state": outcome.state.value, "error": None, "detail": None}
            results.append({"order_id": order_id, **result})
        return JSONResponse({"results": results})

    @app.post(
        "/reservations/{order_id}/confirm",
        response_model=ReservationOut,
        responses=error_responses(404, 409, 422),
        tags=["tcc"],
    )
    async def confirm(order_id: PathId) -> ReservationOut:
        """TCC confirm, idempotent."""
        return ReservationOut.of(domain.confirm(store, order_id))

    @app.post(
        "/reservations/{order_id}/cancel",
        response_model=CancelOut,
        responses=error_responses(409, 422),
        tags=["tcc"],
    )
    async def cancel(order_id: PathId) -> CancelOut:
        """TCC cancel, idempotent; before any try it leaves a tombstone (empty rollback)."""
        outcome = domain.cancel(store, order_id)
        return CancelOut(
            order_id=outcome.order_id, state=outcome.state, empty_rollback=outcome.empty_rollback
        )

    @app.get(
        "/reservations/{order_id}",
        response_model=ReservationOut,
        responses=error_responses(404, 422),
        tags=["tcc"],
    )
    async def get_reservation(order_id: PathId) -> ReservationOut:
        reservation = store.reservation(order_id)
        if reservation is None:
            raise domain.UnknownReservation(order_id)
        return ReservationOut.of(reservation)

    @app.get("/stock", response_model=StockListOut, tags=["stock"])
    async def list_stock() -> StockListOut:
        return StockListOut(items=[StockOut.of(s) for s in store.all_stock()])

    @app.get(
        "/stock/{sku}", response_model=StockOut, responses=error_responses(404, 422), tags=["stock"]
    )
    async def get_stock(sku: PathId) -> StockOut:
        stock = store.stock(sku)
        if stock is None:
            raise domain.UnknownSku(sku)
        return StockOut.of(stock)

    @app.put(
        "/admin/stock",
        response_model=StockListOut,
        responses=error_responses(400, 401, 409, 413, 422),
        dependencies=admin,
        tags=["admin"],
    )
    async def put_stock(body: StockRequest) -> StockListOut:
        """Set initial = available = qty for skus with no reservations (repeated sku: last wins)."""
        seeded = domain.seed_stock(store, {item.sku: item.qty for item in body.items})
        return StockListOut(items=[StockOut.of(s) for s in seeded])

    @app.get(
        "/audit/export",
        response_class=NdjsonResponse,
        responses={
            200: {
                "description": "stock, reservation, tombstone and event records, one per line",
                "content": {NDJSON: {"schema": {"type": "string"}}},
            },
            # spelled out: a `model` here would be documented as NDJSON like the 200
            401: {"content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}}},
        },
        dependencies=admin,
        tags=["admin"],
    )
    async def audit_export() -> Response:
        return ndjson(store.export_records())

    return app
