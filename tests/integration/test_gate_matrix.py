"""The gate's own proof: every planted bug fails the gate on its anomaly class, and the correct
build passes the very same run.

Each case is one real `chaosbed run gate-selftest --slo slos/smoke.yaml` (three services behind
Toxiproxy, Locust, a SIGKILL of the order service, channel misbehaviour; about 30 s), so the
whole matrix takes a few minutes.  The scenario is built so that each bug has its chance to do
harm (faults/scenarios/gate-selftest.yaml says which step exposes which bug).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_gate import GateRun, run_gate
from services.common.bugs import EXPECTED_CLASSES, PLANTED_BUGS

pytestmark = [pytest.mark.integration, pytest.mark.gate_matrix]


def _evidence(run: GateRun) -> str:
    tail = "\n".join(run.output.splitlines()[-15:])
    return f"run {run.run_dir}: exit {run.exit_code}, invalid classes {run.invalid}\n{tail}"


def test_the_correct_build_passes_the_gate_selftest(tmp_path: Path) -> None:
    run = run_gate((), tmp_path)
    assert run.run_dir is not None, run.output
    assert run.exit_code == 0, _evidence(run)
    assert run.invalid == {}, _evidence(run)


@pytest.mark.parametrize("bug", sorted(EXPECTED_CLASSES))
def test_a_planted_bug_fails_the_gate_on_its_class(bug: str, tmp_path: Path) -> None:
    run = run_gate((bug,), tmp_path)
    assert run.run_dir is not None, run.output
    assert json.loads((run.run_dir / "run.json").read_text())["bugs"] == [bug]
    assert run.exit_code == 1, _evidence(run)
    expected = EXPECTED_CLASSES[bug]
    assert run.invalid.get(expected, 0) >= 1, f"{bug} not caught as {expected}: " + _evidence(run)


def test_every_planted_bug_is_in_the_matrix() -> None:
    assert set(EXPECTED_CLASSES) == set(PLANTED_BUGS)
