"""Background loops of the order service: outbox relay, order sweeper, reconciliation.

The sweeper and reconciliation run one pass per period; the relay runs a pass as soon
as an outbox row is committed (or a retry falls due), at most a tick apart when idle.  A
pass that raises is logged and the loop goes on.  Each unit of work runs in a span linked
to the order's stored trace.  The `*_once` functions are the passes themselves, called
directly by the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from services.common import storage
from services.common.telemetry import linked_span
from services.order import metrics
from services.order.domain import OrderService
from services.order.peers import PeerUnavailable
from services.order.store import Order, OutboxItem

log = logging.getLogger("chaosbed.order.workers")

BATCH = 200
CONFIRM_BATCH = 100  # confirms per call to inventory's batch endpoint
CONCURRENCY = 16


async def _each(items: Iterable[Order], work: Callable[[Order], Awaitable[None]]) -> None:
    """Run `work` for every order, a few at a time, each failure logged on its own."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(order: Order) -> None:
        async with gate:
            try:
                await work(order)
            except Exception:
                log.exception("order %s: background step failed", order.order_id)

    await asyncio.gather(*(one(order) for order in items))


async def relay_outbox_once(service: OrderService) -> None:
    """Deliver every due outbox row: confirms to inventory in batches, each cancel (to
    inventory) and refund (to channel) on its own."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(item: OutboxItem) -> None:
        async with gate:
            with linked_span(
                f"outbox {item.kind}", item.traceparent, order_id=item.order_id, outbox_id=item.id
            ):
                try:
                    await service.deliver(item)
                except Exception:
                    log.exception("outbox %s: delivery failed", item.id)

    async def confirms(batch: list[OutboxItem]) -> None:
        async with gate:
            with linked_span(
                "outbox confirm",
                batch[0].traceparent,
                also_linked=[item.traceparent for item in batch[1:]],
                orders=len(batch),
            ):
                try:
                    await service.deliver_confirms(batch)
                except Exception:
                    log.exception("outbox confirm batch of %d: delivery failed", len(batch))

    due = service.store.due_outbox(storage.now(), BATCH)
    confirm_rows = [item for item in due if item.kind == "confirm"]
    batches = [
        confirm_rows[i : i + CONFIRM_BATCH] for i in range(0, len(confirm_rows), CONFIRM_BATCH)
    ]
    others = [item for item in due if item.kind != "confirm"]
    await asyncio.gather(*(confirms(b) for b in batches), *(one(item) for item in others))
    observe_backlog(service)


async def relay_forever(service: OrderService) -> None:
    """Run a relay pass whenever an outbox row is committed, a retry falls due, or a tick
    has passed (so the backlog gauges stay fresh)."""
    wake = asyncio.Event()
    service.store.on_outbox_written = wake.set
    tick = service.settings.worker_tick_s
    try:
        while True:
            wake.clear()
            try:
                await relay_outbox_once(service)
                next_at = service.store.next_outbox_attempt_at()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker outbox: pass failed, continuing")
                next_at = None
            wait = tick if next_at is None else min(tick, max(next_at - storage.now(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=wait)
    finally:
        service.store.on_outbox_written = lambda: None


def observe_backlog(service: OrderService) -> None:
    pending, lag = service.store.outbox_backlog(storage.now())
    metrics.observe_backlog(service.store.count_by_state(), pending, lag)


async def sweep_orders_once(service: OrderService) -> None:
    """Resume stuck CREATED orders, query unpaid ones, close those past their deadline."""
    settings = service.settings
    now = storage.now()

    async def resume(order: Order) -> None:
        with linked_span("resume order", order.traceparent, order_id=order.order_id):
            await service.resume(order.order_id, order.created_at)

    async def close(order: Order) -> None:
        with linked_span("close expired order", order.traceparent, order_id=order.order_id):
            await service.close_expired(order.order_id)

    async def query(order: Order) -> None:
        with linked_span("active query", order.traceparent, order_id=order.order_id):
            await service.query(order.order_id)

    # "a few seconds": long enough that a request still running its saga is not raced
    stuck = service.store.created_before(now - settings.query_after_s, BATCH, due_at=now)
    await _each(stuck, resume)
    expired = service.store.awaiting_before(now - settings.close_after_s, BATCH, due_at=now)
    await _each(expired, close)
    if settings.bug("no-active-query"):
        return
    closing = {order.order_id for order in expired}
    due = service.store.awaiting_before(now - settings.query_after_s, BATCH, due_at=now)
    await _each([o for o in due if o.order_id not in closing], query)


async def reconcile_once(service: OrderService) -> None:
    with linked_span("reconcile", None):
        try:
            await service.reconcile()
        except PeerUnavailable as exc:
            log.warning("reconciliation skipped, channel unavailable: %s", exc)


async def _every(name: str, period_s: float, one_pass: Callable[[], Awaitable[None]]) -> None:
    while True:
        try:
            await one_pass()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker %s: pass failed, continuing", name)
        await asyncio.sleep(period_s)


def start(service: OrderService) -> list[asyncio.Task[None]]:
    """Start the loops (in the app's lifespan); cancel the returned tasks to stop them."""
    tick = service.settings.worker_tick_s
    loops = [relay_forever(service), _every("orders", tick, lambda: sweep_orders_once(service))]
    if not service.settings.bug("no-active-query"):
        period = service.settings.reconcile_every_s
        loops.append(_every("reconcile", period, lambda: reconcile_once(service)))
    return [asyncio.create_task(loop) for loop in loops]


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
