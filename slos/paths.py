"""Which paths of the flow a run walked, and which anomaly classes each path puts to the test.

A path is counted from records the service under test cannot make up: the client history (H),
the channel's ledger and notification log (L) and the inventory's events — never from the
order service's status labels or refund reasons.  An anomaly class can only be found on the
paths that can produce it: a run that never walked one of them has not tested the class, so an
objective over it is unknown ("path X never walked"), not a pass.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import compress

from slos.facts import Facts

# The paths, in the order reports list them: the paid one, then each journey path of
# `load.paths` (faults/scenario.py:JOURNEY_PATHS), with what counts an order as having taken it.
PATHS: dict[str, str] = {
    "paid": "pay ok (H), a live charge (L) and the stock confirmed (inventory)",
    "abandon": "placed (H), never a pay attempt (H), the reservation cancelled (inventory)",
    "declined": "a pay failed (H) with a failed charge (L)",
    "late_pay": "a pay attempted after the payment was closed (L) or the stock released "
                "(inventory), and no charge after it (L)",
    "refund": "a refund (L)",
    "retry": "the same idempotency key placed more than once (H)",
    "slow_notify": "charged (L), first acknowledged notification later than query_after_s "
                   "after the charge, or none (L): the order service had to ask itself",
}
# path → the anomaly classes it can produce (a class may need several paths walked).
PATH_CLASSES: dict[str, tuple[str, ...]] = {
    "paid": ("P1", "P2", "P6", "P7", "P9", "P10", "P13", "O1", "I1", "I2", "I5", "I6", "Q1"),
    "abandon": ("P4", "O3", "I3", "I4"),
    "declined": ("P3",),
    "late_pay": ("P3",),
    "refund": ("P6", "P14"),
    "retry": ("P8", "O2"),
    "slow_notify": ("P1", "P6"),
}


def depends_on(cls: str) -> list[str]:
    """The paths an anomaly class needs walked before its absence means anything."""
    return [path for path, classes in PATH_CLASSES.items() if cls in classes]


def never_walked(classes: Iterable[str], counts: Mapping[str, int]) -> list[str]:
    """The paths `classes` depend on that no order took (in PATHS order); a path missing from
    `counts` was not counted, which is not the same as not walked."""
    needed = {path for cls in classes for path in depends_on(cls)}
    return [path for path in PATHS if path in needed and counts.get(path) == 0]


def path_counts(f: Facts) -> dict[str, int]:
    """How many orders took each path."""
    return {name: len(orders) for name, orders in path_orders(f).items()}


def path_orders(f: Facts) -> dict[str, set[str]]:
    """The orders that took each path (a million orders in about a second: the rare paths are
    looked for only among the few orders that can be on them)."""
    records = f.records
    events = records.stock_events
    kinds = [e.kind for e in events]
    event_orders = [e.order_id for e in events]
    pay = f.outcomes("pay")
    unpaid = f.ok("place_order") - pay.ok - pay.not_ok
    refused = pay.not_ok - pay.ok
    failed_charges: set[str] = set()
    if refused:
        failed_charges = {f.ledger_order(e.merchant_order_id) for e in records.ledger
                          if e.kind == "charge" and e.status == "failed"}
    return {
        "paid": pay.ok & f.paid_ledger & _orders_with(event_orders, kinds, "confirm"),
        "abandon": unpaid & _orders_with(event_orders, kinds, "cancel") if unpaid else set(),
        "declined": refused & failed_charges,
        "late_pay": late_pays(f) - f.charged_after_close,
        "refund": set(f.refunds),
        "retry": retried(f),
        "slow_notify": slow_notifications(f),
    }


def _orders_with(orders: list[str], kinds: list[str], kind: str) -> set[str]:
    """The orders of the events of one kind."""
    return set(compress(orders, map(kind.__eq__, kinds)))


def late_pays(f: Facts) -> set[str]:
    """Orders with a `late_pay` attempted after their close (ledger close, inventory cancel)."""
    pays = f.ops_of("pay")
    if "late_pay" not in [op.f for op in pays]:
        return set()
    closed = f.closed_at
    late = [(f.order_of(op), op.start) for op in pays if op.f == "late_pay"]
    return {k for k, start in late if start > closed.get(k, math.inf)}


def retried(f: Facts) -> set[str]:
    """Orders whose idempotency key the shopper placed more than once."""
    keys = [op.key for op in f.ops_of("place_order") if op.key is not None]
    if len(set(keys)) == len(keys):
        return set()
    return {f.order_by_key.get(key, f"key:{key}") for key, n in Counter(keys).items() if n > 1}


def slow_notifications(f: Facts) -> set[str]:
    """Orders charged whose first acknowledged genuine notification came later than the
    order service's active-query time after the charge, or never."""
    wait = f.records.run.query_after_s
    acked = f.acked_notifications
    # the log is in the order sent, so the first entry of a txn is its first acknowledgement
    first_ack = dict(zip(reversed([n.txn_id for n in acked]), reversed([n.t for n in acked]),
                         strict=True))
    charges = f.charges_succeeded
    acks = list(map(first_ack.get, [e.txn_id for e in charges]))
    if None in acks:  # never acknowledged: the order service had to ask, or never heard
        acks = [math.inf if t is None else t for t in acks]
    late = list(map(wait.__lt__, map(operator.sub, acks, [e.t for e in charges])))
    if True not in late:
        return set()
    return {f.ledger_order(e.merchant_order_id) for e in compress(charges, late)}
