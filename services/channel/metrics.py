"""The channel's business metrics (names fixed in docs/contracts.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PAYMENTS = Counter(
    "chaosbed_payments",
    "Payment events at the channel: created, charged, declined, closed, refunded",
    ["event"],
)
NOTIFY_ATTEMPTS = Counter(
    "chaosbed_notify_attempts",
    "Notification requests by outcome: acked, failed, dropped, duplicate, forged",
    ["outcome"],
)
NOTIFY_RETRIES = Counter(
    "chaosbed_notify_retries",
    "Notifications rescheduled after a failed attempt",
)
CHARGED_NOT_NOTIFIED = Gauge(
    "chaosbed_charged_not_notified",
    "Successful charges whose notification has not been acknowledged (yet)",
)
