"""Every shipped chaos scenario, run for real on the correct build, passes the shipped gates.

Each run takes 1-2.5 minutes, so this suite is `slow`: `make test-slow` (about 15 minutes for
the release file on every scenario, 10 more for the smoke file on the long ones; `smoke` and
`gate-selftest` with the smoke file already run in `make test`).  `make gate-soak` repeats the
release runs N times and counts false alarms.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from faults.scenario import list_scenarios

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
IN_MAKE_TEST = {"smoke", "gate-selftest"}
SHIPPED = sorted(name for name, _ in list_scenarios())
LONG_SCENARIOS = [name for name in SHIPPED if name not in IN_MAKE_TEST]


def test_every_scenario_is_covered() -> None:
    assert {"smoke", "baseline", "network-chaos", "callback-storm", "crash-restart",
            "flash-sale", "blackhole", "gate-selftest"} <= set(SHIPPED)


def run_gate(scenario: str, slo: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chaosbed", "run", scenario, "--slo", slo,
         "--runs-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=560, check=False,
    )
    runs = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]  # not latest
    assert len(runs) == 1, done.stdout + done.stderr
    result = json.loads((runs[0] / "result.json").read_text())
    invalid = {cls: c["count"] for cls, c in result["audit"]["checks"].items()
               if c["verdict"] == "invalid"}
    undecided = [f"{o['name']}: {o['tier']} ({o['reason']})" for o in result["objectives"]
                 if o["tier"] in ("fail", "unknown")]
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
    assert done.returncode == 0, (f"{scenario} with {slo}: exit {done.returncode}, "
                                  f"invalid {invalid}, {undecided}\n{tail}")
    assert result["audit"]["verdict"] == "valid", f"{scenario}: audit {result['audit']['verdict']}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", SHIPPED)
def test_shipped_scenario_passes_the_release_gate(scenario: str, tmp_path: Path) -> None:
    run_gate(scenario, "slos/release.yaml", tmp_path)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", LONG_SCENARIOS)
def test_shipped_scenario_passes_the_smoke_gate(scenario: str, tmp_path: Path) -> None:
    run_gate(scenario, "slos/smoke.yaml", tmp_path)
