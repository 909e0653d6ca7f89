"""Which paths of the flow a run walked, and which anomaly classes each path puts to the test.

A path is counted from records the service under test cannot make up: the client history (H),
the channel's ledger and notification log (L) and the inventory's events — never from the
order service's status labels or refund reasons.  An anomaly class can only be found on the
paths that can produce it: a run that never walked one of them has not tested the class, so an
objective over it is unknown ("path X never walked"), not a pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from faults.scenario import JOURNEY_PATHS
from slos.facts import Facts

# The paths, in the order reports list them: the paid one, then each journey path of
# `load.paths` (faults/scenario.py), with what counts an order as having taken it.
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
assert set(PATHS) == {"paid", *JOURNEY_PATHS}, "every journey path is counted"

# path → the anomaly classes only that path (among others) can produce.
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
    """The paths `classes` depend on that no order took (in PATHS order)."""
    needed = {path for cls in classes for path in depends_on(cls)}
    return [path for path in PATHS if path in needed and counts.get(path, 0) == 0]


def path_counts(f: Facts) -> dict[str, int]:
    """How many orders took each path."""
    return {name: len(orders) for name, orders in path_orders(f).items()}


def path_orders(f: Facts) -> dict[str, set[str]]:
    """The orders that took each path."""
    records = f.records
    confirmed = {e.order_id for e in records.stock_events if e.kind == "confirm"}
    released = {e.order_id for e in records.stock_events if e.kind == "cancel"}
    pay = f.outcomes("pay")
    placed = f.ok("place_order")
    failed_charges = {f.ledger_order(e.merchant_order_id) for e in records.ledger
                      if e.kind == "charge" and e.status == "failed"}
    closed = f.closed_at
    late_tries = {f.order_of(op) for op in f.ops_of("pay")
                  if op.f == "late_pay" and op.start > closed.get(f.order_of(op), float("inf"))}
    keys = Counter(op.key for op in f.ops_of("place_order") if op.key is not None)
    retried = {f.order_by_key.get(key, f"key:{key}") for key, n in keys.items() if n > 1}
    return {
        "paid": pay.ok & f.paid_ledger & confirmed,
        "abandon": (placed - pay.ok - pay.not_ok) & released,
        "declined": (pay.not_ok - pay.ok) & failed_charges,
        "late_pay": late_tries - f.charged_after_close,
        "refund": set(f.refunds),
        "retry": retried,
        "slow_notify": slow_notifications(f),
    }


def slow_notifications(f: Facts) -> set[str]:
    """Orders charged whose first acknowledged genuine notification came later than the
    order service's active-query time after the charge, or never."""
    wait = f.records.run.query_after_s
    first_ack: dict[str, float] = {}
    for n in f.acked_notifications:
        if n.txn_id is not None and n.t < first_ack.get(n.txn_id, float("inf")):
            first_ack[n.txn_id] = n.t
    slow: set[str] = set()
    for e in f.records.ledger:
        if e.kind != "charge" or e.status != "succeeded" or e.txn_id is None:
            continue
        if first_ack.get(e.txn_id, float("inf")) - e.t > wait:
            slow.add(f.ledger_order(e.merchant_order_id))
    return slow
