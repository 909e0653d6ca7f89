"""The order service's business metrics (names from docs/contracts.md)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge

STATES = ("CREATED", "AWAITING_PAYMENT", "PAID", "REJECTED", "CLOSED")

ORDERS = Counter("chaosbed_orders", "Order transitions into each state", ["state"])
ORDERS_BY_STATE = Gauge("chaosbed_orders_by_state", "Orders currently in each state", ["state"])
NOTIFICATIONS = Counter(
    "chaosbed_notifications_received",
    "Payment notifications received, by outcome (accepted|duplicate|forged|rejected)",
    ["outcome"],
)
ACTIVE_QUERY_RECOVERIES = Counter(
    "chaosbed_active_query_recoveries",
    "Paid orders completed by querying the channel instead of a notification",
)
REFUNDS = Counter("chaosbed_refunds", "Refunds scheduled, by reason", ["reason"])
RECONCILIATION_REPAIRS = Counter(
    "chaosbed_reconciliation_repairs", "Repairs made by reconciliation against the bill", ["kind"]
)
OUTBOX_LAG = Gauge("chaosbed_outbox_lag_seconds", "Age of the oldest undelivered outbox row")
OUTBOX_PENDING = Gauge("chaosbed_outbox_pending", "Outbox rows not yet delivered")


def count_transition(state: str) -> None:
    ORDERS.labels(state).inc()


def observe_backlog(by_state: Mapping[str, int], pending: int, lag_s: float) -> None:
    for state in STATES:
        ORDERS_BY_STATE.labels(state).set(by_state.get(state, 0))
    OUTBOX_PENDING.set(pending)
    OUTBOX_LAG.set(lag_s)
