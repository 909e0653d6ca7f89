"""Background work does not grow with history: the periodic passes of every service, run
over 1k and over 100k finished orders, execute the same SQLite work and never scan a table.

Nothing is timed.  SQLite's own instruction counter (the progress handler, called every
VM instruction) measures the work; EXPLAIN QUERY PLAN of every statement a pass runs shows
how it finds its rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from services.channel.behaviour import Behaviour, Knobs
from services.channel.store import ChannelStore
from services.channel.workers import Delivery, Notifier
from services.common.settings import Settings
from services.inventory import metrics as inventory_metrics
from services.inventory import workers as inventory_workers
from services.inventory.store import InventoryStore
from services.order import workers as order_workers
from services.order.domain import OrderService
from services.order.peers import Peers
from services.order.store import OrderStore

SMALL, LARGE = 1_000, 100_000
PAID_AT = time.time() - 3600.0  # finished an hour ago; a previous sweep checked them


@dataclasses.dataclass
class Work:
    steps: int
    plans: dict[str, list[str]]
    partial_indexes: set[str] = dataclasses.field(default_factory=set)


@contextmanager
def counted(conn: sqlite3.Connection) -> Iterator[Work]:
    """SQLite VM instructions and the statements run on `conn` inside the block."""
    work = Work(0, {})
    statements: list[str] = []

    def step() -> int:
        work.steps += 1
        return 0

    conn.set_progress_handler(step, 1)
    conn.set_trace_callback(statements.append)
    try:
        yield work
    finally:
        conn.set_progress_handler(None, 1)
        conn.set_trace_callback(None)
    for sql in statements:
        if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            work.plans[sql] = [str(row[3]) for row in rows]
    work.partial_indexes = {
        name
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index'")
        if sql and " WHERE " in sql.upper()
    }


def full_scans(work: Work, tables: tuple[str, ...]) -> list[str]:
    """Plan steps that visit every row of a history table (a partial index holds only the
    unfinished rows, so scanning one is bounded by the backlog)."""
    return [
        f"{sql} -> {step}"
        for sql, plan in work.plans.items()
        for step in plan
        if any(step.startswith(f"SCAN {table}") for table in tables)
        and not any(step.endswith(f"USING INDEX {index}") for index in work.partial_indexes)
    ]


def assert_bounded(small: Work, large: Work, tables: tuple[str, ...]) -> None:
    assert small.plans, "the pass ran no statement: nothing was measured"
    assert full_scans(large, tables) == []
    # the same work at 100x the history (B-tree depth aside)
    assert large.steps <= 2 * small.steps + 200, (small.steps, large.steps)


# order service -------------------------------------------------------------------------


class EmptyBill:
    """The channel's bill with nothing after the cursor (the steady state)."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor

    async def request(self, method: str, path: str, **_: Any) -> Any:
        assert (method, path.split("?")[0]) == ("GET", "/bills"), path
        return _Answer(200, {"entries": [], "next_cursor": self.cursor})


@dataclasses.dataclass
class _Answer:
    status_code: int
    body: dict[str, Any]

    def json(self) -> Any:
        return self.body


def order_history(path: Path, n: int) -> OrderStore:
    conn = sqlite3.connect(path)
    OrderStore(str(path)).close()  # the schema
    conn.executemany(
        "INSERT INTO orders (order_id, idempotency_key, request_hash, sku, qty, amount, status,"
        " payment_id, txn_id, created_at, updated_at, t_paid, t_final, flags)"
        " VALUES (?, ?, 'h', 'sku-1', 1, 100, 'PAID', ?, ?, ?, ?, ?, ?, '[]')",
        (
            (f"o-{i}", f"k-{i}", f"p-{i}", f"t-{i}", PAID_AT, PAID_AT, PAID_AT, PAID_AT)
            for i in range(n)
        ),
    )
    conn.executemany(
        "INSERT INTO bill_charges VALUES (?, ?, ?, 100, ?)",
        ((f"t-{i}", f"p-{i}", f"o-{i}", PAID_AT) for i in range(n)),
    )
    conn.executemany(
        "INSERT INTO outbox (order_id, kind, created_at, delivered_at, attempts, next_attempt_at)"
        " VALUES (?, 'confirm', ?, ?, 1, ?)",
        ((f"o-{i}", PAID_AT, PAID_AT, PAID_AT) for i in range(n)),
    )
    conn.executemany(
        "INSERT INTO transitions (order_id, from_status, to_status, t, cause)"
        " VALUES (?, 'AWAITING_PAYMENT', 'PAID', ?, 'notify')",
        ((f"o-{i}", PAID_AT) for i in range(n)),
    )
    conn.execute("INSERT INTO recon_cursor VALUES (1, ?, ?)", (n, PAID_AT + 1.0))
    conn.commit()
    conn.close()
    return OrderStore(str(path))


def order_passes(tmp_path: Path, n: int) -> Work:
    store = order_history(tmp_path / f"order-{n}.db", n)
    settings = Settings(service="order", query_after_s=3.0, close_after_s=20.0)
    service = OrderService(settings, store, Peers(EmptyBill(n), EmptyBill(n)))
    assert store.count_by_state() == {"PAID": n}

    async def passes() -> None:
        await order_workers.relay_outbox_once(service)
        await order_workers.sweep_orders_once(service)
        await order_workers.reconcile_once(service)

    with counted(store.conn) as work:
        asyncio.run(passes())
    assert store.conn.execute("SELECT COUNT(*) FROM orders WHERE flags != '[]'").fetchone()[0] == 0
    store.close()
    return work


def test_order_background_passes_do_not_grow_with_finished_orders(tmp_path: Path) -> None:
    small, large = order_passes(tmp_path, SMALL), order_passes(tmp_path, LARGE)
    assert_bounded(small, large, ("orders", "outbox", "transitions", "bill_charges", "inbox"))


def test_unfunded_check_reads_only_orders_paid_after_its_watermark(tmp_path: Path) -> None:
    store = order_history(tmp_path / "order.db", SMALL)
    store.conn.execute(
        "INSERT INTO orders (order_id, idempotency_key, request_hash, sku, qty, amount, status,"
        " txn_id, created_at, updated_at, t_paid, flags)"
        " VALUES ('o-new', 'k-new', 'h', 'sku-1', 1, 100, 'PAID', 't-forged', ?, ?, ?, '[]')",
        (time.time() - 5, time.time() - 5, time.time() - 5),
    )
    # an old order without a billed charge: behind the watermark, so checked before (or flagged)
    store.conn.execute("DELETE FROM bill_charges WHERE txn_id='t-7'")
    service = OrderService(Settings(service="order"), store, Peers(EmptyBill(0), EmptyBill(0)))
    asyncio.run(order_workers.reconcile_once(service))
    flagged = [
        r["order_id"] for r in store.conn.execute("SELECT * FROM orders WHERE flags != '[]'")
    ]
    assert flagged == ["o-new"]
    assert store.unfunded_checked_until() > time.time() - 60


# channel -------------------------------------------------------------------------------


def channel_history(path: Path, n: int) -> ChannelStore:
    store = ChannelStore.open(str(path))
    conn = store.conn
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO payments (payment_id, merchant_order_id, amount, created_at)"
        " VALUES (?, ?, 100, ?)",
        ((f"p-{i}", f"o-{i}", PAID_AT) for i in range(n)),
    )
    conn.executemany(
        "INSERT INTO ledger (txn_id, payment_id, kind, amount, status, t)"
        " VALUES (?, ?, 'charge', 100, 'succeeded', ?)",
        ((f"t-{i}", f"p-{i}", PAID_AT) for i in range(n)),
    )
    conn.executemany(
        "INSERT INTO notifications (notify_id, payment_id, txn_id, state, attempt,"
        " next_attempt_at, created_at) VALUES (?, ?, ?, ?, 1, ?, ?)",
        (
            (f"n-{i}", f"p-{i}", f"t-{i}", "dropped" if i % 10 == 0 else "acked", PAID_AT, PAID_AT)
            for i in range(n)
        ),
    )
    conn.execute("COMMIT")
    store.close()
    return ChannelStore.open(str(path))


def notifier_pass(tmp_path: Path, n: int) -> tuple[Work, int]:
    store = channel_history(tmp_path / f"channel-{n}.db", n)

    async def never(payload: bytes, headers: dict[str, str]) -> Delivery:
        raise AssertionError("nothing is due")

    settings = Settings(service="channel", notify_url="http://127.0.0.1:9/notify")
    notifier = Notifier(store, Behaviour(Knobs(), seed=1), settings, never)
    with counted(store.conn) as work:
        assert notifier.dispatch_due() == []
        charged_not_notified = store.charged_not_notified()
        store.next_due_at()
    store.close()
    return work, charged_not_notified


def test_notifier_tick_does_not_grow_with_acked_notifications(tmp_path: Path) -> None:
    (small, small_count), (large, large_count) = (
        notifier_pass(tmp_path, SMALL),
        notifier_pass(tmp_path, LARGE),
    )
    assert (small_count, large_count) == (SMALL // 10, LARGE // 10)  # the dropped ones
    assert_bounded(small, large, ("notifications", "payments", "ledger", "notify_log"))


def test_charged_not_notified_follows_commits(tmp_path: Path) -> None:
    store = channel_history(tmp_path / "channel.db", 10)
    assert store.charged_not_notified() == 1
    with store.transaction():
        store.conn.execute(
            "INSERT INTO payments (payment_id, merchant_order_id, amount, created_at)"
            " VALUES ('p-x', 'o-x', 100, 0)"
        )
        store.schedule_notification(notify_id="n-x", payment_id="p-x", txn_id="t-x", at=0, now=0)
    assert store.charged_not_notified() == 2
    with pytest.raises(RuntimeError), store.transaction():
        store.schedule_notification(notify_id="n-y", payment_id="p-x", txn_id="t-y", at=0, now=0)
        raise RuntimeError("rolled back")
    assert store.charged_not_notified() == 2
    store.finish_attempt("n-x", [], state="acked", attempt=1, next_attempt_at=0)
    assert store.charged_not_notified() == 1
    store.close()
    assert ChannelStore.open(str(tmp_path / "channel.db")).charged_not_notified() == 1


# inventory -----------------------------------------------------------------------------


def inventory_history(path: Path, n: int) -> InventoryStore:
    store = InventoryStore.open(str(path))
    conn = store.conn
    conn.execute("BEGIN")
    conn.execute("INSERT INTO stock VALUES ('sku-1', ?, 0)", (n,))
    conn.executemany(
        "INSERT INTO reservations (order_id, sku, qty, state, t_try, t_end, ttl)"
        " VALUES (?, 'sku-1', 1, 'CONFIRMED', ?, ?, 60)",
        ((f"o-{i}", PAID_AT, PAID_AT) for i in range(n)),
    )
    conn.executemany(
        "INSERT INTO events (order_id, kind, t, stock_delta) VALUES (?, 'confirm', ?, 0)",
        ((f"o-{i}", PAID_AT) for i in range(n)),
    )
    conn.execute("COMMIT")
    store.close()
    return InventoryStore.open(str(path))


def inventory_pass(tmp_path: Path, n: int) -> Work:
    store = inventory_history(tmp_path / f"inventory-{n}.db", n)
    collector = inventory_metrics.InventoryCollector()
    collector.store = store
    scrape: Callable[[], list[Any]] = lambda: list(collector.collect())  # noqa: E731
    with counted(store.conn) as work:
        assert inventory_workers.sweep_once(store) == 0
        families = scrape()
    by_state = {s.labels["state"]: s.value for s in families[1].samples}
    assert by_state["CONFIRMED"] == n
    store.close()
    return work


def test_inventory_sweep_and_scrape_do_not_grow_with_confirmed_reservations(
    tmp_path: Path,
) -> None:
    small, large = inventory_pass(tmp_path, SMALL), inventory_pass(tmp_path, LARGE)
    assert_bounded(small, large, ("reservations", "events", "tombstones"))
