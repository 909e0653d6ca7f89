"""The channel's behaviour knobs: the faults a real payment channel shows, set at runtime.

Knobs live in process memory: a restarted channel starts again from the defaults
(the fault timeline re-applies what it needs).  All random choices draw from one
`random.Random` seeded from CHAOSBED_SEED so a run can be replayed.
"""

from __future__ import annotations

import os
import random
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.channel.fields import JSON_INT, JSON_NUMBER, JsonBool, Rate
from services.channel.schedules import ScheduleName
from services.common.settings import Settings, SettingsError

# the retry schedule's multiplier: 0.01 turns WeChat's 15 s into 0.15 s
TimeScale = Annotated[float, Field(gt=0.0, le=1000.0), JSON_NUMBER]


class DelayRange(BaseModel):
    """Uniform delay in milliseconds before a notification's first attempt."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min: Annotated[int, Field(ge=0, le=600_000), JSON_INT]
    max: Annotated[int, Field(ge=0, le=600_000), JSON_INT]

    @model_validator(mode="after")
    def _ordered(self) -> DelayRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class Knobs(BaseModel):
    """The full set of knobs, validated as a whole."""

    model_config = ConfigDict(extra="forbid", strict=True)

    notify_duplicate_rate: Rate = 0.0
    notify_drop_rate: Rate = 0.0
    notify_delay_ms: DelayRange = Field(default_factory=lambda: DelayRange(min=0, max=0))
    notify_reorder: JsonBool = False
    forged_notify_rate: Rate = 0.0
    pay_failure_rate: Rate = 0.0
    accept_pay_after_close: JsonBool = False
    retry_schedule: ScheduleName = "wechat"
    time_scale: TimeScale = 0.01


def _without_defaults(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class KnobsUpdate(Knobs):
    """A partial update: only the knobs present in the body change (see `model_fields_set`)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_without_defaults)


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
            raise SettingsError(
                f"CHAOSBED_RETRY_SCHEDULE / CHAOSBED_TIME_SCALE: {problems}"
            ) from None
        return cls(knobs, seed_from_env() if seed is None else seed)

    def update(self, change: KnobsUpdate) -> Knobs:
        """Apply the knobs given in `change` (already validated as a whole), keep the rest."""
        given = {name: getattr(change, name) for name in change.model_fields_set}
        self.knobs = self.knobs.model_copy(update=given)
        return self.knobs

    def chance(self, rate: float) -> bool:
        """True with probability `rate` (never draws when the rate is 0, keeping replays stable)."""
        return rate > 0.0 and self.rng.random() < rate

    def first_attempt_delay_s(self) -> float:
        delay = self.knobs.notify_delay_ms
        if delay.max == 0:
            return 0.0
        return self.rng.uniform(delay.min, delay.max) / 1000.0
