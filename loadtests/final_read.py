"""The black-box audit's order records: after the settle window, every order the history (or
the channel's ledger) names is read once more through the target's adapter.

The rows (`final_read.ndjson`, type "final_read", docs/contracts.md) carry what the client
saw — status, payment id, amount — and what the history says the shopper asked for (key, sku,
qty, amount, when).  The audit (slos/records.py, slos/blackbox.py) takes them as the order
records when the target serves no export.  Runs in the orchestrator: no Locust here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import rundir
from loadtests.adapter import OrderAdapter, Result

FINAL_READ_FILE = "final_read.ndjson"
READ_ATTEMPTS = 3  # a read that times out or is refused is tried again, then left undecided
READ_BACKOFF_S = 0.5


def orders_in_history(
    history: Iterable[Mapping[str, Any]], also: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """order id -> what the history says of it: the key, body and time of the placement that
    returned it ({} for an order only named by another operation or in `also`)."""
    bodies: dict[str, Mapping[str, Any]] = {}
    orders: dict[str, dict[str, Any]] = {}
    for record in history:
        kind, f = record.get("type"), record.get("f")
        if kind == "invoke" and f == "place_order" and isinstance(record.get("value"), Mapping):
            bodies[str(record.get("op_id"))] = record["value"]
        order_id = record.get("order_id")
        if order_id is None:
            continue
        seen = orders.setdefault(str(order_id), {})
        if kind == "ok" and f == "place_order" and "key" not in seen:
            body = bodies.get(str(record.get("op_id")), {})
            seen.update(
                key=record.get("key"),
                sku=body.get("sku"),
                qty=body.get("qty"),
                amount=body.get("amount"),
                created_at=record.get("wall"),
                trace_id=record.get("trace_id"),
            )
    for order_id in also:
        orders.setdefault(str(order_id), {})
    return orders


def read_every_order(
    adapter: OrderAdapter,
    orders: Mapping[str, Mapping[str, Any]],
    *,
    attempts: int = READ_ATTEMPTS,
    backoff_s: float = READ_BACKOFF_S,
) -> list[dict[str, Any]]:
    """One final_read row per order (sorted by id); info / refused reads are retried."""
    rows = []
    for order_id in sorted(orders):
        result = _read(adapter, order_id, attempts, backoff_s)
        rows.append(final_read_row(order_id, orders[order_id], result))
    return rows


def _read(adapter: OrderAdapter, order_id: str, attempts: int, backoff_s: float) -> Result:
    result = Result("info", error="not read")
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * attempt)
        try:
            result = adapter.read_order(order_id)
        except Exception as exc:  # a broken adapter leaves this order undecided, not the run
            result = Result("info", error=f"adapter raised {type(exc).__name__}: {exc}")
        if result.type == "ok" or (result.type == "fail" and not result.retry):
            return result
    return result


def final_read_row(order_id: str, placed: Mapping[str, Any], result: Result) -> dict[str, Any]:
    order = result.order if result.type == "ok" else None
    amount = order.amount if order is not None and order.amount is not None else None
    return {
        "type": "final_read",
        "order_id": order_id,
        # ok: the target has it (as below); fail: it says there is no such order; info: unknown
        "outcome": result.type if result.type != "ok" or order is not None else "info",
        "status": order.status if order is not None else None,
        "payment_id": order.payment_id if order is not None else None,
        "amount": amount if amount is not None else placed.get("amount"),
        "key": placed.get("key"),
        "sku": placed.get("sku"),
        "qty": placed.get("qty"),
        "created_at": placed.get("created_at"),
        "trace_id": placed.get("trace_id"),
        "http_status": result.http_status,
        "error": result.error or None,
        "t": time.time(),
    }


def write_final_read(
    run_dir: Path, adapter: OrderAdapter, *, ledger_orders: Iterable[str] = ()
) -> Path:
    """Read every order of the run's history (and of the ledger) and write final_read.ndjson."""
    history = rundir.iter_ndjson(Path(run_dir) / "history.ndjson")
    rows = read_every_order(adapter, orders_in_history(history, also=ledger_orders))
    return rundir.write_ndjson(Path(run_dir) / FINAL_READ_FILE, rows)
