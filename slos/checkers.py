"""One pure function per anomaly class of CHECKS.md, each from the records to a `CheckResult`.

Checkers read the records through `Facts`: the sets of CHECKS.md (Ok(pay), PaidL, PaidD …)
derived once, lazily, in single passes over plain lists, so a million orders audit in seconds.
Hashing a million ids is the unit of cost, so checkers probe the shared sets rather than build
their own, and the usual shapes (one charge per order, no repeats) are confirmed up front so the
per-order grouping that only anomalies need is built only for them, with the same results.
Every order is named by its order id: history ops are mapped through the order export's
idempotency keys, ledger merchant order ids `ID:retry-N` (a bug-made second payment) back to ID.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

from slos.records import INFO, OK, LedgerEntry, Notification, Op, Order, Records

VALID, INVALID, UNKNOWN, INFO_VERDICT = "valid", "invalid", "unknown", "info"
# a pay issued after the shopper saw the order CLOSED is still a pay attempt
PAY_ALIASES = {"late_pay": "pay"}
MAX_EXAMPLES = 10
PAID_STATES = frozenset({"PAID", "FULFILLED", "COMPLETED"})
FINAL_STATES = frozenset({"PAID", "REJECTED", "CLOSED", "FULFILLED", "COMPLETED"})
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


def quantiles(values: Iterable[float]) -> dict[str, float | int | None]:
    """count, p50, p95, p99, max and avg by nearest rank (k6 semantics)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "avg": None}
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
        "avg": sum(ordered) / len(ordered),
    }


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(slots=True)
class Outcomes:
    """One operation f of the history by order: Ok(f), and the orders with any other outcome, so
    Att(f) = ok ∪ not_ok (a clean run has empty not_ok and info); and each ok op's completion."""

    ok: set[str]
    not_ok: set[str]  # orders with an op of f that did not complete ok (fail, info, unfinished)
    info: set[str]  # orders with an op of f whose outcome is unknown
    ok_ids: list[str]  # the order of each ok op, in history order
    ok_ends: list[float | None]  # and when it completed

    def first_ok(self) -> tuple[list[str], list[float]]:
        """The orders of Ok(f) with a known completion, each once, with its earliest."""
        if len(self.ok) == len(self.ok_ids) and None not in self.ok_ends:
            return self.ok_ids, cast(list[float], self.ok_ends)  # one per order, the usual case
        earliest = _earliest(self.ok_ids, self.ok_ends)
        return list(earliest), list(earliest.values())


@dataclass(slots=True)
class SingleCharges:
    """A ledger where each live charge is the one charge of a known order."""

    charges: list[LedgerEntry]
    orders: list[Order]  # each charge's order in D
    paid: set[str]  # PaidL


class Facts:
    """The derived sets and maps of CHECKS.md, each computed on first use."""

    def __init__(self, records: Records, *, max_examples: int = MAX_EXAMPLES) -> None:
        self.records = records
        self.max_examples = max_examples
        self._outcomes: dict[str, Outcomes] = {}

    # --- D: order and inventory databases -----------------------------------

    @cached_property
    def orders(self) -> dict[str, Order]:
        orders = self.records.orders
        return dict(zip([o.order_id for o in orders], orders, strict=True))

    @cached_property
    def order_by_key(self) -> dict[str, str]:
        """idempotency key → order id (the first created, when a key has several: O2)."""
        by_key: dict[str, Order] = {}
        for order in self.records.orders:
            key = order.idempotency_key
            if key is None:
                continue
            first = by_key.get(key)
            if first is None or order.created_at < first.created_at:
                by_key[key] = order
        return {key: order.order_id for key, order in by_key.items()}

    @cached_property
    def unique_orders(self) -> bool:
        """The order export has one row per order id."""
        return len(self.orders) == len(self.records.orders)

    @cached_property
    def paid_db(self) -> set[str]:
        """PaidD: orders in PAID or a later state."""
        statuses = [o.status for o in self.records.orders]
        if sum(map(statuses.count, PAID_STATES)) == len(statuses):
            return set(self.orders)  # all paid: a copy of the known ids, no rehashing
        return {o.order_id for o in self.records.orders if o.status in PAID_STATES}

    # --- H: history -----------------------------------------------------------

    def order_of(self, op: Op) -> str:
        """The order an op is about: its order id, else the order of its key, else `key:<key>`."""
        if op.order_id is not None:
            return op.order_id
        if op.key is not None:
            return self.order_by_key.get(op.key) or f"key:{op.key}"
        return f"op:{op.op_id}"

    def order_ids(self, ops: list[Op]) -> list[str]:
        """`order_of` each op, in order."""
        ids = [op.order_id for op in ops]
        if None not in ids:
            return cast(list[str], ids)
        of = self.order_of
        return [k if k is not None else of(op) for k, op in zip(ids, ops, strict=True)]

    @cached_property
    def ops_by_f(self) -> dict[str, list[Op]]:
        by_f: dict[str, list[Op]] = defaultdict(list)
        for op in self.records.ops:
            by_f[PAY_ALIASES.get(op.f, op.f)].append(op)
        return dict(by_f)

    def ops_of(self, f: str) -> list[Op]:
        """The history's operations f, in history order."""
        return self.ops_by_f.get(f, [])

    def outcomes(self, f: str) -> Outcomes:
        cached = self._outcomes.get(f)
        if cached is None:
            ops = self.ops_of(f)
            ids = self.order_ids(ops)
            results = [op.outcome for op in ops]
            not_ok: set[str] = set()
            info: set[str] = set()
            if results.count(OK) < len(ops):
                not_ok = {k for k, r in zip(ids, results, strict=True) if r != OK}
                info = {k for k, r in zip(ids, results, strict=True) if r == INFO}
                ok_ops = [op for op, r in zip(ops, results, strict=True) if r == OK]
                ids = [k for k, r in zip(ids, results, strict=True) if r == OK]
                ops = ok_ops
            cached = Outcomes(set(ids), not_ok, info, ids, [op.end for op in ops])
            self._outcomes[f] = cached
        return cached

    def attempted(self, f: str) -> set[str]:
        """Att(f): orders with any invoke of f."""
        o = self.outcomes(f)
        return o.ok | o.not_ok

    def ok(self, f: str) -> set[str]:
        """Ok(f): orders with an ok completion of f."""
        return self.outcomes(f).ok

    def failed(self, f: str) -> set[str]:
        """Fail(f): orders whose every completion of f certainly did not happen."""
        o = self.outcomes(f)
        return o.not_ok - o.ok - o.info

    def unknown(self, f: str) -> set[str]:
        """Info(f): orders with an unknown outcome of f and no ok."""
        o = self.outcomes(f)
        return o.info - o.ok

    @cached_property
    def completed_ops(self) -> int:
        return [op.outcome for op in self.records.ops].count(OK)

    @cached_property
    def seen_paid(self) -> dict[str, float]:
        """order → when a shopper's poll first saw it PAID."""
        polls = [op for op in self.ops_of("poll")
                 if op.outcome == OK and op.status in PAID_STATES]
        ids = self.order_ids(polls)
        ends = [op.end for op in polls]
        first = dict(zip(ids, ends, strict=True))
        if len(first) == len(ids) and None not in ends:
            return cast(dict[str, float], first)  # one per order, the usual case
        return _earliest(ids, ends)

    # --- L: channel ledger ----------------------------------------------------

    def ledger_order(self, merchant_order_id: str) -> str:
        """The order a channel payment belongs to (`ID:retry-N` → ID)."""
        if merchant_order_id in self.orders:
            return merchant_order_id
        base, sep, _ = merchant_order_id.rpartition(":retry-")
        if sep:
            return base
        head, sep, _ = merchant_order_id.partition(":")
        if sep and head in self.orders:
            return head
        return merchant_order_id

    @cached_property
    def _succeeded_charges(self) -> list[LedgerEntry]:
        return [e for e in self.records.ledger if e.kind == "charge" and e.status == "succeeded"]

    @cached_property
    def single_charges(self) -> SingleCharges | None:
        """The live charges when each is the one charge of a known order (no refund, no payment
        or order charged twice): the usual ledger, needing no grouping.  Else None."""
        ledger = self.records.ledger
        charged = self._succeeded_charges
        if len(charged) < len(ledger) and [
                e for e in ledger if e.kind == "refund" and e.status == "succeeded"]:
            return None
        if len({e.payment_id for e in charged}) < len(charged):
            return None
        paid = {e.merchant_order_id for e in charged}
        if len(paid) < len(charged):
            return None
        try:
            orders = list(map(self.orders.__getitem__, [e.merchant_order_id for e in charged]))
        except KeyError:  # a charge for an unknown order
            return None
        return SingleCharges(charged, orders, paid)

    @cached_property
    def charges(self) -> dict[str, tuple[LedgerEntry, ...]]:
        """order → its live charges (one per payment, not fully refunded), earliest first."""
        single = self.single_charges
        if single is not None:
            return {e.merchant_order_id: (e,) for e in single.charges}
        ledger = self.records.ledger
        charged = self._succeeded_charges
        refunded: Counter[str] = Counter()
        for e in ledger:
            if e.kind == "refund" and e.status == "succeeded":
                refunded[e.payment_id] += e.amount
        first = {e.payment_id: e for e in charged}
        if len(first) < len(charged):  # a payment charged twice: its earliest charge counts
            first = {e.payment_id: e for e in sorted(charged, key=lambda e: e.t, reverse=True)}
        orders = self.orders
        live: dict[str, list[LedgerEntry]] = {}
        for payment_id, e in first.items():
            if refunded and e.amount - refunded.get(payment_id, 0) <= 0:
                continue
            merchant = e.merchant_order_id
            k = merchant if merchant in orders else self.ledger_order(merchant)
            live.setdefault(k, []).append(e)
        return {k: tuple(sorted(entries, key=lambda c: c.t)) for k, entries in live.items()}

    @cached_property
    def paid_ledger(self) -> set[str]:
        """PaidL: orders with a successful charge not fully refunded."""
        single = self.single_charges
        return set(self.charges) if single is None else single.paid

    @cached_property
    def refunded_late(self) -> set[str]:
        """Orders paid after they closed whose money is back (order refunded it, ledger agrees)."""
        late = {r.order_id for r in self.records.order_refunds if r.reason == "paid_after_close"}
        return late - self.paid_ledger if late else late

    @cached_property
    def charge_txns(self) -> set[str]:
        return {e.txn_id for e in self._succeeded_charges if e.txn_id is not None}

    @cached_property
    def reserved(self) -> dict[str, Counter[str]]:
        """reservation state → sku → reserved quantity."""
        reservations = self.records.reservations
        states = [r.state for r in reservations]
        # Count skus per state in C, then correct for the rare quantity other than 1.
        sums: dict[str, Counter[str]] = {}
        for state in set(states):
            if states.count(state) == len(states):
                sums[state] = Counter([r.sku for r in reservations])
            else:
                sums[state] = Counter([r.sku for r, s in zip(reservations, states, strict=True)
                                       if s == state])
        for r in [r for r in reservations if r.qty != 1]:
            sums[r.state][r.sku] += r.qty - 1
        return sums

    @cached_property
    def genuine_notify_ids(self) -> set[str]:
        return {n.notify_id for n in self.records.notifications if not n.forged}

    @cached_property
    def acked_notifications(self) -> list[Notification]:
        """Genuine notifications the order service answered with success."""
        return [n for n in self.records.notifications if n.acked and not n.forged]

    # --- evidence -------------------------------------------------------------

    @cached_property
    def traces(self) -> dict[str, str]:
        """order → a trace id to open it in Jaeger (order's, else payment's, else the shopper's)."""
        found = dict(self._fallback_traces)
        for order in self.records.orders:
            if order.trace_id:
                found[order.order_id] = order.trace_id
        return found

    @cached_property
    def _fallback_traces(self) -> dict[str, str]:
        """order → the payment's, else the shopper's trace id (for orders without their own)."""
        found: dict[str, str] = {}
        for op in self.ops_of("place_order"):
            if op.trace_id:
                found.setdefault(self.order_of(op), op.trace_id)
        for payment in self.records.payments:
            if payment.trace_id:
                found[self.ledger_order(payment.merchant_order_id)] = payment.trace_id
        return found

    def trace_of(self, order_id: str) -> str | None:
        order = self.orders.get(order_id)
        if order is not None and order.trace_id:
            return order.trace_id
        return self._fallback_traces.get(order_id)

    def example(self, order_id: str | None, detail: str) -> dict[str, Any]:
        trace = self.trace_of(order_id) if order_id is not None else None
        return {"order_id": order_id, "trace_id": trace, "detail": detail}


def _earliest(ids: list[str], ends: list[float | None]) -> dict[str, float]:
    """order → the earliest of its known ends."""
    earliest: dict[str, float] = {}
    for k, end in zip(ids, ends, strict=True):
        if end is not None and end < earliest.get(k, math.inf):
            earliest[k] = end
    return earliest


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


def _payment_lags(f: Facts) -> tuple[list[float], list[float]]:
    """Charge times and t_paid − charge time, for every paid order with a live charge."""
    single = f.single_charges
    if single is not None and f.unique_orders:
        # Each order has one row and at most one charge: walk the charges, no per-order map.
        firsts, charged = single.charges, single.orders
    else:
        charges = f.charges
        charged = [o for o in f.records.orders if o.order_id in charges]
        firsts = [charges[o.order_id][0] for o in charged]
    paid_at = [o.t_paid if o.status in PAID_STATES else None for o in charged]
    if None in paid_at:
        kept = [(e, t) for e, t in zip(firsts, paid_at, strict=True) if t is not None]
        firsts, paid_at = [e for e, _ in kept], [t for _, t in kept]
    times = [e.t for e in firsts]
    return times, list(map(operator.sub, cast(list[float], paid_at), times))


def payment_lag_samples(f: Facts) -> list[tuple[float, float]]:
    """(charge time, t_paid − charge time) for every paid order with a live charge."""
    return list(zip(*_payment_lags(f), strict=True))


def payment_lag(f: Facts) -> CheckResult:
    """P11: from the charge at the channel to the order being paid (SLO material)."""
    stats = quantiles(_payment_lags(f)[1])
    return CheckResult("P11", "payment lag", INFO_VERDICT, int(stats["count"] or 0), [], stats)


@dataclass(slots=True)
class Confirmations:
    """P11' samples: (pay ok time, seconds until a poll saw PAID); who never saw it."""

    samples: list[tuple[float, float]]
    gave_up: list[tuple[float, str]]
    paid_ok: int


def _confirmation_waits(f: Facts) -> tuple[list[float], list[float], list[tuple[float, str]]]:
    """Pay ok times and the wait until a poll saw PAID, of the shoppers who saw it; who never."""
    paid, paid_at = f.outcomes("pay").first_ok()
    seen_at = list(map(f.seen_paid.get, paid))
    gave_up: list[tuple[float, str]] = []
    if None in seen_at:
        gave_up = [(t, k) for k, t, s in zip(paid, paid_at, seen_at, strict=True) if s is None]
        saw = [(t, s) for t, s in zip(paid_at, seen_at, strict=True) if s is not None]
        paid_at, seen_at = [t for t, _ in saw], [s for _, s in saw]
    waits = [w if w > 0.0 else 0.0 for w in map(operator.sub, seen_at, paid_at)]  # max(0, w)
    return paid_at, waits, gave_up


def confirmation_samples(f: Facts) -> Confirmations:
    times, waits, gave_up = _confirmation_waits(f)
    return Confirmations(list(zip(times, waits, strict=True)), gave_up,
                         len(times) + len(gave_up))


def confirmation_time(f: Facts) -> CheckResult:
    """P11': from the shopper's pay ok to the first poll that sees PAID ("stuck on processing")."""
    times, waits, gave_up = _confirmation_waits(f)
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
    if not _paid_txns_are_charges(f):
        txns = f.charge_txns
        for order in f.records.orders:
            txn = order.txn_id
            if order.status in PAID_STATES and txn is not None and txn not in txns:
                reasons.setdefault(order.order_id, f"PAID with txn {txn}, "
                                                   "not a charge in the ledger")
    return _found(f, "P12", "forged accepted", reasons, lambda k: reasons[k])


def _paid_txns_are_charges(f: Facts) -> bool:
    """Is every PAID order's txn a succeeded charge in the ledger?"""
    paid_txns = [o.txn_id for o in f.records.orders
                 if o.txn_id is not None and o.status in PAID_STATES]
    single = f.single_charges
    if single is not None and f.unique_orders:  # usually each order's txn is its own charge's
        own = [o for e, o in zip(single.charges, single.orders, strict=True)
               if o.txn_id == e.txn_id and o.txn_id is not None and o.status in PAID_STATES]
        if len(own) == len(paid_txns):
            return True
    return f.charge_txns.issuperset(paid_txns)


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


def _reserved(f: Facts, state: str) -> Counter[str]:
    return f.reserved.get(state, Counter())


def oversell(f: Facts) -> CheckResult:
    """I1: stock below zero, or more confirmed than there ever was."""
    confirmed = _reserved(f, "CONFIRMED")
    details: dict[str, str] = {}
    for s in f.records.stock:
        if s.available < 0:
            details[s.sku] = f"sku {s.sku}: available {s.available} < 0"
        elif confirmed[s.sku] > s.initial:
            details[s.sku] = f"sku {s.sku}: confirmed {confirmed[s.sku]} > initial {s.initial}"
    return _sku_result(f, "I1", "oversell", details)


def stock_not_conserved(f: Facts) -> CheckResult:
    """I2: initial − available ≠ Σ CONFIRMED + Σ live TRY."""
    confirmed = _reserved(f, "CONFIRMED")
    trying = _reserved(f, "TRY")
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
