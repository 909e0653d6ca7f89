"""`make gate-soak`: how often does the release gate cry wolf on a correct build?

Runs every shipped scenario N times (GATE_SOAK_N, default 3) with `slos/release.yaml` on the
correct build (no planted bug, CHAOSBED_BUGS removed from the environment), one run after the
other, and counts false alarms: every run that does not exit 0, split by what raised it — an
objective that failed or stayed unknown, an anomaly class the audit found, or a harness error.
Prints a table and writes the figures to runs/gate-soak.json; exits 1 if there was any.

    python -m benchmarks.gate_soak --n 3 [--scenario smoke ...] [--slo slos/release.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from faults.scenario import list_scenarios

REPO = Path(__file__).resolve().parent.parent
SLO = REPO / "slos" / "release.yaml"
RUNS = REPO / "runs" / "gate-soak"
RUN_TIMEOUT_S = 600.0
HARNESS = "(harness error)"
NO_RESULT = "(no result.json)"


@dataclass
class SoakRun:
    scenario: str
    attempt: int
    exit_code: int
    seconds: float
    run_dir: str | None
    alarms: list[str] = field(default_factory=list)  # what made it a false alarm
    note: str = ""

    @property
    def false_alarm(self) -> bool:
        return self.exit_code != 0


def alarms_of(result: dict[str, Any] | None, exit_code: int) -> list[str]:
    """What a run's result.json blames: failed/unknown objectives, invalid anomaly classes."""
    if result is None:
        return [NO_RESULT] if exit_code != 0 else []
    if result.get("verdict") == "error" or exit_code == 3:
        return [HARNESS]
    found = [f"{o['name']} ({o['tier']})" for o in result.get("objectives") or []
             if o.get("tier") in ("fail", "unknown")]
    checks = (result.get("audit") or {}).get("checks") or {}
    found += [f"anomaly {cls}" for cls, c in sorted(checks.items())
              if c.get("verdict") == "invalid"]
    if exit_code != 0 and not found:
        found.append(f"exit {exit_code}")
    return found


def run_once(scenario: str, attempt: int, slo: Path, runs_dir: Path) -> SoakRun:
    out = runs_dir / f"{scenario}-{attempt}"
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CHAOSBED_BUGS"}  # a correct build
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chaosbed", "run", scenario, "--slo", str(slo),
             "--runs-dir", str(out)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
            check=False,
        )
        code, tail = done.returncode, (done.stdout + done.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        code, tail = 3, [f"no answer within {RUN_TIMEOUT_S:.0f}s"]
    seconds = time.monotonic() - started
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    run_dir = dirs[-1] if dirs else None
    result = None
    if run_dir is not None and (run_dir / "result.json").is_file():
        result = json.loads((run_dir / "result.json").read_text())
    return SoakRun(scenario, attempt, code, round(seconds, 1),
                   str(run_dir) if run_dir else None, alarms_of(result, code),
                   tail[0] if tail and code != 0 else "")


def summarize(runs: list[SoakRun], n: int, slo: Path) -> dict[str, Any]:
    per_scenario: dict[str, dict[str, Any]] = {}
    for run in runs:
        entry = per_scenario.setdefault(run.scenario, {"runs": 0, "false_alarms": 0,
                                                       "by_objective": Counter()})
        entry["runs"] += 1
        entry["false_alarms"] += int(run.false_alarm)
        entry["by_objective"].update(run.alarms)
    for entry in per_scenario.values():
        entry["by_objective"] = dict(sorted(entry["by_objective"].items()))
    return {
        "slo": str(slo),
        "n": n,
        "runs": len(runs),
        "false_alarms": sum(int(r.false_alarm) for r in runs),
        "scenarios": per_scenario,
        "each_run": [asdict(r) for r in runs],
        "generated_at": time.time(),
    }


def render_table(summary: dict[str, Any]) -> str:
    lines = [f"gate soak: {summary['runs']} run(s), N={summary['n']}, SLO {summary['slo']}",
             f"{'scenario':<16} {'runs':>4} {'false alarms':>12}  raised by"]
    for name, entry in summary["scenarios"].items():
        raised = ", ".join(f"{what} ×{count}" for what, count in entry["by_objective"].items())
        lines.append(f"{name:<16} {entry['runs']:>4} {entry['false_alarms']:>12}  {raised or '-'}")
    lines.append(f"total false alarms: {summary['false_alarms']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=int(os.environ.get("GATE_SOAK_N") or 3),
                        help="runs per scenario (default: GATE_SOAK_N or 3)")
    parser.add_argument("--scenario", action="append", help="only these (default: every one)")
    parser.add_argument("--slo", default=str(SLO), help="SLO file (default: slos/release.yaml)")
    parser.add_argument("--runs-dir", default=str(RUNS), help="where the runs go")
    parser.add_argument("--json", default=str(REPO / "runs" / "gate-soak.json"),
                        help="where the figures go")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    shipped = [name for name, _ in list_scenarios()]
    unknown = sorted(set(args.scenario or []) - set(shipped))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)} (shipped: {', '.join(shipped)})")
    scenarios = args.scenario or shipped
    runs_dir = Path(args.runs_dir) / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    runs: list[SoakRun] = []
    for attempt in range(1, args.n + 1):
        for scenario in scenarios:
            run = run_once(scenario, attempt, Path(args.slo), runs_dir)
            runs.append(run)
            verdict = "ok" if not run.false_alarm else f"FALSE ALARM: {', '.join(run.alarms)}"
            print(f"[{len(runs)}/{args.n * len(scenarios)}] {scenario} #{attempt}: "
                  f"exit {run.exit_code} in {run.seconds:.0f}s — {verdict}", flush=True)
    summary = summarize(runs, args.n, Path(args.slo))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(render_table(summary))
    print(f"figures: {out}")
    return 1 if summary["false_alarms"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
