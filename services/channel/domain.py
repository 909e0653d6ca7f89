"""The channel's rules: payments whose state is derived from an append-only ledger.

Create is idempotent by merchant order id, pay by payment (a replay returns the same
transaction), refunds by refund id.  A successful charge and its notification are
written in one transaction, so money is never taken without a notification queued.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from services.channel import metrics
from services.channel.behaviour import Behaviour
from services.channel.fields import Card
from services.channel.store import ChannelStore, LedgerEvent, Payment
from services.common import storage
from services.common.api import DomainError
from services.common.settings import Settings

PaymentStatus = Literal["PENDING", "SUCCEEDED", "CLOSED", "REFUNDED"]


class ChannelError(DomainError):
    """A request the channel refuses; `code` is the contract's error code."""

    code = "channel_error"
    status = 409


class UnknownPayment(ChannelError):
    code = "unknown_payment"
    status = 404


class AmountMismatch(ChannelError):
    code = "amount_mismatch"
    status = 409


class PaymentDeclined(ChannelError):
    code = "payment_declined"
    status = 402


class PaymentClosed(ChannelError):
    code = "payment_closed"
    status = 409


class AlreadyPaid(ChannelError):
    code = "already_paid"
    status = 409


class NotPaid(ChannelError):
    code = "not_paid"
    status = 409


class RefundExceedsCharge(ChannelError):
    code = "refund_exceeds_charge"
    status = 409


class RefundConflict(ChannelError):
    code = "refund_conflict"
    status = 409


@dataclass(frozen=True)
class PaymentView:
    """A payment as its events say it is now."""

    payment_id: str
    merchant_order_id: str
    amount: int
    status: PaymentStatus
    txn_id: str | None
    paid_at: float | None
    refunded: int


def derive(payment: Payment, events: list[LedgerEvent]) -> PaymentView:
    """Fold the ledger: a successful charge wins over a close (money was taken)."""
    charge = next((e for e in events if e.kind == "charge" and e.status == "succeeded"), None)
    closed = any(e.kind == "close" and e.status == "succeeded" for e in events)
    refunded = sum(e.amount for e in events if e.kind == "refund" and e.status == "succeeded")
    status: PaymentStatus
    if charge is not None:
        status = "REFUNDED" if refunded >= charge.amount else "SUCCEEDED"
    else:
        status = "CLOSED" if closed else "PENDING"
    return PaymentView(
        payment_id=payment.payment_id,
        merchant_order_id=payment.merchant_order_id,
        amount=payment.amount,
        status=status,
        txn_id=charge.txn_id if charge else None,
        paid_at=charge.t if charge else None,
        refunded=refunded,
    )


def slow_notify_s(settings: Settings) -> float:
    """How long a slow_notify card's notification is held: well past the merchant's active-query
    time (the stack gives every service the same CHAOSBED_QUERY_AFTER_S), so the order service
    must ask the channel itself."""
    return max(2.0 * settings.query_after_s, settings.query_after_s + 1.0)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Bills:
    entries: list[dict[str, Any]]
    next_cursor: int


class Channel:
    """The payment channel's operations over its store and behaviour knobs."""

    def __init__(
        self,
        store: ChannelStore,
        behaviour: Behaviour,
        *,
        clock: Callable[[], float] = storage.now,
        on_notification_scheduled: Callable[[], None] = lambda: None,
        slow_notify_s: float = 0.0,
    ) -> None:
        self.store = store
        self.behaviour = behaviour
        self.clock = clock
        self.on_notification_scheduled = on_notification_scheduled
        self.slow_notify_s = slow_notify_s  # how long a slow_notify card's notification waits

    def _load(self, payment_id: str) -> tuple[Payment, list[LedgerEvent]]:
        payment = self.store.payment(payment_id)
        if payment is None:
            raise UnknownPayment(f"no payment with payment_id {payment_id!r}")
        return payment, self.store.events(payment_id)

    def query(self, payment_id: str) -> PaymentView:
        return derive(*self._load(payment_id))

    def query_by_order(self, merchant_order_id: str) -> PaymentView:
        payment = self.store.payment_by_order(merchant_order_id)
        if payment is None:
            raise UnknownPayment(f"no payment for merchant_order_id {merchant_order_id!r}")
        return derive(payment, self.store.events(payment.payment_id))

    def create(
        self, merchant_order_id: str, amount: int, description: str | None, traceparent: str | None
    ) -> tuple[PaymentView, bool]:
        """The payment for this merchant order, and whether it was created now."""
        with self.store.transaction():
            existing = self.store.payment_by_order(merchant_order_id)
            if existing is not None:
                if existing.amount != amount:
                    raise AmountMismatch(
                        f"merchant_order_id {merchant_order_id!r} already has a payment of"
                        f" {existing.amount}, not {amount}",
                    )
                return derive(existing, self.store.events(existing.payment_id)), False
            payment = Payment(
                payment_id=new_id("pay"),
                merchant_order_id=merchant_order_id,
                amount=amount,
                description=description,
                created_at=self.clock(),
                traceparent=traceparent,
            )
            self.store.insert_payment(payment)
        metrics.PAYMENTS.labels("created").inc()
        return derive(payment, []), True

    def pay(self, payment_id: str, card: Card = "default") -> PaymentView:
        """The shopper pays: charge once and queue the notification, in one transaction."""
        knobs = self.behaviour.knobs
        with self.store.transaction():
            payment, events = self._load(payment_id)
            view = derive(payment, events)
            if view.txn_id is not None:
                return view
            after_close = knobs.accept_pay_after_close or card == "offline"
            if view.status == "CLOSED" and not after_close:
                raise PaymentClosed(f"payment {payment_id!r} is closed")
            now = self.clock()
            declined = card == "declined" or self.behaviour.chance(knobs.pay_failure_rate)
            held = self.slow_notify_s if card == "slow_notify" else 0.0
            charge = self.store.append_event(
                payment_id=payment_id,
                kind="charge",
                amount=payment.amount,
                status="failed" if declined else "succeeded",
                t=now,
                txn_id=new_id("txn"),
            )
            if not declined:
                self.store.schedule_notification(
                    notify_id=new_id("ntf"),
                    payment_id=payment_id,
                    txn_id=charge.txn_id or "",
                    at=now + held + self.behaviour.first_attempt_delay_s(),
                    now=now,
                )
        if declined:
            metrics.PAYMENTS.labels("declined").inc()
            raise PaymentDeclined(f"payment {payment_id!r} was declined; nothing was charged")
        metrics.PAYMENTS.labels("charged").inc()
        self.on_notification_scheduled()
        return derive(payment, [*events, charge])

    def close(self, payment_id: str) -> PaymentView:
        with self.store.transaction():
            payment, events = self._load(payment_id)
            view = derive(payment, events)
            if view.txn_id is not None:
                raise AlreadyPaid(f"payment {payment_id!r} is already paid (txn {view.txn_id})")
            if view.status == "CLOSED":
                return view
            event = self.store.append_event(
                payment_id=payment_id,
                kind="close",
                amount=0,
                status="succeeded",
                t=self.clock(),
                txn_id=None,
            )
        metrics.PAYMENTS.labels("closed").inc()
        return derive(payment, [*events, event])

    def refund(self, payment_id: str, refund_id: str, amount: int) -> LedgerEvent:
        """Refund part or all of the charge, once per refund_id.

        The refund event carries the txn_id of the charge it refunds.
        """
        with self.store.transaction():
            payment, events = self._load(payment_id)
            previous = self.store.refund(refund_id)
            if previous is not None:
                if previous.payment_id != payment_id or previous.amount != amount:
                    raise RefundConflict(
                        f"refund_id {refund_id!r} was already used for {previous.amount} on"
                        f" payment {previous.payment_id!r}",
                    )
                return previous
            view = derive(payment, events)
            if view.txn_id is None:
                raise NotPaid(f"payment {payment_id!r} has no successful charge to refund")
            refundable = payment.amount - view.refunded
            if amount > refundable:
                raise RefundExceedsCharge(
                    f"amount {amount} exceeds what is left to refund ({refundable})",
                )
            event = self.store.append_event(
                payment_id=payment_id,
                kind="refund",
                amount=amount,
                status="succeeded",
                t=self.clock(),
                txn_id=view.txn_id,
                refund_id=refund_id,
            )
        metrics.PAYMENTS.labels("refunded").inc()
        return event

    def bills(self, cursor: int, limit: int) -> Bills:
        entries = self.store.bill_entries(cursor, limit)
        next_cursor = int(entries[-1]["seq"]) if entries else cursor
        return Bills(entries=entries, next_cursor=next_cursor)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id inside a W3C traceparent (`00-<trace id>-<span id>-<flags>`)."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def export_records(store: ChannelStore) -> Iterator[dict[str, Any]]:
    """The audit's view of the channel: payments, the ledger, then every notification request."""
    for p in store.export_payments():
        yield {
            "type": "payment",
            "payment_id": p["payment_id"],
            "merchant_order_id": p["merchant_order_id"],
            "amount": p["amount"],
            "created_at": p["created_at"],
            "trace_id": trace_id_of(p["traceparent"]),
        }
    for e in store.export_ledger():
        record = {
            "type": "ledger",
            "seq": e["seq"],
            "txn_id": e["txn_id"],
            "payment_id": e["payment_id"],
            "merchant_order_id": e["merchant_order_id"],
            "kind": e["kind"],
            "amount": e["amount"],
            "status": e["status"],
            "t": e["t"],
        }
        if e["refund_id"] is not None:
            record["refund_id"] = e["refund_id"]
        yield record
    for n in store.export_notify_log():
        yield {
            "type": "notification",
            "notify_id": n["notify_id"],
            "payment_id": n["payment_id"],
            "merchant_order_id": n["merchant_order_id"],
            "txn_id": n["txn_id"],
            "attempt": n["attempt"],
            "t": n["t"],
            "acked": bool(n["acked"]),
            "status_code": n["status_code"],
            "forged": bool(n["forged"]),
            "forgery": n["forgery"],
            "duplicate": bool(n["duplicate"]),
            "dropped": bool(n["dropped"]),
            "error": n["error"],
            "trace_id": trace_id_of(n["traceparent"]),
        }
