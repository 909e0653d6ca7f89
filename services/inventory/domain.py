"""Inventory TCC rules: try (reserve), confirm, cancel, the TTL sweep, stock seeding.

No HTTP here.  Every rule runs in one store transaction with no await inside it,
so a try's stock decrement and its reservation row commit together or not at all.
Refusals that the audit wants to see (a try refused by a tombstone or for lack of
stock) are recorded as events and committed before the error is raised.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.common import storage
from services.common.api import DomainError
from services.common.fields import ID_PATTERN
from services.inventory.store import EventKind, InventoryStore, Reservation, State, Stock

MAX_STOCK = 100_000_000
MAX_TTL_S = 86_400.0
SWEEP_BATCH = 500
# long enough that concurrent tries read the same stock value before any writes it back
CHECK_THEN_ACT_GAP_S = 0.01


class InventoryError(DomainError):
    """A request the inventory rules refuse; the message says why."""

    code = "inventory_error"
    status = 409


class UnknownSku(InventoryError):
    code = "unknown_sku"
    status = 404

    def __init__(self, sku: str) -> None:
        super().__init__(f"sku {sku!r} has no stock record; seed it with PUT /admin/stock")
        self.sku = sku


class UnknownReservation(InventoryError):
    code = "unknown_reservation"
    status = 404

    def __init__(self, order_id: str) -> None:
        super().__init__(f"no reservation for order {order_id!r}")


class OutOfStock(InventoryError):
    code = "out_of_stock"
    status = 409

    def __init__(self, sku: str, qty: int, available: int) -> None:
        super().__init__(f"sku {sku!r}: requested {qty}, available {max(available, 0)}")


class ReservationCancelled(InventoryError):
    code = "reservation_cancelled"
    status = 409

    def __init__(self, order_id: str, *, before_try: bool) -> None:
        why = "its cancel arrived before the try" if before_try else "it was cancelled"
        super().__init__(f"order {order_id!r} cannot hold stock: {why}")


class ReservationConflict(InventoryError):
    code = "reservation_conflict"
    status = 409

    def __init__(self, existing: Reservation, sku: str, qty: int) -> None:
        super().__init__(
            f"order {existing.order_id!r} already reserved sku={existing.sku!r} "
            f"qty={existing.qty}; this try asks sku={sku!r} qty={qty}"
        )


class ReservationConfirmed(InventoryError):
    code = "reservation_confirmed"
    status = 409

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} is already confirmed and cannot be cancelled")


class StockInUse(InventoryError):
    code = "stock_in_use"
    status = 409

    def __init__(self, skus: list[str]) -> None:
        super().__init__(f"sku(s) {', '.join(skus)} already have reservations; stock not reset")


class SeedStockError(ValueError):
    """CHAOSBED_SEED_STOCK is not a JSON object of sku -> quantity."""


@dataclass(frozen=True)
class CancelOutcome:
    order_id: str
    state: State
    empty_rollback: bool


def _clock(now: float | None) -> float:
    return storage.now() if now is None else now


def _settled_try(
    store: InventoryStore, order_id: str, sku: str, qty: int, t: float
) -> Reservation | InventoryError | None:
    """Answer a try that needs no stock decision (replay, tombstone, unknown sku), else None."""
    existing = store.reservation(order_id)
    if existing is not None:
        if (existing.sku, existing.qty) != (sku, qty):
            return ReservationConflict(existing, sku, qty)
        if existing.state is State.CANCELLED:
            store.add_event(order_id, EventKind.TRY_REFUSED, t, 0)
            return ReservationCancelled(order_id, before_try=False)
        store.add_event(order_id, EventKind.TRY, t, 0)
        return existing
    if store.tombstone(order_id) is not None:
        store.add_event(order_id, EventKind.TRY_REFUSED, t, 0)
        return ReservationCancelled(order_id, before_try=True)
    if store.stock(sku) is None:
        return UnknownSku(sku)
    return None


def _record_try(
    store: InventoryStore, order_id: str, sku: str, qty: int, ttl_s: float, t: float
) -> Reservation:
    reservation = Reservation(order_id, sku, qty, State.TRY, t, None, ttl_s, None)
    store.insert_reservation(reservation)
    store.add_event(order_id, EventKind.TRY, t, -qty)
    return reservation


def _refuse_out_of_stock(
    store: InventoryStore, order_id: str, sku: str, qty: int, t: float
) -> OutOfStock:
    stock = store.stock(sku)
    store.add_event(order_id, EventKind.TRY_REFUSED, t, 0)
    return OutOfStock(sku, qty, stock.available if stock else 0)


def _unwrap(outcome: Reservation | InventoryError) -> Reservation:
    if isinstance(outcome, InventoryError):
        raise outcome
    return outcome


def try_reserve(
    store: InventoryStore,
    order_id: str,
    sku: str,
    qty: int,
    *,
    ttl_s: float,
    now: float | None = None,
) -> Reservation:
    """TCC try: reserve qty of sku for the order, idempotent by order id."""
    t = _clock(now)
    outcome: Reservation | InventoryError | None
    with store.transaction():
        outcome = _settled_try(store, order_id, sku, qty, t)
        if outcome is None:
            if store.take_stock(sku, qty):
                outcome = _record_try(store, order_id, sku, qty, ttl_s, t)
            else:
                outcome = _refuse_out_of_stock(store, order_id, sku, qty, t)
    return _unwrap(outcome)


async def try_reserve_check_then_act(
    store: InventoryStore,
    order_id: str,
    sku: str,
    qty: int,
    *,
    ttl_s: float,
    now: float | None = None,
) -> Reservation:
    """Planted bug `stock-check-then-act`: read stock, yield, write the stale value back."""
    t = _clock(now)
    outcome: Reservation | InventoryError | None
    with store.transaction():
        outcome = _settled_try(store, order_id, sku, qty, t)
        if outcome is None:
            stock = store.stock(sku)
            assert stock is not None  # _settled_try answered unknown skus
            read_available = stock.available
            if read_available < qty:
                outcome = _refuse_out_of_stock(store, order_id, sku, qty, t)
    if outcome is not None:
        return _unwrap(outcome)
    await asyncio.sleep(CHECK_THEN_ACT_GAP_S)
    with store.transaction():
        # a concurrent replay of this very order may have inserted it meanwhile
        outcome = _settled_try(store, order_id, sku, qty, t)
        if outcome is None:
            store.overwrite_available(sku, read_available - qty)
            outcome = _record_try(store, order_id, sku, qty, ttl_s, t)
    return _unwrap(outcome)


def confirm(store: InventoryStore, order_id: str, *, now: float | None = None) -> Reservation:
    """TCC confirm: the reserved stock is sold.  Idempotent."""
    t = _clock(now)
    with store.transaction():
        return _confirm(store, order_id, t)


def confirm_many(
    store: InventoryStore, order_ids: list[str], *, now: float | None = None
) -> list[Reservation | InventoryError]:
    """TCC confirm of each order, in one transaction: per order the confirmed reservation
    or the refusal `confirm` would raise (a refusal writes nothing, so others still commit)."""
    t = _clock(now)
    outcomes: list[Reservation | InventoryError] = []
    with store.transaction():
        for order_id in order_ids:
            try:
                outcomes.append(_confirm(store, order_id, t))
            except InventoryError as exc:
                outcomes.append(exc)
    return outcomes


def _confirm(store: InventoryStore, order_id: str, t: float) -> Reservation:
    existing = store.reservation(order_id)
    if existing is None:
        if store.tombstone(order_id) is not None:
            raise ReservationCancelled(order_id, before_try=True)
        raise UnknownReservation(order_id)
    if existing.state is State.CANCELLED:
        raise ReservationCancelled(order_id, before_try=False)
    if existing.state is State.TRY:
        store.finish_try(order_id, State.CONFIRMED, t)
    store.add_event(order_id, EventKind.CONFIRM, t, 0)
    confirmed = store.reservation(order_id)
    assert confirmed is not None
    return confirmed


def _release(store: InventoryStore, r: Reservation, reason: str, t: float) -> None:
    """Cancel one TRY reservation and give its stock back (inside a transaction)."""
    if store.finish_try(r.order_id, State.CANCELLED, t, reason):
        store.return_stock(r.sku, r.qty)
        store.add_event(r.order_id, EventKind.CANCEL, t, r.qty)


def cancel(
    store: InventoryStore, order_id: str, *, reason: str = "order", now: float | None = None
) -> CancelOutcome:
    """TCC cancel: release a TRY; before any try, leave a tombstone (empty rollback)."""
    t = _clock(now)
    with store.transaction():
        existing = store.reservation(order_id)
        if existing is None:
            store.add_tombstone(order_id, t)
            store.add_event(order_id, EventKind.EMPTY_ROLLBACK, t, 0)
            return CancelOutcome(order_id, State.CANCELLED, empty_rollback=True)
        if existing.state is State.CONFIRMED:
            raise ReservationConfirmed(order_id)
        if existing.state is State.TRY:
            _release(store, existing, reason, t)
        else:
            store.add_event(order_id, EventKind.CANCEL, t, 0)
    return CancelOutcome(order_id, State.CANCELLED, empty_rollback=False)


def sweep(store: InventoryStore, now: float, *, batch: int = SWEEP_BATCH) -> list[Reservation]:
    """Cancel TRY reservations older than their ttl (reason 'sweeper'); return them."""
    with store.transaction():
        expired = store.expired_tries(now, batch)
        for r in expired:
            _release(store, r, "sweeper", now)
    return expired


def seed_stock(store: InventoryStore, items: Mapping[str, int]) -> list[Stock]:
    """Set initial = available = qty for each sku; all or nothing, refused once reserved."""
    with store.transaction():
        in_use = sorted(sku for sku in items if store.has_reservations(sku))
        if in_use:
            raise StockInUse(in_use)
        for sku, qty in items.items():
            store.put_stock(sku, qty)
        seeded = [store.stock(sku) for sku in items]
    return [s for s in seeded if s is not None]


def seed_missing_stock(store: InventoryStore, items: Mapping[str, int]) -> list[str]:
    """Add skus that do not exist yet (a restart keeps the stock it already has)."""
    with store.transaction():
        return [sku for sku, qty in items.items() if store.add_stock_if_missing(sku, qty)]


def parse_seed_stock(raw: str) -> dict[str, int]:
    """Parse CHAOSBED_SEED_STOCK: a JSON object {sku: qty}; empty means no seeding."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SeedStockError(f"CHAOSBED_SEED_STOCK is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SeedStockError('CHAOSBED_SEED_STOCK must be a JSON object like {"sku-1": 100}')
    items: dict[str, int] = {}
    for sku, qty in value.items():
        if not re.fullmatch(ID_PATTERN, sku):
            raise SeedStockError(f"CHAOSBED_SEED_STOCK: sku {sku!r} must match {ID_PATTERN}")
        if isinstance(qty, bool) or not isinstance(qty, int) or not 0 <= qty <= MAX_STOCK:
            raise SeedStockError(
                f"CHAOSBED_SEED_STOCK: qty for {sku!r} must be an integer 0..{MAX_STOCK}, "
                f"got {qty!r}"
            )
        items[sku] = qty
    return items
