"""The fault scheduler with a fake driver and a fake clock; the drivers with a fake stack."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from chaosbed.harness_metrics import HarnessMetrics
from faults.drivers import FaultError, StackDriver, toxic_name
from faults.scenario import Step, parse_scenario
from faults.scheduler import Scheduler, plan
from faults.toxiproxy import ToxiproxyError


def _timeline(*steps: str, duration: str = "60s") -> list[Step]:
    text = (
        f"name: t\ndescription: d\nduration: {duration}\ntimeline:\n"
        + "".join(f"  - {s}\n" for s in steps)
    )
    return parse_scenario(text, "t.yaml").timeline


class FakeDriver:
    def __init__(self, *, fail_apply: set[int] = frozenset(),  # type: ignore[assignment]
                 fail_heal: dict[int, int] | None = None) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.fail_apply = set(fail_apply)
        self.fail_heal = dict(fail_heal or {})  # step -> how many heals fail

    def apply(self, index: int, step: Step) -> None:
        self.calls.append(("apply", index, step.fault))
        if index in self.fail_apply:
            raise FaultError(f"cannot apply {step.label()}")

    def heal(self, index: int, step: Step) -> None:
        self.calls.append(("heal", index, step.fault))
        if self.fail_heal.get(index, 0) > 0:
            self.fail_heal[index] -= 1
            raise FaultError(f"cannot heal {step.label()}")


class Recorder:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __call__(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def events(self) -> list[tuple[str, int, bool]]:
        return [(r["event"], r["step"], r["ok"]) for r in self.records]


def _scheduler(
    timeline: list[Step], driver: FakeDriver
) -> tuple[Scheduler, Recorder, HarnessMetrics]:
    recorder = Recorder()
    metrics = HarnessMetrics()
    wall = iter(range(1000, 2000))
    scheduler = Scheduler(
        timeline, driver, record=recorder, gauge=metrics, wall=lambda: float(next(wall))
    )
    scheduler.begin(100.0)
    return scheduler, recorder, metrics


STEPS = (
    "{at: 10s, for: 5s, target: order_channel, fault: latency, params: {latency: 100ms}}",
    "{at: 2s, for: 3s, target: order, fault: kill}",
    "{at: 15s, for: 5s, target: order_channel, fault: latency, params: {latency: 1s}}",
    "{at: 12s, target: inventory, fault: restart}",
    "{at: 5s, for: 20s, target: channel, fault: notify_drop, params: {rate: 1}}",
)


def test_plan_orders_by_time_with_heals_first() -> None:
    events = [(e.at, e.action, e.index) for e in plan(_timeline(*STEPS))]
    assert events == [
        (2.0, "apply", 1),
        (5.0, "heal", 1),
        (5.0, "apply", 4),
        (10.0, "apply", 0),
        (12.0, "apply", 3),
        (15.0, "heal", 0),  # the window ending at 15 s is healed before the next one starts
        (15.0, "apply", 2),
        (20.0, "heal", 2),
        (25.0, "heal", 4),
    ]


def test_tick_runs_only_what_is_due() -> None:
    driver = FakeDriver()
    scheduler, recorder, metrics = _scheduler(_timeline(*STEPS), driver)
    assert scheduler.tick(100.0 + 1.9) == []
    assert driver.calls == []
    scheduler.tick(100.0 + 2.0)
    assert driver.calls == [("apply", 1, "kill")]
    assert [i for i, _ in scheduler.active()] == [1]
    assert metrics.value("kill", "order") == 1.0
    scheduler.tick(100.0 + 10.5)
    assert driver.calls[1:] == [("heal", 1, "kill"), ("apply", 4, "notify_drop"),
                                ("apply", 0, "latency")]
    assert metrics.value("kill", "order") == 0.0
    assert [i for i, _ in scheduler.active()] == [4, 0]
    assert scheduler.next_due() == 12.0
    scheduler.tick(100.0 + 30)
    assert scheduler.finished and scheduler.active() == []
    assert recorder.events() == [
        ("apply", 1, True), ("heal", 1, True), ("apply", 4, True), ("apply", 0, True),
        ("apply", 3, True), ("heal", 3, True),  # restart: instantaneous, healed at once
        ("heal", 0, True), ("apply", 2, True), ("heal", 2, True), ("heal", 4, True),
    ]
    # restart has no heal action in the driver: only the record says it is over
    assert ("heal", 3, "restart") in driver.calls


def test_records_follow_the_faults_ndjson_contract() -> None:
    scheduler, recorder, _ = _scheduler(_timeline(STEPS[0]), FakeDriver())
    scheduler.tick(100.0 + 60)
    apply, heal = recorder.records
    assert apply == {
        "event": "apply", "step": 0, "fault": "latency", "target": "order_channel",
        "params": {"stream": "downstream", "toxicity": 1.0, "latency": 0.1, "jitter": 0.0},
        "t": 1000.0, "ok": True, "error": None,
    }
    assert heal["event"] == "heal" and heal["t"] == 1001.0 and heal["ok"] is True


def test_a_failed_apply_is_recorded_and_the_run_goes_on() -> None:
    driver = FakeDriver(fail_apply={1})
    scheduler, recorder, metrics = _scheduler(_timeline(*STEPS), driver)
    scheduler.tick(100.0 + 60)
    assert ("apply", 1, False) in recorder.events()
    assert ("heal", 1, "kill") not in driver.calls  # nothing to heal
    failed = next(r for r in recorder.records if not r["ok"])
    assert failed["error"] == "cannot apply kill on order"
    assert metrics.value("kill", "order") == 0.0
    assert sum(1 for r in recorder.records if r["ok"]) == 8  # the 4 other steps: apply + heal
    assert scheduler.heal_errors == []


def test_heal_all_heals_active_faults_newest_first_and_cancels_the_rest() -> None:
    driver = FakeDriver()
    scheduler, recorder, metrics = _scheduler(_timeline(*STEPS), driver)
    scheduler.tick(100.0 + 11)  # active: notify_drop (4), latency (0)
    driver.calls.clear()
    scheduler.heal_all()
    assert driver.calls == [("heal", 0, "latency"), ("heal", 4, "notify_drop")]
    assert scheduler.active() == [] and scheduler.finished
    assert metrics.value("latency", "order_channel") == 0.0
    assert metrics.value("notify_drop", "channel") == 0.0
    scheduler.tick(100.0 + 60)  # cancelled: nothing more happens
    scheduler.heal_all()  # idempotent
    assert driver.calls == [("heal", 0, "latency"), ("heal", 4, "notify_drop")]
    assert recorder.events()[-2:] == [("heal", 0, True), ("heal", 4, True)]


def test_a_failed_heal_stays_active_and_heal_all_tries_again() -> None:
    driver = FakeDriver(fail_heal={0: 1})
    scheduler, recorder, metrics = _scheduler(_timeline(STEPS[0]), driver)
    scheduler.tick(100.0 + 16)
    assert recorder.events() == [("apply", 0, True), ("heal", 0, False)]
    assert [i for i, _ in scheduler.active()] == [0]
    assert metrics.value("latency", "order_channel") == 1.0  # still broken, says so
    scheduler.heal_all()
    assert recorder.events()[-1] == ("heal", 0, True)
    assert scheduler.heal_errors == []


def test_a_heal_failing_twice_is_reported() -> None:
    driver = FakeDriver(fail_heal={0: 5})
    scheduler, _, _ = _scheduler(_timeline(STEPS[0]), driver)
    scheduler.tick(100.0 + 16)
    scheduler.heal_all()
    assert scheduler.heal_errors == ["step 0 (latency on order_channel): cannot heal latency "
                                     "on order_channel"]
    scheduler.heal_all()  # given up on: not retried forever
    assert [c for c in driver.calls if c[0] == "heal"] == [("heal", 0, "latency")] * 2


def test_tick_before_begin_is_an_error() -> None:
    scheduler = Scheduler(_timeline(STEPS[0]), FakeDriver(), record=Recorder())
    with pytest.raises(RuntimeError, match="before begin"):
        scheduler.tick(0.0)


# --- drivers against a fake stack ----------------------------------------------------


class FakeToxiproxy:
    def __init__(self) -> None:
        self.toxics: dict[str, dict[str, dict[str, Any]]] = {}
        self.enabled: dict[str, bool] = {}

    def add_toxic(self, proxy: str, type: str, *, stream: str, toxicity: float,
                  attributes: Mapping[str, int], name: str) -> dict[str, Any]:
        toxic = {"type": type, "stream": stream, "toxicity": toxicity,
                 "attributes": dict(attributes), "name": name}
        self.toxics.setdefault(proxy, {})[name] = toxic
        return toxic

    def remove_toxic(self, proxy: str, name: str) -> None:
        if name not in self.toxics.get(proxy, {}):
            raise ToxiproxyError("not found", status=404)
        del self.toxics[proxy][name]

    def set_enabled(self, proxy: str, enabled: bool) -> dict[str, Any]:
        self.enabled[proxy] = enabled
        return {}


class FakeStack:
    def __init__(self) -> None:
        self.toxiproxy = FakeToxiproxy()
        self.calls: list[tuple[str, str]] = []

    def kill(self, service: str) -> None:
        self.calls.append(("kill", service))

    def start_service(self, service: str) -> None:
        self.calls.append(("start_service", service))

    def restart(self, service: str) -> None:
        self.calls.append(("restart", service))

    def pause(self, service: str) -> None:
        self.calls.append(("pause", service))

    def resume(self, service: str) -> None:
        self.calls.append(("resume", service))

    def url(self, service: str) -> str:
        return "http://127.0.0.1:9"

    def admin_headers(self) -> dict[str, str]:
        return {}


def test_toxic_faults_are_added_and_removed_by_name() -> None:
    stack = FakeStack()
    driver = StackDriver(stack)  # type: ignore[arg-type]
    (step,) = _timeline("{at: 1s, for: 2s, target: order_channel, fault: latency,"
                        " params: {latency: 250ms, jitter: 20ms, stream: upstream, toxicity: 0.3}}")
    driver.apply(0, step)
    name = toxic_name(0, step)
    assert stack.toxiproxy.toxics["order_channel"][name] == {
        "type": "latency", "stream": "upstream", "toxicity": 0.3,
        "attributes": {"latency": 250, "jitter": 20}, "name": name,
    }
    driver.heal(0, step)
    assert stack.toxiproxy.toxics["order_channel"] == {}
    driver.heal(0, step)  # already gone counts as healed


def test_down_and_process_faults_use_the_stack() -> None:
    stack = FakeStack()
    driver = StackDriver(stack)  # type: ignore[arg-type]
    down, kill, pause, restart = _timeline(
        "{at: 1s, for: 2s, target: client_channel, fault: down}",
        "{at: 1s, for: 2s, target: order, fault: kill}",
        "{at: 4s, for: 2s, target: inventory, fault: pause}",
        "{at: 5s, target: channel, fault: restart}",
    )
    driver.apply(0, down)
    assert stack.toxiproxy.enabled == {"client_channel": False}
    driver.heal(0, down)
    assert stack.toxiproxy.enabled == {"client_channel": True}
    for index, step in enumerate((kill, pause, restart), 1):
        driver.apply(index, step)
        driver.heal(index, step)
    assert stack.calls == [
        ("kill", "order"), ("start_service", "order"),
        ("pause", "inventory"), ("resume", "inventory"),
        ("restart", "channel"),
    ]


def test_driver_errors_name_the_step() -> None:
    stack = FakeStack()
    driver = StackDriver(stack, knob_retry_s=0)  # type: ignore[arg-type]
    (step,) = _timeline("{at: 1s, for: 2s, target: channel, fault: notify_drop,"
                        " params: {rate: 1}}")
    with pytest.raises(FaultError, match="apply notify_drop on channel: "):
        driver.apply(0, step)  # nothing listens on the fake channel URL
    driver.close()


class FakeChannel:
    """GET/PUT /admin/behaviour of a channel whose knobs live in memory (reset on restart)."""

    DEFAULTS = {"notify_drop_rate": 0.0, "notify_duplicate_rate": 0.0, "notify_reorder": False}

    def __init__(self) -> None:
        self.knobs = dict(self.DEFAULTS)
        self.puts: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/admin/behaviour"
        if request.method == "PUT":
            body = json.loads(request.content)
            self.puts.append(body)
            self.knobs.update(body)
        return httpx.Response(200, json=self.knobs)


class ChannelStack(FakeStack):
    def __init__(self, channel: FakeChannel) -> None:
        super().__init__()
        self.channel = channel

    def start_service(self, service: str) -> None:
        super().start_service(service)
        self.channel.knobs = dict(FakeChannel.DEFAULTS)


def test_knob_faults_restore_previous_values_and_survive_a_channel_restart() -> None:
    channel = FakeChannel()
    channel.knobs["notify_drop_rate"] = 0.1  # set by someone before the fault
    stack = ChannelStack(channel)
    http = httpx.Client(transport=httpx.MockTransport(channel.handle), base_url="http://c")
    driver = StackDriver(stack, http=http)  # type: ignore[arg-type]
    drop, reorder, kill = _timeline(
        "{at: 1s, for: 9s, target: channel, fault: notify_drop, params: {rate: 0.8}}",
        "{at: 2s, for: 2s, target: channel, fault: notify_reorder}",
        "{at: 5s, for: 2s, target: channel, fault: kill}",
    )
    driver.apply(0, drop)
    driver.apply(1, reorder)
    assert channel.knobs == {"notify_drop_rate": 0.8, "notify_duplicate_rate": 0.0,
                             "notify_reorder": True}
    driver.heal(1, reorder)
    assert channel.knobs["notify_reorder"] is False and channel.knobs["notify_drop_rate"] == 0.8
    driver.apply(2, kill)
    driver.heal(2, kill)  # the channel comes back on its defaults; the active fault is re-set
    assert channel.knobs["notify_drop_rate"] == 0.8
    driver.heal(0, drop)
    assert channel.knobs["notify_drop_rate"] == 0.1  # the value before the fault, not a default
    assert channel.puts == [
        {"notify_drop_rate": 0.8}, {"notify_reorder": True}, {"notify_reorder": False},
        {"notify_drop_rate": 0.8}, {"notify_drop_rate": 0.1},
    ]


def test_a_knob_the_channel_does_not_have_is_refused_before_any_change() -> None:
    channel = FakeChannel()
    http = httpx.Client(transport=httpx.MockTransport(channel.handle), base_url="http://c")
    driver = StackDriver(ChannelStack(channel), http=http)  # type: ignore[arg-type]
    (step,) = _timeline("{at: 1s, for: 2s, target: channel, fault: pay_failure,"
                        " params: {rate: 0.5}}")
    with pytest.raises(FaultError, match="channel has no knob.*pay_failure_rate"):
        driver.apply(0, step)
    assert channel.puts == []
