"""Notification retry schedules modelled on real payment channels, in real seconds.

Each preset lists the wait before each retry after a failed attempt; the notifier
multiplies it by the `time_scale` knob so a chaos run takes minutes, not days.
When a preset runs out the channel gives up on that notification (the order side
must recover through active query or reconciliation).
"""

from __future__ import annotations

from typing import Literal, get_args

ScheduleName = Literal["alipay", "wechat", "adyen", "stripe"]
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)

_M = 60.0
_H = 3600.0

# Alipay async notify: 4m, 10m, 10m, 1h, 2h, 6h, 15h.
_ALIPAY = (4 * _M, 10 * _M, 10 * _M, 1 * _H, 2 * _H, 6 * _H, 15 * _H)
# WeChat Pay: 15s, 15s, 30s, 3m, 10m, 20m, 30m, 30m, 30m, 60m, 3h, 3h, 3h, 6h, 6h.
_WECHAT = (
    15.0, 15.0, 30.0, 3 * _M, 10 * _M, 20 * _M, 30 * _M, 30 * _M, 30 * _M, 60 * _M,
    3 * _H, 3 * _H, 3 * _H, 6 * _H, 6 * _H,
)  # fmt: skip
# Adyen webhooks: immediately, 2m, 5m, 10m, 15m, 30m, 1h, 2h, 4h, 8h, then every 8h
# (capped here at 20 attempts in total).
_ADYEN = (0.0, 2 * _M, 5 * _M, 10 * _M, 15 * _M, 30 * _M, 1 * _H, 2 * _H, 4 * _H) + (8 * _H,) * 10
# Stripe: exponential backoff for up to three days.
_STRIPE = (1 * _M, 5 * _M, 30 * _M, 2 * _H, 5 * _H) + (10 * _H,) * 6

PRESETS: dict[str, tuple[float, ...]] = {
    "alipay": _ALIPAY,
    "wechat": _WECHAT,
    "adyen": _ADYEN,
    "stripe": _STRIPE,
}


def retry_delay_s(schedule: str, attempts_made: int, time_scale: float) -> float | None:
    """Seconds to wait after `attempts_made` failed attempts, or None when the preset gives up."""
    waits = PRESETS[schedule]
    if attempts_made < 1 or attempts_made > len(waits):
        return None
    return waits[attempts_made - 1] * time_scale


def max_attempts(schedule: str) -> int:
    """The first attempt plus one per retry in the preset."""
    return 1 + len(PRESETS[schedule])
