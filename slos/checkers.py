"""One pure function per anomaly class of CHECKS.md, each from the records to a `CheckResult`.

Checkers read the records through `Facts`: the sets of CHECKS.md (Ok(pay), PaidL, PaidD …)
derived once, lazily, in single passes over plain lists, so a million orders audit in seconds.
Every order is named by its order id: history ops are mapped through the order export's
idempotency keys, ledger merchant order ids `ID:retry-N` (a bug-made second payment) back to ID.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

from slos.records import INFO, OK, LedgerEntry, Op, Order, Records

VALID, INVALID, UNKNOWN, INFO_VERDICT = "valid", "invalid", "unknown", "info"
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


class Facts:
    """The derived sets and maps of CHECKS.md, each computed on first use."""

    def __init__(self, records: Records, *, max_examples: int = MAX_EXAMPLES) -> None:
        self.records = records
        self.max_examples = max_examples
        self._history_sets: dict[str, tuple[set[str], set[str], set[str], set[str]]] = {}

    # --- D: order and inventory databases -----------------------------------

    @cached_property
    def orders(self) -> dict[str, Order]:
        return {order.order_id: order for order in self.records.orders}

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
    def paid_db(self) -> set[str]:
        """PaidD: orders in PAID or a later state."""
        return {o.order_id for o in self.records.orders if o.status in PAID_STATES}

    # --- H: history -----------------------------------------------------------

    def order_of(self, op: Op) -> str:
        """The order an op is about: its order id, else the order of its key, else `key:<key>`."""
        if op.order_id is not None:
            return op.order_id
        if op.key is not None:
            return self.order_by_key.get(op.key) or f"key:{op.key}"
        return f"op:{op.op_id}"

    @cached_property
    def ops_by_f(self) -> dict[str, list[Op]]:
        by_f: dict[str, list[Op]] = defaultdict(list)
        for op in self.records.ops:
            by_f[op.f].append(op)
        return dict(by_f)

    def attempted(self, f: str) -> set[str]:
        """Att(f): orders with any invoke of f."""
        return self._sets(f)[0]

    def ok(self, f: str) -> set[str]:
        """Ok(f): orders with an ok completion of f."""
        return self._sets(f)[1]

    def failed(self, f: str) -> set[str]:
        """Fail(f): orders whose every completion of f certainly did not happen."""
        return self._sets(f)[2]

    def unknown(self, f: str) -> set[str]:
        """Info(f): orders with an unknown outcome of f and no ok."""
        return self._sets(f)[3]

    def _sets(self, f: str) -> tuple[set[str], set[str], set[str], set[str]]:
        cached = self._history_sets.get(f)
        if cached is None:
            ops = self.ops_by_f.get(f, [])
            of = self.order_of
            att = {op.order_id if op.order_id is not None else of(op) for op in ops}
            ok = {op.order_id if op.order_id is not None else of(op)
                  for op in ops if op.outcome == OK}
            info = {op.order_id if op.order_id is not None else of(op)
                    for op in ops if op.outcome == INFO}
            cached = (att, ok, att - ok - info, info - ok)
            self._history_sets[f] = cached
        return cached

    @cached_property
    def completed_ops(self) -> int:
        return [op.outcome for op in self.records.ops].count(OK)

    @cached_property
    def shopper_times(self) -> tuple[dict[str, float], dict[str, float]]:
        """order → when its first pay was acknowledged; order → when a poll first saw PAID."""
        pays = [op for op in self.ops_by_f.get("pay", []) if op.outcome == OK]
        polls = [op for op in self.ops_by_f.get("poll", [])
                 if op.outcome == OK and op.status in PAID_STATES]
        return self._earliest(pays), self._earliest(polls)

    def _earliest(self, ops: list[Op]) -> dict[str, float]:
        """order → the earliest completion among `ops`."""
        of = self.order_of
        first = {op.order_id if op.order_id is not None else of(op): op.end for op in ops}
        if len(first) == len(ops) and None not in first.values():
            return cast(dict[str, float], first)  # one per order, the usual case
        earliest: dict[str, float] = {}
        for op in ops:
            if op.end is None:
                continue
            k = op.order_id if op.order_id is not None else of(op)
            end = cast(float, op.end)
            if end < earliest.get(k, math.inf):
                earliest[k] = end
        return earliest

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
    def charges(self) -> dict[str, tuple[LedgerEntry, ...]]:
        """order → its live charges (one per payment, not fully refunded), earliest first."""
        ledger = self.records.ledger
        charged = [e for e in ledger if e.kind == "charge" and e.status == "succeeded"]
        refunded: Counter[str] = Counter()
        for e in ledger:
            if e.kind == "refund" and e.status == "succeeded":
                refunded[e.payment_id] += e.amount
        first = {e.payment_id: e for e in charged}
        if len(first) < len(charged):  # a payment charged twice: its earliest charge counts
            first = {e.payment_id: e for e in sorted(charged, key=lambda e: e.t, reverse=True)}
        orders = self.orders
        if not refunded:
            fast: dict[str, tuple[LedgerEntry, ...]] = {
                e.merchant_order_id: (e,) for e in first.values()}
            if len(fast) == len(first) and fast.keys() <= orders.keys():
                return fast  # one payment per known order, the usual case
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
        return set(self.charges)

    @cached_property
    def charge_txns(self) -> set[str]:
        return {
            e.txn_id
            for e in self.records.ledger
            if e.kind == "charge" and e.status == "succeeded" and e.txn_id is not None
        }

    @cached_property
    def reserved(self) -> dict[str, Counter[str]]:
        """reservation state → sku → reserved quantity."""
        sums: dict[str, Counter[str]] = defaultdict(Counter)
        for r in self.records.reservations:
            sums[r.state][r.sku] += r.qty
        return dict(sums)

    @cached_property
    def genuine_notify_ids(self) -> set[str]:
        return {n.notify_id for n in self.records.notifications if not n.forged}

    # --- evidence -------------------------------------------------------------

    @cached_property
    def traces(self) -> dict[str, str]:
        """order → a trace id to open it in Jaeger (order's, else payment's, else the shopper's)."""
        found: dict[str, str] = {}
        for op in self.records.ops:
            if op.trace_id and op.f == "place_order":
                found.setdefault(self.order_of(op), op.trace_id)
        for payment in self.records.payments:
            if payment.trace_id:
                found[self.ledger_order(payment.merchant_order_id)] = payment.trace_id
        for order in self.records.orders:
            if order.trace_id:
                found[order.order_id] = order.trace_id
        return found

    def example(self, order_id: str | None, detail: str) -> dict[str, Any]:
        trace = self.traces.get(order_id) if order_id is not None else None
        return {"order_id": order_id, "trace_id": trace, "detail": detail}


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
    """P1: the shopper was told paid, the order database does not have it paid."""
    bad = f.ok("pay") - f.paid_db
    return _found(f, "P1", "lost acknowledged payment", bad,
                  lambda k: f"pay ok in history, order status {_status(f, k)}")


def false_success(f: Facts) -> CheckResult:
    """P2: the shopper was told paid, the channel has no live charge."""
    bad = f.ok("pay") - f.paid_ledger
    return _found(f, "P2", "false success", bad,
                  lambda k: "pay ok in history, no live charge in the channel ledger")


def failed_but_charged(f: Facts) -> CheckResult:
    """P3: every pay attempt failed for certain, yet the channel charged."""
    bad = f.failed("pay") & f.paid_ledger
    return _found(f, "P3", "failed but charged", bad,
                  lambda k: "pay failed in history, charged in the channel ledger")


def unexpected_payment(f: Facts) -> CheckResult:
    """P4: paid in the ledger or the database without any pay attempt."""
    bad = (f.paid_ledger | f.paid_db) - f.attempted("pay")
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
    bad = {k for k, live in f.charges.items() if len(live) > 1}
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
    extra = _repeated([(n.merchant_order_id, n.txn_id)
                       for n in f.records.notifications if n.acked and not n.forged])
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
    bad = {
        k
        for k, live in f.charges.items()
        if k in orders and any(c.amount != orders[k].amount for c in live)
    }
    return _found(f, "P10", "amount mismatch", bad,
                  lambda k: f"order amount {orders[k].amount}, charged "
                            + ", ".join(str(c.amount) for c in f.charges[k]))


def payment_lag_samples(f: Facts) -> list[tuple[float, float]]:
    """(charge time, t_paid − charge time) for every paid order with a live charge."""
    out: list[tuple[float, float]] = []
    charges = f.charges
    for order in f.records.orders:
        if order.t_paid is None or order.status not in PAID_STATES:
            continue
        live = charges.get(order.order_id)
        if live:
            first = live[0].t
            out.append((first, order.t_paid - first))
    return out


def payment_lag(f: Facts) -> CheckResult:
    """P11: from the charge at the channel to the order being paid (SLO material)."""
    stats = quantiles(lag for _, lag in payment_lag_samples(f))
    return CheckResult("P11", "payment lag", INFO_VERDICT, int(stats["count"] or 0), [], stats)


@dataclass(slots=True)
class Confirmations:
    """P11' samples: (pay ok time, seconds until a poll saw PAID); who never saw it."""

    samples: list[tuple[float, float]]
    gave_up: list[tuple[float, str]]
    paid_ok: int


def confirmation_samples(f: Facts) -> Confirmations:
    pay_ok, seen_paid = f.shopper_times
    samples: list[tuple[float, float]] = []
    gave_up: list[tuple[float, str]] = []
    for k, t_ok in pay_ok.items():
        t_seen = seen_paid.get(k)
        if t_seen is None:
            gave_up.append((t_ok, k))
        else:
            samples.append((t_ok, max(0.0, t_seen - t_ok)))
    return Confirmations(samples, gave_up, len(pay_ok))


def confirmation_time(f: Facts) -> CheckResult:
    """P11': from the shopper's pay ok to the first poll that sees PAID ("stuck on processing")."""
    c = confirmation_samples(f)
    stats: dict[str, Any] = dict(quantiles(t for _, t in c.samples))
    stats["gave_up"] = len(c.gave_up)
    stats["gave_up_share"] = len(c.gave_up) / c.paid_ok if c.paid_ok else None
    return _found(f, "P11'", "shopper confirmation time", [k for _, k in c.gave_up],
                  lambda k: "paid, but no poll saw PAID", verdict=INFO_VERDICT, stats=stats)


def forged_accepted(f: Facts) -> CheckResult:
    """P12: a notification the channel never genuinely sent changed state, or a PAID order's
    transaction is not a charge in the ledger."""
    reasons: dict[str, str] = {}
    accepted = {row.notify_id for row in f.records.inbox if row.notify_id is not None}
    if accepted - f.genuine_notify_ids:  # rare: only then look for the rows
        genuine = f.genuine_notify_ids
        for row in f.records.inbox:
            nid = row.notify_id
            if nid is not None and nid not in genuine and _is_effect(row.outcome):
                reasons.setdefault(row.order_id, f"accepted notification {nid} was never "
                                                 "genuinely sent by the channel")
    paid_txns = {o.txn_id for o in f.records.orders
                 if o.txn_id is not None and o.status in PAID_STATES}
    if paid_txns - f.charge_txns:
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
    bad = f.ok("place_order") - set(f.orders)
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
    for r in f.records.reservations:
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
    acked = {n.notify_id: n for n in f.records.notifications if n.acked and not n.forged}
    if acked and not f.records.receipts:
        return CheckResult("P13", "lost acknowledgement", UNKNOWN, 0, [],
                           {"error": "the order export has no receipt records to compare"})
    kept = {r.notify_id for r in f.records.receipts}
    lost = {}
    for notify_id, n in acked.items():
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
INFO_CLASSES = frozenset({"P5", "P9'", "P11", "P11'"})
