"""Synthetic, internally consistent runs: for the audit's tests, the gate's tests and the benchmark.

`clean_run(n)` builds the records of n orders that each went the happy path (placed, reserved,
paid, notified, confirmed, seen PAID by the shopper); tests then plant one anomaly by editing
them.  `write_run(records, run_dir)` writes them as a run directory in the contract formats.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from itertools import chain, groupby
from pathlib import Path
from typing import Any

import yaml

from slos.records import (
    FAIL,
    OK,
    FaultEvent,
    InboxEntry,
    LedgerEntry,
    Notification,
    Op,
    Order,
    OrderRefund,
    OutboxEntry,
    Payment,
    Receipt,
    Records,
    Reservation,
    RunInfo,
    StockEvent,
    Transition,
)
from slos.records import (
    Stock as StockRow,
)

T0 = 1_700_000_000.0
SKUS = 10


def clean_run(
    n_orders: int,
    *,
    start: float = T0,
    duration: float = 60.0,
    faults: Iterable[tuple[float, float, str, str]] = (),
    place_latency: float = 0.02,
    pay_latency: float = 0.03,
    settle: float = 10.0,
    every_path: bool = False,
) -> Records:
    """n orders on the happy path, spread evenly over `duration` seconds from `start`.

    `faults` are (offset from start, duration, fault, target) windows written as apply/heal;
    `every_path` adds one correct order on each other path of the flow (`walk_every_path`).
    """
    r = Records()
    ops, payments, ledger, notes = r.ops, r.payments, r.ledger, r.notifications
    orders, transitions, inbox, outbox = r.orders, r.transitions, r.inbox, r.outbox
    reservations, events = r.reservations, r.stock_events
    confirmed = [0] * SKUS
    gap = duration / max(1, n_orders)
    for i in range(n_orders):
        oid, key, trace = f"o-{i}", f"k-{i}", f"{i:032x}"
        pid, txn, nid, sku = f"p-{i}", f"x-{i}", f"n-{i}", f"sku-{i % SKUS}"
        t = start + i * gap
        t_placed = t + place_latency
        t_pay = t_placed + 0.01
        t_charge = t_pay + pay_latency / 2
        t_paid = t_charge + 0.05
        t_poll = t_pay + pay_latency + 0.1
        ops.append(Op("place_order", f"a{i}", "w:1", key, oid, t, t_placed, place_latency,
                      "ok", trace, "AWAITING_PAYMENT", None))
        ops.append(Op("pay", f"b{i}", "w:1", key, oid, t_pay, t_pay + pay_latency, pay_latency,
                      "ok", trace, "SUCCEEDED", None))
        ops.append(Op("poll", f"c{i}", "w:1", key, oid, t_poll, t_poll + 0.01, 0.01, "ok",
                      trace, "PAID", None))
        payments.append(Payment(pid, oid, 1000, t + 0.01, trace))
        ledger.append(LedgerEntry(i, txn, pid, oid, "charge", 1000, "succeeded", t_charge))
        notes.append(Notification(nid, pid, oid, txn, 1, t_charge + 0.02, True, 200, False,
                                  False, trace))
        orders.append(Order(oid, key, sku, 1, 1000, "PAID", pid, txn, t, t_paid, t_paid + 0.05,
                            trace))
        transitions.append(Transition(oid, "CREATED", "AWAITING_PAYMENT", t + 0.015, "place"))
        transitions.append(Transition(oid, "AWAITING_PAYMENT", "PAID", t_paid, "notify"))
        inbox.append(InboxEntry(txn, nid, oid, t_paid, "accepted"))
        r.receipts.append(Receipt(nid, txn, oid, t_paid))
        outbox.append(OutboxEntry(f"ob-{i}", oid, "confirm", t_paid, t_paid + 0.05, 1))
        reservations.append(Reservation(oid, sku, 1, "CONFIRMED", t + 0.005, t_paid + 0.05,
                                        60.0, None))
        events.append(StockEvent(oid, "try", t + 0.005, -1))
        events.append(StockEvent(oid, "confirm", t_paid + 0.05, 0))
        confirmed[i % SKUS] += 1
    initial = max(10, n_orders)
    r.stock = [StockRow(f"sku-{s}", initial, initial - confirmed[s]) for s in range(SKUS)]
    for step, (offset, length, fault, target) in enumerate(faults):
        r.faults.append(FaultEvent("apply", step, fault, target, start + offset, True))
        r.faults.append(FaultEvent("heal", step, fault, target, start + offset + length, True))
    r.run = RunInfo(scenario="synthetic", started=start - 1, load_started=start,
                    load_ended=start + duration, settle_ended=start + duration + settle,
                    duration=duration, settle=settle)
    if every_path:
        walk_every_path(r, start + 1.0)
    return r


PATH_SKU = "sku-paths"


def walk_every_path(r: Records, t: float) -> None:
    """Add one order, correctly handled, on each path of the flow besides the plain paid one
    (slos/paths.py): order ids `o-<path>`, all on sku `sku-paths`, from time `t`."""
    wait = r.run.query_after_s

    def order(path: str, status: str, *, paid: bool, closed_at: float | None = None) -> None:
        oid = f"o-{path}"
        trace = path.encode().hex()[:32].ljust(32, "0")
        t_paid = t + 0.1 + (wait if path == "slow_notify" else 0.05) if paid else None
        final = t_paid if t_paid is not None else closed_at
        r.orders.append(Order(oid, f"k-{path}", PATH_SKU, 1, 1000, status, f"p-{path}",
                              f"x-{path}" if paid else None, t, t_paid, final, trace))
        r.payments.append(Payment(f"p-{path}", oid, 1000, t + 0.01, trace))
        r.transitions.append(Transition(oid, "CREATED", "AWAITING_PAYMENT", t + 0.015, "place"))
        r.reservations.append(Reservation(oid, PATH_SKU, 1, "CONFIRMED" if paid else "CANCELLED",
                                          t + 0.005, final, 60.0, None if paid else "closed"))
        r.stock_events.append(StockEvent(oid, "try", t + 0.005, -1))
        if paid:
            assert t_paid is not None
            cause = "query" if path == "slow_notify" else "notify"
            r.transitions.append(Transition(oid, "AWAITING_PAYMENT", "PAID", t_paid, cause))
            r.outbox.append(OutboxEntry(f"ob-{path}", oid, "confirm", t_paid, t_paid + 0.05, 1))
            r.stock_events.append(StockEvent(oid, "confirm", t_paid + 0.05, 0))
        else:
            assert closed_at is not None
            r.transitions.append(Transition(oid, "AWAITING_PAYMENT", "CLOSED", closed_at,
                                            "close"))
            r.ledger.append(LedgerEntry(len(r.ledger), None, f"p-{path}", oid, "close", 0,
                                        "succeeded", closed_at))
            r.outbox.append(OutboxEntry(f"ob-{path}", oid, "cancel", closed_at,
                                        closed_at + 0.05, 1))
            r.stock_events.append(StockEvent(oid, "cancel", closed_at + 0.05, 1))

    def op(f: str, path: str, at: float, outcome: str, status: str | None, n: int = 0) -> None:
        r.ops.append(Op(f, f"{f}-{path}-{n}", "w:paths", f"k-{path}", f"o-{path}", at,
                        at + 0.01, 0.01, outcome, None, status, None))

    def charge(path: str, at: float, *, acked_after: float = 0.02) -> None:
        oid, txn = f"o-{path}", f"x-{path}"
        r.ledger.append(LedgerEntry(len(r.ledger), txn, f"p-{path}", oid, "charge", 1000,
                                    "succeeded", at))
        r.notifications.append(Notification(f"n-{path}", f"p-{path}", oid, txn, 1,
                                            at + acked_after, True, 200, False, False, None))
        r.receipts.append(Receipt(f"n-{path}", txn, oid, at + acked_after))

    closed = t + 5.0
    # abandon: placed, never paid; closed, its stock released
    order("abandon", "CLOSED", paid=False, closed_at=closed)
    op("place_order", "abandon", t, OK, "AWAITING_PAYMENT")
    # declined: the card was declined (a failed charge), then the order closed
    order("declined", "CLOSED", paid=False, closed_at=closed)
    op("place_order", "declined", t, OK, "AWAITING_PAYMENT")
    op("declined_pay", "declined", t + 0.05, FAIL, None)
    r.ledger.append(LedgerEntry(len(r.ledger), "x-declined", "p-declined", "o-declined",
                                "charge", 1000, "failed", t + 0.055))
    # late_pay: paid after the close; the channel refused
    order("late_pay", "CLOSED", paid=False, closed_at=closed)
    op("place_order", "late_pay", t, OK, "AWAITING_PAYMENT")
    op("poll", "late_pay", closed + 0.5, OK, "CLOSED")
    op("late_pay", "late_pay", closed + 0.6, FAIL, None)
    # refund: paid after the close with an offline card; charged, then refunded
    order("refund", "CLOSED", paid=False, closed_at=closed)
    op("place_order", "refund", t, OK, "AWAITING_PAYMENT")
    op("poll", "refund", closed + 0.5, OK, "CLOSED")
    op("late_pay", "refund", closed + 0.6, OK, "SUCCEEDED")
    charge("refund", closed + 0.605)
    r.inbox.append(InboxEntry("x-refund", "n-refund", "o-refund", closed + 0.63, "refund"))
    r.order_refunds.append(OrderRefund("o-refund", "rf-x-refund", "x-refund", 1000,
                                       closed + 0.63, "paid_after_close"))
    r.outbox.append(OutboxEntry("ob-refund-2", "o-refund", "refund", closed + 0.63,
                                closed + 0.7, 1))
    r.ledger.append(LedgerEntry(len(r.ledger), "x-refund", "p-refund", "o-refund", "refund",
                                1000, "succeeded", closed + 0.7, "rf-x-refund"))
    # retry: the same order placed twice with the same key, paid once, paid again (a replay)
    order("retry", "PAID", paid=True)
    op("place_order", "retry", t, OK, "AWAITING_PAYMENT")
    op("pay", "retry", t + 0.05, OK, "SUCCEEDED")
    charge("retry", t + 0.06)
    op("place_order", "retry", t + 0.07, OK, "AWAITING_PAYMENT", n=1)
    op("pay", "retry", t + 0.08, OK, "SUCCEEDED", n=1)
    op("poll", "retry", t + 0.3, OK, "PAID")
    r.inbox.append(InboxEntry("x-retry", "n-retry", "o-retry", t + 0.15, "accepted"))
    # slow_notify: the notification came late; the active query paid the order first
    order("slow_notify", "PAID", paid=True)
    op("place_order", "slow_notify", t, OK, "AWAITING_PAYMENT")
    op("pay", "slow_notify", t + 0.05, OK, "SUCCEEDED")
    charge("slow_notify", t + 0.06, acked_after=2 * wait)
    op("poll", "slow_notify", t + wait + 0.5, OK, "PAID")
    r.inbox.append(InboxEntry("x-slow_notify", None, "o-slow_notify", t + 0.15 + wait,
                              "accepted"))
    r.inbox.append(InboxEntry("x-slow_notify", "n-slow_notify", "o-slow_notify",
                              t + 0.06 + 2 * wait, "duplicate"))
    r.stock.append(StockRow(PATH_SKU, 100, 98))  # two confirmed (retry, slow_notify)


# --- writing a run directory in the contract formats ---------------------------

_BATCH = 50_000  # rows encoded per json.dumps call


def _json_texts(values: list[Any]) -> list[str]:
    """Each value's JSON text: one `json.dumps` of the whole list, split at its separators, when
    no value's own text holds a separator; else one `json.dumps` per value."""
    if not values:
        return []
    texts = json.dumps(values)[1:-1].split(", ")
    return texts if len(texts) == len(values) else list(map(json.dumps, values))


def _lines(columns: Mapping[str, list[Any]]) -> list[str]:
    """Rows given column by column ({field: values}) as NDJSON lines, fields in column order."""
    line = "{" + ", ".join(json.dumps(k).replace("%", "%%") + ": %s" for k in columns) + "}\n"
    return list(map(line.__mod__, zip(*map(_json_texts, columns.values()), strict=True)))


def _batches(items: list[Any]) -> Iterator[list[Any]]:
    for lo in range(0, len(items), _BATCH):
        yield items[lo:lo + _BATCH]


def _write(path: Path, tables: Iterable[Iterator[list[str]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for table in tables:
            for lines in table:
                out.writelines(lines)


def _table(items: list[Any], columns: Callable[[list[Any]], dict[str, list[Any]]]
           ) -> Iterator[list[str]]:
    """The NDJSON lines of `items`, batch by batch; `columns` turns a batch into its columns."""
    for batch in _batches(items):
        yield _lines(columns(batch))


def _history(ops: list[Op], origin: float) -> Iterator[list[str]]:
    """Each op as its invoke line, then its completion line (none when it never completed)."""
    for batch in _batches(ops):
        common = {"f": [op.f for op in batch], "op_id": [op.op_id for op in batch],
                  "process": [op.process for op in batch], "key": [op.key for op in batch],
                  "order_id": [op.order_id for op in batch],
                  "trace_id": [op.trace_id for op in batch]}
        nothing = [None] * len(batch)
        invokes = _lines({"type": ["invoke"] * len(batch), **common,
                          "time": [op.start - origin for op in batch],
                          "wall": [op.start for op in batch], "value": nothing,
                          "error": nothing})
        ends = [op.end for op in batch]
        completions = _lines({
            "type": [op.outcome for op in batch], **common,
            "time": [None if end is None else end - origin for end in ends], "wall": ends,
            "value": [None if op.status is None else {"status": op.status} for op in batch],
            "error": [op.error for op in batch]})
        yield list(chain.from_iterable(
            (invoke, "" if end is None else done)
            for invoke, done, end in zip(invokes, completions, ends, strict=True)))


def _ledger_columns(b: list[LedgerEntry], with_refund_id: bool) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {
        "type": ["ledger"] * len(b), "seq": [e.seq for e in b], "txn_id": [e.txn_id for e in b],
        "payment_id": [e.payment_id for e in b],
        "merchant_order_id": [e.merchant_order_id for e in b], "kind": [e.kind for e in b],
        "amount": [e.amount for e in b], "status": [e.status for e in b],
        "t": [e.t for e in b]}
    if with_refund_id:
        columns["refund_id"] = [e.refund_id for e in b]
    return columns


def _ledger(entries: list[LedgerEntry]) -> Iterator[list[str]]:
    """Ledger lines in ledger order; only refunds carry a `refund_id` key."""
    for with_refund_id, run in groupby(entries, key=lambda e: e.refund_id is not None):
        yield from _table(list(run), partial(_ledger_columns, with_refund_id=with_refund_id))


def write_run(r: Records, run_dir: Path, *, slo: str | None = None, seed: int = 0,
              workers: int = 0) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write(run_dir / "history.ndjson", [_history(r.ops, r.run.started or 0.0)])
    _write(run_dir / "exports" / "channel.ndjson", [
        _table(r.payments, lambda b: {
            "type": ["payment"] * len(b), "payment_id": [p.payment_id for p in b],
            "merchant_order_id": [p.merchant_order_id for p in b],
            "amount": [p.amount for p in b], "created_at": [p.created_at for p in b],
            "trace_id": [p.trace_id for p in b]}),
        _ledger(r.ledger),
        _table(r.notifications, lambda b: {
            "type": ["notification"] * len(b), "notify_id": [n.notify_id for n in b],
            "payment_id": [n.payment_id for n in b],
            "merchant_order_id": [n.merchant_order_id for n in b],
            "txn_id": [n.txn_id for n in b], "attempt": [n.attempt for n in b],
            "t": [n.t for n in b], "acked": [n.acked for n in b],
            "status_code": [n.status_code for n in b], "forged": [n.forged for n in b],
            "dropped": [n.dropped for n in b], "trace_id": [n.trace_id for n in b]}),
    ])
    _write(run_dir / "exports" / "order.ndjson", [
        _table(r.orders, lambda b: {
            "type": ["order"] * len(b), "order_id": [o.order_id for o in b],
            "idempotency_key": [o.idempotency_key for o in b], "sku": [o.sku for o in b],
            "qty": [o.qty for o in b], "amount": [o.amount for o in b],
            "status": [o.status for o in b], "payment_id": [o.payment_id for o in b],
            "txn_id": [o.txn_id for o in b], "created_at": [o.created_at for o in b],
            "t_paid": [o.t_paid for o in b], "t_final": [o.t_final for o in b],
            "trace_id": [o.trace_id for o in b], "flags": [o.flags for o in b]}),
        _table(r.transitions, lambda b: {
            "type": ["transition"] * len(b), "order_id": [t.order_id for t in b],
            "from": [t.from_state for t in b], "to": [t.to_state for t in b],
            "t": [t.t for t in b], "cause": [t.cause for t in b]}),
        _table(r.inbox, lambda b: {
            "type": ["inbox"] * len(b), "txn_id": [i.txn_id for i in b],
            "notify_id": [i.notify_id for i in b], "order_id": [i.order_id for i in b],
            "t": [i.t for i in b], "outcome": [i.outcome for i in b]}),
        _table(r.receipts, lambda b: {
            "type": ["receipt"] * len(b), "notify_id": [c.notify_id for c in b],
            "txn_id": [c.txn_id for c in b], "order_id": [c.order_id for c in b],
            "outcome": ["paid"] * len(b), "t": [c.t for c in b]}),
        _table(r.outbox, lambda b: {
            "type": ["outbox"] * len(b), "id": [o.id for o in b],
            "order_id": [o.order_id for o in b], "kind": [o.kind for o in b],
            "created_at": [o.created_at for o in b],
            "delivered_at": [o.delivered_at for o in b],
            "attempts": [o.attempts for o in b]}),
    ])
    _write(run_dir / "exports" / "inventory.ndjson", [
        _table(r.stock, lambda b: {
            "type": ["stock"] * len(b), "sku": [s.sku for s in b],
            "initial": [s.initial for s in b], "available": [s.available for s in b]}),
        _table(r.reservations, lambda b: {
            "type": ["reservation"] * len(b), "order_id": [v.order_id for v in b],
            "sku": [v.sku for v in b], "qty": [v.qty for v in b],
            "state": [v.state for v in b], "t_try": [v.t_try for v in b],
            "t_end": [v.t_end for v in b], "ttl": [v.ttl for v in b],
            "cancel_reason": [v.cancel_reason for v in b]}),
        _table(r.tombstones, lambda b: {
            "type": ["tombstone"] * len(b), "order_id": [t.order_id for t in b],
            "t": [t.t for t in b]}),
        _table(r.stock_events, lambda b: {
            "type": ["event"] * len(b), "order_id": [e.order_id for e in b],
            "kind": [e.kind for e in b], "t": [e.t for e in b],
            "stock_delta": [e.stock_delta for e in b]}),
    ])
    _write(run_dir / "faults.ndjson", [_table(r.faults, lambda b: {
        "event": [f.event for f in b], "step": [f.step for f in b],
        "fault": [f.fault for f in b], "target": [f.target for f in b],
        "params": [f.params for f in b], "t": [f.t for f in b], "ok": [f.ok for f in b],
        "error": [f.error for f in b]})])
    run = r.run
    (run_dir / "scenario.yaml").write_text(yaml.safe_dump(
        {"name": run.scenario, "duration": run.duration, "settle": run.settle, "seed": seed}))
    (run_dir / "run.json").write_text(json.dumps(
        {"scenario": run.scenario, "started": run.started, "load_started": run.load_started,
         "load_ended": run.load_ended, "settle_ended": run.settle_ended, "bugs": run.bugs,
         "slo": slo, "workers": workers}))
    return run_dir
