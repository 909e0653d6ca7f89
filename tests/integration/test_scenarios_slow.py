"""Every shipped chaos scenario, run for real, passes the smoke gate on the correct build.

Each run takes 1.5-2.5 minutes, so this suite is `slow`: `make test-slow` (CI budget: about
15 minutes for all of them).  `smoke` and `gate-selftest` already run in `make test`.
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
LONG_SCENARIOS = sorted(name for name, _ in list_scenarios() if name not in IN_MAKE_TEST)


def test_every_long_scenario_is_covered() -> None:
    assert {"baseline", "network-chaos", "callback-storm", "crash-restart", "flash-sale",
            "blackhole"} <= set(LONG_SCENARIOS)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", LONG_SCENARIOS)
def test_shipped_scenario_passes_the_gate(scenario: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chaosbed", "run", scenario, "--slo", "slos/smoke.yaml",
         "--runs-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=560, check=False,
    )
    runs = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]  # not latest
    assert len(runs) == 1, done.stdout + done.stderr
    result = json.loads((runs[0] / "result.json").read_text())
    invalid = {cls: c["count"] for cls, c in result["audit"]["checks"].items()
               if c["verdict"] == "invalid"}
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
    assert done.returncode == 0, f"{scenario}: exit {done.returncode}, invalid {invalid}\n{tail}"
    assert result["audit"]["verdict"] == "valid", f"{scenario}: audit {result['audit']['verdict']}"
