"""Load shapes as pure functions of the time since the load started.

`level(t)` answers `(users, spawn_rate)` or None once the load is over; the locustfile's one
`LoadTestShape` asks it every second.  Kept free of Locust so the curves are easy to test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

SPIKE_RISE_S = 2.0  # a flash sale reaches its peak within about two seconds
SOAK_NOISE = 0.1  # soak wanders +-10% around its level ...
SOAK_NOISE_PERIOD_S = 30.0  # ... changing every 30 s

SHAPES = ("steady", "ramp", "flash_sale", "soak")
Level = tuple[int, float] | None


@dataclass(frozen=True)
class Profile:
    """One load shape with its parameters; `level(t)` is the whole behaviour."""

    shape: str
    users: int
    spawn_rate: float
    duration_s: float | None = None
    spike_factor: float = 10.0
    spike_at: float | None = None
    spike_for: float | None = None
    seed: int = 0

    @property
    def peak(self) -> int:
        return max(self.users, round(self.users * self.spike_factor))

    def level(self, t: float) -> Level:
        if self.duration_s is not None and t >= self.duration_s:
            return None
        match self.shape:
            case "steady":
                return self.users, self.spawn_rate
            case "ramp":
                return self._ramp(t)
            case "flash_sale":
                return self._flash_sale(t)
            case "soak":
                return self._soak(t)
        raise ValueError(f"unknown load shape {self.shape!r}; known: {', '.join(SHAPES)}")

    def _ramp(self, t: float) -> Level:
        # Without a duration the ramp climbs for a minute and stays at the top.
        span = self.duration_s or 60.0
        share = min(1.0, max(0.0, t / span))
        users = round(self.users + (self.peak - self.users) * share)
        climb = (self.peak - self.users) / span
        return users, max(self.spawn_rate, climb * 2)

    def _flash_sale(self, t: float) -> Level:
        spike_at = self.spike_at if self.spike_at is not None else 0.0
        spike_for = self.spike_for if self.spike_for is not None else 10.0
        fast = max(self.spawn_rate, (self.peak - self.users) / SPIKE_RISE_S)
        if spike_at <= t < spike_at + spike_for:
            return self.peak, fast
        return self.users, fast

    def _soak(self, t: float) -> Level:
        window = int(t // SOAK_NOISE_PERIOD_S)
        noise = random.Random(f"{self.seed}/soak/{window}").uniform(-SOAK_NOISE, SOAK_NOISE)
        return max(1, round(self.users * (1 + noise))), self.spawn_rate


def profile_from_load(load: dict[str, Any], *, duration_s: float | None, seed: int) -> Profile:
    """The profile a validated scenario `load` section (durations in seconds) describes."""
    return Profile(
        shape=str(load.get("shape", "steady")),
        users=int(load.get("users", 10)),
        spawn_rate=float(load.get("spawn_rate", 10.0)),
        duration_s=duration_s,
        spike_factor=float(load.get("spike_factor", 10.0)),
        spike_at=load.get("spike_at"),
        spike_for=load.get("spike_for"),
        seed=seed,
    )
