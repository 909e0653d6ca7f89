"""How many complete shopper journeys per second the load generator sustains against a stack.

A journey is complete when the shopper placed, paid and saw PAID.  The target rate is stepped
up (short steady runs, paced with the scenario `rate`) until the generator falls short of it by
more than 10% or Locust warns that a process is CPU-bound; the best sustained step is reported,
once with 1 and once with 2 worker processes, each series with the same time budget (about
two minutes each), against the same stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from chaosbed.proc import free_port
from chaosbed.stack import Stack
from loadtests.runner import locust_command, read_history

REPO = Path(__file__).resolve().parent.parent
STEP_S = 8.0  # load duration of one step
RATES = (20, 40, 80, 160, 240, 320, 480)  # target journeys/s, stepped up
SUSTAINED = 0.9  # achieved / target
SERIES_BUDGET_S = 120.0  # per worker count


def complete_journeys(history: list[dict[str, Any]]) -> int:
    """Idempotency keys whose shopper saw PAID after a successful pay."""
    paid = {r["key"] for r in history if r["f"] == "pay" and r["type"] == "ok"}
    seen = {
        r["key"]
        for r in history
        if r["f"] == "poll" and r["type"] == "ok" and (r["value"] or {}).get("status") == "PAID"
    }
    return len(paid & seen)


def run_step(stack: Stack, rate: int, workers: int, run_dir: Path) -> dict[str, Any]:
    # Enough users that pacing, not journey latency, limits the rate (a journey takes ~0.5 s).
    load = {
        "users": max(4, rate),
        "spawn_rate": max(10, rate * 2),
        "rate": rate,
        "mix": {"shopper": 1},
        "max_poll": 5,
    }
    run_dir.mkdir(parents=True)
    argv, env = locust_command(
        stack_info=stack.info, load=load, duration_s=STEP_S, seed=1, run_dir=run_dir,
        workers=workers, master_port=free_port() if workers else None,
    )
    subprocess.run(
        argv, env={**os.environ, **env}, cwd=REPO, capture_output=True, timeout=STEP_S + 60,
        check=True,
    )
    progress = json.loads((run_dir / "load_progress.json").read_text())
    achieved = complete_journeys(read_history(run_dir / "history.ndjson")) / STEP_S
    return {
        "target": rate,
        "journeys_per_s": round(achieved, 1),
        "cpu_warning": bool(progress.get("cpu_warning")),
        "sustained": achieved >= SUSTAINED * rate and not progress.get("cpu_warning"),
    }


def _limit(steps: list[dict[str, Any]]) -> str:
    """Why the stepping stopped: the generator's CPU, the stack falling behind, or the budget."""
    last = steps[-1] if steps else None
    if last is None or last["sustained"]:
        return "time budget / highest step"
    if last["cpu_warning"]:
        return "load generator CPU (Locust warning)"
    return "the stack (no generator CPU warning)"


def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, Stack.start(
        Path(tmp) / "stack"
    ) as stack:
        for workers in (1, 2):
            deadline = time.monotonic() + SERIES_BUDGET_S
            steps: list[dict[str, Any]] = []
            for rate in RATES:
                if time.monotonic() + STEP_S + 10 > deadline:
                    break
                step = run_step(stack, rate, workers, Path(tmp) / f"w{workers}-r{rate}")
                steps.append(step)
                if not step["sustained"]:
                    break
            best = max((s["target"] for s in steps if s["sustained"]), default=0)
            suffix = f"{workers}_worker{'s' if workers > 1 else ''}"
            results[f"max_journeys_per_s_{suffix}"] = best
            results[f"limited_by_{suffix}"] = _limit(steps)
            results[f"steps_{suffix}"] = steps
    one, two = results["max_journeys_per_s_1_worker"], results["max_journeys_per_s_2_workers"]
    results["ratio_2_over_1_workers"] = round(two / one, 2) if one else None
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
