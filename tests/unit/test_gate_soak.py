"""`make gate-soak`'s bookkeeping: what counts as a false alarm, and how it is summed up."""

from __future__ import annotations

from pathlib import Path

from benchmarks.gate_soak import HARNESS, NO_RESULT, SoakRun, alarms_of, render_table, summarize


def result(*tiers: str, invalid: tuple[str, ...] = ()) -> dict[str, object]:
    return {
        "verdict": "pass",
        "objectives": [{"name": f"o{i}", "tier": tier} for i, tier in enumerate(tiers)],
        "audit": {"checks": {cls: {"verdict": "invalid" if cls in invalid else "valid"}
                             for cls in ("P1", "I1")}},
    }


def test_a_passing_run_raises_no_alarm() -> None:
    assert alarms_of(result("pass", "warning", "not_applicable"), 0) == []


def test_failed_and_unknown_objectives_and_anomalies_are_alarms() -> None:
    assert alarms_of(result("pass", "fail", "unknown"), 1) == ["o1 (fail)", "o2 (unknown)"]
    assert alarms_of(result("pass", invalid=("I1",)), 1) == ["anomaly I1"]


def test_harness_errors_and_missing_results_are_alarms_of_their_own() -> None:
    assert alarms_of({"verdict": "error"}, 3) == [HARNESS]
    assert alarms_of(None, 3) == [NO_RESULT]
    assert alarms_of(result("pass"), 2) == ["exit 2"]  # nonzero with nothing to blame


def test_summary_counts_false_alarms_per_scenario_and_objective() -> None:
    runs = [SoakRun("smoke", 1, 0, 60.0, "r1"),
            SoakRun("smoke", 2, 1, 60.0, "r2", ["o1 (fail)"]),
            SoakRun("blackhole", 1, 2, 90.0, "r3", ["o2 (unknown)", "o1 (fail)"]),
            SoakRun("blackhole", 2, 2, 90.0, "r4", ["o2 (unknown)"])]
    summary = summarize(runs, 2, Path("slos/release.yaml"))
    assert summary["false_alarms"] == 3 and summary["runs"] == 4
    assert summary["scenarios"]["smoke"] == {"runs": 2, "false_alarms": 1,
                                             "by_objective": {"o1 (fail)": 1}}
    assert summary["scenarios"]["blackhole"]["by_objective"] == {"o1 (fail)": 1,
                                                                 "o2 (unknown)": 2}
    table = render_table(summary)
    assert "total false alarms: 3" in table and "o2 (unknown) ×2" in table
