"""A small checkout service, written the way one of chaosbed's users would write their own.

It shares no code with chaosbed: aiohttp.web, its own SQLite schema, and chaosbed's payment
channel and inventory reached only through their documented HTTP APIs (docs/contracts.md).

    place order  -> TRY-reserve the stock -> create the payment -> "awaiting_payment"
    notification -> verify signature and timestamp, dedupe, confirm the stock -> "paid"
    late notification -> ask the channel; still unpaid after the timeout -> close, release stock
    a charge for an order that is closed (or paid twice) -> refund it

Run: PORT=8080 SHOP_DB=shop.db PAYMENT_API_URL=... INVENTORY_URL=... NOTIFY_SECRET=... \
     python shop.py
SHOP_BUG=no-query-on-timeout plants this shop's own bug (see BUGS).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

SIGNATURE_HEADER = "Chaosbed-Signature"

BUGS = {
    # Trusting the webhook: no active query, no reading of the bills, and the timeout closer
    # ignores the channel's "already paid" answer. A paid order whose notification was lost is
    # closed: money kept.
    "no-query-on-timeout": "a lost notification is never queried; the paid order closes (P6)",
}

ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# State names are the shop's own; the adapter maps them onto chaosbed's vocabulary.
NEW = "new"  # stock / payment not settled yet (a retry or the resumer carries on)
AWAITING = "awaiting_payment"
PAID = "paid"
CLOSED = "closed"  # timed out unpaid
REJECTED = "rejected"  # out of stock, or never got its payment
REFUNDED = "refunded"  # paid, but its stock was gone: money returned
FINAL = (PAID, CLOSED, REJECTED, REFUNDED)
# how a charge was learnt -> the transition cause in the export
CAUSES = {"webhook": "notify", "query": "query", "bill": "reconcile"}


class ConfigError(ValueError):
    """An environment variable the shop cannot run with."""


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    db: str
    channel_url: str
    inventory_url: str
    notify_secret: str
    query_after_s: float = 3.0
    close_after_s: float = 20.0
    tick_s: float = 0.5
    http_timeout_s: float = 2.0
    signature_tolerance_s: float = 300.0
    reservation_ttl_s: float = 60.0
    reconcile_every_s: float = 2.0
    bug: str = ""
    admin_token: str = ""  # set: the audit export is served (chaosbed's full audit)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        env = dict(os.environ if env is None else env)

        def need(name: str) -> str:
            value = env.get(name, "")
            if not value:
                raise ConfigError(f"{name} is not set")
            return value

        def seconds(name: str, default: float) -> float:
            raw = env.get(name, "")
            if raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
            if not value > 0:
                raise ConfigError(f"{name}={raw!r} must be > 0")
            return value

        raw_port = env.get("PORT", "8080")
        if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
            raise ConfigError(f"PORT={raw_port!r} is not a TCP port (1..65535)")
        bug = env.get("SHOP_BUG", "")
        if bug and bug not in BUGS:
            raise ConfigError(f"SHOP_BUG={bug!r} is unknown; known: {', '.join(sorted(BUGS))}")
        return cls(
            host=env.get("HOST", "127.0.0.1"),
            port=int(raw_port),
            db=env.get("SHOP_DB", "shop.db"),
            channel_url=need("PAYMENT_API_URL").rstrip("/"),
            inventory_url=need("INVENTORY_URL").rstrip("/"),
            notify_secret=need("NOTIFY_SECRET"),
            query_after_s=seconds("SHOP_QUERY_AFTER_S", cls.query_after_s),
            close_after_s=seconds("SHOP_CLOSE_AFTER_S", cls.close_after_s),
            tick_s=seconds("SHOP_TICK_S", cls.tick_s),
            http_timeout_s=seconds("SHOP_HTTP_TIMEOUT_S", cls.http_timeout_s),
            signature_tolerance_s=seconds("SHOP_SIGNATURE_TOLERANCE_S", 300.0),
            reservation_ttl_s=seconds("SHOP_RESERVATION_TTL_S", cls.reservation_ttl_s),
            reconcile_every_s=seconds("SHOP_RECONCILE_EVERY_S", cls.reconcile_every_s),
            bug=bug,
            admin_token=env.get("SHOP_ADMIN_TOKEN", ""),
        )


# --- signatures (the channel's scheme: HMAC-SHA256 over "<t>.<body>", "t=..,v1=.." header) ---


class BadSignature(ValueError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def expected_signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def check_signature(
    secret: str, header: str | None, body: bytes, *, now: float, tolerance_s: float
) -> None:
    """Raise BadSignature unless `header` signs `body` with `secret` within the tolerance."""
    if not header:
        raise BadSignature("bad_signature", f"missing {SIGNATURE_HEADER} header")
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    if not fields.get("t", "").isdigit() or not fields.get("v1"):
        raise BadSignature("bad_signature", f"malformed {SIGNATURE_HEADER} header")
    timestamp = int(fields["t"])
    if not hmac.compare_digest(expected_signature(secret, timestamp, body), fields["v1"]):
        raise BadSignature("bad_signature", "signature does not match the body")
    if abs(now - timestamp) > tolerance_s:
        raise BadSignature("stale_timestamp", f"signed {now - timestamp:.0f}s ago")


# --- storage -----------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    client_key TEXT NOT NULL UNIQUE,
    sku TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    total_cents INTEGER NOT NULL,
    state TEXT NOT NULL,
    payment_id TEXT,
    txn_id TEXT,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_check_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_state ON orders (state, next_check_at);
-- every change of state, for the audit export
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    cause TEXT NOT NULL,
    t REAL NOT NULL
);
-- every genuine notification taken in, by the channel's notify id
CREATE TABLE IF NOT EXISTS webhooks (
    notify_id TEXT PRIMARY KEY,
    txn_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    order_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    received_at REAL NOT NULL
);
-- every charge the shop knows of, and what it decided: keep it, or refund it
CREATE TABLE IF NOT EXISTS charges (
    txn_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    decision TEXT NOT NULL,
    learnt_from TEXT NOT NULL,
    t REAL NOT NULL
);
-- calls to the peers that must happen after a commit (retried until answered)
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    txn_id TEXT,
    amount INTEGER,
    created_at REAL NOT NULL,
    due_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    done_at REAL,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (done_at, due_at);
-- how far the channel's bills have been read (one row, name 'bills')
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""


class Store:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def order(self, order_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM orders WHERE id = ?", (order_id,)
        ).fetchone()
        return row

    def order_by_key(self, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM orders WHERE client_key = ?", (key,)
        ).fetchone()
        return row

    def due(self, state: str, now: float, limit: int = 100) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM orders WHERE state = ? AND next_check_at <= ? "
            "ORDER BY next_check_at LIMIT ?",
            (state, now, limit),
        ).fetchall()

    def due_jobs(self, now: float, limit: int = 200) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM jobs WHERE done_at IS NULL AND due_at <= ? ORDER BY id LIMIT ?",
            (now, limit),
        ).fetchall()

    def close(self) -> None:
        self.db.close()


def add_job(
    db: sqlite3.Connection,
    order_id: str,
    kind: str,
    now: float,
    *,
    txn_id: str | None = None,
    amount: int | None = None,
) -> None:
    db.execute(
        "INSERT INTO jobs (order_id, kind, txn_id, amount, created_at, due_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (order_id, kind, txn_id, amount, now, now),
    )


def set_state(
    db: sqlite3.Connection, order_id: str, state: str, now: float, cause: str, **columns: Any
) -> None:
    before = db.execute("SELECT state FROM orders WHERE id = ?", (order_id,)).fetchone()
    names = "".join(f", {name} = ?" for name in columns)
    db.execute(
        f"UPDATE orders SET state = ?, updated_at = ?{names} WHERE id = ?",
        (state, now, *columns.values(), order_id),
    )
    record_transition(db, order_id, before[0] if before else None, state, cause, now)


def record_transition(
    db: sqlite3.Connection, order_id: str, before: str | None, state: str, cause: str, now: float
) -> None:
    db.execute(
        "INSERT INTO transitions (order_id, from_state, to_state, cause, t) VALUES (?, ?, ?, ?, ?)",
        (order_id, before, state, cause, now),
    )


def order_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "client_key": row["client_key"],
        "sku": row["sku"],
        "quantity": row["quantity"],
        "total_cents": row["total_cents"],
        "state": row["state"],
        "payment_id": row["payment_id"],
        "txn_id": row["txn_id"],
        "reason": row["reason"],
    }


# --- the peers, over HTTP ----------------------------------------------------------------


class PeerDown(Exception):
    """A peer did not answer, or answered 5xx: whether the call took effect is unknown."""


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a definite answer; PeerDown for anything uncertain."""
    try:
        async with session.request(method, url, json=body, headers=headers) as reply:
            text = await reply.text()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise PeerDown(f"{method} {url}: {type(exc).__name__}") from None
    if reply.status >= 500:
        raise PeerDown(f"{method} {url}: HTTP {reply.status}")
    try:
        answer = json.loads(text) if text else {}
    except ValueError:
        raise PeerDown(
            f"{method} {url}: HTTP {reply.status} with a body that is not JSON"
        ) from None
    return reply.status, answer if isinstance(answer, dict) else {}


# --- the shop ------------------------------------------------------------------------------


class Refused(Exception):
    """A request the shop answers with a 4xx."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class Shop:
    def __init__(self, config: Config, store: Store, session: aiohttp.ClientSession) -> None:
        self.config, self.store, self.http = config, store, session
        self.locks: dict[str, asyncio.Lock] = {}
        self.next_reconcile_at = time.time() + config.reconcile_every_s

    @contextlib.asynccontextmanager
    async def locked(self, order_id: str) -> AsyncIterator[None]:
        lock = self.locks.setdefault(order_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self.locks.get(order_id) is lock:
                del self.locks[order_id]

    # placing an order

    async def place(
        self, key: str, sku: str, quantity: int, total: int, traceparent: str | None
    ) -> tuple[bool, sqlite3.Row]:
        """(created, order) for this idempotency key; a retry resumes an unfinished order."""
        now = time.time()
        with self.store.tx() as db:
            row = self.store.order_by_key(key)
            created = row is None
            if row is None:
                order_id = "shop-" + uuid.uuid4().hex[:20]
                db.execute(
                    "INSERT INTO orders (id, client_key, sku, quantity, total_cents, state, "
                    "created_at, updated_at, next_check_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        order_id,
                        key,
                        sku,
                        quantity,
                        total,
                        NEW,
                        now,
                        now,
                        now + self.config.query_after_s,
                    ),
                )
                record_transition(db, order_id, None, NEW, "place", now)
            elif (row["sku"], row["quantity"], row["total_cents"]) != (sku, quantity, total):
                raise Refused(409, "key_reused", "this key was used for another order")
            else:
                order_id = row["id"]
        async with self.locked(order_id):
            await self.advance(order_id, traceparent)
        row = self.store.order(order_id)
        assert row is not None
        return created, row

    async def advance(self, order_id: str, traceparent: str | None = None) -> None:
        """Take a NEW order through reserve and create-payment (both idempotent at the peers)."""
        row = self.store.order(order_id)
        if row is None or row["state"] != NEW:
            return
        status, answer = await call(
            self.http,
            "POST",
            f"{self.config.inventory_url}/reservations",
            body={
                "order_id": order_id,
                "sku": row["sku"],
                "qty": row["quantity"],
                "ttl_s": self.config.reservation_ttl_s,
            },
        )
        if status != 200:
            with self.store.tx() as db:
                # the try never held stock (or was already released): nothing to release
                reason = answer.get("error", str(status))
                set_state(db, order_id, REJECTED, time.time(), "reject", reason=reason)
            return
        headers = {"traceparent": traceparent} if traceparent else None
        status, answer = await call(
            self.http,
            "POST",
            f"{self.config.channel_url}/payments",
            body={
                "merchant_order_id": order_id,
                "amount": row["total_cents"],
                "description": f"{row['quantity']} x {row['sku']}",
            },
            headers=headers,
        )
        if status not in (200, 201) or not isinstance(answer.get("payment_id"), str):
            raise PeerDown(f"channel refused the payment: HTTP {status} {answer.get('error')}")
        with self.store.tx() as db:
            current = self.store.order(order_id)
            if current is not None and current["state"] == NEW:
                set_state(
                    db, order_id, AWAITING, time.time(), "place", payment_id=answer["payment_id"]
                )

    # taking a charge in (from a notification or from asking the channel)

    def settle(
        self, db: sqlite3.Connection, order: sqlite3.Row, txn_id: str, amount: int, learnt_from: str
    ) -> str:
        """Record a charge of `order` once and decide it: paid, or refund. Inside a transaction."""
        if db.execute("SELECT 1 FROM charges WHERE txn_id = ?", (txn_id,)).fetchone():
            return "duplicate"
        now = time.time()
        if order["state"] in (NEW, AWAITING):
            decision = "keep"
            set_state(db, order["id"], PAID, now, CAUSES[learnt_from], txn_id=txn_id)
            add_job(db, order["id"], "confirm_stock", now)
        else:  # closed, rejected, refunded, or a second charge of a paid order
            decision = "refund"
            add_job(db, order["id"], "refund", now, txn_id=txn_id, amount=amount)
        db.execute(
            "INSERT INTO charges (txn_id, order_id, payment_id, amount, decision, learnt_from, t) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (txn_id, order["id"], order["payment_id"], amount, decision, learnt_from, now),
        )
        return decision

    def notification(self, header: str | None, raw: bytes) -> str:
        """Take in one payment notification; the answer is sent only after the commit."""
        config = self.config
        try:
            check_signature(
                config.notify_secret,
                header,
                raw,
                now=time.time(),
                tolerance_s=config.signature_tolerance_s,
            )
        except BadSignature as exc:
            raise Refused(400, exc.code, str(exc)) from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise Refused(422, "invalid", "body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(422, "invalid", "body is not a JSON object")
        for name in ("notify_id", "payment_id", "merchant_order_id", "txn_id", "status"):
            if not isinstance(body.get(name), str) or not ID.match(body[name]):
                raise Refused(422, "invalid", f"{name} is missing or not an id")
        amount = body.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
            raise Refused(422, "invalid", "amount is not a positive integer")
        if body["status"] != "SUCCEEDED":
            raise Refused(400, "unsupported_status", "only SUCCEEDED is notified")
        with self.store.tx() as db:
            order = self.store.order(body["merchant_order_id"])
            if order is None:
                raise Refused(404, "unknown_order", "no such order")
            seen = db.execute(
                "SELECT * FROM webhooks WHERE notify_id = ?", (body["notify_id"],)
            ).fetchone()
            if seen is not None:
                if (seen["txn_id"], seen["amount"]) != (body["txn_id"], amount):
                    raise Refused(400, "replayed_altered", "notify id seen with other content")
                return "duplicate"
            if amount != order["total_cents"]:
                raise Refused(400, "amount_mismatch", "amount differs from the order total")
            if order["payment_id"] != body["payment_id"]:
                raise Refused(404, "unknown_payment", "not this order's payment (yet)")
            outcome = self.settle(db, order, body["txn_id"], amount, "webhook")
            db.execute(
                "INSERT INTO webhooks (notify_id, txn_id, amount, order_id, outcome, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (body["notify_id"], body["txn_id"], amount, order["id"], outcome, time.time()),
            )
            return outcome

    # the background work: resume, query, close, and the jobs

    async def tick(self) -> None:
        now = time.time()
        batches = [
            *(self.resume(row) for row in self.store.due(NEW, now)),
            *(self.check_unpaid(row) for row in self.store.due(AWAITING, now)),
            *(self.run_job(row) for row in self.store.due_jobs(now)),
        ]
        if now >= self.next_reconcile_at and self.config.bug != "no-query-on-timeout":
            self.next_reconcile_at = now + self.config.reconcile_every_s
            batches.append(self.reconcile())
        for outcome in await asyncio.gather(*batches, return_exceptions=True):
            if isinstance(outcome, Exception) and not isinstance(outcome, PeerDown):
                print(f"shop: worker error: {outcome!r}", file=sys.stderr, flush=True)

    async def reconcile(self) -> None:
        """Read the channel's bills past our cursor: a charge no notification or query brought
        in (a lost notification, a charge after the close) is taken in here, kept or refunded."""
        row = self.store.db.execute("SELECT seq FROM cursors WHERE name = 'bills'").fetchone()
        cursor = row[0] if row else 0
        while True:
            status, page = await call(
                self.http, "GET", f"{self.config.channel_url}/bills?cursor={cursor}&limit=500"
            )
            entries = page.get("entries") if status == 200 else None
            if not isinstance(entries, list) or not entries:
                return
            for entry in entries:
                if entry.get("kind") != "charge":
                    continue
                order_id = entry.get("merchant_order_id")
                async with self.locked(str(order_id)):
                    with self.store.tx() as db:
                        order = self.store.order(str(order_id))
                        if order is None or order["payment_id"] != entry.get("payment_id"):
                            continue  # not ours, or not this order's payment
                        self.settle(db, order, str(entry["txn_id"]), int(entry["amount"]), "bill")
            cursor = int(page.get("next_cursor", cursor))
            with self.store.tx() as db:
                db.execute(
                    "INSERT INTO cursors (name, seq) VALUES ('bills', ?) "
                    "ON CONFLICT(name) DO UPDATE SET seq = excluded.seq",
                    (cursor,),
                )
            if len(entries) < 500:
                return

    def later(self, order_id: str, delay_s: float) -> None:
        with self.store.tx() as db:
            db.execute(
                "UPDATE orders SET next_check_at = ? WHERE id = ?",
                (time.time() + delay_s, order_id),
            )

    async def resume(self, row: sqlite3.Row) -> None:
        """A NEW order its shopper left: finish it, or past the timeout give it up."""
        order_id = row["id"]
        self.later(order_id, self.config.query_after_s)
        async with self.locked(order_id):
            if time.time() - row["created_at"] < self.config.close_after_s:
                await self.advance(order_id)
                return
            found, payment = await self.payment_of(order_id)
            if found and payment.get("status") == "PENDING":
                await self.close_payment(order_id, payment["payment_id"])
                return  # next time round it is CLOSED
            with self.store.tx() as db:
                current = self.store.order(order_id)
                if current is None or current["state"] != NEW:
                    return
                if found and payment.get("status") == "SUCCEEDED":
                    payment_id = payment["payment_id"]
                    set_state(db, order_id, AWAITING, time.time(), "query", payment_id=payment_id)
                    current = self.store.order(order_id)
                    assert current is not None
                    self.settle(db, current, payment["txn_id"], payment["amount"], "query")
                    return
                set_state(db, order_id, REJECTED, time.time(), "reject", reason="abandoned")
                add_job(db, order_id, "release_stock", time.time())

    async def payment_of(self, order_id: str) -> tuple[bool, dict[str, Any]]:
        status, answer = await call(
            self.http, "GET", f"{self.config.channel_url}/payments?merchant_order_id={order_id}"
        )
        return status == 200, answer

    async def close_payment(self, order_id: str, payment_id: str) -> int:
        status, _ = await call(
            self.http, "POST", f"{self.config.channel_url}/payments/{payment_id}/close"
        )
        return status

    async def check_unpaid(self, row: sqlite3.Row) -> None:
        """An order waiting for its notification: ask the channel; past the timeout, close it."""
        order_id, config = row["id"], self.config
        self.later(order_id, max(config.tick_s, config.query_after_s / 2))
        expired = time.time() - row["created_at"] >= config.close_after_s
        if config.bug == "no-query-on-timeout":
            if expired:
                await self.close_payment(order_id, row["payment_id"])  # its answer ignored
                self.close_order(order_id)
            return
        async with self.locked(order_id):
            status, payment = await call(
                self.http, "GET", f"{config.channel_url}/payments/{row['payment_id']}"
            )
            if status != 200:
                return
            if payment.get("status") == "SUCCEEDED" and isinstance(payment.get("txn_id"), str):
                with self.store.tx() as db:
                    current = self.store.order(order_id)
                    if current is not None:
                        self.settle(db, current, payment["txn_id"], payment["amount"], "query")
                return
            closed = payment.get("status") == "CLOSED"
            if not closed and expired:
                # 409 already_paid: the next query takes the charge in
                closed = await self.close_payment(order_id, row["payment_id"]) == 200
            if closed:
                self.close_order(order_id)

    def close_order(self, order_id: str) -> None:
        with self.store.tx() as db:
            current = self.store.order(order_id)
            if current is not None and current["state"] == AWAITING:
                set_state(db, order_id, CLOSED, time.time(), "close", reason="unpaid")
                add_job(db, order_id, "release_stock", time.time())

    async def run_job(self, job: sqlite3.Row) -> None:
        order_id, kind = job["order_id"], job["kind"]
        inventory, channel = self.config.inventory_url, self.config.channel_url
        try:
            if kind == "confirm_stock":
                status, answer = await call(
                    self.http, "POST", f"{inventory}/reservations/{order_id}/confirm"
                )
            elif kind == "release_stock":
                status, answer = await call(
                    self.http, "POST", f"{inventory}/reservations/{order_id}/cancel"
                )
            else:  # refund
                order = self.store.order(order_id)
                assert order is not None
                status, answer = await call(
                    self.http,
                    "POST",
                    f"{channel}/payments/{order['payment_id']}/refunds",
                    body={"refund_id": f"rf-{job['txn_id']}", "amount": job["amount"]},
                )
        except PeerDown as exc:
            with self.store.tx() as db:
                backoff = min(5.0, self.config.tick_s * 2 ** job["attempts"])
                db.execute(
                    "UPDATE jobs SET attempts = attempts + 1, due_at = ?, outcome = ? WHERE id = ?",
                    (time.time() + backoff, str(exc), job["id"]),
                )
            return
        now = time.time()
        with self.store.tx() as db:
            outcome = "done" if status == 200 else f"refused:{answer.get('error', status)}"
            db.execute(
                "UPDATE jobs SET done_at = ?, outcome = ? WHERE id = ?", (now, outcome, job["id"])
            )
            if kind == "confirm_stock" and answer.get("error") == "reservation_cancelled":
                # the stock went back while the shopper paid: give the money back
                order = self.store.order(order_id)
                if order is not None and order["state"] == PAID:
                    set_state(db, order_id, REFUNDED, now, "close", reason="stock released")
                    db.execute(
                        "UPDATE charges SET decision = 'refund' WHERE txn_id = ?",
                        (order["txn_id"],),
                    )
                    amount = order["total_cents"]
                    add_job(db, order_id, "refund", now, txn_id=order["txn_id"], amount=amount)


# --- the audit export: chaosbed's order records (docs/contracts.md), an opt-in ---------------

EXPORT_STATUS = {
    NEW: "CREATED",
    AWAITING: "AWAITING_PAYMENT",
    PAID: "PAID",
    CLOSED: "CLOSED",
    REJECTED: "REJECTED",
    REFUNDED: "CLOSED",
}
EXPORT_JOB_KINDS = {"confirm_stock": "confirm", "release_stock": "cancel", "refund": "refund"}


def export_records(db: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """Every order, transition, taken-in charge, receipt, job and refund, in chaosbed's words."""
    paid_at: dict[str, float] = {}
    final_at: dict[str, float] = {}
    for row in db.execute("SELECT * FROM transitions ORDER BY id"):
        if row["to_state"] == PAID:
            paid_at.setdefault(row["order_id"], row["t"])
        if row["to_state"] in FINAL:
            final_at[row["order_id"]] = row["t"]
        before = row["from_state"]
        yield {
            "type": "transition",
            "order_id": row["order_id"],
            "from": None if before is None else EXPORT_STATUS[before],
            "to": EXPORT_STATUS[row["to_state"]],
            "t": row["t"],
            "cause": row["cause"],
        }
    orders: dict[str, sqlite3.Row] = {}
    for row in db.execute("SELECT * FROM orders ORDER BY created_at"):
        orders[row["id"]] = row
        yield {
            "type": "order",
            "order_id": row["id"],
            "idempotency_key": row["client_key"],
            "sku": row["sku"],
            "qty": row["quantity"],
            "amount": row["total_cents"],
            "status": EXPORT_STATUS[row["state"]],
            "payment_id": row["payment_id"],
            "txn_id": row["txn_id"],
            "created_at": row["created_at"],
            "t_paid": paid_at.get(row["id"]),
            "t_final": final_at.get(row["id"]) if row["state"] in FINAL else None,
            "trace_id": None,
            "flags": [],
        }
    notified: dict[str, str] = {}
    for row in db.execute("SELECT * FROM webhooks ORDER BY received_at"):
        if row["outcome"] != "duplicate":
            notified.setdefault(row["txn_id"], row["notify_id"])
        yield {
            "type": "receipt",
            "notify_id": row["notify_id"],
            "txn_id": row["txn_id"],
            "order_id": row["order_id"],
            "outcome": row["outcome"],
            "t": row["received_at"],
        }
    for row in db.execute("SELECT * FROM charges ORDER BY t"):
        yield {
            "type": "inbox",
            "txn_id": row["txn_id"],
            "notify_id": notified.get(row["txn_id"]),
            "order_id": row["order_id"],
            "t": row["t"],
            "outcome": "paid" if row["decision"] == "keep" else "refund",
        }
        if row["decision"] == "refund":
            order = orders.get(row["order_id"])
            if order is not None and order["txn_id"] == row["txn_id"]:
                reason = "stock_released"  # paid, then its reservation was gone
            elif order is not None and order["state"] == PAID:
                reason = "duplicate_charge"
            else:
                reason = "paid_after_close"
            yield {
                "type": "refund",
                "order_id": row["order_id"],
                "refund_id": f"rf-{row['txn_id']}",
                "txn_id": row["txn_id"],
                "amount": row["amount"],
                "t": row["t"],
                "reason": reason,
            }
    for row in db.execute("SELECT * FROM jobs ORDER BY id"):
        delivered = row["outcome"] == "done"
        yield {
            "type": "outbox",
            "id": str(row["id"]),
            "order_id": row["order_id"],
            "kind": EXPORT_JOB_KINDS[row["kind"]],
            "created_at": row["created_at"],
            "delivered_at": row["done_at"] if delivered else None,
            "attempts": row["attempts"],
            "failed_reason": None if delivered or row["done_at"] is None else row["outcome"],
        }


# --- HTTP ----------------------------------------------------------------------------------

SHOP: web.AppKey[Shop] = web.AppKey("shop", Shop)
routes = web.RouteTableDef()


def refusal(exc: Refused) -> web.Response:
    return web.json_response({"error": exc.code, "detail": exc.detail}, status=exc.status)


@routes.post("/api/orders")
async def place_order(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return refusal(Refused(422, "invalid", "body is not JSON"))
    if not isinstance(body, dict):
        return refusal(Refused(422, "invalid", "body is not a JSON object"))
    key, sku = body.get("client_key"), body.get("sku")
    quantity, total = body.get("quantity"), body.get("total_cents")
    problems = [
        name
        for name, ok in (
            ("client_key", isinstance(key, str) and ID.match(key)),
            ("sku", isinstance(sku, str) and ID.match(sku)),
            ("quantity", type(quantity) is int and 1 <= quantity <= 1000),
            ("total_cents", type(total) is int and 1 <= total <= 100_000_000),
        )
        if not ok
    ]
    if problems:
        return refusal(Refused(422, "invalid", f"bad or missing: {', '.join(problems)}"))
    assert isinstance(key, str) and isinstance(sku, str)
    assert isinstance(quantity, int) and isinstance(total, int)
    try:
        created, row = await request.app[SHOP].place(
            key, sku, quantity, total, request.headers.get("traceparent")
        )
    except Refused as exc:
        return refusal(exc)
    except PeerDown as exc:
        return web.json_response({"error": "dependency_down", "detail": str(exc)}, status=503)
    return web.json_response(order_view(row), status=201 if created else 200)


@routes.get("/api/orders/{order_id}")
async def read_order(request: web.Request) -> web.Response:
    row = request.app[SHOP].store.order(request.match_info["order_id"])
    if row is None:
        return refusal(Refused(404, "unknown_order", "no such order"))
    return web.json_response(order_view(row))


@routes.post("/hooks/payment")
async def payment_notification(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        outcome = request.app[SHOP].notification(request.headers.get(SIGNATURE_HEADER), raw)
    except Refused as exc:
        return refusal(exc)
    return web.json_response({"received": True, "outcome": outcome})


@routes.get("/audit/export")
async def audit_export(request: web.Request) -> web.Response:
    shop = request.app[SHOP]
    token = shop.config.admin_token
    if not token:
        return refusal(Refused(404, "not_found", "the audit export is off (SHOP_ADMIN_TOKEN)"))
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return refusal(Refused(401, "unauthorized", "needs Authorization: Bearer <admin token>"))
    lines = [json.dumps(record) for record in export_records(shop.store.db)]
    body = "".join(line + "\n" for line in lines)
    return web.Response(text=body, content_type="application/x-ndjson")


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    request.app[SHOP].store.db.execute("SELECT 1").fetchone()
    return web.json_response({"ok": True})


async def run_workers(shop: Shop) -> None:
    while True:
        try:
            await shop.tick()
        except sqlite3.Error as exc:
            print(f"shop: worker database error: {exc}", file=sys.stderr, flush=True)
        await asyncio.sleep(shop.config.tick_s)


def create_app(config: Config, *, workers: bool = True) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app.add_routes(routes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = Store(config.db)
        timeout = aiohttp.ClientTimeout(total=config.http_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            shop = app[SHOP] = Shop(config, store, session)
            task = asyncio.create_task(run_workers(shop)) if workers else None
            yield
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        store.close()

    app.cleanup_ctx.append(lifecycle)
    return app


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"shop: {exc}", file=sys.stderr)
        return 2
    print(
        f"shop: serving on {config.host}:{config.port}, db {config.db}"
        + (f", bug {config.bug}" if config.bug else ""),
        flush=True,
    )
    web.run_app(create_app(config), host=config.host, port=config.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
