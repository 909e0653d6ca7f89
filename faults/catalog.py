"""The fault catalog: every fault a scenario may name, what it can target and its parameters.

Three kinds of fault:
- network (Toxiproxy) on one of the five links: toxics, or `down` (proxy disabled);
- process on one of the three services: `kill` (SIGKILL, restart when the window ends),
  `pause` (SIGSTOP/SIGCONT), `restart` (graceful, instantaneous);
- behaviour of the channel: set channel knobs for a window, then restore the previous values.

Parameters are pydantic models (unknown parameter = error).  Durations are "500ms", "5s",
"2m", "1h" or numbers of seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from faults.durations import parse_duration

PROXIES: tuple[str, ...] = (
    "client_order",
    "client_channel",
    "order_inventory",
    "order_channel",
    "channel_notify",
)
SERVICES: tuple[str, ...] = ("order", "inventory", "channel")
TARGETS: tuple[str, ...] = PROXIES + SERVICES

RETRY_SCHEDULES: tuple[str, ...] = ("alipay", "wechat", "adyen", "stripe")

Duration = Annotated[float, BeforeValidator(parse_duration)]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class Kind(StrEnum):
    NETWORK = "network"
    PROCESS = "process"
    BEHAVIOUR = "behaviour"


class FaultParams(BaseModel):
    """Parameters of one fault step; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(FaultParams):
    pass


# --- network ---------------------------------------------------------------------------


class ToxicParams(FaultParams):
    stream: Literal["upstream", "downstream"] = "downstream"
    toxicity: float = Field(default=1.0, ge=0.0, le=1.0)

    def attributes(self) -> dict[str, int]:
        """The toxic's attributes in Toxiproxy's units."""
        raise NotImplementedError


class LatencyParams(ToxicParams):
    latency: Duration
    jitter: Duration = 0.0

    def attributes(self) -> dict[str, int]:
        return {"latency": _ms(self.latency), "jitter": _ms(self.jitter)}


class TimeoutParams(ToxicParams):
    timeout: Duration = 0.0  # 0: hold the data and the connection until healed

    def attributes(self) -> dict[str, int]:
        return {"timeout": _ms(self.timeout)}


class ResetPeerParams(ToxicParams):
    timeout: Duration = 0.0  # 0: reset at once

    def attributes(self) -> dict[str, int]:
        return {"timeout": _ms(self.timeout)}


class LimitDataParams(ToxicParams):
    bytes: int = Field(ge=0)

    def attributes(self) -> dict[str, int]:
        return {"bytes": self.bytes}


class BandwidthParams(ToxicParams):
    rate: int = Field(ge=0, description="KB/s")

    def attributes(self) -> dict[str, int]:
        return {"rate": self.rate}


class SlowCloseParams(ToxicParams):
    delay: Duration

    def attributes(self) -> dict[str, int]:
        return {"delay": _ms(self.delay)}


class SlicerParams(ToxicParams):
    average_size: int = Field(ge=1)
    size_variation: int = Field(default=0, ge=0)
    delay: Duration = 0.0  # between slices; Toxiproxy wants microseconds

    def attributes(self) -> dict[str, int]:
        return {
            "average_size": self.average_size,
            "size_variation": self.size_variation,
            "delay": round(self.delay * 1_000_000),
        }

    @model_validator(mode="after")
    def _variation_below_size(self) -> SlicerParams:
        if self.size_variation >= self.average_size:
            raise ValueError(
                f"size_variation ({self.size_variation}) must be smaller than "
                f"average_size ({self.average_size})"
            )
        return self


# --- channel behaviour -----------------------------------------------------------------


class KnobParams(FaultParams):
    def knobs(self) -> dict[str, Any]:
        """The channel knobs to set (PUT /admin/behaviour) while the fault is active."""
        raise NotImplementedError


class _RateParams(KnobParams):
    rate: float = Field(ge=0.0, le=1.0)
    knob: ClassVar[str] = ""

    def knobs(self) -> dict[str, Any]:
        return {self.knob: self.rate}


class NotifyDuplicateParams(_RateParams):
    knob = "notify_duplicate_rate"


class NotifyDropParams(_RateParams):
    knob = "notify_drop_rate"


class ForgedNotifyParams(_RateParams):
    knob = "forged_notify_rate"


class PayFailureParams(_RateParams):
    knob = "pay_failure_rate"


class NotifyDelayParams(KnobParams):
    min: Annotated[Duration, Field(le=600)]
    max: Annotated[Duration, Field(le=600)]

    @model_validator(mode="after")
    def _min_below_max(self) -> NotifyDelayParams:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}s) must not exceed max ({self.max}s)")
        return self

    def knobs(self) -> dict[str, Any]:
        return {"notify_delay_ms": {"min": _ms(self.min), "max": _ms(self.max)}}


class NotifyReorderParams(KnobParams):
    def knobs(self) -> dict[str, Any]:
        return {"notify_reorder": True}


class PayAfterCloseParams(KnobParams):
    def knobs(self) -> dict[str, Any]:
        return {"accept_pay_after_close": True}


class RetryScheduleParams(KnobParams):
    schedule: Literal["alipay", "wechat", "adyen", "stripe"]

    def knobs(self) -> dict[str, Any]:
        return {"retry_schedule": self.schedule}


class TimeScaleParams(KnobParams):
    scale: float = Field(gt=0.0, le=1000.0)

    def knobs(self) -> dict[str, Any]:
        return {"time_scale": self.scale}


# --- the catalog -----------------------------------------------------------------------


@dataclass(frozen=True)
class FaultType:
    name: str
    kind: Kind
    params: type[FaultParams]
    description: str
    windowed: bool = True  # False: instantaneous, takes no `for`

    @property
    def targets(self) -> tuple[str, ...]:
        if self.kind is Kind.NETWORK:
            return PROXIES
        if self.kind is Kind.PROCESS:
            return SERVICES
        return ("channel",)


def _fault(
    name: str, kind: Kind, params: type[FaultParams], description: str, *, windowed: bool = True
) -> FaultType:
    return FaultType(name, kind, params, description, windowed)


FAULTS: dict[str, FaultType] = {
    f.name: f
    for f in (
        _fault("latency", Kind.NETWORK, LatencyParams,
               "delay data on a link (latency, jitter)"),
        _fault("timeout", Kind.NETWORK, TimeoutParams,
               "stop all data on a link; close after `timeout` (0: hold until healed)"),
        _fault("reset_peer", Kind.NETWORK, ResetPeerParams,
               "reset connections (TCP RST) after `timeout`"),
        _fault("limit_data", Kind.NETWORK, LimitDataParams,
               "close connections after `bytes` bytes"),
        _fault("bandwidth", Kind.NETWORK, BandwidthParams, "cap a link at `rate` KB/s"),
        _fault("slow_close", Kind.NETWORK, SlowCloseParams,
               "delay the closing of connections by `delay`"),
        _fault("slicer", Kind.NETWORK, SlicerParams,
               "cut data into small packets (average_size, size_variation, delay)"),
        _fault("down", Kind.NETWORK, NoParams, "link unreachable (proxy disabled)"),
        _fault("kill", Kind.PROCESS, NoParams,
               "SIGKILL the service; restart it when the window ends"),
        _fault("pause", Kind.PROCESS, NoParams, "SIGSTOP the service; SIGCONT when healed"),
        _fault("restart", Kind.PROCESS, NoParams, "graceful restart (instantaneous)",
               windowed=False),
        _fault("notify_duplicate", Kind.BEHAVIOUR, NotifyDuplicateParams,
               "the channel sends each notification twice with probability `rate`"),
        _fault("notify_drop", Kind.BEHAVIOUR, NotifyDropParams,
               "the channel never sends a notification with probability `rate`"),
        _fault("notify_delay", Kind.BEHAVIOUR, NotifyDelayParams,
               "the channel delays notifications by `min`..`max`"),
        _fault("notify_reorder", Kind.BEHAVIOUR, NotifyReorderParams,
               "the channel sends notifications out of order"),
        _fault("forged_notify", Kind.BEHAVIOUR, ForgedNotifyParams,
               "the channel also sends forged or replayed notifications at `rate`"),
        _fault("pay_failure", Kind.BEHAVIOUR, PayFailureParams,
               "the channel declines payments with probability `rate`"),
        _fault("pay_after_close", Kind.BEHAVIOUR, PayAfterCloseParams,
               "the channel accepts payment of closed payments (late pay)"),
        _fault("retry_schedule", Kind.BEHAVIOUR, RetryScheduleParams,
               "switch the channel's notification retry preset"),
        _fault("time_scale", Kind.BEHAVIOUR, TimeScaleParams,
               "change the compression of the channel's retry schedule"),
    )
}  # fmt: skip


def fault_type(name: str) -> FaultType:
    try:
        return FAULTS[name]
    except KeyError:
        raise KeyError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None


def describe() -> list[tuple[str, str, str]]:
    """(fault, targets, description) for every fault, for help texts."""
    out = []
    for f in FAULTS.values():
        targets = "a link" if f.kind is Kind.NETWORK else (
            "a service" if f.kind is Kind.PROCESS else "channel"
        )
        out.append((f.name, targets, f.description))
    return out
