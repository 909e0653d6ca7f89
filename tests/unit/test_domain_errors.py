"""One error scheme: every domain refusal answers its declared status and `{"error", "detail"}`.

The table below is the contract's error list (docs/contracts.md) written out once; each
error is raised from a route of a real `base_app`, so a refusal without a handler or a
status would come back as a 500.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.channel import domain as channel
from services.common.api import AdminUnauthorized, DomainError
from services.common.server import base_app
from services.common.settings import Settings
from services.inventory import domain as inventory
from services.inventory.store import Reservation, State
from services.order import domain as order

_TRY = Reservation("o-1", "sku-1", 2, State.TRY, 0.0, None, 60.0, None)

# (error, status, code): every refusal the three services raise today
KNOWN: list[tuple[DomainError, int, str]] = [
    (AdminUnauthorized("needs a bearer token"), 401, "unauthorized"),
    (channel.UnknownPayment("no payment 'p-1'"), 404, "unknown_payment"),
    (channel.AmountMismatch("1000, not 5"), 409, "amount_mismatch"),
    (channel.PaymentDeclined("declined"), 402, "payment_declined"),
    (channel.PaymentClosed("closed"), 409, "payment_closed"),
    (channel.AlreadyPaid("paid"), 409, "already_paid"),
    (channel.NotPaid("no charge"), 409, "not_paid"),
    (channel.RefundExceedsCharge("too much"), 409, "refund_exceeds_charge"),
    (channel.RefundConflict("reused"), 409, "refund_conflict"),
    (order.MissingIdempotencyKey("no key"), 400, "missing_idempotency_key"),
    (order.InvalidIdempotencyKey("bad key"), 400, "invalid_idempotency_key"),
    (order.IdempotencyKeyReused("other body"), 422, "idempotency_key_reused"),
    (order.DependencyUnavailable("channel down"), 503, "dependency_unavailable"),
    (order.UnknownOrder("no order"), 404, "unknown_order"),
    (order.NotificationRefused("forged", code="bad_signature"), 400, "bad_signature"),
    (order.NotificationRefused("no order", code="unknown_order", status=404), 404, "unknown_order"),
    (inventory.UnknownSku("sku-9"), 404, "unknown_sku"),
    (inventory.UnknownReservation("o-9"), 404, "unknown_reservation"),
    (inventory.OutOfStock("sku-1", 5, 2), 409, "out_of_stock"),
    (inventory.ReservationCancelled("o-1", before_try=True), 409, "reservation_cancelled"),
    (inventory.ReservationConflict(_TRY, "sku-2", 3), 409, "reservation_conflict"),
    (inventory.ReservationConfirmed("o-1"), 409, "reservation_confirmed"),
    (inventory.StockInUse(["sku-1"]), 409, "stock_in_use"),
]


class CardFrozen(channel.ChannelError):
    code = "card_frozen"


class ShelfLocked(inventory.InventoryError):
    code = "shelf_locked"


class BasketExpired(order.OrderError):
    code = "basket_expired"


class PaymentGone(channel.UnknownPayment):
    """Declares nothing: code and status both come from UnknownPayment."""


class SettlementPaused(DomainError):
    code = "settlement_paused"


# errors no table maps: each answers the status its nearest declaring ancestor states
UNMAPPED: list[tuple[DomainError, int, str]] = [
    (CardFrozen("card frozen"), 409, "card_frozen"),
    (ShelfLocked("shelf locked"), 409, "shelf_locked"),
    (BasketExpired("basket expired"), 400, "basket_expired"),
    (PaymentGone("gone"), 404, "unknown_payment"),
    (SettlementPaused("paused"), 400, "settlement_paused"),
]


def _app_raising(errors: list[DomainError]) -> FastAPI:
    app = base_app(Settings(service="errors-test"), title="errors", description="raises")

    @app.get("/raise/{index}")
    async def raise_one(index: int) -> None:
        raise errors[index]

    return app


def _answers(errors: list[tuple[DomainError, int, str]]) -> list[tuple[int, dict[str, object]]]:
    app = _app_raising([error for error, _, _ in errors])
    with TestClient(app, raise_server_exceptions=False) as client:
        responses = [client.get(f"/raise/{i}") for i in range(len(errors))]
    return [(r.status_code, r.json()) for r in responses]


def _subclasses(cls: type[DomainError]) -> set[type[DomainError]]:
    found: set[type[DomainError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_every_existing_error_keeps_its_status_and_body() -> None:
    expected = [(status, {"error": code, "detail": str(e)}) for e, status, code in KNOWN]
    assert _answers(KNOWN) == expected


def test_an_error_no_table_maps_answers_its_inherited_status_not_500() -> None:
    expected = [(status, {"error": code, "detail": str(e)}) for e, status, code in UNMAPPED]
    assert _answers(UNMAPPED) == expected


def test_the_table_above_names_every_error_the_services_define() -> None:
    bases = {channel.ChannelError, order.OrderError, inventory.InventoryError}
    defined = {c for c in _subclasses(DomainError) if c.__module__.startswith("services.")}
    assert defined - bases == {type(e) for e, _, _ in KNOWN}


def test_a_dependency_outage_tells_the_client_when_to_retry() -> None:
    app = _app_raising([order.DependencyUnavailable("inventory down"), order.UnknownOrder("o")])
    with TestClient(app) as client:
        assert client.get("/raise/0").headers["Retry-After"] == "1"
        assert "Retry-After" not in client.get("/raise/1").headers


def test_extra_fields_join_the_body() -> None:
    error = channel.RefundConflict("reused", refund_id="rf-1")
    [(status, body)] = _answers([(error, 409, "refund_conflict")])
    assert (status, body) == (
        409,
        {"error": "refund_conflict", "detail": "reused", "refund_id": "rf-1"},
    )
