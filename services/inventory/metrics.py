"""Inventory business metrics: stock and reservations by state (read at scrape), sweeps."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.inventory.store import InventoryStore, State

SWEEPER_CANCELLATIONS = Counter(
    "chaosbed_sweeper_cancellations",
    "TRY reservations cancelled by the TTL sweeper",
)


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            "chaosbed_stock_available", "Units of a sku still available", labels=["sku"]
        ),
        GaugeMetricFamily(
            "chaosbed_reservations_by_state", "Reservations in each TCC state", labels=["state"]
        ),
    )


class InventoryCollector(Collector):
    """Reads the gauges from the store at scrape time: the stock rows and in-memory counts."""

    def __init__(self) -> None:
        self.store: InventoryStore | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from _families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stock, by_state = _families()
        if self.store is not None:
            for s in self.store.all_stock():
                stock.add_metric([s.sku], s.available)
            counts = self.store.count_by_state()
            for state in State:
                by_state.add_metric([state.value], counts[state])
        yield stock
        yield by_state


_collector = InventoryCollector()
REGISTRY.register(_collector)


def observe_store(store: InventoryStore) -> None:
    """Point the scrape-time gauges at this store (the latest app created in the process)."""
    _collector.store = store
