"""Load a run directory into plain typed records: the history H, the ledger L and the databases D.

No pandas, and no Python call per field: the audit must read a million orders in seconds.  Each
NDJSON file is parsed a few hundred lines per `json.loads`; each record type's fields are then
read column by column (one type scan when, as usual, the values already have the right type) and
its records built with one `map`.  Repeated strings (order ids, states, trace ids) are kept once.
Any bad line is then found record by record, so the error still names it.  A history `invoke`
is paired with its completion by `op_id` into one `Op`; an invoke without a completion is an
`info` op (outcome unknown), as in Jepsen.
"""

from __future__ import annotations

import gc
import json
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from faults.durations import parse_duration
from rundir import RunDirError, read_json

OK, FAIL, INFO = "ok", "fail", "info"
DEFAULT_SWEEP_EVERY_S = 2.0
DEFAULT_QUERY_AFTER_S = 3.0  # the services' default (services/common/settings.py)


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
    reason: str | None = None  # paid_after_close | duplicate_charge


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
    query_after_s: float = DEFAULT_QUERY_AFTER_S
    max_poll: float | None = None  # how long a shopper watches for PAID (the scenario's load)


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
    # "full": the order service's export; "blackbox": its orders from final_read.ndjson
    mode: str = "full"
    undecided_orders: list[str] = field(default_factory=list)  # black-box: final read unclear

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

_COMPLETIONS = frozenset({OK, FAIL, INFO})


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


def _nullable_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _str_list(value: Any) -> list[str]:
    return [str(item) for item in value]


def _no_empty_string(column: list[Any]) -> bool:
    return "" not in column


def _no_nan(column: list[Any]) -> bool:
    return not any(map(math.isnan, filter(None, column)))  # filter(None) drops None and 0.0


# --- how each record field is read -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    """A field type: `one` converts (or rejects) one value; a column of only `fast` types that
    passes `check` is already converted, so a million clean values cost one type scan."""

    one: Callable[[Any], Any]
    fast: frozenset[type]
    check: Callable[[list[Any]], bool] | None = None
    shared: bool = False  # a string that recurs across records: keep one copy (memory, speed)


_NONE = type(None)
_STR = _Kind(str, frozenset({str}), shared=True)
_OPT_STR = _Kind(_opt_str, frozenset({str, _NONE}), _no_empty_string, shared=True)  # "" → None
_TEXT = _Kind(_nullable_str, frozenset({str, _NONE}), shared=True)  # "" kept
_UNIQUE_STR = _Kind(str, frozenset({str}))  # op ids, row ids: nothing to share
_FLOAT = _Kind(float, frozenset({float}))
_OPT_FLOAT = _Kind(_opt_float, frozenset({float, _NONE}), _no_nan)
_INT = _Kind(int, frozenset({int}))
_OPT_INT = _Kind(_opt_int, frozenset({int, _NONE}))
_BOOL = _Kind(bool, frozenset({bool}))
_STR_LIST = _Kind(_str_list, frozenset())
_PARAMS = _Kind(dict, frozenset())

_REQUIRED = object()


@dataclass(frozen=True, slots=True)
class _Field:
    """One constructor argument: `rec[name]` if required, else `rec.get(name) or default`
    (or `rec.get(name, absent)` when there is no default)."""

    name: str
    kind: _Kind
    default: Any = _REQUIRED
    absent: Any = None
    use_or: bool = False

    def raw_column(self, rows: list[dict[str, Any]]) -> list[Any]:
        name = self.name
        if self.default is _REQUIRED:
            return [row[name] for row in rows]
        if self.use_or:
            default = self.default
            return [row.get(name) or default for row in rows]
        absent = self.absent
        return [row.get(name, absent) for row in rows]

    def value(self, row: Mapping[str, Any]) -> Any:
        """The record-by-record reading, used to name a bad line."""
        if self.default is _REQUIRED:
            return self.kind.one(row[self.name])
        if self.use_or:
            return self.kind.one(row.get(self.name) or self.default)
        return self.kind.one(row.get(self.name, self.absent))


def _req(name: str, kind: _Kind) -> _Field:
    return _Field(name, kind)


def _opt(name: str, kind: _Kind, absent: Any = None) -> _Field:
    return _Field(name, kind, default=None, absent=absent)


def _or(name: str, kind: _Kind, default: Any) -> _Field:
    return _Field(name, kind, default=default, use_or=True)


_Interner = Callable[[Any, Any], Any]


def _convert(column: list[Any], kind: _Kind, intern: _Interner) -> list[Any]:
    types = set(map(type, column))
    if not (types <= kind.fast and (kind.check is None or kind.check(column))):
        column = list(map(kind.one, column))
    if kind.shared:
        column = list(map(intern, column, column))
    return column


@dataclass(frozen=True, slots=True)
class _Schema:
    """One record type of an export: the class, the `Records` list it fills, its fields in
    constructor order."""

    cls: Callable[..., Any]
    into: str
    fields: tuple[_Field, ...]

    def build(self, rows: list[dict[str, Any]], intern: _Interner) -> list[Any]:
        columns = [_convert(f.raw_column(rows), f.kind, intern) for f in self.fields]
        return list(map(self.cls, *columns))

    def first_error(self, rows: Iterable[dict[str, Any]], numbers: Iterable[int]) -> tuple[
            int, dict[str, Any], Exception] | None:
        for row, number in zip(rows, numbers, strict=True):
            try:
                for f in self.fields:
                    f.value(row)
            except (KeyError, TypeError, ValueError) as exc:
                return number, row, exc
        return None


_CHANNEL = {
    "payment": _Schema(Payment, "payments", (
        _req("payment_id", _STR), _req("merchant_order_id", _STR), _req("amount", _INT),
        _or("created_at", _FLOAT, 0.0), _opt("trace_id", _OPT_STR))),
    "ledger": _Schema(LedgerEntry, "ledger", (
        _or("seq", _INT, 0), _opt("txn_id", _OPT_STR), _or("payment_id", _STR, ""),
        _req("merchant_order_id", _STR), _req("kind", _STR), _or("amount", _INT, 0),
        _or("status", _STR, "succeeded"), _req("t", _FLOAT), _opt("refund_id", _OPT_STR))),
    "notification": _Schema(Notification, "notifications", (
        _req("notify_id", _STR), _opt("payment_id", _OPT_STR), _or("merchant_order_id", _STR, ""),
        _opt("txn_id", _OPT_STR), _or("attempt", _INT, 1), _req("t", _FLOAT), _opt("acked", _BOOL),
        _opt("status_code", _OPT_INT), _opt("forged", _BOOL), _opt("dropped", _BOOL),
        _opt("trace_id", _OPT_STR))),
}
_ORDER = {
    "order": _Schema(Order, "orders", (
        _req("order_id", _STR), _opt("idempotency_key", _OPT_STR), _opt("sku", _OPT_STR),
        _or("qty", _INT, 0), _or("amount", _INT, 0), _req("status", _STR),
        _opt("payment_id", _OPT_STR), _opt("txn_id", _OPT_STR), _or("created_at", _FLOAT, 0.0),
        _opt("t_paid", _OPT_FLOAT), _opt("t_final", _OPT_FLOAT), _opt("trace_id", _OPT_STR),
        _or("flags", _STR_LIST, ()))),
    "transition": _Schema(Transition, "transitions", (
        _req("order_id", _STR), _opt("from", _OPT_STR), _req("to", _STR), _req("t", _FLOAT),
        _opt("cause", _OPT_STR))),
    "inbox": _Schema(InboxEntry, "inbox", (
        _opt("txn_id", _OPT_STR), _opt("notify_id", _OPT_STR), _req("order_id", _STR),
        _req("t", _FLOAT), _opt("outcome", _OPT_STR))),
    "receipt": _Schema(Receipt, "receipts", (
        _req("notify_id", _STR), _opt("txn_id", _OPT_STR), _req("order_id", _STR),
        _req("t", _FLOAT))),
    "outbox": _Schema(OutboxEntry, "outbox", (
        _req("id", _UNIQUE_STR), _req("order_id", _STR), _req("kind", _STR),
        _or("created_at", _FLOAT, 0.0), _opt("delivered_at", _OPT_FLOAT),
        _or("attempts", _INT, 0))),
    "refund": _Schema(OrderRefund, "order_refunds", (
        _req("order_id", _STR), _req("refund_id", _STR), _opt("txn_id", _OPT_STR),
        _or("amount", _INT, 0), _req("t", _FLOAT), _opt("reason", _OPT_STR))),
}
_INVENTORY = {
    "stock": _Schema(Stock, "stock", (_req("sku", _STR), _req("initial", _INT),
                                      _req("available", _INT))),
    "reservation": _Schema(Reservation, "reservations", (
        _req("order_id", _STR), _req("sku", _STR), _req("qty", _INT), _req("state", _STR),
        _req("t_try", _FLOAT), _opt("t_end", _OPT_FLOAT), _or("ttl", _FLOAT, 0.0),
        _opt("cancel_reason", _OPT_STR))),
    "tombstone": _Schema(Tombstone, "tombstones", (_req("order_id", _STR), _req("t", _FLOAT))),
    "event": _Schema(StockEvent, "stock_events", (
        _req("order_id", _STR), _req("kind", _STR), _req("t", _FLOAT),
        _or("stock_delta", _INT, 0))),
}
_FAULT = _Schema(FaultEvent, "faults", (
    _req("event", _STR), _or("step", _INT, 0), _or("fault", _STR, "?"), _or("target", _STR, "?"),
    _req("t", _FLOAT), _opt("ok", _BOOL, absent=True), _or("params", _PARAMS, ()),
    _opt("error", _OPT_STR)))


# --- reading NDJSON in bulk ----------------------------------------------------

CHUNK_BYTES = 128 << 10  # lines per json.loads call: its records stay in the CPU cache


def _chunks(path: Path) -> Iterator[tuple[list[dict[str, Any]], Sequence[int]]]:
    """The records of an NDJSON file, chunk by chunk, each with its records' line numbers.

    A chunk is parsed as one JSON array, several times faster than a `loads` per line; only if
    that fails or yields a different count are its lines parsed one by one, to name the bad one.
    """
    first = 1
    with path.open(encoding="utf-8") as src:
        while lines := src.readlines(CHUNK_BYTES):
            values: Any = None
            with suppress(ValueError):
                values = json.loads("[" + ",".join(lines) + "]")
            numbers: Sequence[int]
            if values is not None and len(values) == len(lines):
                numbers = range(first, first + len(lines))
            else:
                values, numbers = _parse_lines(path, lines, first)
            if set(map(type, values)) - {dict}:
                number, value = next((n, v) for n, v in zip(numbers, values, strict=True)
                                     if not isinstance(v, dict))
                raise RecordsError(f"{path}:{number}: not a JSON object: {value!r:.200}")
            yield values, numbers
            first += len(lines)


def _parse_lines(path: Path, lines: list[str], first: int) -> tuple[list[Any], list[int]]:
    values: list[Any] = []
    numbers: list[int] = []
    for number, line in enumerate(lines, first):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except ValueError as exc:
            if line is lines[-1] and not line.endswith("\n"):
                break  # a torn last line: the writer was killed mid-line
            raise RecordsError(f"{path}:{number}: not valid JSON: {exc}") from None
        numbers.append(number)
    return values, numbers


def _load_history(path: Path, intern: _Interner) -> list[Op]:
    """The one history reader: pair invokes with completions by op_id, building ops per chunk.

    A completion without its invoke stands alone; an invoke never completed is an `info` op,
    after the others.  Blank lines and a torn last line are skipped (`_chunks`).
    """
    open_ops: dict[str, tuple[dict[str, Any], int]] = {}
    ops: list[Op] = []
    pop = open_ops.pop
    for values, numbers in _chunks(path):
        invokes: list[dict[str, Any]] = []
        dones: list[dict[str, Any]] = []
        done_numbers: list[int] = []
        for rec, number in zip(values, numbers, strict=True):
            op_id = rec.get("op_id")
            if op_id is None:
                raise RecordsError(f"{path}:{number}: history record has no op_id")
            kind = rec.get("type")
            if kind == "invoke":
                open_ops[str(op_id)] = (rec, number)
                continue
            if kind not in _COMPLETIONS:
                raise RecordsError(
                    f"{path}:{number}: history type {kind!r} is not one of invoke, ok, fail, info"
                )
            pending = pop(str(op_id), None)
            invokes.append(rec if pending is None else pending[0])
            dones.append(rec)
            done_numbers.append(number)
        ops += _ops(path, invokes, dones, done_numbers, intern)
    unfinished = list(open_ops.values())
    ops += _ops(path, [rec for rec, _ in unfinished], None, [n for _, n in unfinished], intern)
    return ops


def _ops(
    path: Path,
    invokes: list[dict[str, Any]],
    dones: list[dict[str, Any]] | None,
    numbers: list[int],
    intern: _Interner,
) -> list[Op]:
    """`_op` over whole columns: the same values, without a Python call per field; on a bad
    record `_op` is run record by record to name its line."""
    if not invokes:
        return []
    try:
        return _op_columns(invokes, dones, intern)
    except (KeyError, TypeError, ValueError):
        pass
    for i, (invoke, number) in enumerate(zip(invokes, numbers, strict=True)):
        done = None if dones is None else dones[i]
        _op(invoke, done, INFO if done is None else str(done["type"]), str(path), number)
    raise RecordsError(f"{path}: unreadable history records")  # unreachable: _op raised


def _op_columns(
    invokes: list[dict[str, Any]], dones: list[dict[str, Any]] | None, intern: _Interner
) -> list[Op]:
    n = len(invokes)
    f = _convert([i["f"] for i in invokes], _STR, intern)
    op_id = _convert([i["op_id"] for i in invokes], _UNIQUE_STR, intern)
    process = _convert([i.get("process") or "" for i in invokes], _STR, intern)
    start = _convert([i["wall"] for i in invokes], _FLOAT, intern)
    lasts = invokes if dones is None else dones
    key, order_id, trace_id = (
        _convert([d.get(name) or i.get(name) for i, d in zip(invokes, lasts, strict=True)],
                 _OPT_STR, intern)
        for name in ("key", "order_id", "trace_id")
    )
    nothing: list[Any] = [None] * n
    if dones is None:
        return list(map(Op, f, op_id, process, key, order_id, start, nothing, nothing,
                        [INFO] * n, trace_id, nothing, nothing))
    t_done = _convert([d["time"] for d in dones], _FLOAT, intern)
    t_invoke = _convert([i["time"] for i in invokes], _FLOAT, intern)
    latency = [dt if dt > 0.0 else 0.0 for dt in map(operator.sub, t_done, t_invoke)]
    end = list(map(operator.add, start, latency))
    kinds = [d["type"] for d in dones]
    outcome = list(map(intern, kinds, kinds))
    values = [d.get("value") for d in dones]
    status = _convert([v.get("status") if isinstance(v, Mapping) else None for v in values],
                      _TEXT, intern)
    error = _convert([d.get("error") for d in dones], _TEXT, intern)
    return list(map(Op, f, op_id, process, key, order_id, start, end, latency, outcome,
                    trace_id, status, error))


def _load_export(
    records: Records, path: Path, schemas: Mapping[str, _Schema], intern: _Interner
) -> None:
    """Records of the known `type`s go to their lists, in file order; other types are skipped."""
    for values, numbers in _chunks(path):
        kinds = [rec.get("type") for rec in values]
        for kind, schema in schemas.items():
            count = kinds.count(kind)
            if count == 0:
                continue
            rows = values if count == len(values) else [
                rec for rec, k in zip(values, kinds, strict=True) if k == kind]
            lines = numbers if rows is values else [
                n for n, k in zip(numbers, kinds, strict=True) if k == kind]
            _add(records, path, schema, rows, lines, intern)


def _add(
    records: Records,
    path: Path,
    schema: _Schema,
    rows: list[dict[str, Any]],
    numbers: Sequence[int],
    intern: _Interner,
) -> None:
    try:
        getattr(records, schema.into).extend(schema.build(rows, intern))
        return
    except (KeyError, TypeError, ValueError):
        found = schema.first_error(rows, numbers)
        if found is None:
            raise
    number, rec, exc = found
    raise RecordsError(f"{path}:{number}: bad record ({exc!r}): {rec}") from None


# --- run directory -----------------------------------------------------------

REQUIRED = ("history.ndjson", "exports/channel.ndjson")
ORDER_EXPORT, FINAL_READ = "exports/order.ndjson", "final_read.ndjson"  # one of them is required
OPTIONAL = ("exports/inventory.ndjson", "faults.ndjson", "run.json", "scenario.yaml")
EXPORTS: tuple[tuple[str, Mapping[str, _Schema]], ...] = (
    ("exports/channel.ndjson", _CHANNEL),
    ("exports/order.ndjson", _ORDER),
    ("exports/inventory.ndjson", _INVENTORY),
)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Millions of long-lived, acyclic records make the cyclic GC rescan them over and over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_run(run_dir: Path) -> Records:
    """Read a finished run directory; a missing required file is a `RecordsError` naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RecordsError(f"run directory {run_dir} does not exist")
    missing_required = [name for name in REQUIRED if not (run_dir / name).is_file()]
    blackbox = not (run_dir / ORDER_EXPORT).is_file() and (run_dir / FINAL_READ).is_file()
    if not blackbox and not (run_dir / ORDER_EXPORT).is_file():
        missing_required.append(f"{ORDER_EXPORT} (or {FINAL_READ})")
    if missing_required:
        raise RecordsError(f"run directory {run_dir} is missing {', '.join(missing_required)}")
    records = Records()
    records.missing = [name for name in OPTIONAL if not (run_dir / name).is_file()]
    # One copy of each repeated string (order ids, states, trace ids) for the whole run.
    intern: _Interner = {}.setdefault
    path = run_dir / "history.ndjson"
    try:
        with gc_paused():
            records.ops = _load_history(path, intern)
            for name, schemas in EXPORTS:
                path = run_dir / name
                if path.is_file():
                    _load_export(records, path, schemas, intern)
            path = run_dir / "faults.ndjson"
            if path.is_file():
                for values, numbers in _chunks(path):
                    _add(records, path, _FAULT, values, numbers, intern)
            if blackbox:
                path = run_dir / FINAL_READ
                _load_final_read(records, path)
    except UnicodeDecodeError as exc:
        raise RecordsError(f"{path} is not UTF-8 text: {exc}") from None
    records.run = _run_info(run_dir)
    return records


def _load_final_read(records: Records, path: Path) -> None:
    """Black-box order records: each order the final read found (loadtests/final_read.py);
    a late payment counts as refunded when the ledger refunded it and the order is CLOSED."""
    records.mode = "blackbox"
    for values, numbers in _chunks(path):
        for rec, number in zip(values, numbers, strict=True):
            try:
                outcome, order_id = rec["outcome"], str(rec["order_id"])
                if outcome == "info":
                    records.undecided_orders.append(order_id)
                    continue
                if outcome != "ok":
                    continue  # the target says there is no such order
                records.orders.append(Order(
                    order_id=order_id, idempotency_key=_opt_str(rec.get("key")),
                    sku=_opt_str(rec.get("sku")), qty=int(rec.get("qty") or 0),
                    amount=int(rec.get("amount") or 0), status=str(rec["status"]),
                    payment_id=_opt_str(rec.get("payment_id")), txn_id=None,
                    created_at=float(rec.get("created_at") or 0.0), t_paid=None, t_final=None,
                    trace_id=_opt_str(rec.get("trace_id"))))
            except (KeyError, TypeError, ValueError) as exc:
                raise RecordsError(f"{path}:{number}: bad record ({exc!r}): {rec}") from None
    closed = {o.order_id for o in records.orders if o.status == "CLOSED"}
    for entry in records.ledger:
        if entry.kind == "refund" and entry.status == "succeeded" and (
                entry.merchant_order_id in closed):
            records.order_refunds.append(OrderRefund(
                order_id=entry.merchant_order_id, refund_id=entry.refund_id or str(entry.seq),
                txn_id=entry.txn_id, amount=entry.amount, t=entry.t, reason="paid_after_close"))


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
    load = scenario.get("load")
    if isinstance(load, dict):
        info.max_poll = _seconds(load.get("max_poll"))
    for section in ("services", "settings"):  # the scenario's service setting overrides
        overrides = scenario.get(section)
        if isinstance(overrides, dict) and overrides.get("sweep_every_s") is not None:
            info.sweep_every_s = _seconds(overrides["sweep_every_s"]) or info.sweep_every_s
        if isinstance(overrides, dict) and overrides.get("query_after_s") is not None:
            query_after = _seconds(overrides["query_after_s"])
            info.query_after_s = info.query_after_s if query_after is None else query_after
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
    """A recorded scenario duration in seconds; None when absent or not a duration."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None
