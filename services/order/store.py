"""The order service's SQLite schema and queries.

Writes go through `OrderStore.transaction()`, which yields a `Tx` bound to one
`BEGIN IMMEDIATE … COMMIT`; callers never await inside it.  Reads outside a
transaction see committed data only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from services.common import storage

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id        TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    request_hash    TEXT NOT NULL,
    sku             TEXT NOT NULL,
    qty             INTEGER NOT NULL,
    amount          INTEGER NOT NULL,
    status          TEXT NOT NULL,
    payment_id      TEXT,
    txn_id          TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    t_paid          REAL,
    t_final         REAL,
    traceparent     TEXT,
    flags           TEXT NOT NULL DEFAULT '[]',
    replays         INTEGER NOT NULL DEFAULT 0,
    next_check_at   REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS orders_by_status ON orders(status, created_at);
-- reconciliation reads only orders paid after its watermark
CREATE INDEX IF NOT EXISTS orders_by_paid ON orders(status, t_paid);
-- ids without AUTOINCREMENT (here and below): no row is ever deleted, so max(id)+1 is as
-- monotonic and a commit writes no sqlite_sequence page
CREATE TABLE IF NOT EXISTS transitions (
    id          INTEGER PRIMARY KEY,
    order_id    TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    t           REAL NOT NULL,
    cause       TEXT NOT NULL
);
-- no query looks transitions up by order (the export reads them in id order): one page
-- write less per transition, also in databases created before
DROP INDEX IF EXISTS transitions_by_order;
CREATE TABLE IF NOT EXISTS inbox (
    txn_id    TEXT PRIMARY KEY,
    notify_id TEXT,
    order_id  TEXT NOT NULL,
    t         REAL NOT NULL,
    outcome   TEXT NOT NULL,
    body_hash TEXT
);
CREATE INDEX IF NOT EXISTS inbox_by_notify ON inbox(notify_id);
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY,
    order_id        TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('confirm', 'cancel', 'refund')),
    payload         TEXT NOT NULL DEFAULT '{}',
    created_at      REAL NOT NULL,
    delivered_at    REAL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    failed_reason   TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(next_attempt_at)
    WHERE delivered_at IS NULL AND failed_reason IS NULL;
CREATE TABLE IF NOT EXISTS refunds (
    refund_id  TEXT PRIMARY KEY,
    order_id   TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    t          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notification_rejections (
    id        INTEGER PRIMARY KEY,
    notify_id TEXT,
    order_id  TEXT,
    txn_id    TEXT,
    reason    TEXT NOT NULL,
    t         REAL NOT NULL
);
-- every notification answered with success, written in the transaction that decides the
-- answer: the audit matches it against the channel's acked notifications (lost acks)
CREATE TABLE IF NOT EXISTS receipts (
    notify_id TEXT PRIMARY KEY,
    txn_id    TEXT NOT NULL,
    order_id  TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    t         REAL NOT NULL
);
-- cursor: the last bill seq applied; swept_at: orders paid up to then were checked
-- against the bill (billed or flagged unfunded), so later sweeps skip them
CREATE TABLE IF NOT EXISTS recon_cursor (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    cursor    INTEGER NOT NULL,
    swept_at  REAL
);
CREATE TABLE IF NOT EXISTS bill_charges (
    txn_id            TEXT PRIMARY KEY,
    payment_id        TEXT NOT NULL,
    merchant_order_id TEXT NOT NULL,
    amount            INTEGER NOT NULL,
    t                 REAL NOT NULL
);
"""

# columns `Tx.move` may set besides status (never user input, but keep SQL fixed)
_MOVABLE_FIELDS = frozenset({"payment_id", "txn_id", "t_paid", "t_final"})


@dataclass(frozen=True)
class Order:
    order_id: str
    idempotency_key: str
    request_hash: str
    sku: str
    qty: int
    amount: int
    status: str
    payment_id: str | None
    txn_id: str | None
    created_at: float
    updated_at: float
    t_paid: float | None
    t_final: float | None
    traceparent: str | None
    flags: tuple[str, ...]
    replays: int

    @classmethod
    def from_row(cls, row: Any) -> Order:
        return cls(
            order_id=row["order_id"],
            idempotency_key=row["idempotency_key"],
            request_hash=row["request_hash"],
            sku=row["sku"],
            qty=row["qty"],
            amount=row["amount"],
            status=row["status"],
            payment_id=row["payment_id"],
            txn_id=row["txn_id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            t_paid=row["t_paid"],
            t_final=row["t_final"],
            traceparent=row["traceparent"],
            flags=tuple(json.loads(row["flags"])),
            replays=row["replays"],
        )


@dataclass(frozen=True)
class InboxEntry:
    txn_id: str
    notify_id: str | None
    order_id: str
    outcome: str
    body_hash: str | None


@dataclass(frozen=True)
class OutboxItem:
    id: int
    order_id: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    traceparent: str | None


class Tx:
    """Reads and writes inside one transaction."""

    def __init__(self, conn: Any, t: float) -> None:
        self.conn = conn
        self.t = t
        self.moves: list[tuple[str | None, str]] = []  # (from, to), counted after commit
        self.outbox_written = False

    def order(self, order_id: str) -> Order | None:
        row = self.conn.execute("SELECT * FROM orders WHERE order_id=?", (order_id,)).fetchone()
        return None if row is None else Order.from_row(row)

    def order_by_key(self, key: str) -> Order | None:
        row = self.conn.execute("SELECT * FROM orders WHERE idempotency_key=?", (key,)).fetchone()
        return None if row is None else Order.from_row(row)

    def insert_order(
        self,
        *,
        order_id: str,
        key: str,
        request_hash: str,
        sku: str,
        qty: int,
        amount: int,
        traceparent: str | None,
    ) -> Order:
        self.conn.execute(
            "INSERT INTO orders (order_id, idempotency_key, request_hash, sku, qty, amount,"
            " status, created_at, updated_at, traceparent) VALUES (?,?,?,?,?,?,'CREATED',?,?,?)",
            (order_id, key, request_hash, sku, qty, amount, self.t, self.t, traceparent),
        )
        self._transition(order_id, None, "CREATED", "place")
        # the row just written, as the columns' defaults complete it (no read back)
        return Order(
            order_id=order_id,
            idempotency_key=key,
            request_hash=request_hash,
            sku=sku,
            qty=qty,
            amount=amount,
            status="CREATED",
            payment_id=None,
            txn_id=None,
            created_at=self.t,
            updated_at=self.t,
            t_paid=None,
            t_final=None,
            traceparent=traceparent,
            flags=(),
            replays=0,
        )

    def move(
        self,
        order_id: str,
        to: str,
        *,
        cause: str,
        only_from: Sequence[str] | None,
        **fields: Any,
    ) -> bool:
        """Set the status (if in `only_from`, or unconditionally) and record the transition."""
        unknown = set(fields) - _MOVABLE_FIELDS
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} on an order")
        if only_from is not None and len(only_from) == 1:
            before_status: str | None = only_from[0]  # the UPDATE below moves only from it
        else:
            before = self.conn.execute(
                "SELECT status FROM orders WHERE order_id=?", (order_id,)
            ).fetchone()
            if before is None:
                return False
            before_status = before["status"]
        sets = ", ".join(["status=?", "updated_at=?", *(f"{name}=?" for name in fields)])
        params: list[Any] = [to, self.t, *fields.values(), order_id]
        where = "order_id=?"
        if only_from is not None:
            where += f" AND status IN ({','.join('?' * len(only_from))})"
            params.extend(only_from)
        cursor = self.conn.execute(f"UPDATE orders SET {sets} WHERE {where}", params)
        if cursor.rowcount == 0:
            return False
        self._transition(order_id, before_status, to, cause)
        return True

    def _transition(self, order_id: str, from_status: str | None, to: str, cause: str) -> None:
        self.conn.execute(
            "INSERT INTO transitions (order_id, from_status, to_status, t, cause)"
            " VALUES (?,?,?,?,?)",
            (order_id, from_status, to, self.t, cause),
        )
        self.moves.append((from_status, to))

    def set_payment(self, order_id: str, payment_id: str) -> None:
        self.conn.execute(
            "UPDATE orders SET payment_id=?, updated_at=? WHERE order_id=?",
            (payment_id, self.t, order_id),
        )

    def count_replay(self, order_id: str) -> int:
        self.conn.execute("UPDATE orders SET replays = replays + 1 WHERE order_id=?", (order_id,))
        row = self.conn.execute(
            "SELECT replays FROM orders WHERE order_id=?", (order_id,)
        ).fetchone()
        return int(row["replays"])

    def add_flag(self, order_id: str, flag: str) -> bool:
        order = self.order(order_id)
        if order is None or flag in order.flags:
            return False
        self.conn.execute(
            "UPDATE orders SET flags=?, updated_at=? WHERE order_id=?",
            (json.dumps([*order.flags, flag]), self.t, order_id),
        )
        return True

    def postpone_check(self, order_id: str, until: float) -> None:
        self.conn.execute("UPDATE orders SET next_check_at=? WHERE order_id=?", (until, order_id))

    def inbox(self, txn_id: str) -> InboxEntry | None:
        row = self.conn.execute("SELECT * FROM inbox WHERE txn_id=?", (txn_id,)).fetchone()
        return None if row is None else _inbox_entry(row)

    def inbox_by_notify(self, notify_id: str) -> InboxEntry | None:
        row = self.conn.execute(
            "SELECT * FROM inbox WHERE notify_id=? LIMIT 1", (notify_id,)
        ).fetchone()
        return None if row is None else _inbox_entry(row)

    def add_inbox(
        self,
        *,
        txn_id: str,
        notify_id: str | None,
        order_id: str,
        outcome: str,
        body_hash: str | None,
    ) -> None:
        # OR IGNORE only matters when dedupe is switched off (planted bug notify-not-idempotent)
        self.conn.execute(
            "INSERT OR IGNORE INTO inbox (txn_id, notify_id, order_id, t, outcome, body_hash)"
            " VALUES (?,?,?,?,?,?)",
            (txn_id, notify_id, order_id, self.t, outcome, body_hash),
        )

    def add_receipt(self, *, notify_id: str, txn_id: str, order_id: str, outcome: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO receipts (notify_id, txn_id, order_id, outcome, t)"
            " VALUES (?,?,?,?,?)",
            (notify_id, txn_id, order_id, outcome, self.t),
        )

    def add_outbox(self, order_id: str, kind: str, payload: dict[str, Any] | None = None) -> None:
        self.conn.execute(
            "INSERT INTO outbox (order_id, kind, payload, created_at, next_attempt_at)"
            " VALUES (?,?,?,?,?)",
            (order_id, kind, json.dumps(payload or {}), self.t, self.t),
        )
        self.outbox_written = True

    def add_refund(
        self,
        *,
        refund_id: str,
        order_id: str,
        txn_id: str,
        payment_id: str,
        amount: int,
        reason: str,
    ) -> bool:
        """Record a refund decision once per refund_id; False if it was already recorded."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO refunds (refund_id, order_id, txn_id, payment_id, amount,"
            " reason, t) VALUES (?,?,?,?,?,?,?)",
            (refund_id, order_id, txn_id, payment_id, amount, reason, self.t),
        )
        return cursor.rowcount == 1

    def record_rejection(
        self, *, notify_id: str | None, order_id: str | None, txn_id: str | None, reason: str
    ) -> None:
        self.conn.execute(
            "INSERT INTO notification_rejections (notify_id, order_id, txn_id, reason, t)"
            " VALUES (?,?,?,?,?)",
            (notify_id, order_id, txn_id, reason, self.t),
        )

    def outbox_delivered(self, item_id: int) -> None:
        self.conn.execute(
            "UPDATE outbox SET delivered_at=?, attempts=attempts+1 WHERE id=?", (self.t, item_id)
        )

    def add_bill_charges(self, charges: Sequence[tuple[str, str, str, int, float]]) -> None:
        """(txn_id, payment_id, merchant_order_id, amount, t) rows of one bill page."""
        self.conn.executemany(
            "INSERT OR IGNORE INTO bill_charges (txn_id, payment_id, merchant_order_id, amount, t)"
            " VALUES (?,?,?,?,?)",
            charges,
        )

    def outbox_retry(self, item_id: int, next_attempt_at: float) -> None:
        self.conn.execute(
            "UPDATE outbox SET attempts=attempts+1, next_attempt_at=? WHERE id=?",
            (next_attempt_at, item_id),
        )

    def outbox_failed(self, item_id: int, reason: str) -> None:
        self.conn.execute(
            "UPDATE outbox SET attempts=attempts+1, next_attempt_at=NULL, failed_reason=?"
            " WHERE id=?",
            (reason, item_id),
        )

    def set_final(self, order_id: str) -> None:
        self.conn.execute(
            "UPDATE orders SET t_final=COALESCE(t_final, ?) WHERE order_id=?", (self.t, order_id)
        )

    def save_cursor(self, cursor: int, *, swept_at: float | None = None) -> None:
        self.conn.execute(
            "INSERT INTO recon_cursor (id, cursor, swept_at) VALUES (1, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET cursor=excluded.cursor,"
            " swept_at=COALESCE(excluded.swept_at, recon_cursor.swept_at)",
            (cursor, swept_at),
        )

    def unfunded_checked(self, until: float) -> None:
        """Orders paid up to `until` have been checked against the bill."""
        self.conn.execute("UPDATE recon_cursor SET swept_at=? WHERE id=1", (until,))


def _inbox_entry(row: Any) -> InboxEntry:
    return InboxEntry(
        txn_id=row["txn_id"],
        notify_id=row["notify_id"],
        order_id=row["order_id"],
        outcome=row["outcome"],
        body_hash=row["body_hash"],
    )


def _same(*columns: str) -> dict[str, str]:
    return {column: column for column in columns}


# the export, table by table: (record type, table, order, {record field: column})
_EXPORTS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    (
        "order",
        "orders",
        "created_at",
        _same(
            "order_id",
            "idempotency_key",
            "sku",
            "qty",
            "amount",
            "status",
            "payment_id",
            "txn_id",
            "created_at",
            "t_paid",
            "t_final",
        ),
    ),  # fmt: skip
    (
        "transition",
        "transitions",
        "id",
        {
            "order_id": "order_id",
            "from": "from_status",
            "to": "to_status",
            "t": "t",
            "cause": "cause",
        },
    ),
    ("inbox", "inbox", "t", _same("txn_id", "notify_id", "order_id", "t", "outcome")),
    ("receipt", "receipts", "t", _same("notify_id", "txn_id", "order_id", "outcome", "t")),
    (
        "outbox",
        "outbox",
        "id",
        _same("id", "order_id", "kind", "created_at", "delivered_at", "attempts", "failed_reason"),
    ),
    ("refund", "refunds", "t", _same("order_id", "refund_id", "txn_id", "amount", "t", "reason")),
    (
        "notification_rejected",
        "notification_rejections",
        "id",
        _same("notify_id", "order_id", "reason", "t"),
    ),
)


class OrderStore:
    def __init__(self, path: str, *, on_transition: Callable[[str], None] | None = None) -> None:
        self.conn = storage.connect(path)
        self.conn.executescript(SCHEMA)
        self._on_transition = on_transition
        self.on_outbox_written: Callable[[], None] = lambda: None
        # orders per state, counted once here and then kept by every committed transition
        rows = self.conn.execute("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
        self._by_state: Counter[str] = Counter({r["status"]: r["n"] for r in rows.fetchall()})

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One transaction; the states it entered are reported after the commit."""
        tx = Tx(self.conn, storage.now())
        with storage.transaction(self.conn):
            yield tx
        for before, state in tx.moves:
            if before is not None:
                self._by_state[before] -= 1
            self._by_state[state] += 1
            if self._on_transition is not None:
                self._on_transition(state)
        if tx.outbox_written:
            self.on_outbox_written()

    # reads -------------------------------------------------------------------------------

    def get(self, order_id: str) -> Order | None:
        row = self.conn.execute("SELECT * FROM orders WHERE order_id=?", (order_id,)).fetchone()
        return None if row is None else Order.from_row(row)

    def _orders(self, sql: str, params: Sequence[Any]) -> list[Order]:
        return [Order.from_row(r) for r in self.conn.execute(sql, params).fetchall()]

    def created_before(self, t: float, limit: int, *, due_at: float) -> list[Order]:
        """CREATED orders created before t and due for another attempt."""
        return self._orders(
            "SELECT * FROM orders WHERE status='CREATED' AND created_at<=? AND next_check_at<=?"
            " ORDER BY created_at LIMIT ?",
            (t, due_at, limit),
        )

    def awaiting_before(self, t: float, limit: int, *, due_at: float | None = None) -> list[Order]:
        """AWAITING_PAYMENT orders created before t (and, given due_at, due for a check)."""
        sql = "SELECT * FROM orders WHERE status='AWAITING_PAYMENT' AND created_at<=?"
        params: list[Any] = [t]
        if due_at is not None:
            sql += " AND next_check_at<=?"
            params.append(due_at)
        return self._orders(sql + " ORDER BY created_at LIMIT ?", [*params, limit])

    def paid_without_bill_charge(self, paid_after: float, paid_before: float) -> list[Order]:
        """PAID orders paid in (paid_after, paid_before] whose charge is in no fetched bill."""
        return self._orders(
            "SELECT * FROM orders WHERE status='PAID' AND t_paid>? AND t_paid<=? AND NOT EXISTS"
            " (SELECT 1 FROM bill_charges b WHERE b.txn_id=orders.txn_id)",
            (paid_after, paid_before),
        )

    def unfunded_checked_until(self) -> float:
        row = self.conn.execute("SELECT swept_at FROM recon_cursor WHERE id=1").fetchone()
        return 0.0 if row is None or row["swept_at"] is None else float(row["swept_at"])

    def next_outbox_attempt_at(self) -> float | None:
        row = self.conn.execute(
            "SELECT MIN(next_attempt_at) AS t FROM outbox"
            " WHERE delivered_at IS NULL AND failed_reason IS NULL"
        ).fetchone()
        return None if row["t"] is None else float(row["t"])

    def due_outbox(self, now: float, limit: int) -> list[OutboxItem]:
        rows = self.conn.execute(
            "SELECT o.*, r.traceparent FROM outbox o LEFT JOIN orders r USING (order_id)"
            " WHERE o.delivered_at IS NULL AND o.failed_reason IS NULL AND o.next_attempt_at<=?"
            " ORDER BY o.next_attempt_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return [
            OutboxItem(
                id=r["id"],
                order_id=r["order_id"],
                kind=r["kind"],
                payload=json.loads(r["payload"]),
                attempts=r["attempts"],
                traceparent=r["traceparent"],
            )
            for r in rows
        ]

    def recon_cursor(self) -> int:
        row = self.conn.execute("SELECT cursor FROM recon_cursor WHERE id=1").fetchone()
        return 0 if row is None else int(row["cursor"])

    def count_by_state(self) -> dict[str, int]:
        """Orders per state (kept in memory: no query)."""
        return {state: n for state, n in self._by_state.items() if n}

    def outbox_backlog(self, now: float) -> tuple[int, float]:
        """(rows not delivered and not given up, age in seconds of the oldest of them)."""
        row = self.conn.execute(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox"
            " WHERE delivered_at IS NULL AND failed_reason IS NULL"
        ).fetchone()
        oldest = row["oldest"]
        return int(row["n"]), 0.0 if oldest is None else max(0.0, now - oldest)

    def transitions(self, order_id: str) -> list[dict[str, Any]]:
        """For tests and inspection: a scan, since no flow looks transitions up by order."""
        return storage.rows(
            self.conn.execute("SELECT * FROM transitions WHERE order_id=? ORDER BY id", (order_id,))
        )

    def outbox(self, order_id: str) -> list[dict[str, Any]]:
        return storage.rows(
            self.conn.execute("SELECT * FROM outbox WHERE order_id=? ORDER BY id", (order_id,))
        )

    # audit export ---------------------------------------------------------------------------

    def export(self, trace_id_of: Callable[[str | None], str | None]) -> Iterator[dict[str, Any]]:
        """The contract's order records (docs/contracts.md, order export)."""
        for record_type, table, order_by, fields in _EXPORTS:
            for r in self.conn.execute(f"SELECT * FROM {table} ORDER BY {order_by}").fetchall():
                record = {"type": record_type, **{key: r[column] for key, column in fields.items()}}
                if record_type == "order":
                    record["trace_id"] = trace_id_of(r["traceparent"])
                    record["flags"] = json.loads(r["flags"])
                yield record
