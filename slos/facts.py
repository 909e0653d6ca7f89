"""The derived facts of CHECKS.md (Ok(pay), PaidL, PaidD, cntL …), built once per audit.

`Facts` derives them lazily, each once, in single passes over plain lists, so a million orders
audit in seconds.  Hashing a million ids is the unit of cost, so checkers probe these shared sets
rather than build their own, and the usual shapes (one charge per order, no repeats) are
confirmed up front so the per-order grouping that only anomalies need is built only for them,
with the same results.  Every order is named by its order id: history ops are mapped through the
order export's idempotency keys, ledger merchant order ids `ID:retry-N` (a bug-made second
payment) back to ID.
"""

from __future__ import annotations

import math
import operator
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

from slos.records import INFO, OK, LedgerEntry, Notification, Op, Order, Records

# a pay issued after the shopper saw the order CLOSED, or with a card the channel declines, is
# still a pay attempt
PAY_ALIASES = {"late_pay": "pay", "declined_pay": "pay"}
MAX_EXAMPLES = 10
PAID_STATES = frozenset({"PAID", "FULFILLED", "COMPLETED"})
FINAL_STATES = frozenset({"PAID", "REJECTED", "CLOSED", "FULFILLED", "COMPLETED"})


# --- sample statistics -------------------------------------------------------


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


# --- the facts ---------------------------------------------------------------


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

    def unattempted(self, f: str, orders: set[str]) -> set[str]:
        """orders ∖ Att(f): those with no invoke of f (Att(f) itself is never built: a copy of
        a million ids only to subtract it)."""
        o = self.outcomes(f)
        return orders - o.ok - o.not_ok

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
    def late_payers(self) -> set[str]:
        """Orders paid only by a late payer (`late_pay` ops, no plain `pay`)."""
        pays = self.ops_of("pay")
        if "late_pay" not in [op.f for op in pays]:
            return set()
        late = {self.order_of(op) for op in pays if op.f == "late_pay"}
        return late - {self.order_of(op) for op in pays if op.f == "pay"}

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

    @property
    def charges_succeeded(self) -> list[LedgerEntry]:
        """Every succeeded charge of the ledger, in ledger order."""
        return self._succeeded_charges

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
        """order → its live charges (one per payment, not fully refunded), earliest first:
        cntL(k) is len(charges[k])."""
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
    def closed_at(self) -> dict[str, float]:
        """order → when it was closed, by records the order service cannot make up: the
        channel's close of its payment, else the inventory's cancel of its reservation."""
        closed: dict[str, float] = {}
        for e in self.records.ledger:
            if e.kind == "close" and e.status == "succeeded":
                k = self.ledger_order(e.merchant_order_id)
                if e.t < closed.get(k, math.inf):
                    closed[k] = e.t
        for s in self.records.stock_events:
            if s.kind == "cancel" and s.t < closed.get(s.order_id, math.inf):
                closed[s.order_id] = s.t
        return closed

    @cached_property
    def refunds(self) -> set[str]:
        """Orders with a succeeded refund in the channel ledger."""
        return {self.ledger_order(e.merchant_order_id) for e in self.records.ledger
                if e.kind == "refund" and e.status == "succeeded"}

    @cached_property
    def charged_after_close(self) -> set[str]:
        """Orders with a succeeded charge later than their close (ledger close or inventory
        cancel): a payment that landed after the order could no longer take it."""
        closed = self.closed_at
        if not closed:
            return set()
        late: set[str] = set()
        for e in self._succeeded_charges:
            k = self.ledger_order(e.merchant_order_id)
            if e.t > closed.get(k, math.inf):
                late.add(k)
        return late

    @cached_property
    def refunded_late(self) -> set[str]:
        """P14: orders charged after their close whose money the ledger shows back (refunded,
        no live charge left).  The order service's refund reason is not consulted: a payment
        charged before the close and then refunded is a lost payment whatever it says."""
        late = self.charged_after_close & self.refunds
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

    def reserved_in(self, state: str) -> Counter[str]:
        """sku → quantity reserved in one reservation state (TRY, CONFIRMED, CANCELLED)."""
        return self.reserved.get(state, Counter())

    @cached_property
    def genuine_notify_ids(self) -> set[str]:
        return {n.notify_id for n in self.records.notifications if not n.forged}

    @cached_property
    def acked_notifications(self) -> list[Notification]:
        """Genuine notifications the order service answered with success."""
        return [n for n in self.records.notifications if n.acked and not n.forged]

    @cached_property
    def payment_lags(self) -> tuple[list[float], list[float]]:
        """P11: charge times and t_paid − charge time, for every paid order with a live charge."""
        single = self.single_charges
        if single is not None and self.unique_orders:
            # Each order has one row and at most one charge: walk the charges, no per-order map.
            firsts, charged = single.charges, single.orders
        else:
            charges = self.charges
            charged = [o for o in self.records.orders if o.order_id in charges]
            firsts = [charges[o.order_id][0] for o in charged]
        paid_at = [o.t_paid if o.status in PAID_STATES else None for o in charged]
        if None in paid_at:
            kept = [(e, t) for e, t in zip(firsts, paid_at, strict=True) if t is not None]
            firsts, paid_at = [e for e, _ in kept], [t for _, t in kept]
        times = [e.t for e in firsts]
        return times, list(map(operator.sub, cast(list[float], paid_at), times))

    @cached_property
    def confirmation_waits(self) -> tuple[list[float], list[float], list[tuple[float, str]]]:
        """P11': pay ok times and the wait until a poll saw PAID, of the shoppers who saw it;
        (pay ok time, order) of those who never did."""
        paid, paid_at = self.outcomes("pay").first_ok()
        late = self.late_payers
        if late:  # they paid a closed order: nobody waits for PAID, a refund is the outcome
            kept = [(k, t) for k, t in zip(paid, paid_at, strict=True) if k not in late]
            paid, paid_at = [k for k, _ in kept], [t for _, t in kept]
        seen_at = list(map(self.seen_paid.get, paid))
        gave_up: list[tuple[float, str]] = []
        if None in seen_at:
            gave_up = [(t, k) for k, t, s in zip(paid, paid_at, seen_at, strict=True)
                       if s is None]
            saw = [(t, s) for t, s in zip(paid_at, seen_at, strict=True) if s is not None]
            paid_at, seen_at = [t for t, _ in saw], [s for _, s in saw]
        waits = [w if w > 0.0 else 0.0 for w in map(operator.sub, seen_at, paid_at)]  # max(0, w)
        return paid_at, waits, gave_up

    @cached_property
    def paid_txns_are_charges(self) -> bool:
        """Is every PAID order's txn a succeeded charge in the ledger?"""
        paid_txns = [o.txn_id for o in self.records.orders
                     if o.txn_id is not None and o.status in PAID_STATES]
        single = self.single_charges
        if single is not None and self.unique_orders:  # usually each order's txn is its own
            own = [o for e, o in zip(single.charges, single.orders, strict=True)
                   if o.txn_id == e.txn_id and o.txn_id is not None and o.status in PAID_STATES]
            if len(own) == len(paid_txns):
                return True
        return self.charge_txns.issuperset(paid_txns)

    # --- evidence -------------------------------------------------------------

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


@dataclass(slots=True)
class Confirmations:
    """P11' samples: (pay ok time, seconds until a poll saw PAID); who never saw it."""

    samples: list[tuple[float, float]]
    gave_up: list[tuple[float, str]]
    paid_ok: int


def payment_lag_samples(f: Facts) -> list[tuple[float, float]]:
    """(charge time, t_paid − charge time) for every paid order with a live charge."""
    return list(zip(*f.payment_lags, strict=True))


def confirmation_samples(f: Facts) -> Confirmations:
    times, waits, gave_up = f.confirmation_waits
    return Confirmations(list(zip(times, waits, strict=True)), gave_up,
                         len(times) + len(gave_up))
