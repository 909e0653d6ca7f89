"""What a run leaves for CI: result.json against its schema, JUnit times, the harness-error
outputs, the --json summary, runs/latest and --out, CHAOSBED_BUGS, and the supervisor."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import rundir
from chaosbed.commands import chosen_bugs
from chaosbed.proc import free_port
from chaosbed.supervisor import HealthWatch, Supervisor, Watched, child_pids, child_problem
from faults import process
from services.common.bugs import UnknownBugError
from slos.gate import evaluate_run, harness_error
from slos.synthetic import clean_run, write_run

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs/result.schema.json").read_text())
SLO = {
    "name": "unit",
    "min_samples": 20,
    "objectives": [
        {"name": "place order latency", "sli": "latency", "op": "place_order",
         "pass": "p(99) < 300ms"},
        {"name": "steady success", "sli": "success_rate", "op": "place_order",
         "phase": "steady", "pass": "rate >= 99%"},
        {"name": "no money lost", "sli": "anomaly", "class": ["P1", "P6"], "pass": "count == 0",
         "key": True},
    ],
}


def _gate(tmp_path: Path, *, lose_payment: bool = False) -> Any:
    records = clean_run(200, faults=[(20, 10, "latency", "order_channel")], every_path=True)
    if lose_payment:
        records.orders[7].status = "AWAITING_PAYMENT"
    slo = tmp_path / "slo.yaml"
    slo.write_text(yaml.safe_dump(SLO))
    return evaluate_run(write_run(records, tmp_path / "run"), slo, None), records


def _validate(data: Any) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(data)


# --- result.json and its schema -----------------------------------------------------------


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("lose_payment", [False, True])
def test_a_real_result_validates_against_the_schema(tmp_path: Path, lose_payment: bool) -> None:
    gate, _ = _gate(tmp_path, lose_payment=lose_payment)
    assert gate.verdict == ("fail" if lose_payment else "pass")
    result = json.loads((gate.run_dir / "result.json").read_text())
    assert result["schema_version"] == 1
    _validate(result)


def test_a_harness_error_result_validates_and_writes_a_junit_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.write_json(run_dir / "run.json", {"started": 1_700_000_000.0,
                                             "ended": 1_700_000_012.5, "status": "failed"})
    gate = harness_error(run_dir, "Toxiproxy (pid 7) killed by signal 9 outside the timeline")
    result = json.loads((run_dir / "result.json").read_text())
    _validate(result)
    assert (result["verdict"], result["exit_code"]) == ("error", 3)
    assert "Toxiproxy" in result["error"] and result["outputs"]["junit"]
    root = ET.parse(run_dir / "junit.xml").getroot()
    cases = list(root.iter("testcase"))
    assert len(cases) == 1
    error = cases[0].find("error")
    assert error is not None and "Toxiproxy" in (error.get("message") or "")
    assert (root.get("errors"), root.get("failures"), root.get("time")) == ("1", "0", "12.500")
    assert root.get("timestamp") == "2023-11-14T22:13:20"
    assert gate.summary()["verdict"] == "error"


def test_an_interrupted_run_result_is_an_error_with_exit_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.write_json(run_dir / "run.json", {"started": 1_700_000_000.0, "status": "interrupted"})
    harness_error(run_dir, "interrupted by SIGINT/SIGTERM before the gate ran", exit_code=130)
    result = json.loads((run_dir / "result.json").read_text())
    _validate(result)
    assert (result["verdict"], result["exit_code"]) == ("error", 130)
    assert "interrupted" in result["headline"]


@pytest.mark.parametrize("broken", [
    {"schema_version": None},
    {"verdict": "error", "exit_code": 0},
    {"verdict": "pass", "exit_code": 130},
    {"verdict": "pass", "exit_code": 1},
    {"verdict": "FAIL"},
])
def test_the_schema_refuses_what_is_not_a_result(tmp_path: Path, broken: dict[str, Any]) -> None:
    gate, _ = _gate(tmp_path)
    result = json.loads((gate.run_dir / "result.json").read_text())
    result.update(broken)
    if result["schema_version"] is None:
        del result["schema_version"]
    with pytest.raises(jsonschema.ValidationError):
        _validate(result)


def test_the_json_summary_uses_result_json_names(tmp_path: Path) -> None:
    gate, _ = _gate(tmp_path, lose_payment=True)
    summary = gate.summary()
    result = json.loads((gate.run_dir / "result.json").read_text())
    for key in ("schema_version", "verdict", "exit_code", "headline", "problems", "run_dir"):
        assert summary[key] == result[key], key
    assert [o["name"] for o in summary["objectives"]] == [o["name"] for o in result["objectives"]]
    found = {c["class"]: c["count"] for c in result["audit"]["checks"].values()
             if c["verdict"] == "invalid"}
    assert summary["anomalies"] == found and found["P1"] == 1
    json.dumps(summary)  # printable as it is


# --- JUnit ------------------------------------------------------------------------------


def test_junit_times_are_the_runs_and_each_objective_has_its_phase_seconds(
    tmp_path: Path,
) -> None:
    gate, records = _gate(tmp_path)
    root = ET.parse(gate.run_dir / "junit.xml").getroot()
    run = records.run
    span = run.settle_ended - run.started
    assert float(root.get("time", "0")) == pytest.approx(span, abs=0.001)
    stamp = datetime.fromtimestamp(run.started, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    for suite in root.iter("testsuite"):
        assert suite.get("timestamp") == stamp
        assert float(suite.get("time", "0")) == pytest.approx(span, abs=0.001)
    cases = {c.get("name"): float(c.get("time", "-1")) for c in root.iter("testcase")}
    load = run.load_ended - run.load_started
    assert cases["place order latency"] == pytest.approx(load, abs=0.001)  # phase all
    # steady is the load minus the 10 s fault window and its recovery
    assert 0 < cases["steady success"] <= load - 10 + 0.001
    assert cases["P1 lost acknowledged payment"] == pytest.approx(span, abs=0.001)


# --- run directory: --out and runs/latest -----------------------------------------------


def test_latest_points_at_the_newest_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = rundir.create_run_dir(runs, "a")
    rundir.point_latest(runs, first)
    second = rundir.create_run_dir(runs, "b")
    link = rundir.point_latest(runs, second)
    assert link.is_symlink() and link.resolve() == second.resolve()
    assert not Path(link.readlink()).is_absolute()  # the runs directory can move
    elsewhere = rundir.create_named_run_dir(tmp_path / "ci" / "run")
    rundir.point_latest(runs, elsewhere)
    assert (runs / "latest").resolve() == elsewhere.resolve()


def test_out_must_be_new_or_empty(tmp_path: Path) -> None:
    made = rundir.create_named_run_dir(tmp_path / "out")
    assert made.stat().st_mode & 0o777 == 0o700
    (made / "result.json").write_text("{}")
    with pytest.raises(rundir.RunDirError, match="not an empty directory"):
        rundir.create_named_run_dir(made)
    assert (made / "result.json").read_text() == "{}"


def test_run_refuses_a_used_out_dir_before_anything_starts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "chaosbed", "run", "smoke", "--out", str(out),
         "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 64, done.stderr
    assert f"--out {out}: already exists" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep"]
    assert not (tmp_path / "runs").exists()


# --- CHAOSBED_BUGS ----------------------------------------------------------------------


def test_bugs_come_from_the_flag_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAOSBED_BUGS", "notify-not-idempotent, no-active-query")
    assert chosen_bugs(argparse.Namespace(bugs=None)) == ["no-active-query",
                                                          "notify-not-idempotent"]
    assert chosen_bugs(argparse.Namespace(bugs="")) == []  # the flag wins, even empty
    assert chosen_bugs(argparse.Namespace(bugs="ack-before-commit")) == ["ack-before-commit"]
    monkeypatch.delenv("CHAOSBED_BUGS")
    assert chosen_bugs(argparse.Namespace(bugs=None)) == []


def test_bad_bug_names_name_their_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAOSBED_BUGS", "bogus")
    with pytest.raises(UnknownBugError, match=r"^CHAOSBED_BUGS: unknown bug\(s\) bogus"):
        chosen_bugs(argparse.Namespace(bugs=None))
    with pytest.raises(UnknownBugError, match=r"^--bugs: unknown bug\(s\) nope; known: "):
        chosen_bugs(argparse.Namespace(bugs="nope"))


# --- the supervisor ---------------------------------------------------------------------


def _child(tmp_path: Path, seconds: str) -> process.Child:
    return process.Child(["sleep", seconds], env={}, log_path=tmp_path / f"sleep{seconds}.log")


def test_supervisor_reports_a_dead_process_unless_its_target_is_faulted(tmp_path: Path) -> None:
    alive, dead = _child(tmp_path, "30"), _child(tmp_path, "0")
    try:
        dead.popen.wait(10)
        supervisor = Supervisor([Watched("Toxiproxy", child_problem(alive)),
                                 Watched("service order", child_problem(dead), target="order")])
        assert supervisor.check({"order"}) is None  # killed by the timeline: expected
        problem = supervisor.check(set())
        assert problem == (f"service order (pid {dead.pid}) exited with code 0 "
                           "outside the fault timeline")
        alive.kill()
        assert supervisor.check({"order"}) == (
            f"Toxiproxy (pid {alive.pid}) killed by signal 9 outside the fault timeline")
    finally:
        alive.stop(1)


def test_child_pids_lists_the_processes_a_process_forked(tmp_path: Path) -> None:
    parent = process.Child(["sh", "-c", "sleep 30 & sleep 30 & wait"], env={},
                           log_path=tmp_path / "sh.log")
    try:
        deadline = time.monotonic() + 10
        while len(child_pids(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(child_pids(parent.pid)) == 2
        assert child_pids(2**22 + 1) == []  # no such process
    finally:
        parent.stop(1)


def test_health_watch_needs_a_failure_that_lasts(tmp_path: Path) -> None:
    now = [100.0]
    watch = HealthWatch(f"http://127.0.0.1:{free_port()}/healthz", clock=lambda: now[0])
    try:
        assert watch() is None  # first refusal: not dead yet
        now[0] += 1.0
        assert watch() is None
        now[0] += 1.5
        problem = watch()
        assert problem is not None and "stopped answering" in problem and "Connect" in problem
    finally:
        watch.close()


def test_an_interrupt_waits_until_the_fault_step_is_done() -> None:
    from chaosbed.run import _Interrupt

    interrupt = _Interrupt()
    done = []
    with pytest.raises(KeyboardInterrupt), interrupt.deferred():
        interrupt(2, None)  # SIGINT while a fault is being applied: not yet
        done.append("applied and recorded")
    assert done == ["applied and recorded"]
    with pytest.raises(KeyboardInterrupt):
        interrupt(2, None)  # between steps: at once
    with interrupt.deferred():
        pass  # nothing pending any more
