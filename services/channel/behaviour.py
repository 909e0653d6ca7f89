"""The channel's behaviour knobs: the faults a real payment channel shows, set at runtime.

Knobs live in process memory: a restarted channel starts again from the defaults
(the fault timeline re-applies what it needs).  All random choices draw from one
`random.Random` seeded from CHAOSBED_SEED so a run can be replayed.
"""

from __future__ import annotations

import os
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.channel.schedules import ScheduleName
from services.common.settings import Settings, SettingsError

class DelayRange(BaseModel):
    """Uniform delay in milliseconds before a notification's first attempt."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(ge=0, le=600_000)
    max: int = Field(ge=0, le=600_000)

    @model_validator(mode="after")
    def _ordered(self) -> DelayRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class Knobs(BaseModel):
    """The full set of knobs, validated as a whole."""

    model_config = ConfigDict(extra="forbid")

    notify_duplicate_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    notify_drop_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    notify_delay_ms: DelayRange = Field(default_factory=lambda: DelayRange(min=0, max=0))
    notify_reorder: bool = False
    forged_notify_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    pay_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    accept_pay_after_close: bool = False
    retry_schedule: ScheduleName = "wechat"
    time_scale: float = Field(default=0.01, gt=0.0, le=1000.0)


class KnobsUpdate(BaseModel):
    """A partial update: only the knobs present change."""

    model_config = ConfigDict(extra="forbid")

    notify_duplicate_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    notify_drop_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    notify_delay_ms: DelayRange | None = None
    notify_reorder: bool | None = None
    forged_notify_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    pay_failure_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    accept_pay_after_close: bool | None = None
    retry_schedule: ScheduleName | None = None
    time_scale: float | None = Field(default=None, gt=0.0, le=1000.0)


class KnobError(ValueError):
    """A knob update was refused; `fields` says which knob and why."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        self.fields = fields
        super().__init__("invalid knob(s): " + ", ".join(f["field"] for f in fields))


def seed_from_env() -> int:
    raw = os.environ.get("CHAOSBED_SEED", "0")
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"CHAOSBED_SEED={raw!r} is not an integer") from None


class Behaviour:
    """Current knobs plus the seeded random source every fault decision draws from."""

    def __init__(self, knobs: Knobs, seed: int = 0) -> None:
        self.knobs = knobs
        self.rng = random.Random(seed)

    @classmethod
    def from_settings(cls, settings: Settings, seed: int | None = None) -> Behaviour:
        try:
            knobs = Knobs(retry_schedule=settings.retry_schedule, time_scale=settings.time_scale)  # type: ignore[arg-type]
        except ValidationError as exc:
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
            raise SettingsError(f"CHAOSBED_RETRY_SCHEDULE / CHAOSBED_TIME_SCALE: {problems}") from None
        return cls(knobs, seed_from_env() if seed is None else seed)

    def update(self, change: KnobsUpdate) -> Knobs:
        """Apply the knobs set in `change` all together, or none of them (KnobError)."""
        given: dict[str, Any] = change.model_dump(exclude_unset=True)
        nulls = [{"field": name, "message": "must not be null"} for name, v in given.items() if v is None]
        if nulls:
            raise KnobError(nulls)
        merged = {**self.knobs.model_dump(), **given}
        try:
            knobs = Knobs.model_validate(merged)
        except ValidationError as exc:
            raise KnobError(
                [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
            ) from None
        self.knobs = knobs
        return knobs

    def chance(self, rate: float) -> bool:
        """True with probability `rate` (never draws when the rate is 0, keeping replays stable)."""
        return rate > 0.0 and self.rng.random() < rate

    def first_attempt_delay_s(self) -> float:
        delay = self.knobs.notify_delay_ms
        if delay.max == 0:
            return 0.0
        return self.rng.uniform(delay.min, delay.max) / 1000.0
