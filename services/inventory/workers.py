"""Background work of the inventory: the TTL sweeper that releases abandoned tries."""

from __future__ import annotations

import asyncio
import logging
import time

from opentelemetry.trace import SpanKind

from services.common import storage
from services.common.telemetry import log_fields, span_since
from services.inventory import domain
from services.inventory.metrics import SWEEPER_CANCELLATIONS
from services.inventory.store import InventoryStore, Reservation

log = logging.getLogger("chaosbed.inventory.sweeper")


def sweep_once(store: InventoryStore) -> int:
    """One sweep; returns how many reservations it cancelled.  Only a sweep that cancelled
    something gets a span (from its start): an idle tick every 2 s is no trace."""
    started_ns = time.time_ns()
    swept: list[Reservation] = []
    while True:  # one short transaction per batch, until the backlog is gone
        batch = domain.sweep(store, storage.now(), batch=domain.SWEEP_BATCH)
        swept.extend(batch)
        if len(batch) < domain.SWEEP_BATCH:
            break
    if swept:
        with span_since(
            "inventory.sweep", started_ns, kind=SpanKind.INTERNAL, **{"chaosbed.swept": len(swept)}
        ):
            SWEEPER_CANCELLATIONS.inc(len(swept))
            log.info(
                "sweeper cancelled expired tries",
                extra=log_fields(swept=len(swept), order_ids=[r.order_id for r in swept][:20]),
            )
    return len(swept)


async def sweep_forever(store: InventoryStore, every_s: float) -> None:
    """Sweep every `every_s` seconds until cancelled; a failed sweep is logged, not fatal."""
    while True:
        await asyncio.sleep(every_s)
        try:
            sweep_once(store)
        except Exception:
            log.exception("sweep failed; retrying next period")
