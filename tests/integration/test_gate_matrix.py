"""The gate's own proof: every planted bug fails the gate on its anomaly class, and the correct
build passes the very same run.

Each case is one real `chaosbed run gate-selftest --slo slos/smoke.yaml` (three services behind
Toxiproxy, Locust, a SIGKILL of the order service, channel misbehaviour; about 30 s), so the
whole matrix takes a few minutes.  The scenario is built so that each bug has its chance to do
harm (faults/scenarios/gate-selftest.yaml says which step exposes which bug).

The black-box column runs the same cases with the bundled order service as an external target
(targets/bundled-blackbox.yaml: started by its own command, its export never read): the bugs
the black-box audit can see fail the gate on the full audit's class; the one that only the
export shows (ack-before-commit, P13) answers unknown with the reason.

The example target (examples/shop, a service written apart from chaosbed) runs the same
scenario: correct and audited in full (it serves the export), it passes; with its own bug switch
(SHOP_BUG), it fails on that bug's class, in the full audit and black-box alike.

Each case is about a minute of wall clock but little CPU (a few journeys per second), so the
selected cases run CHAOSBED_GATE_MATRIX_PARALLEL at a time (default 3, starts a few seconds
apart), each test waiting for its own run: the matrix's wall time is about a third of the sum.
`make test` runs the full-audit matrix and the correct builds of the other columns; the
black-box and example bug cases are marked slow (`make test-slow`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.bench_gate import GateRun, run_gate
from examples.shop import shop
from services.common.bugs import EXPECTED_CLASSES, PLANTED_BUGS
from slos.blackbox import NEEDS_EXPORT, UNDECIDABLE
from slos.gate import evaluate_run

SMOKE = Path(__file__).resolve().parents[2] / "slos" / "smoke.yaml"

pytestmark = [pytest.mark.integration, pytest.mark.gate_matrix]

# The example target (examples/shop; target.yaml serves the export, target-blackbox.yaml does
# not) and its own bug switch (SHOP_BUG).
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shop" / "target.yaml"
EXAMPLE_BLACKBOX = EXAMPLE.with_name("target-blackbox.yaml")
EXAMPLE_CLASSES = {"no-query-on-timeout": "P6"}  # orphan charge (also P1)


PARALLEL = int(os.environ.get("CHAOSBED_GATE_MATRIX_PARALLEL", "3"))
START_SPACING_S = 5.0  # runs start apart: each binds its ports in its first seconds


@dataclass(frozen=True)
class Case:
    """One `chaosbed run gate-selftest` of the matrix: planted bugs, target, extra env."""

    bugs: tuple[str, ...] = ()
    target: str | Path | None = None
    env: tuple[tuple[str, str], ...] = ()


class Matrix:
    """Every selected case's run, PARALLEL at a time in the order the tests were collected."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(max_workers=max(1, PARALLEL))
        self.runs: dict[Case, Future[GateRun]] = {}
        self._lock = threading.Lock()
        self._next_start = time.monotonic()

    def submit(self, cases: list[Case]) -> None:
        for case in cases:
            if case not in self.runs:
                self.runs[case] = self.pool.submit(self._run, case, len(self.runs))

    def _run(self, case: Case, number: int) -> GateRun:
        with self._lock:  # space out the starts
            wait = self._next_start - time.monotonic()
            self._next_start = max(self._next_start, time.monotonic()) + START_SPACING_S
        if wait > 0:
            time.sleep(wait)
        return run_gate(
            case.bugs, self.root / f"case-{number}", target=case.target, env=dict(case.env)
        )

    def result(self, case: Case) -> GateRun:
        self.submit([case])
        return self.runs[case].result()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    runs = Matrix(tmp_path_factory.mktemp("gate-matrix"))
    yield runs
    runs.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def gate(request: pytest.FixtureRequest, matrix: Matrix) -> GateRun:
    """The run of this test's `Case` (parametrized indirectly); the first test to ask starts
    every case the session selected from this module."""
    if not matrix.runs:
        selected = (getattr(item, "callspec", None) for item in request.session.items
                    if getattr(item, "module", None) is request.module)
        matrix.submit([spec.params["gate"] for spec in selected
                       if spec is not None and "gate" in spec.params])
    return matrix.result(request.param)


def _evidence(run: GateRun) -> str:
    tail = "\n".join(run.output.splitlines()[-15:])
    return f"run {run.run_dir}: exit {run.exit_code}, invalid classes {run.invalid}\n{tail}"


BUGS = sorted(EXPECTED_CLASSES)


@pytest.mark.parametrize("gate", [Case()], indirect=True, ids=["correct"])
def test_the_correct_build_passes_the_gate_selftest(gate: GateRun) -> None:
    run = gate
    assert run.run_dir is not None, run.output
    assert run.exit_code == 0, _evidence(run)
    assert run.invalid == {}, _evidence(run)


@pytest.mark.parametrize("gate", [Case((bug,)) for bug in BUGS], indirect=True, ids=BUGS)
def test_a_planted_bug_fails_the_gate_on_its_class(gate: GateRun) -> None:
    run = gate
    (bug,) = run.bugs
    assert run.run_dir is not None, run.output
    assert json.loads((run.run_dir / "run.json").read_text())["bugs"] == [bug]
    assert run.exit_code == 1, _evidence(run)
    expected = EXPECTED_CLASSES[bug]
    assert run.invalid.get(expected, 0) >= 1, f"{bug} not caught as {expected}: " + _evidence(run)


def test_every_planted_bug_is_in_the_matrix() -> None:
    assert set(EXPECTED_CLASSES) == set(PLANTED_BUGS)


# --- the black-box column: the bundled order service as an external target, no export ------

BLACKBOX = "bundled-blackbox"  # targets/bundled-blackbox.yaml
BLACKBOX_VISIBLE = sorted(b for b, cls in EXPECTED_CLASSES.items() if cls not in UNDECIDABLE)
BLACKBOX_HIDDEN = sorted(b for b, cls in EXPECTED_CLASSES.items() if cls in UNDECIDABLE)


def _audit(run: GateRun) -> dict[str, Any]:
    assert run.run_dir is not None, run.output
    audit: dict[str, Any] = json.loads((run.run_dir / "audit.json").read_text())
    assert audit["mode"] == "blackbox", _evidence(run)
    assert not (run.run_dir / "exports" / "order.ndjson").exists()
    return audit


@pytest.mark.parametrize("gate", [Case(target=BLACKBOX)], indirect=True, ids=["correct"])
def test_the_correct_build_black_box_finds_nothing_and_names_what_it_cannot_see(
    gate: GateRun, tmp_path: Path
) -> None:
    run = gate
    checks = _audit(run)["checks"]
    assert run.invalid == {}, _evidence(run)
    # smoke.yaml says `needs_export: allow`: decided on what the run could see ...
    assert run.exit_code == 0, _evidence(run)
    for cls in UNDECIDABLE:
        assert checks[cls]["verdict"] == "unknown", cls
        assert NEEDS_EXPORT in checks[cls]["error"], checks[cls]
    # ... and a file that blocks on it (the default, as in release.yaml) answers unknown
    assert _reevaluated(run, tmp_path, needs_export="block").verdict == "unknown"


def _reevaluated(run: GateRun, tmp_path: Path, **changes: Any) -> Any:
    """The same run evaluated against smoke.yaml with `changes` (a fresh result.json)."""
    assert run.run_dir is not None
    slo = yaml.safe_load(SMOKE.read_text()) | changes
    path = tmp_path / "smoke-changed.yaml"
    path.write_text(yaml.safe_dump(slo))
    return evaluate_run(run.run_dir, path, None)


@pytest.mark.slow  # in `make test-slow`: make test keeps the full-audit matrix
@pytest.mark.parametrize(
    "gate", [Case((bug,), BLACKBOX) for bug in BLACKBOX_VISIBLE], indirect=True,
    ids=BLACKBOX_VISIBLE,
)
def test_a_planted_bug_black_box_fails_the_gate_on_the_full_audits_class(gate: GateRun) -> None:
    run = gate
    (bug,) = run.bugs
    _audit(run)
    assert run.exit_code == 1, _evidence(run)
    expected = EXPECTED_CLASSES[bug]
    assert run.invalid.get(expected, 0) >= 1, f"{bug} not caught as {expected}: " + _evidence(run)


@pytest.mark.slow  # in `make test-slow`: make test keeps the full-audit matrix
@pytest.mark.parametrize(
    "gate", [Case((bug,), BLACKBOX) for bug in BLACKBOX_HIDDEN], indirect=True,
    ids=BLACKBOX_HIDDEN,
)
def test_a_bug_only_the_export_shows_answers_unknown_black_box(
    gate: GateRun, tmp_path: Path
) -> None:
    run = gate
    (bug,) = run.bugs
    check = _audit(run)["checks"][EXPECTED_CLASSES[bug]]
    assert check["verdict"] == "unknown" and NEEDS_EXPORT in check["error"], check
    # never a silent pass: smoke.yaml (needs_export: allow) names what it could not decide ...
    result = json.loads((run.run_dir / "result.json").read_text())  # type: ignore[operator]
    reasons = " ".join(o["reason"] for o in result["objectives"])
    assert f"{EXPECTED_CLASSES[bug]} not decided ({NEEDS_EXPORT}" in reasons, reasons
    # ... and a file that blocks on it does not pass
    assert _reevaluated(run, tmp_path, needs_export="block").exit_code != 0, _evidence(run)


def test_every_planted_bug_is_in_the_black_box_column() -> None:
    assert set(BLACKBOX_VISIBLE) | set(BLACKBOX_HIDDEN) == set(PLANTED_BUGS)
    assert BLACKBOX_HIDDEN == ["ack-before-commit"]


# --- the example target (examples/shop), in the full audit and black-box -------------------


@pytest.mark.parametrize(
    "gate", [Case(target=EXAMPLE, env=(("SHOP_BUG", ""),))], indirect=True, ids=["correct"]
)
def test_the_example_target_passes_the_gate_selftest(gate: GateRun) -> None:
    run = gate
    assert run.run_dir is not None, run.output
    assert run.exit_code == 0, _evidence(run)
    assert run.invalid == {}, _evidence(run)


EXAMPLE_CASES = {
    f"{bug}-{column}": Case(target=target, env=(("SHOP_BUG", bug),))
    for bug in sorted(EXAMPLE_CLASSES)
    for column, target in (("full", EXAMPLE), ("blackbox", EXAMPLE_BLACKBOX))
}


@pytest.mark.slow  # in `make test-slow`: make test keeps the full-audit matrix
@pytest.mark.parametrize(
    "gate", list(EXAMPLE_CASES.values()), indirect=True, ids=list(EXAMPLE_CASES)
)
def test_the_example_targets_bug_fails_the_gate_on_its_class(
    gate: GateRun, request: pytest.FixtureRequest
) -> None:
    run = gate
    bug = dict(request.node.callspec.params["gate"].env)["SHOP_BUG"]
    assert run.run_dir is not None, run.output
    assert f"bug {bug}" in (run.run_dir / "order.log").read_text()  # the shop really had it on
    assert run.exit_code == 1, _evidence(run)
    expected = EXAMPLE_CLASSES[bug]
    assert run.invalid.get(expected, 0) >= 1, f"{bug} not caught as {expected}: " + _evidence(run)


def test_every_example_bug_is_in_the_matrix() -> None:
    assert set(EXAMPLE_CLASSES) == set(shop.BUGS)
