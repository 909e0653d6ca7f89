"""Order rules and the payment flow (DESIGN.md steps 1, 4-8), with no HTTP details.

Flows call the peers through the typed clients in peers.py and write through
`store.transaction()`.  Every transaction is synchronous: the flow awaits a peer, then
commits what it learned, never the other way round.  Calls that touch one
order's saga at the channel or inventory hold that order's in-process lock so
the request path and the workers never run them side by side.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common import signing, storage
from services.common.api import DomainError
from services.common.fields import ID_PATTERN, JSON_INT, MAX_AMOUNT
from services.common.settings import Settings
from services.common.telemetry import current_traceparent
from services.order import metrics
from services.order.peers import (
    Bill,
    BillEntry,
    Payment,
    PaymentStatus,
    PeerRefused,
    Peers,
    PeerUnavailable,
    ReserveOutcome,
)
from services.order.store import Order, OrderStore, OutboxItem, Tx

log = logging.getLogger("chaosbed.order")

BILL_PAGE = 500
BILL_PAGES_PER_SWEEP = 20
OUTBOX_BACKOFF_CAP_S = 5.0
ACK_BEFORE_COMMIT_DELAY_S = 0.5  # planted bug ack-before-commit: the window a crash loses

_ID = re.compile(ID_PATTERN)


class Status(StrEnum):
    CREATED = "CREATED"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    PAID = "PAID"
    REJECTED = "REJECTED"
    CLOSED = "CLOSED"


class Cause(StrEnum):
    PLACE = "place"
    NOTIFY = "notify"
    QUERY = "query"
    RECONCILE = "reconcile"
    CLOSE = "close"
    REJECT = "reject"


class Settlement(StrEnum):
    """What one payment (notified, queried or billed) did to its order."""

    PAID = "paid"
    DUPLICATE = "duplicate"
    REFUND = "refund"  # charged for an order that can no longer be paid: money goes back
    IGNORED = "ignored"  # planted bug no-refund-on-late-pay only


# errors ----------------------------------------------------------------------------------


class OrderError(DomainError):
    """A refusal the API reports as `{"error": code, "detail": ...}`."""

    code = "order_error"
    status = 400


class MissingIdempotencyKey(OrderError):
    code = "missing_idempotency_key"
    status = 400


class InvalidIdempotencyKey(OrderError):
    code = "invalid_idempotency_key"
    status = 400


class IdempotencyKeyReused(OrderError):
    code = "idempotency_key_reused"
    status = 422


class DependencyUnavailable(OrderError):
    code = "dependency_unavailable"
    status = 503
    retry_after_s = 1


class UnknownOrder(OrderError):
    code = "unknown_order"
    status = 404


# codes a NotificationRefused carries; the first three mean "forged" in the metrics
FORGED_REASONS = frozenset({"bad_signature", "stale_timestamp", "notify_replayed_altered"})
NOTIFY_REFUSALS = FORGED_REASONS | {
    "amount_mismatch",
    "unknown_order",
    "unknown_payment",
    "unsupported_status",
    "invalid_body",
}


class NotificationRefused(OrderError):
    """A notification that changes nothing; its code says why (NOTIFY_REFUSALS).

    Answered 400, or 404 when the order or payment it names is not known.
    """

    code = "notification_refused"
    status = 400


# rules -----------------------------------------------------------------------------------


def check_idempotency_key(key: str | None) -> str:
    if not key:
        raise MissingIdempotencyKey("POST /orders needs an Idempotency-Key header")
    if not _ID.match(key):
        raise InvalidIdempotencyKey(
            "Idempotency-Key must be 1-128 characters of letters, digits, '_', '.', ':' or '-'"
        )
    return key


def request_hash(*, sku: str, qty: int, amount: int) -> str:
    """Fingerprint of the canonical order body: the same key must come with the same body."""
    canonical = json.dumps({"amount": amount, "qty": qty, "sku": sku}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_order_id() -> str:
    return f"o-{uuid.uuid4().hex}"


def refund_id_for(txn_id: str) -> str:
    """One refund per charge, so every path that decides to refund it asks for the same one."""
    refund_id = f"rf-{txn_id}"
    if len(refund_id) > 128:
        refund_id = f"rf-{hashlib.sha256(txn_id.encode()).hexdigest()}"
    return refund_id


def trace_id_of(traceparent: str | None) -> str | None:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def outbox_backoff_s(attempts: int, tick_s: float) -> float:
    return float(min(OUTBOX_BACKOFF_CAP_S, tick_s * 2 ** min(attempts, 16)))


Id = Annotated[str, Field(pattern=ID_PATTERN, min_length=1, max_length=128)]
Amount = Annotated[int, Field(ge=1, le=MAX_AMOUNT), JSON_INT]


class Notification(BaseModel):
    """The channel's payment notification body (docs/contracts.md).

    Strict: a signed `"amount": "1234"` or `"paid_at": true` is malformed (422), not coerced;
    unknown fields are ignored so the channel may add some.
    """

    model_config = ConfigDict(extra="ignore", strict=True)

    notify_id: Id
    payment_id: Id
    merchant_order_id: Id
    txn_id: Id
    amount: Amount
    status: Annotated[str, Field(max_length=32)]
    paid_at: float | None = None

    def fingerprint(self) -> str:
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class PaymentEvent:
    """A successful charge learned from a notification, a query or the bill."""

    order_id: str
    payment_id: str
    txn_id: str
    amount: int
    cause: Cause
    notify_id: str | None = None
    fingerprint: str | None = None

    @classmethod
    def notified(cls, note: Notification) -> PaymentEvent:
        return cls(
            order_id=note.merchant_order_id,
            payment_id=note.payment_id,
            txn_id=note.txn_id,
            amount=note.amount,
            cause=Cause.NOTIFY,
            notify_id=note.notify_id,
            fingerprint=note.fingerprint(),
        )


def _loose_ids(body: bytes) -> dict[str, str | None]:
    """Best-effort ids from a body we refuse, so the rejection record can name them."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {}

    def text(name: str) -> str | None:
        value = data.get(name)
        return value[:128] if isinstance(value, str) else None

    return {
        "notify_id": text("notify_id"),
        "order_id": text("merchant_order_id"),
        "txn_id": text("txn_id"),
    }


def _remember(tx: Tx, order: Order, event: PaymentEvent, outcome: Settlement) -> None:
    """Put the charge in the inbox with what it did, so a replay is known as one."""
    tx.add_inbox(
        txn_id=event.txn_id,
        notify_id=event.notify_id,
        order_id=order.order_id,
        outcome=outcome.value,
        body_hash=event.fingerprint,
    )


class _OrderLock:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


# the flows -------------------------------------------------------------------------------


class OrderService:
    def __init__(self, settings: Settings, store: OrderStore, peers: Peers) -> None:
        self.settings = settings
        self.store = store
        self.peers = peers
        self._locks: dict[str, _OrderLock] = {}
        self._background: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def exclusive(self, order_id: str) -> AsyncIterator[None]:
        """Serialise the saga steps of one order within this process."""
        entry = self._locks.setdefault(order_id, _OrderLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                self._locks.pop(order_id, None)

    def get(self, order_id: str) -> Order:
        order = self.store.get(order_id)
        if order is None:
            raise UnknownOrder(f"no order {order_id!r}")
        return order

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # 1. place order --------------------------------------------------------------------

    async def place(
        self, key: str | None, *, sku: str, qty: int, amount: int
    ) -> tuple[Order, bool]:
        """Create the order for this key (or find it) and drive it to AWAITING_PAYMENT.

        Returns (order, created).  Raises IdempotencyKeyReused, DependencyUnavailable.
        """
        key = check_idempotency_key(key)
        digest = request_hash(sku=sku, qty=qty, amount=amount)
        with self.store.transaction() as tx:
            found = tx.order_by_key(key)
            order = found or tx.insert_order(
                order_id=new_order_id(),
                key=key,
                request_hash=digest,
                sku=sku,
                qty=qty,
                amount=amount,
                traceparent=current_traceparent(),
            )
        if found is not None and found.request_hash != digest:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {key!r} was used for order {found.order_id} with a different"
                " body; use a new key for a new order"
            )
        replay = found is not None
        if (
            replay
            and order.status == Status.AWAITING_PAYMENT
            and self.settings.bug("new-payment-on-retry")
        ):
            return await self._pay_again(order.order_id), False
        if order.status == Status.CREATED:
            order = await self.advance(order.order_id)
        return order, not replay

    async def advance(self, order_id: str) -> Order:
        """The place saga for a CREATED order: reserve, create the payment, await it."""
        async with self.exclusive(order_id):
            order = self.get(order_id)
            if order.status != Status.CREATED:
                return order
            try:
                reserved = await self.peers.inventory.reserve(order_id, order.sku, order.qty)
                if reserved is not ReserveOutcome.RESERVED:
                    log.info("order %s rejected: %s", order_id, reserved.value)
                    return self._reject(order_id, cancel_reservation=False)
                payment = await self.peers.channel.create_payment(order_id, order.amount)
            except (PeerUnavailable, PeerRefused) as exc:
                raise DependencyUnavailable(
                    f"order {order_id} is CREATED; retry with the same Idempotency-Key: {exc}"
                ) from exc
            return self._await_payment(order_id, payment.payment_id)

    async def _pay_again(self, order_id: str) -> Order:
        """Planted bug new-payment-on-retry: a replay opens a second payment for the order."""
        async with self.exclusive(order_id):
            order = self.get(order_id)
            with self.store.transaction() as tx:
                replays = tx.count_replay(order_id)
            try:
                payment = await self.peers.channel.create_payment(
                    f"{order_id}:retry-{replays}", order.amount
                )
            except (PeerUnavailable, PeerRefused) as exc:
                raise DependencyUnavailable(f"order {order_id}: {exc}") from exc
            with self.store.transaction() as tx:
                tx.set_payment(order_id, payment.payment_id)
            return self.get(order_id)

    def _await_payment(self, order_id: str, payment_id: str) -> Order:
        with self.store.transaction() as tx:
            tx.move(
                order_id,
                Status.AWAITING_PAYMENT,
                cause=Cause.PLACE,
                only_from=[Status.CREATED],
                payment_id=payment_id,
            )
        return self.get(order_id)

    def _reject(self, order_id: str, *, cancel_reservation: bool) -> Order:
        with self.store.transaction() as tx:
            moved = tx.move(
                order_id,
                Status.REJECTED,
                cause=Cause.REJECT,
                only_from=[Status.CREATED],
                t_final=tx.t,
            )
            if moved and cancel_reservation:
                tx.add_outbox(order_id, "cancel")
        return self.get(order_id)

    async def resume(self, order_id: str, created_at: float) -> None:
        """Finish a CREATED order left by a failed request, or give it up after close_after_s."""
        try:
            await self.advance(order_id)
        except DependencyUnavailable as exc:
            if storage.now() - created_at < self.settings.close_after_s:
                log.info("resume of %s failed, will retry: %s", order_id, exc)
                self._postpone(order_id)
                return
            await self.abandon(order_id)

    async def abandon(self, order_id: str) -> None:
        """CREATED for too long: close any payment, cancel the reservation, reject."""
        async with self.exclusive(order_id):
            if self.get(order_id).status != Status.CREATED:
                return
            try:
                channel = self.peers.channel
                payment = await channel.find_payment(order_id)
                if payment is not None and payment.status == PaymentStatus.PENDING:
                    closed = await channel.close_payment(payment.payment_id)
                    payment = payment if closed else await channel.get_payment(payment.payment_id)
            except (PeerUnavailable, PeerRefused) as exc:
                log.warning("cannot give up order %s yet: %s", order_id, exc)
                self._postpone(order_id)
                return
            if payment is not None and payment.paid:
                # it was paid after all: carry on as a paid order (active query completes it)
                self._await_payment(order_id, payment.payment_id)
                return
            # the reservation may not exist: inventory records a tombstone so a late try fails
            self._reject(order_id, cancel_reservation=True)

    # 4. handle notify ------------------------------------------------------------------

    async def notify(self, body: bytes, signature_header: str | None) -> Settlement:
        """Verify, parse and settle one notification; commit before answering."""
        hint = _loose_ids(body)
        try:
            if not self.settings.bug("skip-signature-check"):
                self._verify_signature(body, signature_header)
            note = Notification.model_validate_json(body)
            if note.status != PaymentStatus.SUCCEEDED:
                raise NotificationRefused(
                    f"status {note.status!r} is not a payment; only SUCCEEDED is notified",
                    code="unsupported_status",
                )
        except (NotificationRefused, ValidationError) as exc:
            reason = exc.code if isinstance(exc, NotificationRefused) else "invalid_body"
            self._refused(reason, hint["notify_id"], hint["order_id"], hint["txn_id"])
            raise
        event = PaymentEvent.notified(note)
        if self.settings.bug("ack-before-commit"):
            self._in_background(self._settle_after_ack(event))
            return Settlement.PAID
        return self.settle(event)

    def _verify_signature(self, body: bytes, header: str | None) -> None:
        now = storage.now()
        try:
            signed_at = signing.verify(
                self.settings.notify_secret, header, body, now=now, tolerance_s=math.inf
            )
        except signing.SignatureError as exc:
            raise NotificationRefused(str(exc), code="bad_signature") from None
        tolerance = self.settings.signature_tolerance_s
        if abs(now - signed_at) > tolerance:
            raise NotificationRefused(
                f"signature timestamp {signed_at} is more than {tolerance:g}s from now",
                code="stale_timestamp",
            )

    async def _settle_after_ack(self, event: PaymentEvent) -> None:
        await asyncio.sleep(ACK_BEFORE_COMMIT_DELAY_S)
        try:
            self.settle(event)
        except NotificationRefused as exc:
            log.warning("late settle of %s refused: %s", event.txn_id, exc)

    def _refused(
        self, reason: str, notify_id: str | None, order_id: str | None, txn_id: str | None
    ) -> None:
        with self.store.transaction() as tx:
            tx.record_rejection(
                notify_id=notify_id, order_id=order_id, txn_id=txn_id, reason=reason
            )
        metrics.NOTIFICATIONS.labels("forged" if reason in FORGED_REASONS else "rejected").inc()
        log.warning("notification %s for %s refused: %s", notify_id, order_id, reason)

    def settle(self, event: PaymentEvent) -> Settlement:
        """Apply one successful charge to its order in one transaction (inbox, state, outbox).

        Raises NotificationRefused (and, for notifications, records why) when it does not fit.
        """
        try:
            with self.store.transaction() as tx:
                outcome, refund_reason = self._settle(tx, event)
                if event.notify_id is not None:
                    tx.add_receipt(
                        notify_id=event.notify_id,
                        txn_id=event.txn_id,
                        order_id=event.order_id,
                        outcome=outcome.value,
                    )
        except NotificationRefused as exc:
            if event.cause == Cause.NOTIFY:
                self._refused(exc.code, event.notify_id, event.order_id, event.txn_id)
            raise
        if refund_reason is not None:
            metrics.REFUNDS.labels(refund_reason).inc()
        if event.cause == Cause.NOTIFY:
            accepted = outcome is not Settlement.DUPLICATE
            metrics.NOTIFICATIONS.labels("accepted" if accepted else "duplicate").inc()
        return outcome

    def _settle(self, tx: Tx, event: PaymentEvent) -> tuple[Settlement, str | None]:
        order = tx.order(event.order_id)
        if order is None:
            raise NotificationRefused(
                f"no order {event.order_id!r}", code="unknown_order", status=404
            )
        if event.notify_id is not None:
            seen = tx.inbox_by_notify(event.notify_id)
            if seen is not None and seen.body_hash != event.fingerprint:
                raise NotificationRefused(
                    f"notify_id {event.notify_id!r} was already received with other content",
                    code="notify_replayed_altered",
                )
        if event.amount != order.amount:
            raise NotificationRefused(
                f"amount {event.amount} does not match order amount {order.amount}",
                code="amount_mismatch",
            )
        if event.payment_id != order.payment_id:
            raise NotificationRefused(
                f"payment {event.payment_id!r} is not the payment of order {order.order_id}",
                code="unknown_payment",
                status=404,
            )
        if self.settings.bug("notify-not-idempotent"):
            return self._settle_every_time(tx, order, event)
        if tx.inbox(event.txn_id) is not None:
            return Settlement.DUPLICATE, None
        return self._settle_once(tx, order, event)

    def _settle_once(
        self, tx: Tx, order: Order, event: PaymentEvent
    ) -> tuple[Settlement, str | None]:
        """What the first sighting of a charge does to its order."""
        if order.status == Status.AWAITING_PAYMENT:
            self._mark_paid(tx, order, event, only_from=[Status.AWAITING_PAYMENT])
            return Settlement.PAID, None
        if order.status in (Status.CLOSED, Status.REJECTED):
            if self.settings.bug("no-refund-on-late-pay"):
                return self._keep_late_payment(tx, order, event)
            return self._refund(tx, order, event, "paid_after_close")
        if order.status == Status.PAID:
            return self._refund(tx, order, event, "duplicate_charge")  # a second charge
        raise NotificationRefused(
            f"order {order.order_id} is {order.status}, not awaiting payment",
            code="unknown_payment",
            status=404,
        )

    def _mark_paid(
        self, tx: Tx, order: Order, event: PaymentEvent, *, only_from: list[str] | None
    ) -> None:
        tx.move(
            order.order_id,
            Status.PAID,
            cause=event.cause,
            only_from=only_from,
            txn_id=event.txn_id,
            t_paid=tx.t,
        )
        tx.add_outbox(order.order_id, "confirm")
        _remember(tx, order, event, Settlement.PAID)

    def _refund(
        self, tx: Tx, order: Order, event: PaymentEvent, reason: str
    ) -> tuple[Settlement, str | None]:
        scheduled = self._schedule_refund(tx, order, event, reason)
        _remember(tx, order, event, Settlement.REFUND)
        return Settlement.REFUND, reason if scheduled else None

    def _settle_every_time(
        self, tx: Tx, order: Order, event: PaymentEvent
    ) -> tuple[Settlement, str | None]:
        """Planted bug notify-not-idempotent: no inbox check, and a paid order is paid again."""
        if order.status == Status.PAID:
            self._mark_paid(tx, order, event, only_from=None)
            return Settlement.PAID, None
        return self._settle_once(tx, order, event)

    def _keep_late_payment(
        self, tx: Tx, order: Order, event: PaymentEvent
    ) -> tuple[Settlement, str | None]:
        """Planted bug no-refund-on-late-pay: a closed order's payment is kept, not refunded."""
        _remember(tx, order, event, Settlement.IGNORED)
        return Settlement.IGNORED, None

    def _schedule_refund(self, tx: Tx, order: Order, event: PaymentEvent, reason: str) -> bool:
        refund_id = refund_id_for(event.txn_id)
        added = tx.add_refund(
            refund_id=refund_id,
            order_id=order.order_id,
            txn_id=event.txn_id,
            payment_id=event.payment_id,
            amount=event.amount,
            reason=reason,
        )
        if added:
            tx.add_outbox(
                order.order_id,
                "refund",
                {"payment_id": event.payment_id, "refund_id": refund_id, "amount": event.amount},
            )
            tx.add_flag(order.order_id, reason)
        return added

    # 6-7. active query and timeout close -----------------------------------------------

    def _settle_paid(self, order: Order, payment: Payment, cause: Cause) -> Settlement | None:
        assert payment.txn_id is not None
        event = PaymentEvent(
            order_id=order.order_id,
            payment_id=payment.payment_id,
            txn_id=payment.txn_id,
            amount=payment.amount,
            cause=cause,
        )
        try:
            outcome = self.settle(event)
        except NotificationRefused as exc:
            log.error("channel says order %s is paid but: %s", order.order_id, exc)
            self._flag(order.order_id, f"{cause.value}_{exc.code}")
            return None
        if outcome is Settlement.PAID and cause == Cause.QUERY:
            metrics.ACTIVE_QUERY_RECOVERIES.inc()
        return outcome

    def _flag(self, order_id: str, flag: str) -> None:
        with self.store.transaction() as tx:
            tx.add_flag(order_id, flag)

    def _postpone(self, order_id: str) -> None:
        wait = max(self.settings.query_after_s, self.settings.worker_tick_s)
        with self.store.transaction() as tx:
            tx.postpone_check(order_id, tx.t + wait)

    async def query(self, order_id: str) -> None:
        """Active query: complete a paid order whose notification has not (yet) arrived."""
        async with self.exclusive(order_id):
            order = self.get(order_id)
            if order.status != Status.AWAITING_PAYMENT or order.payment_id is None:
                return
            try:
                payment = await self.peers.channel.get_payment(order.payment_id)
            except PeerUnavailable as exc:
                log.info("query of %s failed, will retry: %s", order_id, exc)
                return
            except PeerRefused as exc:
                log.warning("query of %s refused: %s", order_id, exc)
                self._postpone(order_id)
                return
            if payment.paid:
                self._settle_paid(order, payment, Cause.QUERY)
            else:
                self._postpone(order_id)

    async def close_expired(self, order_id: str) -> None:
        """Timeout close: query first; if unpaid, close the payment, then the order."""
        if self.settings.bug("no-active-query"):
            await self._close_without_query(order_id)
            return
        async with self.exclusive(order_id):
            order = self.get(order_id)
            if order.status != Status.AWAITING_PAYMENT or order.payment_id is None:
                return
            channel = self.peers.channel
            try:
                payment = await channel.get_payment(order.payment_id)
                if payment.paid:
                    self._settle_paid(order, payment, Cause.QUERY)
                    return
                if not await channel.close_payment(order.payment_id):
                    # paid between the query and the close: settle what the channel says now
                    payment = await channel.get_payment(order.payment_id)
                    if payment.paid:
                        self._settle_paid(order, payment, Cause.QUERY)
                    return
            except (PeerUnavailable, PeerRefused) as exc:
                log.info("close of %s failed, will retry: %s", order_id, exc)
                return
            self._close(order_id)

    async def _close_without_query(self, order_id: str) -> None:
        """Planted bug no-active-query: close without asking; a paid order then waits forever."""
        async with self.exclusive(order_id):
            order = self.get(order_id)
            if order.status != Status.AWAITING_PAYMENT or order.payment_id is None:
                return
            try:
                closed = await self.peers.channel.close_payment(order.payment_id)
            except (PeerUnavailable, PeerRefused) as exc:
                log.info("close of %s failed, will retry: %s", order_id, exc)
                return
            if not closed:
                self._postpone(order_id)
                return
            self._close(order_id)

    def _close(self, order_id: str) -> None:
        with self.store.transaction() as tx:
            if tx.move(
                order_id,
                Status.CLOSED,
                cause=Cause.CLOSE,
                only_from=[Status.AWAITING_PAYMENT],
                t_final=tx.t,
            ):
                tx.add_outbox(order_id, "cancel")

    # 5. outbox relay -------------------------------------------------------------------

    async def deliver(self, item: OutboxItem) -> None:
        """Deliver one outbox row; retry later if the peer is unavailable.

        A definite refusal (e.g. confirm answered 409 reservation_cancelled: the stock was
        released while the order got paid) will not change on retry: the row is marked
        failed with the peer's code, stays undelivered, and the order gets a flag, so the
        audit reports it instead of the relay hammering the peer forever.
        """
        try:
            if item.kind == "confirm":
                await self.peers.inventory.confirm(item.order_id)
            elif item.kind == "cancel":
                await self.peers.inventory.cancel(item.order_id)
            else:
                payload = item.payload
                await self.peers.channel.refund(
                    str(payload["payment_id"]), str(payload["refund_id"]), int(payload["amount"])
                )
        except PeerUnavailable as exc:
            backoff = outbox_backoff_s(item.attempts, self.settings.worker_tick_s)
            log.info("outbox %s %s for %s will retry: %s", item.id, item.kind, item.order_id, exc)
            with self.store.transaction() as tx:
                tx.outbox_retry(item.id, tx.t + backoff)
            return
        except PeerRefused as exc:
            log.error("outbox %s %s for %s refused: %s", item.id, item.kind, item.order_id, exc)
            with self.store.transaction() as tx:
                tx.outbox_failed(item.id, exc.code)
                tx.add_flag(item.order_id, f"{item.kind}_failed:{exc.code}")
            return
        with self.store.transaction() as tx:
            tx.outbox_delivered(item.id)
            if item.kind == "confirm":
                tx.set_final(item.order_id)

    async def deliver_confirms(self, items: Sequence[OutboxItem]) -> None:
        """Deliver confirm rows in one batch call; each row settles as `deliver` would."""
        order_ids = list(dict.fromkeys(item.order_id for item in items))
        try:
            refusals = await self.peers.inventory.confirm_many(order_ids)
        except (PeerUnavailable, PeerRefused) as exc:
            # a refusal of the whole batch is no answer about any one order: retry them all
            level = logging.ERROR if isinstance(exc, PeerRefused) else logging.INFO
            log.log(level, "outbox confirm batch of %d will retry: %s", len(items), exc)
            tick = self.settings.worker_tick_s
            with self.store.transaction() as tx:
                for item in items:
                    tx.outbox_retry(item.id, tx.t + outbox_backoff_s(item.attempts, tick))
            return
        with self.store.transaction() as tx:
            for item in items:
                if item.order_id not in refusals:
                    tx.outbox_delivered(item.id)
                    tx.set_final(item.order_id)
                    continue
                code = refusals[item.order_id]
                log.error("outbox %s confirm for %s refused: %s", item.id, item.order_id, code)
                tx.outbox_failed(item.id, code)
                tx.add_flag(item.order_id, f"confirm_failed:{code}")

    # 8. reconciliation -----------------------------------------------------------------

    async def reconcile(self) -> None:
        """Walk the channel's bill from the stored cursor and repair what it reveals."""
        started = storage.now()
        cursor = self.store.recon_cursor()
        reached_end = False
        for _ in range(BILL_PAGES_PER_SWEEP):
            bill = await self.peers.channel.bill(cursor, BILL_PAGE)
            self._reconcile_page(bill)
            if not bill.entries or bill.next_cursor == cursor or len(bill.entries) < BILL_PAGE:
                reached_end = True
                break
            cursor = bill.next_cursor
        if reached_end:
            self._flag_unfunded(paid_before=started)

    def _reconcile_page(self, bill: Bill) -> None:
        """Record a page's charges, repair what they reveal and move the cursor in one
        transaction, so a crash re-reads the whole page."""
        charges = [entry for entry in bill.entries if entry.kind == "charge"]
        repairs: list[str] = []
        refunds: list[str] = []
        with self.store.transaction() as tx:
            tx.add_bill_charges(
                [(e.txn_id, e.payment_id, e.merchant_order_id, e.amount, e.t) for e in charges]
            )
            for entry in charges:
                repair, refund_reason = self._reconcile_charge(tx, entry)
                if repair is not None:
                    repairs.append(repair)
                if refund_reason is not None:
                    refunds.append(refund_reason)
            tx.save_cursor(bill.next_cursor)
        for repair in repairs:
            metrics.RECONCILIATION_REPAIRS.labels(repair).inc()
        for reason in refunds:
            metrics.REFUNDS.labels(reason).inc()

    def _reconcile_charge(self, tx: Tx, entry: BillEntry) -> tuple[str | None, str | None]:
        """(repair made, refund reason) for one billed charge, inside the page's transaction."""
        order = tx.order(entry.merchant_order_id)
        if order is None:
            log.error("bill charge %s for unknown order %s", entry.txn_id, entry.merchant_order_id)
            return "unknown_charge", None
        if order.status == Status.CREATED:
            return None, None  # the resumer moves it on; active query then completes it
        if order.status == Status.PAID and order.txn_id == entry.txn_id:
            return None, None
        event = PaymentEvent(
            order_id=order.order_id,
            payment_id=entry.payment_id,
            txn_id=entry.txn_id,
            amount=entry.amount,
            cause=Cause.RECONCILE,
        )
        try:
            # refuses before it writes anything, so the page's transaction stays whole
            outcome, refund_reason = self._settle(tx, event)
        except NotificationRefused as exc:
            log.error("bill charge %s does not fit order %s: %s", entry.txn_id, order.order_id, exc)
            tx.add_flag(order.order_id, f"bill_{exc.code}")
            return exc.code, None
        repair = {Settlement.PAID: "completed", Settlement.REFUND: "refunded"}.get(outcome)
        return repair, refund_reason

    def _flag_unfunded(self, *, paid_before: float) -> None:
        """Paid orders whose charge is not in a bill fetched after they were paid.

        Each order is checked once: the watermark moves past every order paid before this
        sweep (billed, or flagged now), so the cost follows new payments, not history.
        """
        since = self.store.unfunded_checked_until()
        flagged = 0
        with self.store.transaction() as tx:
            for order in self.store.paid_without_bill_charge(since, paid_before):
                if tx.add_flag(order.order_id, "unfunded"):
                    log.error("order %s is PAID but the channel billed no charge", order.order_id)
                    flagged += 1
            tx.unfunded_checked(paid_before)
        if flagged:
            metrics.RECONCILIATION_REPAIRS.labels("unfunded").inc(flagged)
