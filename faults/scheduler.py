"""The fault timeline: apply and heal each step on time, relative to the load start.

The scheduler is driven by `tick(now)` from the run's main loop (the main thread), so a
service restarted by a heal is a child of the main thread like the rest of the stack.
Every apply/heal is recorded (faults.ndjson) with its wall time and outcome, and sets the
`chaosbed_fault_active{fault,target}` gauge.  `heal_all()` undoes whatever is still
active; it is idempotent and is called at the end, on Ctrl-C and on errors.

Recorded `t`: an apply's start (the fault may act from then on) and a heal's completion
(the fault may act until then), so the fault window covers the whole disruption.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from faults.drivers import FaultDriver
from faults.scenario import Step

Action = Literal["apply", "heal"]


class FaultGauge(Protocol):
    def set_active(self, fault: str, target: str, active: bool) -> None: ...


@dataclass(frozen=True, order=True)
class Event:
    """One thing to do at `at` seconds after load start; heals sort before applies."""

    at: float
    rank: int  # 0 heal, 1 apply: a window ending when another starts is healed first
    index: int
    action: Action


@dataclass(frozen=True)
class Outcome:
    event: Action
    index: int
    step: Step
    ok: bool
    error: str | None
    t: float  # as recorded: an apply's start, a heal's completion


def plan(timeline: Sequence[Step]) -> list[Event]:
    """Every apply and heal of the timeline in the order they happen."""
    events: list[Event] = []
    for index, step in enumerate(timeline):
        events.append(Event(step.at, 1, index, "apply"))
        if step.type.windowed:
            events.append(Event(step.end, 0, index, "heal"))
    return sorted(events)


class Scheduler:
    def __init__(
        self,
        timeline: Sequence[Step],
        driver: FaultDriver,
        *,
        record: Callable[[Mapping[str, Any]], None],
        gauge: FaultGauge | None = None,
        wall: Callable[[], float] = time.time,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._timeline = list(timeline)
        self._driver = driver
        self._record = record
        self._gauge = gauge
        self._wall = wall
        self._on_outcome = on_outcome
        self._pending = plan(self._timeline)
        self._active: dict[int, Step] = {}  # insertion order = order of application
        self._t0: float | None = None
        self.heal_errors: list[str] = []

    # --- timing ------------------------------------------------------------------------

    def begin(self, t0: float) -> None:
        """Start the clock: `t0` is the load start on the same clock later given to `tick`."""
        self._t0 = t0

    def next_due(self) -> float | None:
        """Seconds after load start of the next pending event (None when nothing is left)."""
        return self._pending[0].at if self._pending else None

    @property
    def finished(self) -> bool:
        return not self._pending

    def active(self) -> list[tuple[int, Step]]:
        return list(self._active.items())

    def tick(self, now: float) -> list[Outcome]:
        """Run every event due at `now` (same clock as `begin`); returns what happened."""
        if self._t0 is None:
            raise RuntimeError("Scheduler.tick before begin()")
        elapsed = now - self._t0
        outcomes: list[Outcome] = []
        while self._pending and self._pending[0].at <= elapsed:
            event = self._pending.pop(0)
            step = self._timeline[event.index]
            if event.action == "apply":
                outcome = self._apply(event.index, step)
                outcomes.append(outcome)
                if outcome.ok and not step.type.windowed:
                    outcomes.append(self._heal(event.index, step))
            elif event.index in self._active:  # a failed apply has nothing to heal
                outcomes.append(self._heal(event.index, step))
        return outcomes

    # --- apply / heal ------------------------------------------------------------------

    def _apply(self, index: int, step: Step) -> Outcome:
        started = self._wall()
        try:
            self._driver.apply(index, step)
        except Exception as exc:  # recorded; the run goes on
            return self._done("apply", index, step, started, exc)
        self._active[index] = step
        if self._gauge is not None:
            self._gauge.set_active(step.fault, step.target, True)
        return self._done("apply", index, step, started, None)

    def _heal(self, index: int, step: Step) -> Outcome:
        try:
            self._driver.heal(index, step)
        except Exception as exc:  # stays active: heal_all tries again
            return self._done("heal", index, step, self._wall(), exc)
        self._active.pop(index, None)
        if self._gauge is not None:
            self._gauge.set_active(step.fault, step.target, False)
        return self._done("heal", index, step, self._wall(), None)

    def _done(
        self, action: Action, index: int, step: Step, t: float, exc: Exception | None
    ) -> Outcome:
        error = None if exc is None else (str(exc) or type(exc).__name__)
        self._record(
            {
                "event": action,
                "step": index,
                "fault": step.fault,
                "target": step.target,
                "params": step.spec.model_dump(),
                "t": t,
                "ok": exc is None,
                "error": error,
            }
        )
        outcome = Outcome(action, index, step, exc is None, error, t)
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        return outcome

    def heal_all(self) -> list[Outcome]:
        """Cancel what is still planned and heal every active fault, newest first.

        Idempotent.  A fault whose heal fails twice (once on time, once here) is given up
        on and reported in `heal_errors`.
        """
        self._pending.clear()
        outcomes = []
        for index, step in reversed(list(self._active.items())):
            outcome = self._heal(index, step)
            outcomes.append(outcome)
            if not outcome.ok:
                self._active.pop(index, None)
                self.heal_errors.append(f"step {index} ({step.label()}): {outcome.error}")
        return outcomes
