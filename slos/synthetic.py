"""Synthetic, internally consistent runs: for the audit's tests, the gate's tests and the benchmark.

`clean_run(n)` builds the records of n orders that each went the happy path (placed, reserved,
paid, notified, confirmed, seen PAID by the shopper); tests then plant one anomaly by editing
them.  `write_run(records, run_dir)` writes them as a run directory in the contract formats.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from slos.records import (
    FaultEvent,
    InboxEntry,
    LedgerEntry,
    Notification,
    Op,
    Order,
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
) -> Records:
    """n orders on the happy path, spread evenly over `duration` seconds from `start`.

    `faults` are (offset from start, duration, fault, target) windows written as apply/heal.
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
    return r


# --- writing a run directory in the contract formats ---------------------------


def _ndjson(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for rec in records:
            out.write(json.dumps(rec) + "\n")


def history_lines(ops: Iterable[Op], origin: float) -> Iterable[dict[str, Any]]:
    for op in ops:
        common = {"f": op.f, "op_id": op.op_id, "process": op.process, "key": op.key,
                  "order_id": op.order_id, "trace_id": op.trace_id}
        yield {"type": "invoke", **common, "time": op.start - origin, "wall": op.start,
               "value": None, "error": None}
        if op.end is None:
            continue
        value = {"status": op.status} if op.status is not None else None
        yield {"type": op.outcome, **common, "time": op.end - origin, "wall": op.end,
               "value": value, "error": op.error}


def write_run(r: Records, run_dir: Path, *, slo: str | None = None) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    origin = r.run.started or 0.0
    _ndjson(run_dir / "history.ndjson", history_lines(r.ops, origin))
    channel: list[dict[str, Any]] = []
    channel += [{"type": "payment", "payment_id": p.payment_id,
                 "merchant_order_id": p.merchant_order_id, "amount": p.amount,
                 "created_at": p.created_at, "trace_id": p.trace_id} for p in r.payments]
    for e in r.ledger:
        entry: dict[str, Any] = {"type": "ledger", "seq": e.seq, "txn_id": e.txn_id,
                                 "payment_id": e.payment_id,
                                 "merchant_order_id": e.merchant_order_id, "kind": e.kind,
                                 "amount": e.amount, "status": e.status, "t": e.t}
        if e.refund_id is not None:
            entry["refund_id"] = e.refund_id
        channel.append(entry)
    channel += [{"type": "notification", "notify_id": n.notify_id, "payment_id": n.payment_id,
                 "merchant_order_id": n.merchant_order_id, "txn_id": n.txn_id,
                 "attempt": n.attempt, "t": n.t, "acked": n.acked,
                 "status_code": n.status_code, "forged": n.forged, "dropped": n.dropped,
                 "trace_id": n.trace_id} for n in r.notifications]
    _ndjson(run_dir / "exports" / "channel.ndjson", channel)
    order: list[dict[str, Any]] = []
    order += [{"type": "order", "order_id": o.order_id, "idempotency_key": o.idempotency_key,
               "sku": o.sku, "qty": o.qty, "amount": o.amount, "status": o.status,
               "payment_id": o.payment_id, "txn_id": o.txn_id, "created_at": o.created_at,
               "t_paid": o.t_paid, "t_final": o.t_final, "trace_id": o.trace_id,
               "flags": o.flags} for o in r.orders]
    order += [{"type": "transition", "order_id": t.order_id, "from": t.from_state,
               "to": t.to_state, "t": t.t, "cause": t.cause} for t in r.transitions]
    order += [{"type": "inbox", "txn_id": i.txn_id, "notify_id": i.notify_id,
               "order_id": i.order_id, "t": i.t, "outcome": i.outcome} for i in r.inbox]
    order += [{"type": "receipt", "notify_id": c.notify_id, "txn_id": c.txn_id,
               "order_id": c.order_id, "outcome": "paid", "t": c.t} for c in r.receipts]
    order += [{"type": "outbox", "id": o.id, "order_id": o.order_id, "kind": o.kind,
               "created_at": o.created_at, "delivered_at": o.delivered_at,
               "attempts": o.attempts} for o in r.outbox]
    _ndjson(run_dir / "exports" / "order.ndjson", order)
    inventory: list[dict[str, Any]] = []
    inventory += [{"type": "stock", "sku": s.sku, "initial": s.initial,
                   "available": s.available} for s in r.stock]
    inventory += [{"type": "reservation", "order_id": v.order_id, "sku": v.sku, "qty": v.qty,
                   "state": v.state, "t_try": v.t_try, "t_end": v.t_end, "ttl": v.ttl,
                   "cancel_reason": v.cancel_reason} for v in r.reservations]
    inventory += [{"type": "tombstone", "order_id": t.order_id, "t": t.t} for t in r.tombstones]
    inventory += [{"type": "event", "order_id": e.order_id, "kind": e.kind, "t": e.t,
                   "stock_delta": e.stock_delta} for e in r.stock_events]
    _ndjson(run_dir / "exports" / "inventory.ndjson", inventory)
    _ndjson(run_dir / "faults.ndjson",
            [{"event": f.event, "step": f.step, "fault": f.fault, "target": f.target,
              "params": f.params, "t": f.t, "ok": f.ok, "error": f.error} for f in r.faults])
    run = r.run
    (run_dir / "scenario.yaml").write_text(yaml.safe_dump(
        {"name": run.scenario, "duration": run.duration, "settle": run.settle}))
    (run_dir / "run.json").write_text(json.dumps(
        {"scenario": run.scenario, "started": run.started, "load_started": run.load_started,
         "load_ended": run.load_ended, "settle_ended": run.settle_ended, "bugs": run.bugs,
         "slo": slo}))
    return run_dir
