"""The notifier: delivers payment notifications at least once, on a channel's retry schedule.

Work comes from the durable notifications table, so a SIGKILLed channel resumes its
pending notifications after a restart.  Each attempt is one genuine signed POST,
plus whatever the behaviour knobs add (drop, duplicate, forged variant); every
request is logged for the audit.  The notification span is a child of the payment
creation's stored trace context, so a paid order's trace reaches channel → order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind

from services.channel import metrics
from services.channel.behaviour import Behaviour
from services.channel.schedules import retry_delay_s
from services.channel.store import AttemptLog, ChannelStore, DueNotification
from services.common import storage
from services.common.fields import MAX_AMOUNT
from services.common.forgery import FORGERY_KINDS, ForgeryKind
from services.common.http import PeerError, ServiceClient
from services.common.settings import Settings
from services.common.signing import SIGNATURE_HEADER, sign
from services.common.telemetry import continued_span, log_fields

log = logging.getLogger("chaosbed.channel.notifier")


@dataclass(frozen=True)
class Delivery:
    """What came back from one POST: a status code, or the transport error."""

    status_code: int | None
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


Send = Callable[[bytes, dict[str, str]], Awaitable[Delivery]]


def notification_body(due: DueNotification) -> dict[str, Any]:
    return {
        "notify_id": due.notify_id,
        "payment_id": due.payment_id,
        "merchant_order_id": due.merchant_order_id,
        "txn_id": due.txn_id,
        "amount": due.amount,
        "status": "SUCCEEDED",
        "paid_at": due.paid_at,
    }


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def signed_headers(secret: str, timestamp: int, payload: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, timestamp, payload)}


def forge(
    kind: ForgeryKind, body: dict[str, Any], *, secret: str, now: int, tolerance_s: float
) -> tuple[bytes, dict[str, str]]:
    """A forged copy of a genuine notification that a correct receiver must refuse.

    Only the stale one is signed with the real secret; the altered replay keeps the
    notify_id and is signed with a wrong key.
    """
    kind = ForgeryKind(kind)  # a plain string must be one of the kinds too
    wrong_key = f"forged-{secret}"
    payload = encode(body)
    if kind is ForgeryKind.UNSIGNED:
        return payload, {"Content-Type": "application/json"}
    if kind is ForgeryKind.WRONG_KEY:
        return payload, signed_headers(wrong_key, now, payload)
    if kind is ForgeryKind.STALE_TIMESTAMP:
        return payload, signed_headers(secret, now - int(tolerance_s) - 600, payload)
    amount = body["amount"]
    altered = encode({**body, "amount": amount + 1 if amount < MAX_AMOUNT else amount - 1})
    return altered, signed_headers(wrong_key, now, altered)


def http_sender(settings: Settings) -> tuple[Send, ServiceClient]:
    """POST to CHAOSBED_NOTIFY_URL through the shared client; transport errors become Deliveries."""
    parts = urlsplit(settings.notify_url)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    client = ServiceClient(
        f"{parts.scheme}://{parts.netloc}", timeout_s=settings.http_timeout_s, peer="order"
    )

    async def send(payload: bytes, headers: dict[str, str]) -> Delivery:
        try:
            response = await client.request("POST", path, content=payload, headers=headers)
        except PeerError as exc:
            return Delivery(None, str(exc))
        return Delivery(response.status_code)

    return send, client


class Notifier:
    """Runs due notifications concurrently (bounded) and reschedules failures."""

    def __init__(
        self,
        store: ChannelStore,
        behaviour: Behaviour,
        settings: Settings,
        send: Send,
        *,
        clock: Callable[[], float] = storage.now,
        max_in_flight: int = 64,
    ) -> None:
        self.store = store
        self.behaviour = behaviour
        self.settings = settings
        self.send = send
        self.clock = clock
        self.max_in_flight = max_in_flight
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        # an in-flight notification is pushed this far out, so a crash retries it later
        self._lease_s = 3 * settings.http_timeout_s + 1.0

    def wake(self) -> None:
        """Called after a charge commits so its notification is not left to the next tick."""
        self._wake.set()

    def dispatch_due(self) -> list[asyncio.Task[None]]:
        """Start an attempt for each due notification, up to the in-flight limit."""
        room = self.max_in_flight - len(self._in_flight)
        if room <= 0:
            return []
        now = self.clock()
        due = [
            d for d in self.store.due_notifications(now, room) if d.notify_id not in self._in_flight
        ]
        if not due:
            return []
        if self.behaviour.knobs.notify_reorder:
            self.behaviour.rng.shuffle(due)
        with self.store.transaction():
            self.store.lease([d.notify_id for d in due], now + self._lease_s)
        tasks = []
        for item in due:
            task = asyncio.create_task(self._attempt_logged(item), name=f"notify {item.notify_id}")
            self._in_flight[item.notify_id] = task
            task.add_done_callback(self._done)
            tasks.append(task)
        return tasks

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight = {k: t for k, t in self._in_flight.items() if t is not task}
        self._wake.set()

    async def drain(self) -> int:
        """Run every notification due now to completion; the number attempted."""
        tasks = self.dispatch_due()
        await asyncio.gather(*tasks)
        return len(tasks)

    async def run(self) -> None:
        tick = self.settings.worker_tick_s
        gauge_due = 0.0
        while True:
            self._wake.clear()
            wait = tick
            try:
                self.dispatch_due()
                if time.monotonic() >= gauge_due:
                    metrics.CHARGED_NOT_NOTIFIED.set(self.store.charged_not_notified())
                    gauge_due = time.monotonic() + tick
                next_due = self.store.next_due_at()
                if next_due is not None and len(self._in_flight) < self.max_in_flight:
                    wait = min(tick, max(next_due - self.clock(), 0.001))
            except Exception:
                log.exception("notifier tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def stop(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _attempt_logged(self, due: DueNotification) -> None:
        try:
            await self.attempt(due)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notification attempt failed", extra=log_fields(notify_id=due.notify_id))

    async def attempt(self, due: DueNotification) -> None:
        """One attempt of one notification, under a span that joins the payment's trace."""
        with continued_span(
            "notify payment",
            due.traceparent,
            kind=SpanKind.PRODUCER,
            **{
                "chaosbed.notify_id": due.notify_id,
                "chaosbed.payment_id": due.payment_id,
                "chaosbed.attempt": due.attempt + 1,
            },
        ):
            await self._attempt(due)

    async def _attempt(self, due: DueNotification) -> None:
        knobs = self.behaviour.knobs
        number = due.attempt + 1
        if due.attempt == 0 and self.behaviour.chance(knobs.notify_drop_rate):
            # never sent and never retried: the order side must find the payment itself
            self.store.finish_attempt(
                due.notify_id,
                [AttemptLog(number, self.clock(), acked=False, status_code=None, dropped=True)],
                state="dropped",
                attempt=number,
                next_attempt_at=self.clock(),
            )
            metrics.NOTIFY_ATTEMPTS.labels("dropped").inc()
            return
        body = notification_body(due)
        payload = encode(body)
        duplicate = self.behaviour.chance(knobs.notify_duplicate_rate)
        sends = [self._send_signed(payload)]
        if duplicate:
            sends.append(self._send_signed(payload))
        deliveries = await asyncio.gather(*sends)
        logs = [
            AttemptLog(number, self.clock(), d.acked, d.status_code, duplicate=i > 0, error=d.error)
            for i, d in enumerate(deliveries)
        ]
        acked = any(d.acked for d in deliveries)
        metrics.NOTIFY_ATTEMPTS.labels("acked" if deliveries[0].acked else "failed").inc()
        if duplicate:
            metrics.NOTIFY_ATTEMPTS.labels("duplicate").inc()
        if self.behaviour.chance(knobs.forged_notify_rate):
            kind = self.behaviour.rng.choice(FORGERY_KINDS)
            forged_payload, headers = forge(
                kind,
                body,
                secret=self.settings.notify_secret,
                now=int(time.time()),
                tolerance_s=self.settings.signature_tolerance_s,
            )
            sent = await self.send(forged_payload, headers)
            logs.append(
                AttemptLog(
                    number, self.clock(), sent.acked, sent.status_code,
                    forged=True, forgery=kind.value, error=sent.error,
                )
            )  # fmt: skip
            metrics.NOTIFY_ATTEMPTS.labels("forged").inc()
        if acked:
            self.store.finish_attempt(
                due.notify_id, logs, state="acked", attempt=number, next_attempt_at=self.clock()
            )
            return
        delay = retry_delay_s(knobs.retry_schedule, number, knobs.time_scale)
        if delay is None:
            log.warning("notification given up", extra=log_fields(notify_id=due.notify_id))
            self.store.finish_attempt(
                due.notify_id, logs, state="exhausted", attempt=number, next_attempt_at=self.clock()
            )
            return
        metrics.NOTIFY_RETRIES.inc()
        retry_at = self.clock() + delay
        self.store.finish_attempt(
            due.notify_id, logs, state="pending", attempt=number, next_attempt_at=retry_at
        )

    async def _send_signed(self, payload: bytes) -> Delivery:
        headers = signed_headers(self.settings.notify_secret, int(time.time()), payload)
        return await self.send(payload, headers)
