"""Scenario files: every kind of bad file gives a precise error; every shipped scenario parses."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from faults.catalog import FAULTS, LatencyParams, SlicerParams
from faults.durations import parse_duration
from faults.scenario import (
    SCENARIO_DIR,
    ScenarioError,
    list_scenarios,
    load_scenario,
    parse_scenario,
)

HEAD = """\
name: t
description: a test scenario
duration: 40s
settle: 5s
load: {shape: steady, users: 2}
timeline:
"""


def _write(tmp_path: Path, timeline: str, head: str = HEAD) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(head + textwrap.dedent(timeline))
    return path


def _error(tmp_path: Path, timeline: str, head: str = HEAD) -> ScenarioError:
    path = _write(tmp_path, timeline, head)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(path) in str(info.value) or "bad.yaml" in str(info.value)
    return info.value


GOOD_STEP = (
    "  - {at: 1s, for: 2s, target: order_channel, fault: latency, params: {latency: 10ms}}\n"
)


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ("{at: 5s, for: 2s, target: order_channel, fault: latncy}", "unknown fault 'latncy'"),
        ("{at: 5s, for: 2s, target: payments, fault: down}", "unknown target 'payments'"),
        ("{at: 5s, for: 2s, target: order_channel, fault: kill}",
         "fault 'kill' (process fault) cannot target 'order_channel'"),
        ("{at: 5s, for: 2s, target: order, fault: latency, params: {latency: 1s}}",
         "fault 'latency' (network fault) cannot target 'order'"),
        ("{at: 5s, for: 2s, target: order_inventory, fault: notify_drop, params: {rate: 1}}",
         "cannot target 'order_inventory'"),
        ("{at: 5s, for: 2s, fault: down}", "target: Field required"),
        ("{for: 2s, target: order_channel, fault: down}", "at: Field required"),
        ("{at: -1s, for: 2s, target: order_channel, fault: down}", "must not be negative"),
        ("{at: 5s, for: -2, target: order_channel, fault: down}", "must not be negative"),
        ("{at: 5s, for: soon, target: order_channel, fault: down}", "duration 'soon'"),
        ("{at: 5s, target: order_channel, fault: down}", "needs a window"),
        ("{at: 5s, for: 2s, target: order, fault: restart}", "instantaneous"),
        ("{at: 5s, for: 2s, target: order_channel, fault: latency}",
         "bad params for latency: latency: Field required"),
        ("{at: 5s, for: 2s, target: order_channel, fault: latency,"
         " params: {latency: 1s, toxicity: 1.5}}", "toxicity: Input should be less than or equal"),
        ("{at: 5s, for: 2s, target: order_channel, fault: latency,"
         " params: {latency: 1s, latncy: 2s}}", "latncy: Extra inputs are not permitted"),
        ("{at: 5s, for: 2s, target: order_channel, fault: latency,"
         " params: {latency: 1s, stream: sideways}}", "stream"),
        ("{at: 5s, for: 2s, target: channel, fault: notify_delay, params: {min: 2s, max: 1s}}",
         "must not exceed max"),
        ("{at: 5s, for: 2s, target: order_channel, fault: slicer, params: {average_size: 0}}",
         "average_size"),
        ("{at: 5s, for: 2s, target: order_channel, fault: down, params: {rate: 1}}",
         "rate: Extra inputs"),
        ("{at: 5s, for: 2s, target: order, fault: kill, extra: 1}", "extra: Extra inputs"),
    ],
)
def test_bad_step_names_file_step_line_and_reason(tmp_path: Path, step: str, reason: str) -> None:
    err = _error(tmp_path, GOOD_STEP + f"  - {step}\n")
    assert err.step == 1
    assert err.line == 8  # HEAD is 6 lines, the good step is line 7
    assert reason in str(err)
    assert "timeline step 1" in str(err)
    assert "bad.yaml:8: timeline step 1" in str(err)


def test_block_style_step_points_at_the_failing_line(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        """\
          - at: 5s
            for: 2s
            target: order_channel
            fault: latency
            params:
              latency: 1s
              toxicity: 3
        """,
    )
    assert err.step == 0
    assert err.line == 13  # `toxicity: 3`
    assert "toxicity" in err.reason


def test_block_style_unknown_fault_points_at_the_fault_line(tmp_path: Path) -> None:
    err = _error(tmp_path, "  - at: 5s\n    for: 2s\n    target: order\n    fault: explode\n")
    assert (err.step, err.line) == (0, 10)
    assert "unknown fault 'explode'" in err.reason


def test_step_ending_after_the_load(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD_STEP + "  - {at: 35s, for: 10s, target: order, fault: kill}\n")
    assert err.step == 1 and err.line == 8
    assert "ends at 45s, after the load duration (40s)" in str(err)


def test_instant_step_at_the_end_of_the_load(tmp_path: Path) -> None:
    err = _error(tmp_path, "  - {at: 40s, target: order, fault: restart}\n")
    assert err.step == 0
    assert "after the load duration" in str(err)


@pytest.mark.parametrize(
    ("second", "overlaps"),
    [
        ("{at: 2s, for: 5s, target: order_channel, fault: latency, params: {latency: 1s}}", True),
        ("{at: 3s, for: 5s, target: order_channel, fault: down}", False),  # other fault
        ("{at: 2s, for: 5s, target: client_order, fault: latency, params: {latency: 1s}}", False),
        ("{at: 3s, for: 5s, target: order_channel, fault: latency, params: {latency: 1s}}",
         False),  # starts when the first one heals
    ],
)
def test_overlap_of_same_fault_on_same_target(tmp_path: Path, second: str, overlaps: bool) -> None:
    path = _write(tmp_path, GOOD_STEP + f"  - {second}\n")
    if not overlaps:
        load_scenario(path)
        return
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.step == 1 and info.value.line == 8
    assert "overlaps step 0 (latency on order_channel, 1s-3s)" in str(info.value)


def test_process_faults_on_one_service_may_not_overlap(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        "  - {at: 5s, for: 5s, target: order, fault: kill}\n"
        "  - {at: 7s, target: order, fault: restart}\n",
    )
    assert err.step == 1
    assert "overlaps step 0 (kill on order" in str(err)


def test_different_knobs_may_overlap_on_the_channel(tmp_path: Path) -> None:
    scenario = load_scenario(
        _write(
            tmp_path,
            "  - {at: 5s, for: 5s, target: channel, fault: notify_drop, params: {rate: 0.5}}\n"
            "  - {at: 6s, for: 5s, target: channel, fault: notify_duplicate, params: {rate: 1}}\n",
        )
    )
    assert [s.fault for s in scenario.timeline] == ["notify_drop", "notify_duplicate"]


def test_all_problems_are_listed(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        "  - {at: 5s, for: 2s, target: nowhere, fault: down}\n"
        "  - {at: 5s, for: 2s, target: order, fault: nothing}\n",
    )
    assert [p[1] for p in err.problems] == [0, 1]
    assert [p[0] for p in err.problems] == [7, 8]


EMPTY = HEAD + "  []\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (EMPTY.replace("duration: 40s", "duration: 0"), "duration: load duration must be > 0"),
        (EMPTY.replace("name: t", "name: a b"), "name: must be 1-64 characters"),
        (EMPTY.replace("description: a test scenario\n", ""), "description: Field required"),
        (EMPTY + "surprise: 1\n", "surprise: Extra inputs are not permitted"),
        (EMPTY.replace("users: 2", "users: 0"), "load.users"),
        (EMPTY.replace("shape: steady", "shape: zigzag"), "load.shape"),
        (EMPTY + "services: {close_after: 3}\n", "unknown service setting 'close_after'"),
        (EMPTY + "services: {close_after_s: -3}\n", "must not be negative"),
        (EMPTY + "services: {retry_schedule: paypal}\n", "retry_schedule 'paypal'"),
        (EMPTY.replace("shape: steady", "shape: flash_sale"), "flash_sale needs spike_at"),
    ],
)
def test_bad_top_level_fields(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert reason in str(info.value)
    assert info.value.step is None
    assert info.value.line is not None
    assert f"bad.yaml:{info.value.line}: " in str(info.value)


def test_unknown_service_setting_points_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + "  []\nservices:\n  query_after_s: 1\n  close_after: 3\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.line == 8  # the services mapping


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + "  - {at: 5s, for: [2s\n")
    with pytest.raises(ScenarioError, match="not valid YAML") as info:
        load_scenario(path)
    assert info.value.line is not None and info.value.line >= 7


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="must be a YAML mapping"):
        parse_scenario("- 1\n- 2\n", "x.yaml")


def test_unknown_scenario_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ScenarioError, match="no such scenario file.*smoke"):
        load_scenario("no-such-scenario")


def test_a_good_scenario_is_typed_and_normalised(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "  - {at: 500ms, for: 2m, target: order_channel, fault: latency,"
        " params: {latency: 200ms, jitter: 0.05, stream: upstream, toxicity: 0.5}}\n"
        "  - {at: 1, target: inventory, fault: restart}\n",
        head=HEAD.replace("duration: 40s", "duration: 3m"),
    )
    scenario = load_scenario(path)
    first, second = scenario.timeline
    assert (first.at, first.for_, first.end) == (0.5, 120.0, 120.5)
    assert isinstance(first.spec, LatencyParams)
    assert first.spec.attributes() == {"latency": 200, "jitter": 50}
    assert first.spec.stream == "upstream" and first.spec.toxicity == 0.5
    assert second.for_ == 0 and not second.type.windowed
    assert scenario.fault_targets() == [("latency", "order_channel"), ("restart", "inventory")]


def test_service_overrides_become_environment() -> None:
    scenario = parse_scenario(
        HEAD + "  []\nservices: {close_after_s: 10s, query_after_s: 2, time_scale: 0.5,"
        " retry_schedule: alipay}\n",
        "x.yaml",
    )
    assert scenario.service_env() == {
        "CHAOSBED_CLOSE_AFTER_S": "10.0",
        "CHAOSBED_QUERY_AFTER_S": "2.0",
        "CHAOSBED_TIME_SCALE": "0.5",
        "CHAOSBED_RETRY_SCHEDULE": "alipay",
    }


def test_load_dict_has_durations_in_seconds() -> None:
    scenario = parse_scenario(
        HEAD.replace(
            "load: {shape: steady, users: 2}",
            "load: {shape: flash_sale, users: 2, spike_at: 10s, spike_for: 500ms, max_poll: 1m}",
        )
        + "  []\n",
        "x.yaml",
    )
    load = scenario.load_dict()
    assert (load["spike_at"], load["spike_for"], load["max_poll"]) == (10.0, 0.5, 60.0)
    assert "rate" not in load


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), (3, 3.0), (0.25, 0.25),
     ("1.5s", 1.5), ("7", 7.0)],
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["-1s", -1, "5 parsecs", "", True, None, [1]])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(raw)


def test_slicer_delay_is_in_microseconds() -> None:
    spec = SlicerParams(average_size=64, size_variation=16, delay=0.002)  # type: ignore[arg-type]
    assert spec.attributes() == {"average_size": 64, "size_variation": 16, "delay": 2000}


# --- shipped scenarios -------------------------------------------------------------


SHIPPED = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def test_the_expected_scenarios_are_shipped() -> None:
    assert set(SHIPPED) >= {
        "smoke", "baseline", "network-chaos", "callback-storm", "crash-restart", "flash-sale",
        "blackhole",
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_parses(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name
    # orders left unpaid at the end must be closed within the settle window
    close_after = float(scenario.services.get("close_after_s", 20.0))
    assert close_after <= scenario.settle, f"{name}: close_after_s > settle"


def test_list_scenarios_gives_one_line_descriptions() -> None:
    listed = dict(list_scenarios())
    assert sorted(listed) == SHIPPED
    assert all(desc and "\n" not in desc for desc in listed.values())


def test_smoke_is_short_and_has_each_kind_of_fault() -> None:
    smoke = load_scenario("smoke")
    assert smoke.duration + smoke.settle <= 60
    assert {FAULTS[s.fault].kind.value for s in smoke.timeline} == {
        "network", "process", "behaviour"
    }


def test_network_chaos_covers_every_link_with_each_fault() -> None:
    scenario = load_scenario("network-chaos")
    pairs = {(s.fault, s.target) for s in scenario.timeline}
    for fault in ("latency", "reset_peer", "timeout", "limit_data"):
        for link in ("client_order", "client_channel", "order_inventory", "order_channel",
                     "channel_notify"):
            assert (fault, link) in pairs


def test_blackhole_takes_the_channel_down_for_30s() -> None:
    steps = load_scenario("blackhole").timeline
    down = {(s.target, s.fault, s.for_, s.at) for s in steps if s.fault == "down"}
    assert down == {("order_channel", "down", 30.0, 25.0), ("client_channel", "down", 30.0, 25.0)}
    # the brown-out before it: orders still succeed, slowly (latency during faults' samples)
    [brown_out] = [s for s in steps if s.fault != "down"]
    assert (brown_out.fault, brown_out.target, brown_out.end) == ("latency", "order_channel", 25.0)
