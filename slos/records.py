"""Load a run directory into plain typed records: the history H, the ledger L and the databases D.

One pass per file, no pandas: the audit must read a million orders in seconds.  A history
`invoke` is paired with its completion by `op_id` into one `Op`; an invoke without a
completion is an `info` op (outcome unknown), as in Jepsen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from chaosbed.rundir import RunDirError, iter_ndjson, read_json

OK, FAIL, INFO = "ok", "fail", "info"
DEFAULT_SWEEP_EVERY_S = 2.0


class RecordsError(ValueError):
    """A run directory is missing a required file or holds a record that cannot be read."""


@dataclass(slots=True)
class Op:
    """One logical operation of the history: its invoke and (if any) its completion."""

    f: str
    op_id: str
    process: str
    key: str | None
    order_id: str | None
    start: float  # wall seconds of the invoke
    end: float | None  # wall seconds of the completion; None = never completed
    latency: float | None  # seconds from invoke to completion (monotonic clock)
    outcome: str  # ok | fail | info
    trace_id: str | None
    status: str | None  # value.status of a poll
    error: str | None


@dataclass(slots=True)
class Payment:
    payment_id: str
    merchant_order_id: str
    amount: int
    created_at: float
    trace_id: str | None


@dataclass(slots=True)
class LedgerEntry:
    seq: int
    txn_id: str | None
    payment_id: str
    merchant_order_id: str
    kind: str  # charge | refund | close
    amount: int
    status: str  # succeeded | failed
    t: float
    refund_id: str | None = None


@dataclass(slots=True)
class Notification:
    notify_id: str
    payment_id: str | None
    merchant_order_id: str
    txn_id: str | None
    attempt: int
    t: float
    acked: bool
    status_code: int | None
    forged: bool
    dropped: bool
    trace_id: str | None


@dataclass(slots=True)
class Order:
    order_id: str
    idempotency_key: str | None
    sku: str | None
    qty: int
    amount: int
    status: str
    payment_id: str | None
    txn_id: str | None
    created_at: float
    t_paid: float | None
    t_final: float | None
    trace_id: str | None
    flags: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Transition:
    order_id: str
    from_state: str | None
    to_state: str
    t: float
    cause: str | None


@dataclass(slots=True)
class InboxEntry:
    txn_id: str | None
    notify_id: str | None
    order_id: str
    t: float
    outcome: str | None


@dataclass(slots=True)
class Receipt:
    """A notification the order service answered with success (committed with the answer)."""

    notify_id: str
    txn_id: str | None
    order_id: str
    t: float


@dataclass(slots=True)
class OutboxEntry:
    id: str
    order_id: str
    kind: str
    created_at: float
    delivered_at: float | None
    attempts: int


@dataclass(slots=True)
class OrderRefund:
    order_id: str
    refund_id: str
    txn_id: str | None
    amount: int
    t: float


@dataclass(slots=True)
class Stock:
    sku: str
    initial: int
    available: int


@dataclass(slots=True)
class Reservation:
    order_id: str
    sku: str
    qty: int
    state: str  # TRY | CONFIRMED | CANCELLED
    t_try: float
    t_end: float | None
    ttl: float
    cancel_reason: str | None


@dataclass(slots=True)
class Tombstone:
    order_id: str
    t: float


@dataclass(slots=True)
class StockEvent:
    order_id: str
    kind: str  # try | confirm | cancel | try_refused | empty_rollback
    t: float
    stock_delta: int


@dataclass(slots=True)
class FaultEvent:
    event: str  # apply | heal
    step: int
    fault: str
    target: str
    t: float
    ok: bool
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(slots=True)
class RunInfo:
    scenario: str
    started: float | None = None
    load_started: float | None = None
    load_ended: float | None = None
    settle_ended: float | None = None
    bugs: list[str] = field(default_factory=list)
    slo: str | None = None
    duration: float | None = None
    settle: float | None = None
    sweep_every_s: float = DEFAULT_SWEEP_EVERY_S


@dataclass(slots=True)
class Records:
    """Everything the audit and the SLO evaluator read about one run."""

    ops: list[Op] = field(default_factory=list)
    payments: list[Payment] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    inbox: list[InboxEntry] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    order_refunds: list[OrderRefund] = field(default_factory=list)
    stock: list[Stock] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)
    tombstones: list[Tombstone] = field(default_factory=list)
    stock_events: list[StockEvent] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)
    run: RunInfo = field(default_factory=lambda: RunInfo(scenario="unknown"))
    missing: list[str] = field(default_factory=list)  # optional files that were absent

    def reference_time(self) -> float:
        """The audit's "now": the end of the settle window, else the latest timestamp seen."""
        run = self.run
        for t in (run.settle_ended, run.load_ended):
            if t is not None:
                return t
        latest = 0.0
        for op in self.ops:
            latest = max(latest, op.end if op.end is not None else op.start)
        for entry in self.ledger:
            latest = max(latest, entry.t)
        for order in self.orders:
            latest = max(latest, order.created_at, order.t_final or 0.0)
        return latest


# --- history -----------------------------------------------------------------


def ops_from_history(lines: Iterable[Mapping[str, Any]], source: str = "history") -> list[Op]:
    """Pair invokes with completions by op_id; unpaired invokes become `info` ops."""
    open_ops: dict[str, tuple[Mapping[str, Any], int]] = {}
    ops: list[Op] = []
    for number, rec in enumerate(lines, 1):
        kind = rec.get("type")
        op_id = rec.get("op_id")
        if op_id is None:
            raise RecordsError(f"{source}:{number}: history record has no op_id")
        op_id = str(op_id)
        if kind == "invoke":
            open_ops[op_id] = (rec, number)
            continue
        if kind not in (OK, FAIL, INFO):
            raise RecordsError(
                f"{source}:{number}: history type {kind!r} is not one of invoke, ok, fail, info"
            )
        pending = open_ops.pop(op_id, None)
        invoke = pending[0] if pending is not None else rec
        ops.append(_op(invoke, rec, kind, source, number))
    for invoke, number in open_ops.values():
        ops.append(_op(invoke, None, INFO, source, number))
    return ops


def _op(
    invoke: Mapping[str, Any], done: Mapping[str, Any] | None, outcome: str, source: str, n: int
) -> Op:
    try:
        start = float(invoke["wall"])
        end: float | None = None
        latency: float | None = None
        status: str | None = None
        error: str | None = None
        last = invoke
        if done is not None:
            last = done
            latency = max(0.0, float(done["time"]) - float(invoke["time"]))
            end = start + latency
            value = done.get("value")
            if isinstance(value, Mapping):
                raw = value.get("status")
                status = None if raw is None else str(raw)
            raw_error = done.get("error")
            error = None if raw_error is None else str(raw_error)
        return Op(
            f=str(invoke["f"]),
            op_id=str(invoke["op_id"]),
            process=str(invoke.get("process") or ""),
            key=_opt_str(last.get("key") or invoke.get("key")),
            order_id=_opt_str(last.get("order_id") or invoke.get("order_id")),
            start=start,
            end=end,
            latency=latency,
            outcome=outcome,
            trace_id=_opt_str(last.get("trace_id") or invoke.get("trace_id")),
            status=status,
            error=error,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordsError(f"{source}:{n}: history record is missing or has a bad {exc}") from None


def _opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


# --- exports -----------------------------------------------------------------


def _channel(records: Records, rec: Mapping[str, Any]) -> None:
    kind = rec.get("type")
    if kind == "payment":
        records.payments.append(
            Payment(
                payment_id=str(rec["payment_id"]),
                merchant_order_id=str(rec["merchant_order_id"]),
                amount=int(rec["amount"]),
                created_at=float(rec.get("created_at") or 0.0),
                trace_id=_opt_str(rec.get("trace_id")),
            )
        )
    elif kind == "ledger":
        records.ledger.append(
            LedgerEntry(
                seq=int(rec.get("seq") or 0),
                txn_id=_opt_str(rec.get("txn_id")),
                payment_id=str(rec.get("payment_id") or ""),
                merchant_order_id=str(rec["merchant_order_id"]),
                kind=str(rec["kind"]),
                amount=int(rec.get("amount") or 0),
                status=str(rec.get("status") or "succeeded"),
                t=float(rec["t"]),
                refund_id=_opt_str(rec.get("refund_id")),
            )
        )
    elif kind == "notification":
        records.notifications.append(
            Notification(
                notify_id=str(rec["notify_id"]),
                payment_id=_opt_str(rec.get("payment_id")),
                merchant_order_id=str(rec.get("merchant_order_id") or ""),
                txn_id=_opt_str(rec.get("txn_id")),
                attempt=int(rec.get("attempt") or 1),
                t=float(rec["t"]),
                acked=bool(rec.get("acked")),
                status_code=None if rec.get("status_code") is None else int(rec["status_code"]),
                forged=bool(rec.get("forged")),
                dropped=bool(rec.get("dropped")),
                trace_id=_opt_str(rec.get("trace_id")),
            )
        )


def _order(records: Records, rec: Mapping[str, Any]) -> None:
    kind = rec.get("type")
    if kind == "order":
        records.orders.append(
            Order(
                order_id=str(rec["order_id"]),
                idempotency_key=_opt_str(rec.get("idempotency_key")),
                sku=_opt_str(rec.get("sku")),
                qty=int(rec.get("qty") or 0),
                amount=int(rec.get("amount") or 0),
                status=str(rec["status"]),
                payment_id=_opt_str(rec.get("payment_id")),
                txn_id=_opt_str(rec.get("txn_id")),
                created_at=float(rec.get("created_at") or 0.0),
                t_paid=_opt_float(rec.get("t_paid")),
                t_final=_opt_float(rec.get("t_final")),
                trace_id=_opt_str(rec.get("trace_id")),
                flags=[str(flag) for flag in rec.get("flags") or []],
            )
        )
    elif kind == "transition":
        records.transitions.append(
            Transition(
                order_id=str(rec["order_id"]),
                from_state=_opt_str(rec.get("from")),
                to_state=str(rec["to"]),
                t=float(rec["t"]),
                cause=_opt_str(rec.get("cause")),
            )
        )
    elif kind == "inbox":
        records.inbox.append(
            InboxEntry(
                txn_id=_opt_str(rec.get("txn_id")),
                notify_id=_opt_str(rec.get("notify_id")),
                order_id=str(rec["order_id"]),
                t=float(rec["t"]),
                outcome=_opt_str(rec.get("outcome")),
            )
        )
    elif kind == "receipt":
        records.receipts.append(
            Receipt(
                notify_id=str(rec["notify_id"]),
                txn_id=_opt_str(rec.get("txn_id")),
                order_id=str(rec["order_id"]),
                t=float(rec["t"]),
            )
        )
    elif kind == "outbox":
        records.outbox.append(
            OutboxEntry(
                id=str(rec["id"]),
                order_id=str(rec["order_id"]),
                kind=str(rec["kind"]),
                created_at=float(rec.get("created_at") or 0.0),
                delivered_at=_opt_float(rec.get("delivered_at")),
                attempts=int(rec.get("attempts") or 0),
            )
        )
    elif kind == "refund":
        records.order_refunds.append(
            OrderRefund(
                order_id=str(rec["order_id"]),
                refund_id=str(rec["refund_id"]),
                txn_id=_opt_str(rec.get("txn_id")),
                amount=int(rec.get("amount") or 0),
                t=float(rec["t"]),
            )
        )


def _inventory(records: Records, rec: Mapping[str, Any]) -> None:
    kind = rec.get("type")
    if kind == "stock":
        records.stock.append(
            Stock(sku=str(rec["sku"]), initial=int(rec["initial"]), available=int(rec["available"]))
        )
    elif kind == "reservation":
        records.reservations.append(
            Reservation(
                order_id=str(rec["order_id"]),
                sku=str(rec["sku"]),
                qty=int(rec["qty"]),
                state=str(rec["state"]),
                t_try=float(rec["t_try"]),
                t_end=_opt_float(rec.get("t_end")),
                ttl=float(rec.get("ttl") or 0.0),
                cancel_reason=_opt_str(rec.get("cancel_reason")),
            )
        )
    elif kind == "tombstone":
        records.tombstones.append(Tombstone(order_id=str(rec["order_id"]), t=float(rec["t"])))
    elif kind == "event":
        records.stock_events.append(
            StockEvent(
                order_id=str(rec["order_id"]),
                kind=str(rec["kind"]),
                t=float(rec["t"]),
                stock_delta=int(rec.get("stock_delta") or 0),
            )
        )


def _fault(records: Records, rec: Mapping[str, Any]) -> None:
    records.faults.append(
        FaultEvent(
            event=str(rec["event"]),
            step=int(rec.get("step") or 0),
            fault=str(rec.get("fault") or "?"),
            target=str(rec.get("target") or "?"),
            t=float(rec["t"]),
            ok=bool(rec.get("ok", True)),
            params=dict(rec.get("params") or {}),
            error=_opt_str(rec.get("error")),
        )
    )


# --- run directory -----------------------------------------------------------

REQUIRED = ("history.ndjson", "exports/channel.ndjson", "exports/order.ndjson")
OPTIONAL = ("exports/inventory.ndjson", "faults.ndjson", "run.json", "scenario.yaml")


def load_run(run_dir: Path) -> Records:
    """Read a finished run directory; a missing required file is a `RecordsError` naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecordsError(f"run directory {run_dir} does not exist")
    missing_required = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing_required:
        raise RecordsError(f"run directory {run_dir} is missing {', '.join(missing_required)}")
    records = Records()
    records.missing = [name for name in OPTIONAL if not (run_dir / name).is_file()]
    history = run_dir / "history.ndjson"
    records.ops = ops_from_history(_ndjson(history), source=str(history))
    for name, add in (
        ("exports/channel.ndjson", _channel),
        ("exports/order.ndjson", _order),
        ("exports/inventory.ndjson", _inventory),
        ("faults.ndjson", _fault),
    ):
        path = run_dir / name
        if not path.is_file():
            continue
        for number, rec in enumerate(_ndjson(path), 1):
            try:
                add(records, rec)
            except (KeyError, TypeError, ValueError) as exc:
                raise RecordsError(f"{path}:{number}: bad record ({exc!r}): {rec}") from None
    records.run = _run_info(run_dir)
    return records


def _ndjson(path: Path) -> Iterable[dict[str, Any]]:
    try:
        yield from iter_ndjson(path)
    except RunDirError as exc:
        raise RecordsError(str(exc)) from None


def _run_info(run_dir: Path) -> RunInfo:
    info = RunInfo(scenario=run_dir.name)
    scenario: dict[str, Any] = {}
    scenario_path = run_dir / "scenario.yaml"
    if scenario_path.is_file():
        try:
            loaded = yaml.safe_load(scenario_path.read_text())
        except yaml.YAMLError as exc:
            raise RecordsError(f"{scenario_path} is not valid YAML: {exc}") from None
        scenario = loaded if isinstance(loaded, dict) else {}
    info.scenario = str(scenario.get("name") or info.scenario)
    info.duration = _seconds(scenario.get("duration"))
    info.settle = _seconds(scenario.get("settle"))
    for section in ("services", "settings"):  # the scenario's service setting overrides
        overrides = scenario.get(section)
        if isinstance(overrides, dict) and overrides.get("sweep_every_s") is not None:
            info.sweep_every_s = _seconds(overrides["sweep_every_s"]) or info.sweep_every_s
    run_path = run_dir / "run.json"
    if run_path.is_file():
        try:
            run = read_json(run_path)
        except RunDirError as exc:
            raise RecordsError(str(exc)) from None
        if not isinstance(run, dict):
            raise RecordsError(f"{run_path} must hold a JSON object")
        info.scenario = str(run.get("scenario") or info.scenario)
        info.started = _wall(run.get("started"))
        info.load_started = _wall(run.get("load_started"))
        info.load_ended = _wall(run.get("load_ended"))
        info.settle_ended = _wall(run.get("settle_ended"))
        info.bugs = [str(bug) for bug in run.get("bugs") or []]
        info.slo = _opt_str(run.get("slo"))
        if run.get("sweep_every_s") is not None:
            info.sweep_every_s = float(run["sweep_every_s"])
    return info


def _wall(value: Any) -> float | None:
    """A run.json time: unix seconds, or an ISO 8601 string."""
    if value is None or isinstance(value, int | float):
        return _opt_float(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _seconds(value: Any) -> float | None:
    """A scenario duration: a number of seconds or a string like `60s`, `2m`, `500ms`."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * factor
            except ValueError:
                return None
    try:
        return float(text)
    except ValueError:
        return None
