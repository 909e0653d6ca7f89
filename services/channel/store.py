"""The channel's SQLite schema and queries.

The ledger is append-only (triggers refuse UPDATE and DELETE): a payment's state is
derived from its events, so the audit can replay it.  The notifications table is the
notifier's durable work queue (an outbox): a charge and its notification are written
in one transaction, and a restarted process resumes whatever is still pending.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from services.common import storage

EventKind = Literal["charge", "refund", "close"]
EventStatus = Literal["succeeded", "failed"]
NotificationState = Literal["pending", "acked", "dropped", "exhausted"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    payment_id        TEXT PRIMARY KEY,
    merchant_order_id TEXT NOT NULL UNIQUE,
    amount            INTEGER NOT NULL CHECK (amount > 0),
    description       TEXT,
    created_at        REAL NOT NULL,
    traceparent       TEXT
);
-- seq without AUTOINCREMENT: the triggers below refuse every DELETE, so max(seq)+1 is as
-- monotonic (the bill's cursor relies on it) and a commit writes no sqlite_sequence page
CREATE TABLE IF NOT EXISTS ledger (
    seq        INTEGER PRIMARY KEY,
    txn_id     TEXT,
    payment_id TEXT NOT NULL REFERENCES payments(payment_id),
    kind       TEXT NOT NULL CHECK (kind IN ('charge', 'refund', 'close')),
    amount     INTEGER NOT NULL CHECK (amount >= 0),
    status     TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
    t          REAL NOT NULL,
    refund_id  TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS ledger_by_payment ON ledger(payment_id);
CREATE INDEX IF NOT EXISTS ledger_by_txn ON ledger(txn_id);
CREATE TRIGGER IF NOT EXISTS ledger_append_only_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_append_only_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS notifications (
    notify_id       TEXT PRIMARY KEY,
    payment_id      TEXT NOT NULL REFERENCES payments(payment_id),
    txn_id          TEXT NOT NULL,
    state           TEXT NOT NULL
                    CHECK (state IN ('pending', 'acked', 'dropped', 'exhausted')),
    attempt         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications(state, next_attempt_at);
-- no AUTOINCREMENT: no row is ever deleted, so max(id)+1 is as monotonic
CREATE TABLE IF NOT EXISTS notify_log (
    id          INTEGER PRIMARY KEY,
    notify_id   TEXT NOT NULL REFERENCES notifications(notify_id),
    attempt     INTEGER NOT NULL,
    t           REAL NOT NULL,
    acked       INTEGER NOT NULL,
    status_code INTEGER,
    forged      INTEGER NOT NULL,
    forgery     TEXT,
    duplicate   INTEGER NOT NULL,
    dropped     INTEGER NOT NULL,
    error       TEXT
);
"""


@dataclass(frozen=True)
class Payment:
    payment_id: str
    merchant_order_id: str
    amount: int
    description: str | None
    created_at: float
    traceparent: str | None


@dataclass(frozen=True)
class LedgerEvent:
    seq: int
    txn_id: str | None
    payment_id: str
    kind: EventKind
    amount: int
    status: EventStatus
    t: float
    refund_id: str | None


@dataclass(frozen=True)
class DueNotification:
    """A pending notification with everything needed to build its body."""

    notify_id: str
    payment_id: str
    merchant_order_id: str
    txn_id: str
    amount: int
    paid_at: float
    traceparent: str | None
    attempt: int


@dataclass(frozen=True)
class AttemptLog:
    """One request the notifier sent (or decided not to send)."""

    attempt: int
    t: float
    acked: bool
    status_code: int | None
    forged: bool = False
    forgery: str | None = None
    duplicate: bool = False
    dropped: bool = False
    error: str | None = None


class ChannelStore:
    """All SQL of the channel.  One connection, used only from the event-loop thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)
        # notifications not (yet) acked: counted once here, then kept by every commit
        row = conn.execute("SELECT COUNT(*) FROM notifications WHERE state != 'acked'").fetchone()
        self._unacked = int(row[0])
        self._unacked_uncommitted = 0

    @classmethod
    def open(cls, path: str) -> ChannelStore:
        return cls(storage.connect(path))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; the in-memory counts follow it only once it commits."""
        self._unacked_uncommitted = 0
        with storage.transaction(self.conn) as conn:
            yield conn
        self._unacked += self._unacked_uncommitted
        self._unacked_uncommitted = 0

    def _count_unacked(self, delta: int) -> None:
        if self.conn.in_transaction:
            self._unacked_uncommitted += delta
        else:
            self._unacked += delta

    def close(self) -> None:
        self.conn.close()

    # payments

    def payment(self, payment_id: str) -> Payment | None:
        row = self.conn.execute(
            "SELECT * FROM payments WHERE payment_id = ?", (payment_id,)
        ).fetchone()
        return Payment(**dict(row)) if row else None

    def payment_by_order(self, merchant_order_id: str) -> Payment | None:
        row = self.conn.execute(
            "SELECT * FROM payments WHERE merchant_order_id = ?", (merchant_order_id,)
        ).fetchone()
        return Payment(**dict(row)) if row else None

    def insert_payment(self, payment: Payment) -> None:
        self.conn.execute(
            "INSERT INTO payments (payment_id, merchant_order_id, amount, description, created_at,"
            " traceparent) VALUES (?, ?, ?, ?, ?, ?)",
            (
                payment.payment_id,
                payment.merchant_order_id,
                payment.amount,
                payment.description,
                payment.created_at,
                payment.traceparent,
            ),
        )

    # ledger

    def events(self, payment_id: str) -> list[LedgerEvent]:
        cur = self.conn.execute(
            "SELECT * FROM ledger WHERE payment_id = ? ORDER BY seq", (payment_id,)
        )
        return [LedgerEvent(**dict(row)) for row in cur.fetchall()]

    def refund(self, refund_id: str) -> LedgerEvent | None:
        row = self.conn.execute("SELECT * FROM ledger WHERE refund_id = ?", (refund_id,)).fetchone()
        return LedgerEvent(**dict(row)) if row else None

    def append_event(
        self,
        *,
        payment_id: str,
        kind: EventKind,
        amount: int,
        status: EventStatus,
        t: float,
        txn_id: str | None,
        refund_id: str | None = None,
    ) -> LedgerEvent:
        cur = self.conn.execute(
            "INSERT INTO ledger (txn_id, payment_id, kind, amount, status, t, refund_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (txn_id, payment_id, kind, amount, status, t, refund_id),
        )
        seq = cur.lastrowid
        assert seq is not None
        return LedgerEvent(seq, txn_id, payment_id, kind, amount, status, t, refund_id)

    def bill_entries(self, cursor: int, limit: int) -> list[dict[str, Any]]:
        """Succeeded charges and refunds after `cursor`, oldest first."""
        cur = self.conn.execute(
            "SELECT l.seq, l.txn_id, l.payment_id, p.merchant_order_id, l.kind, l.amount, l.t"
            " FROM ledger l JOIN payments p USING (payment_id)"
            " WHERE l.seq > ? AND l.status = 'succeeded' AND l.kind IN ('charge', 'refund')"
            " ORDER BY l.seq LIMIT ?",
            (cursor, limit),
        )
        return storage.rows(cur)

    # notifications (the notifier's work queue)

    def schedule_notification(
        self, *, notify_id: str, payment_id: str, txn_id: str, at: float, now: float
    ) -> None:
        self.conn.execute(
            "INSERT INTO notifications (notify_id, payment_id, txn_id, state, attempt,"
            " next_attempt_at, created_at) VALUES (?, ?, ?, 'pending', 0, ?, ?)",
            (notify_id, payment_id, txn_id, at, now),
        )
        self._count_unacked(+1)

    def due_notifications(self, now: float, limit: int) -> list[DueNotification]:
        cur = self.conn.execute(
            "SELECT n.notify_id, n.payment_id, p.merchant_order_id, n.txn_id, p.amount,"
            " l.t AS paid_at, p.traceparent, n.attempt"
            " FROM notifications n JOIN payments p USING (payment_id)"
            " JOIN ledger l ON l.txn_id = n.txn_id AND l.kind = 'charge'"
            " WHERE n.state = 'pending' AND n.next_attempt_at <= ?"
            " ORDER BY n.next_attempt_at LIMIT ?",
            (now, limit),
        )
        return [DueNotification(**dict(row)) for row in cur.fetchall()]

    def lease(self, notify_ids: list[str], until: float) -> None:
        """Push in-flight notifications out of the due set; a crash makes them due again then."""
        self.conn.executemany(
            "UPDATE notifications SET next_attempt_at = ? WHERE notify_id = ?",
            [(until, notify_id) for notify_id in notify_ids],
        )

    def next_due_at(self) -> float | None:
        row = self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM notifications WHERE state = 'pending'"
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def finish_attempt(
        self,
        notify_id: str,
        logs: list[AttemptLog],
        *,
        state: NotificationState,
        attempt: int,
        next_attempt_at: float,
    ) -> None:
        """Log every request of one attempt and move the notification on, atomically."""
        with self.transaction():
            before = self.notification_state(notify_id)
            if before is not None:
                self._count_unacked((state != "acked") - (before[0] != "acked"))
            self.conn.executemany(
                "INSERT INTO notify_log (notify_id, attempt, t, acked, status_code, forged,"
                " forgery, duplicate, dropped, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        notify_id,
                        log.attempt,
                        log.t,
                        int(log.acked),
                        log.status_code,
                        int(log.forged),
                        log.forgery,
                        int(log.duplicate),
                        int(log.dropped),
                        log.error,
                    )
                    for log in logs
                ],
            )
            self.conn.execute(
                "UPDATE notifications SET state = ?, attempt = ?, next_attempt_at = ?"
                " WHERE notify_id = ?",
                (state, attempt, next_attempt_at, notify_id),
            )

    def notification_state(self, notify_id: str) -> tuple[NotificationState, int] | None:
        row = self.conn.execute(
            "SELECT state, attempt FROM notifications WHERE notify_id = ?", (notify_id,)
        ).fetchone()
        return (row["state"], row["attempt"]) if row else None

    def charged_not_notified(self) -> int:
        """Notifications not acked (kept in memory: no query)."""
        return self._unacked

    # audit export

    def export_payments(self) -> Iterator[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT payment_id, merchant_order_id, amount, created_at, traceparent"
            " FROM payments ORDER BY created_at"
        )
        yield from storage.rows(cur)

    def export_ledger(self) -> Iterator[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT l.*, p.merchant_order_id FROM ledger l JOIN payments p USING (payment_id)"
            " ORDER BY l.seq"
        )
        yield from storage.rows(cur)

    def export_notify_log(self) -> Iterator[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT g.*, n.payment_id, n.txn_id, p.merchant_order_id, p.traceparent"
            " FROM notify_log g JOIN notifications n USING (notify_id)"
            " JOIN payments p ON p.payment_id = n.payment_id ORDER BY g.id"
        )
        yield from storage.rows(cur)
