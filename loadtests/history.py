"""The Jepsen-style history: every logical operation is an `invoke` then exactly one `ok`
(it happened), `fail` (it certainly did not) or `info` (unknown).

`HistoryRecorder` lives next to the simulated users (a worker, or the single local process) and
produces records; `HistoryMerger` lives in the master and writes them, deduplicated, once.
Records travel between the two in batches: `{"node", "seq", "records", "final", "produced"}`.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from rundir import iter_ndjson

LOAD_STOPPED = "interrupted: load stopped"  # the error of an operation open when the load stopped

# late_pay: a pay issued after the order was seen CLOSED (a refund is the right outcome)
# declined_pay: a pay with a card the channel declines (a refusal is the right outcome)
OPERATIONS = ("place_order", "pay", "poll", "forge", "browse", "late_pay", "declined_pay")
COMPLETIONS = ("ok", "fail", "info")
Record = dict[str, Any]
Completion = Literal["ok", "fail", "info"]


class HistoryError(RuntimeError):
    """An operation was completed twice or recorded with an unknown name."""


def new_traceparent() -> tuple[str, str]:
    """A fresh W3C traceparent and its trace id (random, not seeded: ids must not repeat)."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


class Operation:
    """One logical operation in flight; use as a context manager so it always completes."""

    def __init__(self, recorder: HistoryRecorder, invoke: Record) -> None:
        self._recorder = recorder
        self._invoke = invoke
        self.traceparent = invoke.pop("_traceparent")
        self.order_id: str | None = invoke["order_id"]
        self.done: Completion | None = None

    @property
    def op_id(self) -> str:
        return str(self._invoke["op_id"])

    @property
    def trace_id(self) -> str:
        return str(self._invoke["trace_id"])

    def ok(self, value: Any = None) -> None:
        self._complete("ok", value, None)

    def fail(self, error: str, value: Any = None) -> None:
        self._complete("fail", value, error)

    def info(self, error: str, value: Any = None) -> None:
        self._complete("info", value, error)

    def _complete(self, kind: Completion, value: Any, error: str | None) -> None:
        if self.done is not None:
            raise HistoryError(f"operation {self.op_id} already completed as {self.done}")
        self.done = kind
        self._recorder._complete(self, kind, value, error)

    def __enter__(self) -> Operation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Whatever cut the operation short (load stopped, a bug), its outcome is unknown.
        if self.done is not None:
            return
        if exc_type is None:
            self.info("not completed")
        elif issubclass(exc_type, Exception):
            self.info(f"interrupted: {exc_type.__name__}: {exc}")
        else:
            self.info(LOAD_STOPPED)


@dataclass
class HistoryRecorder:
    """Produces history records for one process (`node`); `drain()` hands them over in order."""

    node: str
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    nonce: str = field(default_factory=lambda: secrets.token_hex(3))
    produced: int = 0
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _pending: list[Record] = field(default_factory=list)
    _open: dict[str, Operation] = field(default_factory=dict)

    def begin(
        self,
        f: str,
        *,
        process: str,
        key: str | None = None,
        order_id: str | None = None,
        value: Any = None,
    ) -> Operation:
        if f not in OPERATIONS:
            raise HistoryError(f"unknown operation {f!r}; known: {', '.join(OPERATIONS)}")
        traceparent, trace_id = new_traceparent()
        invoke: Record = {
            "type": "invoke",
            "f": f,
            "op_id": f"{self.node}.{self.nonce}.{next(self._counter)}",
            "process": process,
            "key": key,
            "order_id": order_id,
            "time": self.clock(),
            "wall": self.wall(),
            "trace_id": trace_id,
            "value": value,
            "error": None,
            "_traceparent": traceparent,
        }
        op = Operation(self, invoke)
        self._emit(invoke)
        self._open[op.op_id] = op
        return op

    def _complete(self, op: Operation, kind: Completion, value: Any, error: str | None) -> None:
        self._open.pop(op.op_id, None)
        invoke = op._invoke
        self._emit(
            {
                **invoke,
                "type": kind,
                "order_id": op.order_id,
                "time": self.clock(),
                "wall": self.wall(),
                "value": value,
                "error": error,
            }
        )

    def _emit(self, record: Record) -> None:
        self._pending.append(record)
        self.produced += 1

    def interrupt_open(self, reason: str = LOAD_STOPPED) -> int:
        """Complete every operation still in flight as `info`; returns how many there were."""
        ops = list(self._open.values())
        for op in ops:
            op.info(reason)
        return len(ops)

    def drain(self) -> list[Record]:
        records, self._pending = self._pending, []
        return records

    @property
    def open_count(self) -> int:
        return len(self._open)


@dataclass
class NodeReport:
    produced: int = 0
    written: int = 0
    duplicates: int = 0
    batches: int = 0
    final: bool = False


@dataclass
class HistoryMerger:
    """Writes records from any number of nodes exactly once (dedupe on op_id + phase).

    `write` receives each new record; `on_complete(record, latency_s)` each new completion.
    """

    write: Callable[[Record], None] = lambda record: None
    on_complete: Callable[[Record, float | None], None] = lambda record, latency: None
    nodes: dict[str, NodeReport] = field(default_factory=dict)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    _seen: set[tuple[str, str]] = field(default_factory=set)
    _batches: set[tuple[str, int]] = field(default_factory=set)
    _invoked_at: dict[str, float] = field(default_factory=dict)

    def start_node(self, node: str) -> None:
        """A node began a (new) test run: its history is incomplete until its final batch."""
        self.nodes.setdefault(node, NodeReport()).final = False

    def add_batch(self, batch: Mapping[str, Any]) -> int:
        """Merge one batch; returns how many records were new. A batch seen before is ignored."""
        node = str(batch["node"])
        report = self.nodes.setdefault(node, NodeReport())
        seq = int(batch["seq"])
        if (node, seq) in self._batches:
            return 0
        self._batches.add((node, seq))
        report.batches += 1
        written = sum(self._add(report, record) for record in batch.get("records", ()))
        report.produced = max(report.produced, int(batch.get("produced", 0)))
        if batch.get("start"):
            report.final = False
        if batch.get("final"):
            report.final = True
        return written

    def _add(self, report: NodeReport, record: Record) -> bool:
        phase = "invoke" if record["type"] == "invoke" else "done"
        ident = (str(record["op_id"]), phase)
        if ident in self._seen:
            report.duplicates += 1
            return False
        self._seen.add(ident)
        report.written += 1
        self.counts[(record["f"], record["type"])] += 1
        self.write(record)
        if phase == "invoke":
            self._invoked_at[ident[0]] = float(record["time"])
        else:
            started = self._invoked_at.pop(ident[0], None)
            latency = None if started is None else max(0.0, float(record["time"]) - started)
            self.on_complete(record, latency)
        return True

    def complete(self) -> bool:
        """True when every node that started has sent its final batch and nothing is missing."""
        return all(r.final and r.written == r.produced for r in self.nodes.values())

    def ops(self) -> dict[str, dict[str, int]]:
        """Completions per operation: {"pay": {"ok": 3, "fail": 0, "info": 1}, ...}."""
        out: dict[str, dict[str, int]] = {}
        for (f, kind), n in self.counts.items():
            if kind in COMPLETIONS:
                out.setdefault(f, dict.fromkeys(COMPLETIONS, 0))[kind] += n
        return out

    def report(self) -> dict[str, dict[str, Any]]:
        return {node: vars(r).copy() for node, r in sorted(self.nodes.items())}


def read_history(path: Path | str) -> list[Record]:
    """The records of a `history.ndjson` file, in file order."""
    return list(iter_ndjson(path))


def summarize(history: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per operation and record type, plus pairing problems (see `check_pairing`)."""
    records = list(history)
    per_f: dict[str, dict[str, int]] = {}
    for record in records:
        counts = per_f.setdefault(str(record["f"]), {t: 0 for t in ("invoke", *COMPLETIONS)})
        counts[str(record["type"])] = counts.get(str(record["type"]), 0) + 1
    return {"records": len(records), "ops": per_f, "problems": check_pairing(records)}


def check_pairing(history: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every invoke has exactly one completion after it, and every completion an invoke."""
    problems: list[str] = []
    state: dict[str, str] = {}
    for record in history:
        op_id, kind = str(record["op_id"]), str(record["type"])
        before = state.get(op_id)
        if kind == "invoke":
            if before is not None:
                problems.append(f"{op_id}: invoked twice")
            state[op_id] = "invoke"
        elif kind in COMPLETIONS:
            if before is None:
                problems.append(f"{op_id}: {kind} without an invoke")
            elif before != "invoke":
                problems.append(f"{op_id}: completed twice ({before}, {kind})")
            state[op_id] = kind
        else:
            problems.append(f"{op_id}: unknown record type {kind!r}")
    problems.extend(
        f"{op_id}: invoke without completion" for op_id, s in state.items() if s == "invoke"
    )
    return problems
