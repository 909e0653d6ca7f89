"""`--dry-run`'s prediction: samples per objective from the load spec, before anything runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from chaosbed.commands import cmd_run
from faults.scenario import Scenario, list_scenarios, load_scenario
from slos.model import SloFile, load_slo
from slos.predict import LoadModel, predict, users_per_class
from slos.synthetic import clean_run, write_run

ROOT = Path(__file__).resolve().parents[2]


def scenario(timeline: list[dict[str, Any]] | None = None, **load: Any) -> Scenario:
    spec = {"shape": "steady", "users": 10, "spawn_rate": 10, "rate": 10,
            "mix": {"shopper": 10}, **load}
    return Scenario.model_validate({"name": "t", "description": "t", "duration": 60,
                                    "load": spec, "timeline": timeline or []})


def slo(*objectives: dict[str, Any], min_samples: int = 100) -> SloFile:
    return SloFile.model_validate({"name": "t", "min_samples": min_samples,
                                   "objectives": list(objectives)})


PLACE_STEADY = {"name": "place", "sli": "latency", "op": "place_order", "phase": "steady",
                "pass": "p(99) < 1s"}
PLACE_FAULT = {**PLACE_STEADY, "name": "place in faults", "phase": "fault"}
LATENCY_20S = {"at": 20, "for": 20, "target": "order_channel", "fault": "latency",
               "params": {"latency": "100ms"}}


def test_users_are_split_by_weight() -> None:
    assert users_per_class({"shopper": 8, "browser": 1, "forger": 1}, 10) == {
        "shopper": 8, "browser": 1, "forger": 1}
    split = users_per_class({"shopper": 5, "impatient": 2, "late_payer": 2, "forger": 2}, 11)
    assert split == {"shopper": 5, "impatient": 2, "late_payer": 2, "forger": 2}
    assert sum(users_per_class({"a": 1, "b": 1, "c": 1}, 10).values()) == 10


def test_rate_times_steady_seconds() -> None:
    # 10 shoppers paced toward 10 journeys/s: one journey each per second
    model = LoadModel(scenario())
    assert model.rates["place_order"] == pytest.approx(10.0)
    [p] = predict(scenario(), slo(PLACE_STEADY))
    assert 570 <= p.samples <= 600  # 60 s minus the users' start
    assert not p.would_be_unknown and p.status == "ok"


def test_a_journey_is_never_faster_than_it_takes() -> None:
    fast = LoadModel(scenario(rate=100))  # asked for 10/s per user; a journey takes ~0.65 s
    assert fast.rates["place_order"] == pytest.approx(10 / 0.65)


def test_fault_windows_move_samples_out_of_steady() -> None:
    steady, fault = predict(scenario([LATENCY_20S]), slo(PLACE_STEADY, PLACE_FAULT))
    # 60 s - 20 s of fault - 2 s assumed recovery - the start
    assert 360 <= steady.samples <= 380
    assert fault.samples == 200


def test_too_few_samples_are_named_unknown() -> None:
    [p] = predict(scenario([LATENCY_20S]), slo(PLACE_FAULT, min_samples=500))
    assert p.would_be_unknown and p.status == "UNKNOWN"
    [p] = predict(scenario([LATENCY_20S]), slo({**PLACE_FAULT, "min_samples": 160},
                                               min_samples=500))
    assert not p.would_be_unknown and p.status == "tight"  # 200 < 1.3 x 160


def test_a_fault_that_stops_the_operation_yields_no_sample_of_its_time() -> None:
    down = {"at": 20, "for": 20, "target": "order", "fault": "kill"}
    fault, rate = predict(scenario([down]), slo(
        PLACE_FAULT, {"name": "ok", "sli": "success_rate", "op": "place_order",
                      "phase": "fault", "pass": "rate >= 50%"}))
    # only the orders caught by the kill and placed after it: one per shopper
    assert fault.samples == 10 and fault.would_be_unknown
    assert rate.samples == 200  # the failures count toward a success rate


def test_objectives_of_absent_phases_are_not_applicable() -> None:
    recovery = {"name": "recovers", "sli": "recovery_time", "pass": "max < 10s"}
    fault, heals = predict(scenario(), slo(PLACE_FAULT, recovery))
    assert fault.not_applicable and heals.not_applicable
    assert not fault.would_be_unknown and fault.status == "not applicable"
    _, heals = predict(scenario([LATENCY_20S]), slo(PLACE_FAULT, recovery))
    assert heals.samples == 1 and heals.need == 1


def test_only_paying_classes_give_payment_samples() -> None:
    lag = {"name": "lag", "sli": "payment_lag", "pass": "p(99) < 5s"}
    late = scenario(mix={"late_payer": 10}, rate=10)
    [p] = predict(late, slo(lag))
    assert p.samples == 0 and p.would_be_unknown
    [p] = predict(scenario(mix={"browser": 1, "shopper": 9}), slo(lag))
    assert p.samples > 0


@pytest.mark.parametrize("name", [name for name, _ in list_scenarios()])
@pytest.mark.parametrize("file", ["release", "smoke"])
def test_every_shipped_scenario_gives_every_shipped_objective_its_samples(
        name: str, file: str) -> None:
    predictions = predict(load_scenario(name), load_slo(ROOT / "slos" / f"{file}.yaml"))
    short = [f"{p.name}: {p.samples} of {p.need}" for p in predictions if p.would_be_unknown]
    assert not short, f"{name} with {file}.yaml: {short}"


def run_args(**changes: Any) -> argparse.Namespace:
    base = {"scenario": "smoke", "slo": "slos/release.yaml", "workers": 0, "bugs": "",
            "baseline": None, "force_baseline": False, "attach": None, "observe": False,
            "runs_dir": "never-created", "dry_run": True}
    return argparse.Namespace(**{**base, **changes})


def test_dry_run_starts_nothing_and_answers_by_exit_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert cmd_run(run_args(runs_dir=str(runs))) == 0
    out = capsys.readouterr().out
    assert "nothing started" in out and "every objective would have its samples" in out
    assert not runs.exists()
    strict = tmp_path / "strict.yaml"
    strict.write_text("name: strict\nmin_samples: 100000\nobjectives:\n"
                      "  - {name: place, sli: latency, op: place_order, pass: 'p(99) < 1s'}\n")
    assert cmd_run(run_args(slo=str(strict), runs_dir=str(runs))) == 2
    assert "would be UNKNOWN (exit 2): place" in capsys.readouterr().out
    assert not runs.exists()


def test_dry_run_refuses_bad_files_before_predicting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nobjectives:\n"
                   "  - {name: place, sli: latency, op: place_order, pass: 'p(99) < 0s'}\n")
    assert cmd_run(run_args(slo=str(bad))) == 3
    assert f"{bad}:3: objective 0" in capsys.readouterr().err
    assert cmd_run(run_args(scenario="no-such-scenario")) == 3


def test_run_refuses_an_incomparable_baseline_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = clean_run(20)
    records.run.scenario = "smoke"
    other_seed = write_run(records, tmp_path / "base", seed=7)
    (other_seed / "result.json").write_text("{}")
    runs = tmp_path / "runs"
    no_tolerance = run_args(slo="slos/smoke.yaml", baseline=str(other_seed), dry_run=False,
                            runs_dir=str(runs))
    assert cmd_run(no_tolerance) == 3
    assert "needs a tolerance" in capsys.readouterr().err
    seed = run_args(baseline=str(other_seed), dry_run=False, runs_dir=str(runs))
    assert cmd_run(seed) == 3
    assert "seed 7 in the baseline, 42 in this run" in capsys.readouterr().err
    assert not runs.exists()
    forced = run_args(baseline=str(other_seed), force_baseline=True, runs_dir=str(runs))
    assert cmd_run(forced) == 0  # the dry run goes on past the forced comparison
    assert not runs.exists()
