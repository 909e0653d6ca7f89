"""Apply and heal one fault step: Toxiproxy toxics, process control, channel knobs.

All Toxiproxy access goes through `faults.toxiproxy.Toxiproxy` (the stack's adapter);
process control through the stack supervisor; channel knobs through the channel's
admin API (`GET`/`PUT /admin/behaviour`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Protocol

import httpx

from faults.catalog import Kind, KnobParams, ToxicParams
from faults.scenario import Step
from faults.toxiproxy import Toxiproxy, ToxiproxyError


class FaultError(RuntimeError):
    """Applying or healing a fault failed; the message says which step and why."""


class FaultDriver(Protocol):
    """What the scheduler needs: make a step's fault happen, and undo it."""

    def apply(self, index: int, step: Step) -> None: ...

    def heal(self, index: int, step: Step) -> None: ...


class StackControl(Protocol):
    """The part of `chaosbed.stack.Stack` the drivers use."""

    @property
    def toxiproxy(self) -> Toxiproxy: ...

    def kill(self, service: str) -> Any: ...

    def start_service(self, service: str) -> Any: ...

    def restart(self, service: str) -> Any: ...

    def pause(self, service: str) -> Any: ...

    def resume(self, service: str) -> Any: ...

    def url(self, service: str) -> str: ...

    def admin_headers(self) -> dict[str, str]: ...


def toxic_name(index: int, step: Step) -> str:
    """The toxic's name on its proxy: unique per step, readable in Toxiproxy's API."""
    return f"chaosbed_step{index}_{step.fault}"


class StackDriver:
    """Drives faults against a running stack."""

    def __init__(
        self,
        stack: StackControl,
        *,
        timeout_s: float = 5.0,
        knob_retry_s: float = 15.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._stack = stack
        self._http = http or httpx.Client(timeout=httpx.Timeout(timeout_s))
        self._knob_retry_s = knob_retry_s
        self._saved_knobs: dict[int, dict[str, Any]] = {}  # step -> values before apply
        self._active_knobs: dict[int, dict[str, Any]] = {}  # step -> values it set
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    # --- dispatch ----------------------------------------------------------------------

    def apply(self, index: int, step: Step) -> None:
        try:
            kind = step.type.kind
            if kind is Kind.NETWORK:
                self._apply_network(index, step)
            elif kind is Kind.PROCESS:
                self._apply_process(step)
            else:
                self._apply_knobs(index, step)
        except FaultError:
            raise
        except Exception as exc:  # adapter / supervisor / HTTP errors, reported per step
            raise FaultError(f"apply {step.label()}: {type(exc).__name__}: {exc}") from exc

    def heal(self, index: int, step: Step) -> None:
        try:
            kind = step.type.kind
            if kind is Kind.NETWORK:
                self._heal_network(index, step)
            elif kind is Kind.PROCESS:
                self._heal_process(step)
            else:
                self._heal_knobs(index, step)
        except FaultError:
            raise
        except Exception as exc:
            raise FaultError(f"heal {step.label()}: {type(exc).__name__}: {exc}") from exc

    # --- network -----------------------------------------------------------------------

    def _apply_network(self, index: int, step: Step) -> None:
        proxy = self._stack.toxiproxy
        if step.fault == "down":
            proxy.set_enabled(step.target, False)
            return
        spec = step.spec
        assert isinstance(spec, ToxicParams)
        name = toxic_name(index, step)
        try:
            proxy.add_toxic(
                step.target,
                step.fault,
                stream=spec.stream,
                toxicity=spec.toxicity,
                attributes=spec.attributes(),
                name=name,
            )
        except ToxiproxyError:
            # a timed-out request may still have created it: leave nothing half-applied
            _remove_quietly(proxy, step.target, name)
            raise

    def _heal_network(self, index: int, step: Step) -> None:
        proxy = self._stack.toxiproxy
        if step.fault == "down":
            proxy.set_enabled(step.target, True)
            return
        try:
            proxy.remove_toxic(step.target, toxic_name(index, step))
        except ToxiproxyError as exc:
            if exc.status != 404:  # already gone is healed
                raise

    # --- process -----------------------------------------------------------------------

    def _apply_process(self, step: Step) -> None:
        if step.fault == "kill":
            self._stack.kill(step.target)
        elif step.fault == "pause":
            self._stack.pause(step.target)
        elif step.fault == "restart":
            self._stack.restart(step.target)
            if step.target == "channel":
                self._reapply_knobs()
        else:
            raise FaultError(f"no process driver for fault {step.fault!r}")

    def _heal_process(self, step: Step) -> None:
        if step.fault == "kill":
            self._stack.start_service(step.target)
            if step.target == "channel":
                self._reapply_knobs()
        elif step.fault == "pause":
            self._stack.resume(step.target)
        # restart is instantaneous: nothing to undo

    # --- channel behaviour -------------------------------------------------------------

    def _behaviour_url(self) -> str:
        return self._stack.url("channel").rstrip("/") + "/admin/behaviour"

    def _knobs_call(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._http.request(
            method, self._behaviour_url(), json=body, headers=self._stack.admin_headers()
        )
        if response.status_code >= 400:
            raise FaultError(
                f"channel {method} /admin/behaviour answered {response.status_code}: "
                f"{response.text.strip()[:300]}"
            )
        return dict(response.json())

    def _apply_knobs(self, index: int, step: Step) -> None:
        spec = step.spec
        assert isinstance(spec, KnobParams)
        wanted = spec.knobs()
        with self._lock:
            current = self._knobs_call("GET")
            missing = sorted(set(wanted) - set(current))
            if missing:
                raise FaultError(f"channel has no knob(s) {', '.join(missing)}")
            self._saved_knobs[index] = {name: current[name] for name in wanted}
            self._knobs_call("PUT", wanted)
            self._active_knobs[index] = wanted

    def _heal_knobs(self, index: int, step: Step) -> None:
        saved = self._saved_knobs.get(index)
        if saved is None:
            return
        # the channel may be restarting (a kill step): keep trying for a while
        deadline = time.monotonic() + self._knob_retry_s
        while True:
            try:
                with self._lock:
                    self._knobs_call("PUT", saved)
                break
            except (httpx.TransportError, FaultError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)
        del self._saved_knobs[index]
        self._active_knobs.pop(index, None)

    def _reapply_knobs(self) -> None:
        """A restarted channel is back on its default knobs: set the active faults' again."""
        merged: dict[str, Any] = {}
        for wanted in self._active_knobs.values():
            merged.update(wanted)
        if merged:
            with self._lock:
                self._knobs_call("PUT", merged)


def _remove_quietly(proxy: Toxiproxy, target: str, name: str) -> None:
    with contextlib.suppress(ToxiproxyError):
        proxy.remove_toxic(target, name)
