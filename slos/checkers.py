"""One pure function per anomaly class of CHECKS.md, each from the derived facts to a `CheckResult`.

Checkers read the records through `slos.facts.Facts`, the sets of CHECKS.md (Ok(pay), PaidL,
PaidD …) derived once per audit.
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
from slos.records import OK

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


# --- result helpers ----------------------------------------------------------


def _found(
    f: Facts,
    cls: str,
    name: str,
    offenders: Iterable[str],
    detail: Callable[[str], str],
    *,
    verdict: str = INVALID,
    stats: dict[str, Any] | None = None,
) -> CheckResult:
    """A result over a set of offending order ids; the first ids (sorted) become examples."""
    ids = list(offenders)
    shown = heapq.nsmallest(f.max_examples, ids)
    return CheckResult(
        cls=cls,
        name=name,
        verdict=verdict if ids or verdict == INFO_VERDICT else VALID,
        count=len(ids),
        examples=[f.example(k, detail(k)) for k in shown],
        stats=stats or {},
    )


def _status(f: Facts, k: str) -> str:
    order = f.orders.get(k)
    return order.status if order is not None else "no order in D"


# --- payments ----------------------------------------------------------------


def lost_acknowledged_payment(f: Facts) -> CheckResult:
    """P1: the shopper was told paid, the order database does not have it paid.

    A payment that landed after the order closed and was refunded is not lost (P14)."""
    bad = f.ok("pay") - f.paid_db - f.refunded_late
    return _found(f, "P1", "lost acknowledged payment", bad,
                  lambda k: f"pay ok in history, order status {_status(f, k)}")


def false_success(f: Facts) -> CheckResult:
    """P2: the shopper was told paid, the channel has no live charge."""
    bad = f.ok("pay") - f.paid_ledger - f.refunded_late
    return _found(f, "P2", "false success", bad,
                  lambda k: "pay ok in history, no live charge in the channel ledger")


def failed_but_charged(f: Facts) -> CheckResult:
    """P3: every pay attempt failed for certain, yet the channel charged."""
    bad = f.failed("pay") & f.paid_ledger
    return _found(f, "P3", "failed but charged", bad,
                  lambda k: "pay failed in history, charged in the channel ledger")


def refunded_late_payment(f: Facts) -> CheckResult:
    """P14: paid after the order closed, and the money went back (the designed repair)."""
    seen = f.ok("pay") & f.refunded_late
    return _found(f, "P14", "late payment refunded", seen,
                  lambda k: "paid after the order closed; refunded", verdict=INFO_VERDICT)


def unexpected_payment(f: Facts) -> CheckResult:
    """P4: paid in the ledger or the database without any pay attempt."""
    pay = f.outcomes("pay")  # (PaidL ∪ PaidD) ∖ Att(pay), with Att(pay) = Ok(pay) ∪ not ok
    bad = (f.paid_ledger - pay.ok - pay.not_ok) | (f.paid_db - pay.ok - pay.not_ok)
    return _found(f, "P4", "unexpected payment", bad,
                  lambda k: f"paid (ledger: {k in f.paid_ledger}, order: {_status(f, k)}) "
                            "with no pay attempt in history")


def recovered_payment(f: Facts) -> CheckResult:
    """P5: the shopper never heard back, the order was paid anyway (expected, info)."""
    good = f.unknown("pay") & f.paid_db
    return _found(f, "P5", "recovered", good, lambda k: "pay outcome unknown, order is paid",
                  verdict=INFO_VERDICT)


def orphan_charge(f: Facts) -> CheckResult:
    """P6: money taken, order not paid."""
    bad = f.paid_ledger - f.paid_db
    return _found(f, "P6", "orphan charge", bad,
                  lambda k: f"live charge in the ledger, order status {_status(f, k)}")


def unfunded_order(f: Facts) -> CheckResult:
    """P7: order paid, no live charge at the channel."""
    bad = f.paid_db - f.paid_ledger
    return _found(f, "P7", "unfunded order", bad,
                  lambda k: "order is PAID, no live charge in the channel ledger")


def duplicate_charge(f: Facts) -> CheckResult:
    """P8: more than one live charge for one order."""
    bad = set() if f.single_charges is not None else {
        k for k, live in f.charges.items() if len(live) > 1}
    return _found(f, "P8", "duplicate charge", bad,
                  lambda k: f"{len(f.charges[k])} live charges: "
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


def duplicate_effect(f: Facts) -> CheckResult:
    """P9: more than one PAID transition, confirm or applied notification for one order."""
    paid = _repeated([t.order_id for t in f.records.transitions if t.to_state in PAID_STATES])
    confirms = _repeated([o.order_id for o in f.records.outbox if o.kind == "confirm"])
    applied = _repeated([i.order_id for i in f.records.inbox if i.outcome in _PAID_OUTCOMES])
    bad = set(paid) | set(confirms) | set(applied)

    def detail(k: str) -> str:
        counts = ((paid, "PAID transitions"), (confirms, "confirm rows"),
                  (applied, "applied notifications"))
        return ", ".join(f"{seen[k]} {what}" for seen, what in counts if k in seen)

    return _found(f, "P9", "duplicate effect", bad, detail)


def duplicate_notification(f: Facts) -> CheckResult:
    """P9': one payment notified (and acknowledged) more than once: allowed, at-least-once."""
    acked = f.acked_notifications
    txns = [n.txn_id for n in acked]
    extra: dict[Any, int] = {}
    if None in txns or len(set(txns)) < len(txns):  # distinct txns make distinct pairs
        extra = _repeated([(n.merchant_order_id, n.txn_id) for n in acked])
    per_order: Counter[str] = Counter()
    for (merchant, _), n in extra.items():
        per_order[f.ledger_order(merchant)] += n
    return _found(f, "P9'", "duplicate notification", per_order,
                  lambda k: f"notification acknowledged {per_order[k]} times",
                  verdict=INFO_VERDICT,
                  stats={"extra_deliveries": sum(n - 1 for n in extra.values())})


def amount_mismatch(f: Facts) -> CheckResult:
    """P10: a live charge's amount differs from its order's amount."""
    orders = f.orders
    single = f.single_charges
    if single is not None:
        bad = {e.merchant_order_id for e, o in zip(single.charges, single.orders, strict=True)
               if e.amount != o.amount}
    else:
        bad = {k for k, live in f.charges.items()
               if k in orders and any(c.amount != orders[k].amount for c in live)}
    return _found(f, "P10", "amount mismatch", bad,
                  lambda k: f"order amount {orders[k].amount}, charged "
                            + ", ".join(str(c.amount) for c in f.charges[k]))


def payment_lag(f: Facts) -> CheckResult:
    """P11: from the charge at the channel to the order being paid (SLO material)."""
    stats = quantiles(f.payment_lags[1])
    return CheckResult("P11", "payment lag", INFO_VERDICT, int(stats["count"] or 0), [], stats)


def confirmation_time(f: Facts) -> CheckResult:
    """P11': from the shopper's pay ok to the first poll that sees PAID ("stuck on processing")."""
    times, waits, gave_up = f.confirmation_waits
    paid_ok = len(times) + len(gave_up)
    stats: dict[str, Any] = dict(quantiles(waits))
    stats["gave_up"] = len(gave_up)
    stats["gave_up_share"] = len(gave_up) / paid_ok if paid_ok else None
    return _found(f, "P11'", "shopper confirmation time", [k for _, k in gave_up],
                  lambda k: "paid, but no poll saw PAID", verdict=INFO_VERDICT, stats=stats)


def forged_accepted(f: Facts) -> CheckResult:
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
    return _found(f, "P12", "forged accepted", reasons, lambda k: reasons[k])


# --- orders ------------------------------------------------------------------


def lost_order(f: Facts) -> CheckResult:
    """O1: the shopper was told the order exists, the order database does not have it."""
    places = [op for op in f.ops_of("place_order") if op.outcome == OK]
    orders = f.orders
    bad = {k for k in f.order_ids(places) if k not in orders}  # Ok(place_order) ∖ D
    return _found(f, "O1", "lost order", bad, lambda k: "place_order ok in history, no order in D")


def duplicate_order(f: Facts) -> CheckResult:
    """O2: more than one order for one idempotency key."""
    repeated = _repeated([o.idempotency_key for o in f.records.orders
                          if o.idempotency_key is not None])
    per_key: dict[str, list[str]] = defaultdict(list)
    for order in f.records.orders:
        key = order.idempotency_key
        if key is not None and key in repeated:
            per_key[key].append(order.order_id)
    dups = {ids[0]: ids for ids in per_key.values()}
    return _found(f, "O2", "duplicate order", dups,
                  lambda k: f"key {f.orders[k].idempotency_key} has orders {', '.join(dups[k])}")


def stuck_order(f: Facts) -> CheckResult:
    """O3: orders not in a final state at the end of the settle window."""
    bad = [o.order_id for o in f.records.orders if o.status not in FINAL_STATES]
    return _found(f, "O3", "stuck order", bad,
                  lambda k: f"status {f.orders[k].status} after the settle window")


# --- inventory ---------------------------------------------------------------


def oversell(f: Facts) -> CheckResult:
    """I1: stock below zero, or more confirmed than there ever was."""
    confirmed = f.reserved_in("CONFIRMED")
    details: dict[str, str] = {}
    for s in f.records.stock:
        if s.available < 0:
            details[s.sku] = f"sku {s.sku}: available {s.available} < 0"
        elif confirmed[s.sku] > s.initial:
            details[s.sku] = f"sku {s.sku}: confirmed {confirmed[s.sku]} > initial {s.initial}"
    return _sku_result(f, "I1", "oversell", details)


def stock_not_conserved(f: Facts) -> CheckResult:
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
    return _sku_result(f, "I2", "stock not conserved", details)


def _sku_result(f: Facts, cls: str, name: str, details: dict[str, str]) -> CheckResult:
    shown = sorted(details)[: f.max_examples]
    return CheckResult(
        cls=cls,
        name=name,
        verdict=INVALID if details else VALID,
        count=len(details),
        examples=[{"order_id": None, "trace_id": None, "sku": sku, "detail": details[sku]}
                  for sku in shown],
    )


def leaked_reservation(f: Facts) -> CheckResult:
    """I3: a TRY older than its ttl plus one sweeper period at the audit's reference time."""
    now = f.records.reference_time()
    grace = f.records.run.sweep_every_s
    ages = {
        r.order_id: now - r.t_try
        for r in f.records.reservations
        if r.state == "TRY" and now - r.t_try > r.ttl + grace
    }
    return _found(f, "I3", "leaked reservation", ages,
                  lambda k: f"TRY for {ages[k]:.1f}s (ttl + sweeper period exceeded)",
                  stats={"reference_time": now, "sweep_every_s": grace})


def hanging_try(f: Facts) -> CheckResult:
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
    return _found(f, "I4", "hanging try", reasons, lambda k: reasons[k])


def sold_unpaid(f: Facts) -> CheckResult:
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
    return _found(f, "I5", "sold unpaid / paid but released", reasons, lambda k: reasons[k])


def outbox_lost(f: Facts) -> CheckResult:
    """Q1: outbox rows never delivered."""
    rows = {o.order_id: o for o in f.records.outbox if o.delivered_at is None}
    return _found(f, "Q1", "outbox lost", rows,
                  lambda k: f"{rows[k].kind} row {rows[k].id} undelivered after "
                            f"{rows[k].attempts} attempts")


def lost_acknowledgement(f: Facts) -> CheckResult:
    """P13: the channel got a success answer for a notification the order service never kept.

    The order service writes a receipt in the transaction that decides its answer, so an
    acked genuine notification without a receipt was answered before (or without) a commit:
    after a crash the channel stops retrying and only reconciliation can save the payment.
    """
    acked = f.acked_notifications
    if acked and not f.records.receipts:
        return CheckResult("P13", "lost acknowledgement", UNKNOWN, 0, [],
                           {"error": "the order export has no receipt records to compare"})
    kept = {r.notify_id for r in f.records.receipts}
    lost: dict[str, str] = {}
    if not kept.issuperset([n.notify_id for n in acked]):  # rare: only then name the orders
        for notify_id, n in {n.notify_id: n for n in acked}.items():
            if notify_id not in kept:
                lost[f.ledger_order(n.merchant_order_id)] = notify_id
    return _found(f, "P13", "lost acknowledgement", lost,
                  lambda k: f"notification {lost[k]} was acknowledged but not recorded")


Checker = Callable[[Facts], CheckResult]

CHECKERS: dict[str, tuple[str, Checker]] = {
    "P1": ("lost acknowledged payment", lost_acknowledged_payment),
    "P2": ("false success", false_success),
    "P3": ("failed but charged", failed_but_charged),
    "P4": ("unexpected payment", unexpected_payment),
    "P5": ("recovered", recovered_payment),
    "P6": ("orphan charge", orphan_charge),
    "P7": ("unfunded order", unfunded_order),
    "P8": ("duplicate charge", duplicate_charge),
    "P9": ("duplicate effect", duplicate_effect),
    "P9'": ("duplicate notification", duplicate_notification),
    "P10": ("amount mismatch", amount_mismatch),
    "P11": ("payment lag", payment_lag),
    "P11'": ("shopper confirmation time", confirmation_time),
    "P12": ("forged accepted", forged_accepted),
    "P13": ("lost acknowledgement", lost_acknowledgement),
    "P14": ("late payment refunded", refunded_late_payment),
    "O1": ("lost order", lost_order),
    "O2": ("duplicate order", duplicate_order),
    "O3": ("stuck order", stuck_order),
    "I1": ("oversell", oversell),
    "I2": ("stock not conserved", stock_not_conserved),
    "I3": ("leaked reservation", leaked_reservation),
    "I4": ("hanging try", hanging_try),
    "I5": ("sold unpaid / paid but released", sold_unpaid),
    "Q1": ("outbox lost", outbox_lost),
}
INFO_CLASSES = frozenset({"P5", "P9'", "P11", "P11'", "P14"})
