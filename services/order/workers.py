"""Background loops of the order service: outbox relay, order sweeper, reconciliation.

Each loop runs one pass every tick; a pass that raises is logged and the loop goes
on.  Each unit of work runs in a span linked to the order's stored trace.  The
`*_once` functions are the passes themselves, called directly by the tests.
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
from services.order.store import Order

log = logging.getLogger("chaosbed.order.workers")

BATCH = 200
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
    """Deliver every due outbox row (confirm / cancel to inventory, refund to channel)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(item_id: int) -> None:
        item = by_id[item_id]
        async with gate:
            with linked_span(
                f"outbox {item.kind}", item.traceparent, order_id=item.order_id, outbox_id=item.id
            ):
                try:
                    await service.deliver(item)
                except Exception:
                    log.exception("outbox %s: delivery failed", item.id)

    by_id = {item.id: item for item in service.store.due_outbox(storage.now(), BATCH)}
    await asyncio.gather(*(one(item_id) for item_id in by_id))
    observe_backlog(service)


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
    loops = [
        _every("outbox", tick, lambda: relay_outbox_once(service)),
        _every("orders", tick, lambda: sweep_orders_once(service)),
    ]
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
