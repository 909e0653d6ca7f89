"""One pure function per anomaly class of CHECKS.md, each declared once with `@checker`.

A checker reads the derived facts (`slos.facts.Facts`, built once per audit) and says what it
found: the offending order ids (or skus), a detail for each, and its statistics.  The registry
turns that into a `CheckResult` carrying the class's id, name and verdict, so each is written in
one place; `CHECKERS`, `INFO_CLASSES` and the gate's plain words (`PLAIN`) are read off it.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# Some are only re-exported: the SLO evaluator and the HTML report import them from here.
from slos.facts import (  # noqa: F401
    FINAL_STATES,
    MAX_EXAMPLES,
    PAID_STATES,
    Confirmations,
    Facts,
    confirmation_samples,
    payment_lag_samples,
    percentile,
    quantiles,
)

VALID, INVALID, UNKNOWN, INFO_VERDICT = "valid", "invalid", "unknown", "info"
# Inbox outcomes that made an order paid (a refund of a second charge is a correct repair).
_PAID_OUTCOMES = frozenset({None, "paid", "accepted", "applied"})
_NO_EFFECT_WORDS = ("dup", "reject", "ignor", "replay", "forged", "stale", "bad", "unknown")


@dataclass(slots=True)
class CheckResult:
    cls: str
    name: str
    verdict: str  # valid | invalid | unknown | info
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "class": self.cls,
            "name": self.name,
            "verdict": self.verdict,
            "count": self.count,
            "examples": self.examples,
            "stats": self.stats,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


def _no_detail(_: str) -> str:
    return ""


@dataclass(slots=True)
class Found:
    """What one checker found: the offenders (order ids, or skus) and a detail for each."""

    offenders: Iterable[str] = ()
    detail: Callable[[str], str] = _no_detail
    stats: dict[str, Any] = field(default_factory=dict)
    by_sku: bool = False  # offenders are skus: examples name the sku, not an order
    count: int | None = None  # a measure's sample count, when it reports no offenders (P11)
    undecided: str | None = None  # the records cannot decide this class: why (verdict unknown)


Find = Callable[[Facts], Found]


@dataclass(frozen=True, slots=True)
class Checker:
    """One anomaly class: its id, name, the verdict of finding it, and how to find it."""

    cls: str
    name: str
    verdict: str  # invalid, or info: found is reported but allowed
    find: Find
    plain: str | None = None  # what it means to someone who does not read the code; {n} = count

    def __call__(self, f: Facts) -> CheckResult:
        return self.result(f, self.find(f))

    def result(self, f: Facts, found: Found) -> CheckResult:
        """A result over the offenders; the first ids (sorted) become examples."""
        if found.undecided is not None:
            return CheckResult(self.cls, self.name, UNKNOWN, 0, [],
                               {**found.stats, "error": found.undecided})
        ids = list(found.offenders)
        shown = heapq.nsmallest(f.max_examples, ids)
        detail = found.detail
        if found.by_sku:
            examples = [{"order_id": None, "trace_id": None, "sku": sku, "detail": detail(sku)}
                        for sku in shown]
        else:
            examples = [f.example(k, detail(k)) for k in shown]
        return CheckResult(
            cls=self.cls,
            name=self.name,
            verdict=self.verdict if ids or self.verdict == INFO_VERDICT else VALID,
            count=len(ids) if found.count is None else found.count,
            examples=examples,
            stats=found.stats,
        )


# The registry, in catalog order (the order checkers are declared in below).
CHECKERS: dict[str, Checker] = {}


def checker(
    cls: str, name: str, *, verdict: str = INVALID, plain: str | None = None
) -> Callable[[Find], Checker]:
    """Declare a checker for anomaly class `cls`: `@checker("P1", "lost acknowledged payment")`."""
    if verdict not in (INVALID, INFO_VERDICT):
        raise ValueError(f"checker {cls}: verdict {verdict!r} is not {INVALID!r} or "
                         f"{INFO_VERDICT!r}")

    def register(find: Find) -> Checker:
        if cls in CHECKERS:
            raise ValueError(f"anomaly class {cls} is declared twice "
                             f"({CHECKERS[cls].find.__name__} and {find.__name__})")
        declared = Checker(cls, name, verdict, find, plain)
        CHECKERS[cls] = declared
        return declared

    return register


def _status(f: Facts, k: str) -> str:
    order = f.orders.get(k)
    return order.status if order is not None else "no order in D"


# --- payments ----------------------------------------------------------------


@checker("P1", "lost acknowledged payment",
         plain="{n} payment(s) the shopper was told had succeeded were lost by the order service")
def lost_acknowledged_payment(f: Facts) -> Found:
    """P1: the shopper was told paid, the order database does not have it paid.

    A payment that landed after the order closed and was refunded is not lost (P14)."""
    bad = f.ok("pay") - f.paid_db - f.refunded_late
    return Found(bad, lambda k: f"pay ok in history, order status {_status(f, k)}")


@checker("P2", "false success",
         plain="{n} shopper(s) were told their payment succeeded but no money was taken")
def false_success(f: Facts) -> Found:
    """P2: the shopper was told paid, the channel has no live charge."""
    bad = f.ok("pay") - f.paid_ledger - f.refunded_late
    return Found(bad, lambda k: "pay ok in history, no live charge in the channel ledger")


@checker("P3", "failed but charged",
         plain="{n} shopper(s) were told their payment failed but were charged anyway")
def failed_but_charged(f: Facts) -> Found:
    """P3: every pay attempt failed for certain, yet the channel charged."""
    bad = f.failed("pay") & f.paid_ledger
    return Found(bad, lambda k: "pay failed in history, charged in the channel ledger")


@checker("P4", "unexpected payment", plain="{n} payment(s) appeared without the shopper paying")
def unexpected_payment(f: Facts) -> Found:
    """P4: paid in the ledger or the database without any pay attempt."""
    bad = f.unattempted("pay", f.paid_ledger) | f.unattempted("pay", f.paid_db)
    return Found(bad, lambda k: f"paid (ledger: {k in f.paid_ledger}, order: {_status(f, k)}) "
                                "with no pay attempt in history")


@checker("P5", "recovered", verdict=INFO_VERDICT)
def recovered_payment(f: Facts) -> Found:
    """P5: the shopper never heard back, the order was paid anyway (expected, info)."""
    return Found(f.unknown("pay") & f.paid_db, lambda k: "pay outcome unknown, order is paid")


@checker("P6", "orphan charge",
         plain="{n} shopper(s) were charged but their order was never marked paid")
def orphan_charge(f: Facts) -> Found:
    """P6: money taken, order not paid."""
    bad = f.paid_ledger - f.paid_db
    return Found(bad, lambda k: f"live charge in the ledger, order status {_status(f, k)}")


@checker("P7", "unfunded order", plain="{n} order(s) were marked paid without any money received")
def unfunded_order(f: Facts) -> Found:
    """P7: order paid, no live charge at the channel."""
    bad = f.paid_db - f.paid_ledger
    return Found(bad, lambda k: "order is PAID, no live charge in the channel ledger")


@checker("P8", "duplicate charge", plain="{n} shopper(s) were charged twice")
def duplicate_charge(f: Facts) -> Found:
    """P8: more than one live charge for one order (cntL(k) > 1)."""
    bad = set() if f.single_charges is not None else {
        k for k, live in f.charges.items() if len(live) > 1}
    return Found(bad, lambda k: f"{len(f.charges[k])} live charges: "
                                + ", ".join(c.payment_id for c in f.charges[k]))


_EFFECT_MEMO: dict[str | None, bool] = {}


def _is_effect(outcome: str | None) -> bool:
    """An inbox row that changed state (not a logged duplicate or rejection)."""
    known = _EFFECT_MEMO.get(outcome)
    if known is None:
        low = (outcome or "").lower()
        known = not any(word in low for word in _NO_EFFECT_WORDS)
        _EFFECT_MEMO[outcome] = known
    return known


def _repeated(ids: list[Any]) -> dict[Any, int]:
    """Items that occur more than once, with their counts (fast when there are none)."""
    if len(set(ids)) == len(ids):
        return {}
    return {k: n for k, n in Counter(ids).items() if n > 1}


@checker("P9", "duplicate effect", plain="{n} order(s) were confirmed or fulfilled more than once")
def duplicate_effect(f: Facts) -> Found:
    """P9: more than one PAID transition, confirm or applied notification for one order."""
    paid = _repeated([t.order_id for t in f.records.transitions if t.to_state in PAID_STATES])
    confirms = _repeated([o.order_id for o in f.records.outbox if o.kind == "confirm"])
    applied = _repeated([i.order_id for i in f.records.inbox if i.outcome in _PAID_OUTCOMES])
    bad = set(paid) | set(confirms) | set(applied)

    def detail(k: str) -> str:
        counts = ((paid, "PAID transitions"), (confirms, "confirm rows"),
                  (applied, "applied notifications"))
        return ", ".join(f"{seen[k]} {what}" for seen, what in counts if k in seen)

    return Found(bad, detail)


@checker("P9'", "duplicate notification", verdict=INFO_VERDICT)
def duplicate_notification(f: Facts) -> Found:
    """P9': one payment notified (and acknowledged) more than once: allowed, at-least-once."""
    acked = f.acked_notifications
    txns = [n.txn_id for n in acked]
    extra: dict[Any, int] = {}
    if None in txns or len(set(txns)) < len(txns):  # distinct txns make distinct pairs
        extra = _repeated([(n.merchant_order_id, n.txn_id) for n in acked])
    per_order: Counter[str] = Counter()
    for (merchant, _), n in extra.items():
        per_order[f.ledger_order(merchant)] += n
    return Found(per_order, lambda k: f"notification acknowledged {per_order[k]} times",
                 stats={"extra_deliveries": sum(n - 1 for n in extra.values())})


@checker("P10", "amount mismatch", plain="{n} charge(s) did not match the order amount")
def amount_mismatch(f: Facts) -> Found:
    """P10: a live charge's amount differs from its order's amount."""
    orders = f.orders
    single = f.single_charges
    if single is not None:
        bad = {e.merchant_order_id for e, o in zip(single.charges, single.orders, strict=True)
               if e.amount != o.amount}
    else:
        bad = {k for k, live in f.charges.items()
               if k in orders and any(c.amount != orders[k].amount for c in live)}
    return Found(bad, lambda k: f"order amount {orders[k].amount}, charged "
                                + ", ".join(str(c.amount) for c in f.charges[k]))


@checker("P11", "payment lag", verdict=INFO_VERDICT)
def payment_lag(f: Facts) -> Found:
    """P11: from the charge at the channel to the order being paid (SLO material)."""
    stats = quantiles(f.payment_lags[1])
    return Found(stats=stats, count=int(stats["count"] or 0))


@checker("P11'", "shopper confirmation time", verdict=INFO_VERDICT)
def confirmation_time(f: Facts) -> Found:
    """P11': from the shopper's pay ok to the first poll that sees PAID ("stuck on processing")."""
    times, waits, gave_up = f.confirmation_waits
    paid_ok = len(times) + len(gave_up)
    stats: dict[str, Any] = dict(quantiles(waits))
    stats["gave_up"] = len(gave_up)
    stats["gave_up_share"] = len(gave_up) / paid_ok if paid_ok else None
    return Found([k for _, k in gave_up], lambda k: "paid, but no poll saw PAID", stats=stats)


@checker("P12", "forged accepted", plain="{n} forged payment notification(s) were accepted")
def forged_accepted(f: Facts) -> Found:
    """P12: a notification the channel never genuinely sent changed state, or a PAID order's
    transaction is not a charge in the ledger."""
    reasons: dict[str, str] = {}
    accepted = [row.notify_id for row in f.records.inbox if row.notify_id is not None]
    if not f.genuine_notify_ids.issuperset(accepted):  # rare: only then look for the rows
        genuine = f.genuine_notify_ids
        for row in f.records.inbox:
            nid = row.notify_id
            if nid is not None and nid not in genuine and _is_effect(row.outcome):
                reasons.setdefault(row.order_id, f"accepted notification {nid} was never "
                                                 "genuinely sent by the channel")
    if not f.paid_txns_are_charges:
        txns = f.charge_txns
        for order in f.records.orders:
            txn = order.txn_id
            if order.status in PAID_STATES and txn is not None and txn not in txns:
                reasons.setdefault(order.order_id, f"PAID with txn {txn}, "
                                                   "not a charge in the ledger")
    return Found(reasons, reasons.__getitem__)


@checker("P13", "lost acknowledgement")
def lost_acknowledgement(f: Facts) -> Found:
    """P13: the channel got a success answer for a notification the order service never kept.

    The order service writes a receipt in the transaction that decides its answer, so an
    acked genuine notification without a receipt was answered before (or without) a commit:
    after a crash the channel stops retrying and only reconciliation can save the payment.
    """
    acked = f.acked_notifications
    if acked and not f.records.receipts:
        return Found(undecided="the order export has no receipt records to compare")
    kept = {r.notify_id for r in f.records.receipts}
    lost: dict[str, str] = {}
    if not kept.issuperset([n.notify_id for n in acked]):  # rare: only then name the orders
        for notify_id, n in {n.notify_id: n for n in acked}.items():
            if notify_id not in kept:
                lost[f.ledger_order(n.merchant_order_id)] = notify_id
    return Found(lost, lambda k: f"notification {lost[k]} was acknowledged but not recorded")


@checker("P14", "late payment refunded", verdict=INFO_VERDICT)
def refunded_late_payment(f: Facts) -> Found:
    """P14: paid after the order closed, and the money went back (the designed repair).

    Decided by the ledger's timeline alone: the charge is later than the channel's close of
    the payment (or the inventory's cancel of the reservation), and the ledger shows it
    refunded.  The order service's refund reason is not evidence."""
    closed = f.closed_at
    return Found(f.ok("pay") & f.refunded_late,
                 lambda k: f"charged after the order closed at {closed[k]:.3f}; refunded")


# --- orders ------------------------------------------------------------------


@checker("O1", "lost order", plain="{n} order(s) the shopper was told exist are missing")
def lost_order(f: Facts) -> Found:
    """O1: the shopper was told the order exists, the order database does not have it."""
    bad = f.ok("place_order").difference(f.orders)  # Ok(place_order) ∖ D
    return Found(bad, lambda k: "place_order ok in history, no order in D")


@checker("O2", "duplicate order", plain="{n} order(s) were created twice")
def duplicate_order(f: Facts) -> Found:
    """O2: more than one order for one idempotency key."""
    repeated = _repeated([o.idempotency_key for o in f.records.orders
                          if o.idempotency_key is not None])
    per_key: dict[str, list[str]] = defaultdict(list)
    for order in f.records.orders:
        key = order.idempotency_key
        if key is not None and key in repeated:
            per_key[key].append(order.order_id)
    dups = {ids[0]: ids for ids in per_key.values()}
    return Found(dups, lambda k: f"key {f.orders[k].idempotency_key} has orders "
                                 f"{', '.join(dups[k])}")


@checker("O3", "stuck order", plain="{n} order(s) are stuck, neither paid nor closed")
def stuck_order(f: Facts) -> Found:
    """O3: orders not in a final state at the end of the settle window."""
    bad = [o.order_id for o in f.records.orders if o.status not in FINAL_STATES]
    return Found(bad, lambda k: f"status {f.orders[k].status} after the settle window")


# --- inventory ---------------------------------------------------------------


@checker("I1", "oversell", plain="stock was oversold for {n} product(s)")
def oversell(f: Facts) -> Found:
    """I1: stock below zero, or more confirmed than there ever was."""
    confirmed = f.reserved_in("CONFIRMED")
    details: dict[str, str] = {}
    for s in f.records.stock:
        if s.available < 0:
            details[s.sku] = f"sku {s.sku}: available {s.available} < 0"
        elif confirmed[s.sku] > s.initial:
            details[s.sku] = f"sku {s.sku}: confirmed {confirmed[s.sku]} > initial {s.initial}"
    return Found(details, details.__getitem__, by_sku=True)


@checker("I2", "stock not conserved", plain="stock does not add up for {n} product(s)")
def stock_not_conserved(f: Facts) -> Found:
    """I2: initial − available ≠ Σ CONFIRMED + Σ live TRY."""
    confirmed = f.reserved_in("CONFIRMED")
    trying = f.reserved_in("TRY")
    details: dict[str, str] = {}
    for s in f.records.stock:
        taken = s.initial - s.available
        held = confirmed[s.sku] + trying[s.sku]
        if taken != held:
            details[s.sku] = (f"sku {s.sku}: initial − available = {taken}, "
                              f"confirmed + try = {held}")
    return Found(details, details.__getitem__, by_sku=True)


@checker("I3", "leaked reservation", plain="{n} stock reservation(s) were never released")
def leaked_reservation(f: Facts) -> Found:
    """I3: a TRY older than its ttl plus one sweeper period at the audit's reference time."""
    now = f.records.reference_time()
    grace = f.records.run.sweep_every_s
    ages = {
        r.order_id: now - r.t_try
        for r in f.records.reservations
        if r.state == "TRY" and now - r.t_try > r.ttl + grace
    }
    return Found(ages, lambda k: f"TRY for {ages[k]:.1f}s (ttl + sweeper period exceeded)",
                 stats={"reference_time": now, "sweep_every_s": grace})


@checker("I4", "hanging try",
         plain="{n} reservation(s) took stock after their order was cancelled")
def hanging_try(f: Facts) -> Found:
    """I4: a try that took stock after its order's cancel; or an empty rollback that moved stock."""
    reasons: dict[str, str] = {}
    cancelled_at: dict[str, float] = {t.order_id: t.t for t in f.records.tombstones}
    cancels = [e for e in f.records.stock_events if e.kind in ("cancel", "empty_rollback")]
    for e in cancels:
        if e.t < cancelled_at.get(e.order_id, math.inf):
            cancelled_at[e.order_id] = e.t
        if e.kind == "empty_rollback" and e.stock_delta != 0:
            reasons.setdefault(e.order_id, f"empty rollback changed stock by {e.stock_delta}")
    if cancelled_at:
        for e in f.records.stock_events:
            if (e.kind == "try" and e.stock_delta < 0
                    and e.t > cancelled_at.get(e.order_id, math.inf)):
                reasons.setdefault(e.order_id, "try took stock after the order was cancelled")
    tombstones = {t.order_id: t.t for t in f.records.tombstones}
    for r in f.records.reservations if tombstones else ():
        if r.t_try > tombstones.get(r.order_id, math.inf):
            reasons.setdefault(r.order_id, "reservation created after its cancel (tombstone)")
    return Found(reasons, reasons.__getitem__)


@checker("I5", "sold unpaid / paid but released",
         plain="{n} order(s) had stock sold unpaid, or released while paid")
def sold_unpaid(f: Facts) -> Found:
    """I5: stock confirmed for an unpaid order, or a paid order's stock released and no refund."""
    reasons: dict[str, str] = {}
    paid = f.paid_ledger
    # Confirmed and paid go together; only a reservation where they differ can offend.
    suspects = [r for r in f.records.reservations
                if (r.state == "CONFIRMED") is not (r.order_id in paid)]
    for r in suspects:
        if r.state == "CONFIRMED" and r.order_id not in paid:
            reasons[r.order_id] = "reservation CONFIRMED, no live charge in the ledger"
        elif r.state == "CANCELLED" and r.order_id in paid:
            reasons[r.order_id] = "paid (not refunded) but its reservation was CANCELLED"
    return Found(reasons, reasons.__getitem__)


@checker("I6", "paid but unconfirmed",
         plain="{n} paid order(s) still had their stock only reserved, never confirmed")
def paid_but_unconfirmed(f: Facts) -> Found:
    """I6: a paid order (live charge, or PAID in D) whose reservation is still TRY at the end of
    the settle window: a paid order must be confirmed by then, not only before the TTL."""
    paid_db, paid_ledger = f.paid_db, f.paid_ledger
    trying = {r.order_id: r for r in f.records.reservations if r.state == "TRY"}
    bad = {k for k in trying if k in paid_ledger or k in paid_db}

    def detail(k: str) -> str:
        since = f.records.reference_time() - trying[k].t_try
        return (f"paid (ledger: {k in paid_ledger}, order: {_status(f, k)}), reservation "
                f"still TRY {since:.1f}s after it was taken")

    return Found(bad, detail)


# --- queues ------------------------------------------------------------------


@checker("Q1", "outbox lost", plain="{n} internal message(s) were never delivered")
def outbox_lost(f: Facts) -> Found:
    """Q1: outbox rows never delivered."""
    rows = {o.order_id: o for o in f.records.outbox if o.delivered_at is None}
    return Found(rows, lambda k: f"{rows[k].kind} row {rows[k].id} undelivered after "
                                 f"{rows[k].attempts} attempts")


# Read off the registry: classes whose finding is allowed, and the gate's plain words.
INFO_CLASSES = frozenset(cls for cls, c in CHECKERS.items() if c.verdict == INFO_VERDICT)
PLAIN: dict[str, str] = {cls: c.plain for cls, c in CHECKERS.items() if c.plain is not None}
