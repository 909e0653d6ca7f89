"""The planted-bug matrix: how long the gate's own proof takes, run by run.

One `chaosbed run gate-selftest --slo slos/smoke.yaml` for the correct build and one per
planted bug (services/common/bugs.py), one after the other, each a real stack with real
Toxiproxy and real kills.  Figures: `matrix_wall_s` (all runs), per run `<name>_s` and
whether the gate judged it as the matrix expects (`<name>_ok`), and `all_ok`.

`run_gate` is also what tests/integration/test_gate_matrix.py runs, against
`services.common.bugs.EXPECTED_CLASSES`.
Run alone: `python -m benchmarks.bench_gate`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.bugs import EXPECTED_CLASSES

REPO = Path(__file__).resolve().parent.parent
SCENARIO = "gate-selftest"
SLO = REPO / "slos" / "smoke.yaml"
RUN_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class GateRun:
    """One finished `chaosbed run`: its exit code, its audit's classes, how long it took."""

    bugs: tuple[str, ...]
    exit_code: int
    seconds: float
    run_dir: Path | None
    invalid: dict[str, int]  # class -> count, for every class the audit judged invalid
    output: str  # the run's console output (stdout and stderr)

    @property
    def name(self) -> str:
        return ",".join(self.bugs) or "correct"

    def caught(self, cls: str) -> bool:
        return self.exit_code == 1 and self.invalid.get(cls, 0) >= 1

    def passed_clean(self) -> bool:
        return self.exit_code == 0 and not self.invalid

    def judged_right(self) -> bool:
        """A bug run caught by its class; the correct build passed with no anomaly."""
        if not self.bugs:
            return self.passed_clean()
        return all(self.caught(EXPECTED_CLASSES[bug]) for bug in self.bugs)


def run_gate(
    bugs: Sequence[str],
    runs_dir: Path,
    *,
    timeout_s: float = RUN_TIMEOUT_S,
    target: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> GateRun:
    """`chaosbed run gate-selftest --slo slos/smoke.yaml [--bugs ...] [--target ...]` as a
    subprocess; `env` is added to its environment (a target's own bug switch, for one)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    before = set(runs_dir.iterdir())
    command = [sys.executable, "-m", "chaosbed", "run", SCENARIO, "--slo", str(SLO),
               "--runs-dir", str(runs_dir)]
    if bugs:
        command += ["--bugs", ",".join(bugs)]
    if target:
        command += ["--target", str(target)]
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    seconds = time.monotonic() - started
    created = sorted(p for p in set(runs_dir.iterdir()) - before
                     if p.is_dir() and not p.is_symlink())  # runs/latest is a link
    run_dir = created[-1] if created else None
    return GateRun(
        bugs=tuple(bugs),
        exit_code=done.returncode,
        seconds=seconds,
        run_dir=run_dir,
        invalid=_invalid_classes(run_dir),
        output=done.stdout + done.stderr,
    )


def _invalid_classes(run_dir: Path | None) -> dict[str, int]:
    if run_dir is None or not (run_dir / "result.json").is_file():
        return {}
    result = json.loads((run_dir / "result.json").read_text())
    checks = result.get("audit", {}).get("checks", {})
    rows = checks.values() if isinstance(checks, dict) else checks
    return {row["class"]: int(row["count"]) for row in rows if row["verdict"] == "invalid"}


def main() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    started = time.monotonic()
    runs: list[GateRun] = []
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        for bugs in [(), *((bug,) for bug in EXPECTED_CLASSES)]:
            run = run_gate(bugs, Path(tmp))
            runs.append(run)
            figures[f"{run.name}_s"] = round(run.seconds, 1)
            figures[f"{run.name}_ok"] = run.judged_right()
            figures[f"{run.name}_classes"] = ",".join(sorted(run.invalid)) or "-"
    figures["matrix_wall_s"] = round(time.monotonic() - started, 1)
    figures["runs"] = len(runs)
    figures["all_ok"] = all(run.judged_right() for run in runs)
    return figures


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key}: {value}")
