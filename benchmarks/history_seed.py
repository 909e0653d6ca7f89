"""Give a stack a long past: N finished orders in all three databases before it starts.

Real rows, cloned.  A template stack runs a few hundred real paid journeys (place -> pay ->
notified -> PAID, outbox confirmed, reconciled against the bill) and stops; then every row
of every table that names an order, payment, transaction or notification is copied K times
in SQL, each copy's identifiers suffixed `-h<k>` and its timestamps moved k steps into the
past.  The three databases get the same suffixes, so the history is consistent across
channel, order and inventory, whatever the schemas are today: the schema is the services'
own (the template created it), not a copy kept here.

Rules, by column (declared type and name):
- identifier: TEXT named `*_id` or `*_key` (order_id, payment_id, txn_id, notify_id,
  refund_id, merchant_order_id, idempotency_key) -> `value || '-h' || k`;
- timestamp: REAL named `t`, `t_*` or `*_at` -> `value - (k * STEP_S + AGE_S)`;
  durations such as `ttl` keep their value;
- an INTEGER PRIMARY KEY (sequence numbers, autoincrement ids) is left to SQLite, so the
  copies come after the template rows in rowid order, oldest copy first;
- a table with no identifier column (stock, cursors) is not copied.
The reconciliation cursor is then moved past the copied ledger rows, as it would be after a
real past in which every bill page was reconciled.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

AGE_S = 600.0  # the newest copy is ten minutes old ...
STEP_S = 150.0  # ... and each older one 150 s before it (500 copies span ~21 hours)
SETTLE_TIMEOUT_S = 60.0
SETTLE_MIN_S = 2.0


class HistorySeedError(RuntimeError):
    """The template could not be cloned into a consistent history; says which table and why."""


@dataclass(frozen=True)
class TableClone:
    table: str
    ids: tuple[str, ...]
    times: tuple[str, ...]
    rows_before: int
    rows_after: int


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str, bool]]:
    """(name, declared type upper-case, is the INTEGER PRIMARY KEY) of every column."""
    info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
    single_pk = sum(1 for row in info if row[5]) == 1
    return [
        (row[1], str(row[2]).upper(), bool(row[5]) and single_pk and row[2].upper() == "INTEGER")
        for row in info
    ]


def is_identifier(name: str, declared: str) -> bool:
    return declared == "TEXT" and (name.endswith("_id") or name.endswith("_key"))


def is_timestamp(name: str, declared: str) -> bool:
    return declared == "REAL" and (name == "t" or name.startswith("t_") or name.endswith("_at"))


def clone_database(path: Path, copies: int) -> list[TableClone]:
    """Add `copies` suffixed, back-dated copies of every order-related row of one database."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # a scratch copy before any service opens it: no crash-safety needed, only speed
        conn.execute("PRAGMA journal_mode=MEMORY")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        tables = [
            row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
                " ORDER BY name"
            )
        ]
        done: list[TableClone] = []
        conn.execute("BEGIN IMMEDIATE")
        for table in tables:
            columns = _columns(conn, table)
            ids = tuple(name for name, declared, _ in columns if is_identifier(name, declared))
            if not ids:
                continue
            times = tuple(name for name, declared, _ in columns if is_timestamp(name, declared))
            kept = [name for name, _, rowid_alias in columns if not rowid_alias]
            exprs = []
            for name in kept:
                if name in ids:
                    exprs.append(f"\"{name}\" || '-h' || k.n")
                elif name in times:
                    exprs.append(f'"{name}" - (k.n * {STEP_S} + {AGE_S})')
                else:
                    exprs.append(f'"{name}"')
            column_list = ", ".join(f'"{name}"' for name in kept)
            before = conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
            conn.execute("DROP TABLE IF EXISTS temp.template")
            conn.execute(f'CREATE TEMP TABLE template AS SELECT * FROM main."{table}"')
            try:
                conn.execute(
                    f'INSERT INTO main."{table}" ({column_list})'
                    f" WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < ?)"
                    f" SELECT {', '.join(exprs)} FROM k, temp.template"
                    " ORDER BY k.n DESC, template.rowid",
                    (copies,),
                )
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise HistorySeedError(f"{path.name}: cloning table {table} failed: {exc}") from exc
            after = conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
            if after != before * (copies + 1):
                conn.execute("ROLLBACK")
                raise HistorySeedError(
                    f"{path.name}: table {table} has {after} rows after cloning, "
                    f"expected {before} x {copies + 1}"
                )
            done.append(TableClone(table, ids, times, before, after))
        conn.execute("DROP TABLE IF EXISTS temp.template")
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")  # what the services open it with
        return done
    finally:
        conn.close()


def scalar(path: Path, sql: str) -> int | None:
    """One integer from a read-only query, or None when the schema has no such table/column."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(sql).fetchone()
        return None if row is None or row[0] is None else int(row[0])
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


SETTLED_CHECKS = {
    # (database, query that must be 0 once every template journey is finished everywhere)
    "undelivered outbox rows": ("order", "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"),
    "paid orders not billed": (
        "order",
        "SELECT COUNT(*) FROM orders o WHERE o.status='PAID'"
        " AND NOT EXISTS (SELECT 1 FROM bill_charges b WHERE b.txn_id=o.txn_id)",
    ),
    "orders not final": ("order", "SELECT COUNT(*) FROM orders WHERE status<>'PAID'"),
    "notifications not acked": (
        "channel", "SELECT COUNT(*) FROM notifications WHERE state<>'acked'"
    ),
    "reservations not confirmed": (
        "inventory", "SELECT COUNT(*) FROM reservations WHERE state<>'CONFIRMED'"
    ),
}


def wait_settled(dbs: dict[str, Path]) -> dict[str, int | None]:
    """Wait until the template's journeys are finished in every database (checks above)."""
    started = time.monotonic()
    while True:
        left = {label: scalar(dbs[db], sql) for label, (db, sql) in SETTLED_CHECKS.items()}
        settled = all(not n for n in left.values())
        if settled and time.monotonic() - started >= SETTLE_MIN_S:
            return left
        if time.monotonic() - started > SETTLE_TIMEOUT_S:
            raise HistorySeedError(f"template journeys did not settle: {left}")
        time.sleep(0.25)


def advance_recon_cursor(order_db: Path, channel_db: Path) -> int | None:
    """Point the order service's bill cursor past the copied ledger (None: no such cursor)."""
    last_seq = scalar(channel_db, "SELECT MAX(seq) FROM ledger")
    if last_seq is None:
        return None
    conn = sqlite3.connect(order_db, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO recon_cursor (id, cursor, swept_at) VALUES (1, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET cursor=excluded.cursor",
            (last_seq, time.time() - AGE_S),
        )
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return last_seq
