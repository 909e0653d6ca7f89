"""The inventory's SQLite schema and every query it runs.

Callers group calls in `transaction()`; no call here awaits, so one connection on
the event-loop thread gives serialisable transactions (see services.common.storage).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from services.common import storage

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    sku       TEXT PRIMARY KEY,
    initial   INTEGER NOT NULL,
    available INTEGER NOT NULL  -- no CHECK >= 0: the planted oversell bug must be observable
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id      TEXT PRIMARY KEY,
    sku           TEXT NOT NULL,
    qty           INTEGER NOT NULL,
    state         TEXT NOT NULL,
    t_try         REAL NOT NULL,
    t_end         REAL,
    ttl           REAL NOT NULL,
    cancel_reason TEXT
);
CREATE INDEX IF NOT EXISTS reservations_by_state ON reservations (state, t_try);
CREATE INDEX IF NOT EXISTS reservations_by_sku ON reservations (sku);
CREATE TABLE IF NOT EXISTS tombstones (
    order_id TEXT PRIMARY KEY,
    t        REAL NOT NULL
);
-- no AUTOINCREMENT: no event is ever deleted, so max(id)+1 is as monotonic and a commit
-- writes no sqlite_sequence page
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    order_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    t           REAL NOT NULL,
    stock_delta INTEGER NOT NULL
);
"""


class State(StrEnum):
    TRY = "TRY"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class EventKind(StrEnum):
    TRY = "try"
    CONFIRM = "confirm"
    CANCEL = "cancel"
    TRY_REFUSED = "try_refused"
    EMPTY_ROLLBACK = "empty_rollback"


@dataclass(frozen=True)
class Stock:
    sku: str
    initial: int
    available: int


@dataclass(frozen=True)
class Reservation:
    order_id: str
    sku: str
    qty: int
    state: State
    t_try: float
    t_end: float | None
    ttl: float
    cancel_reason: str | None


def _reservation(row: sqlite3.Row) -> Reservation:
    return Reservation(
        order_id=row["order_id"],
        sku=row["sku"],
        qty=row["qty"],
        state=State(row["state"]),
        t_try=row["t_try"],
        t_end=row["t_end"],
        ttl=row["ttl"],
        cancel_reason=row["cancel_reason"],
    )


def _stock(row: sqlite3.Row) -> Stock:
    return Stock(sku=row["sku"], initial=row["initial"], available=row["available"])


class InventoryStore:
    """Stock, reservations, tombstones and the event log in one SQLite database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)
        # reservations per state: counted once here, then kept by every commit
        query = "SELECT state, COUNT(*) AS n FROM reservations GROUP BY state"
        self._by_state: Counter[State] = Counter(
            {State(row["state"]): row["n"] for row in conn.execute(query)}
        )
        self._uncommitted: Counter[State] = Counter()

    @classmethod
    def open(cls, path: str) -> InventoryStore:
        return cls(storage.connect(path))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; the in-memory counts follow it only once it commits."""
        self._uncommitted.clear()
        with storage.transaction(self.conn) as conn:
            yield conn
        self._by_state.update(self._uncommitted)
        self._uncommitted.clear()

    def _count(self, state: State, delta: int) -> None:
        target = self._uncommitted if self.conn.in_transaction else self._by_state
        target[state] += delta

    def close(self) -> None:
        self.conn.close()

    # stock

    def stock(self, sku: str) -> Stock | None:
        row = self.conn.execute("SELECT * FROM stock WHERE sku = ?", (sku,)).fetchone()
        return _stock(row) if row else None

    def all_stock(self) -> list[Stock]:
        return [_stock(r) for r in self.conn.execute("SELECT * FROM stock ORDER BY sku")]

    def take_stock(self, sku: str, qty: int) -> bool:
        """Atomic conditional decrement: False (and no change) when fewer than qty are left."""
        cursor = self.conn.execute(
            "UPDATE stock SET available = available - ? WHERE sku = ? AND available >= ?",
            (qty, sku, qty),
        )
        return cursor.rowcount == 1

    def return_stock(self, sku: str, qty: int) -> None:
        self.conn.execute("UPDATE stock SET available = available + ? WHERE sku = ?", (qty, sku))

    def overwrite_available(self, sku: str, available: int) -> None:
        """Blind write of a previously read value; only the planted bug uses it."""
        self.conn.execute("UPDATE stock SET available = ? WHERE sku = ?", (available, sku))

    def put_stock(self, sku: str, qty: int) -> None:
        self.conn.execute(
            "INSERT INTO stock (sku, initial, available) VALUES (?, ?, ?) "
            "ON CONFLICT (sku) DO UPDATE SET initial = excluded.initial, "
            "available = excluded.available",
            (sku, qty, qty),
        )

    def add_stock_if_missing(self, sku: str, qty: int) -> bool:
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO stock (sku, initial, available) VALUES (?, ?, ?)",
            (sku, qty, qty),
        )
        return cursor.rowcount == 1

    def has_reservations(self, sku: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM reservations WHERE sku = ? LIMIT 1", (sku,))
        return row.fetchone() is not None

    # reservations

    def reservation(self, order_id: str) -> Reservation | None:
        row = self.conn.execute(
            "SELECT * FROM reservations WHERE order_id = ?", (order_id,)
        ).fetchone()
        return _reservation(row) if row else None

    def insert_reservation(self, r: Reservation) -> None:
        self.conn.execute(
            "INSERT INTO reservations "
            "(order_id, sku, qty, state, t_try, t_end, ttl, cancel_reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (r.order_id, r.sku, r.qty, r.state.value, r.t_try, r.t_end, r.ttl, r.cancel_reason),
        )
        self._count(r.state, +1)

    def finish_try(
        self, order_id: str, state: State, t_end: float, cancel_reason: str | None = None
    ) -> bool:
        """Move a TRY reservation to a final state; False if it was not in TRY."""
        cursor = self.conn.execute(
            "UPDATE reservations SET state = ?, t_end = ?, cancel_reason = ? "
            "WHERE order_id = ? AND state = ?",
            (state.value, t_end, cancel_reason, order_id, State.TRY.value),
        )
        if cursor.rowcount != 1:
            return False
        self._count(State.TRY, -1)
        self._count(state, +1)
        return True

    def expired_tries(self, now: float, limit: int) -> list[Reservation]:
        cursor = self.conn.execute(
            "SELECT * FROM reservations WHERE state = ? AND t_try + ttl < ? ORDER BY t_try LIMIT ?",
            (State.TRY.value, now, limit),
        )
        return [_reservation(r) for r in cursor]

    def count_by_state(self) -> dict[State, int]:
        """Reservations per state (kept in memory: no query)."""
        return {state: self._by_state[state] for state in State}

    # tombstones and events

    def tombstone(self, order_id: str) -> float | None:
        row = self.conn.execute("SELECT t FROM tombstones WHERE order_id = ?", (order_id,))
        found = row.fetchone()
        return float(found["t"]) if found else None

    def add_tombstone(self, order_id: str, t: float) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO tombstones (order_id, t) VALUES (?, ?)", (order_id, t)
        )

    def add_event(self, order_id: str, kind: EventKind, t: float, stock_delta: int) -> None:
        self.conn.execute(
            "INSERT INTO events (order_id, kind, t, stock_delta) VALUES (?, ?, ?, ?)",
            (order_id, kind.value, t, stock_delta),
        )

    # audit

    def export_records(self) -> Iterator[dict[str, Any]]:
        """Every row as the audit export records of docs/contracts.md."""
        for s in self.all_stock():
            yield {"type": "stock", **asdict(s)}
        for row in self.conn.execute("SELECT * FROM reservations ORDER BY t_try, order_id"):
            r = _reservation(row)
            yield {"type": "reservation", **asdict(r), "state": r.state.value}
        for row in self.conn.execute("SELECT order_id, t FROM tombstones ORDER BY t"):
            yield {"type": "tombstone", "order_id": row["order_id"], "t": row["t"]}
        for row in self.conn.execute("SELECT * FROM events ORDER BY id"):
            yield {
                "type": "event",
                "id": row["id"],
                "order_id": row["order_id"],
                "kind": row["kind"],
                "t": row["t"],
                "stock_delta": row["stock_delta"],
            }
