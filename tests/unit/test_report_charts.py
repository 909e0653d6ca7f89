"""The report's chart layout (fault lanes, colours, the load's stop) and run context (Jaeger
links, build identity), from hand-made records."""

from __future__ import annotations

import json
import subprocess
from itertools import combinations
from pathlib import Path

import pytest

from chaosbed import proc
from chaosbed import run as run_module
from slos.evaluate import FaultWindow, fault_windows
from slos.records import Op
from slos.report_charts import (
    AX_LEFT,
    AX_RIGHT,
    LaneItem,
    frame_of,
    kind_colours,
    lay_out_lanes,
    per_second,
)
from slos.report_context import read_context
from slos.synthetic import T0, clean_run


def overlapping(a: LaneItem, b: LaneItem) -> bool:
    """Do two items of one lane share any horizontal space (band or label)?"""
    a_lo, a_hi = min(a.band_left, a.label_left), max(a.band_left + a.band_width,
                                                     a.label_left + a.label_width)
    b_lo, b_hi = min(b.band_left, b.label_left), max(b.band_left + b.band_width,
                                                     b.label_left + b.label_width)
    return a_lo < b_hi and b_lo < a_hi


def lanes_for(faults: list[tuple[float, float, str, str]]) -> list[LaneItem]:
    records = clean_run(100, faults=faults)
    windows = fault_windows(records)
    return lay_out_lanes(windows, frame_of(records, windows))


def test_overlapping_faults_get_their_own_lanes_and_labels_never_overlap() -> None:
    # a new fault every 5 s, each for 8 s, as in network-chaos: neighbours overlap in time
    faults = [(5.0 + 5 * i, 8.0, kind, target) for i, (kind, target) in enumerate(
        [("latency", "client_order"), ("latency", "client_channel"),
         ("reset_peer", "order_inventory"), ("timeout", "order_channel"),
         ("limit_data", "channel_notify"), ("down", "order_channel"), ("kill", "order")])]
    items = lanes_for(faults)
    faults_shown = [i for i in items if i.index is not None]
    assert [i.index for i in faults_shown] == list(range(1, 8))
    assert len({i.lane for i in items}) > 1
    for a, b in combinations(items, 2):
        assert not (a.lane == b.lane and overlapping(a, b)), (a, b)
    for i in items:  # inside the plot's width, so they line up with the charts
        assert i.label_left >= 100 * AX_LEFT - 1e-9
        assert i.label_left + i.label_width <= 100 * AX_RIGHT + 1e-9


def test_faults_far_apart_share_one_lane() -> None:
    items = lanes_for([(2.0, 3.0, "latency", "client_order"),
                       (40.0, 3.0, "kill", "order")])
    faults = [i for i in items if i.index is not None]
    assert [i.lane for i in faults] == [0, 0]  # packed, not one lane per fault by default


def test_the_same_lanes_would_collide_if_packed_into_one() -> None:
    # the check above is not vacuous: these labels do overlap when forced into one lane
    items = lanes_for([(5.0, 8.0, "latency", "client_order"),
                       (7.0, 8.0, "latency", "order_channel")])
    a, b = (i for i in items if i.index is not None)
    assert a.lane != b.lane and overlapping(a, b)


def test_one_colour_per_fault_kind() -> None:
    windows = [FaultWindow(0, "latency", "client_order", 1.0, 2.0, True),
               FaultWindow(1, "kill", "order", 3.0, 4.0, True),
               FaultWindow(2, "latency", "order_channel", 5.0, 6.0, True)]
    colours = kind_colours(windows)
    assert list(colours) == ["latency", "kill"]
    assert colours["latency"] != colours["kill"]


def test_the_last_second_of_the_load_is_left_out_of_the_per_second_series() -> None:
    records = clean_run(60, duration=60.0)
    end = records.run.load_ended
    assert end is not None
    for n in range(20):  # the stop cuts these off: they fail, but no fault did it
        records.ops.append(Op("pay", f"cut{n}", "w:1", None, None, end - 0.5, None, None,
                              "info", None, None, None))
    frame = frame_of(records, [])
    bins = per_second(records, frame)
    assert frame.stop == pytest.approx(59.0)
    assert max(bins) == 58  # [58, 59) is the last whole second before the stop
    assert all(good for second in bins.values() for _, good in second)
    items = lay_out_lanes([], frame)
    assert [i.kind for i in items] == ["load-stop", "settle"]


def test_trace_links_only_when_the_run_was_observed(tmp_path: Path) -> None:
    plain = read_context(tmp_path)
    assert plain.trace_url("0af7651916cd43dd8448eb211c80319c") is None
    (tmp_path / "stack.json").write_text(json.dumps(
        {"observe": {"jaeger": "http://127.0.0.1:16686/", "prometheus": "http://x"}}))
    observed = read_context(tmp_path)
    assert observed.trace_url("0af7651916cd43dd8448eb211c80319c") == \
        "http://127.0.0.1:16686/trace/0af7651916cd43dd8448eb211c80319c"
    assert observed.trace_url("not a trace id") is None
    (tmp_path / "stack.json").write_text("{not json")
    assert read_context(tmp_path).jaeger_url is None  # unreadable: no links, no crash


def test_run_context_reads_the_build_and_the_date(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"git_revision": "abc123", "git_dirty": True,
                                                   "workers": 2}))
    context = read_context(tmp_path)
    assert (context.git_revision, context.git_dirty, context.workers) == ("abc123", True, 2)
    assert context.started_text(T0) == "2023-11-14 22:13 UTC"
    assert read_context(tmp_path / "nowhere").git_revision == "unknown"


def test_the_build_identity_falls_back_to_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proc.PROJECT_ROOT,
                          capture_output=True, text=True, check=False).stdout.strip()
    if head:
        assert run_module.build_identity()["git_revision"] == head

    def no_git(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(run_module.subprocess, "run", no_git)
    assert run_module.build_identity() == {"git_revision": "unknown", "git_dirty": None}
