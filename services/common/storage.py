"""SQLite helpers shared by the three stores: WAL, one connection, explicit transactions.

Each service runs in one process with one event loop, and every store call is
synchronous and never awaits inside a transaction, so a single connection owned
by the event-loop thread gives serialisable transactions without locks.
WAL + synchronous=NORMAL survives SIGKILL of the process (committed pages are in
the OS), which is the crash the fault catalog injects.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
        # checkpoint (a copy of every page touched, two fsyncs) every ~400 paid journeys, not
        # every ~40: the WAL may reach ~40 MB, and a restart after SIGKILL replays it
        conn.execute("PRAGMA wal_autocheckpoint=10000")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def now() -> float:
    """Wall-clock seconds; every stored timestamp uses this so records line up."""
    return time.time()


def rows(cursor: sqlite3.Cursor) -> list[dict[str, object]]:
    return [dict(row) for row in cursor.fetchall()]
