"""How many complete shopper journeys per second the load generator sustains against a stack,
and what a journey costs Locust itself.

A journey is complete when the shopper placed, paid and saw PAID.  The target rate is stepped
up (short steady runs, paced with the scenario `rate`, with users enough that pacing and not
journey latency sets the rate) until the generator falls short of it by more than 10% or
Locust warns that a process is CPU-bound; the best sustained step is reported, once with 1 and
once with 2 worker processes, each series with the same time budget (about two minutes each),
against the same stack.  `workers_2_over_1` is their ratio: where the stack is not the limit
(`limited_by_*`), two workers must give >= 1.5x one.

CPU per journey: Locust's (master + workers, from the rusage of the reaped `locust` process)
is the slope of CPU seconds over complete journeys across the steps of a series, so the
fixed cost of starting Locust drops out (`locust_cpu_ms_per_journey`, from the 1-worker
series; `_2_workers` for the other).  `stack_cores` of a step is the stack's CPU (/proc, all
services and Toxiproxy) per wall second: near the machine's core count, the stack is the limit.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import proc_cpu
from benchmarks.journeys import stack_pids
from chaosbed.stack import Stack
from loadtests.runner import locust_command, read_history

REPO = Path(__file__).resolve().parent.parent
STEP_S = 8.0  # load duration of one step
RATES = (20, 40, 80, 160, 240, 320, 480)  # target journeys/s, stepped up
SUSTAINED = 0.9  # achieved / target
SERIES_BUDGET_S = 120.0  # per worker count
USERS_PER_RATE = 3  # each user paced every ~3 s: a journey may take that long before users limit


def complete_journeys(history: list[dict[str, Any]]) -> int:
    """Idempotency keys whose shopper saw PAID after a successful pay."""
    paid = {r["key"] for r in history if r["f"] == "pay" and r["type"] == "ok"}
    seen = {
        r["key"]
        for r in history
        if r["f"] == "poll" and r["type"] == "ok" and (r["value"] or {}).get("status") == "PAID"
    }
    return len(paid & seen)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope dy/dx of (x, y) points; None unless two distinct x are given."""
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx


def run_step(stack: Stack, rate: int, workers: int, run_dir: Path) -> dict[str, Any]:
    users = max(8, USERS_PER_RATE * rate)
    load = {
        "users": users,
        "spawn_rate": users * 2,
        "rate": rate,
        "mix": {"shopper": 1},
        "max_poll": 5,
    }
    run_dir.mkdir(parents=True)
    argv, env = locust_command(
        stack_info=stack.info, load=load, duration_s=STEP_S, seed=1, run_dir=run_dir,
        workers=workers,
    )
    pids = stack_pids(stack)
    stack_before, locust_before = proc_cpu.snapshot(pids), _children_cpu_s()
    subprocess.run(
        argv, env={**os.environ, **env}, cwd=REPO, capture_output=True, timeout=STEP_S + 60,
        check=True,
    )
    locust_cpu_s = _children_cpu_s() - locust_before
    stack_after = proc_cpu.snapshot(pids)
    stack_cpu_s = sum(stack_after[name] - stack_before[name] for name in pids)
    progress = json.loads((run_dir / "load_progress.json").read_text())
    journeys = complete_journeys(read_history(run_dir / "history.ndjson"))
    achieved = journeys / STEP_S
    return {
        "target": rate,
        "users": users,
        "journeys": journeys,
        "journeys_per_s": round(achieved, 1),
        "locust_cpu_s": round(locust_cpu_s, 2),
        "stack_cores": round(stack_cpu_s / STEP_S, 2),
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
            per_journey = slope([(s["journeys"], s["locust_cpu_s"]) for s in steps])
            key = "locust_cpu_ms_per_journey" + ("" if workers == 1 else f"_{suffix}")
            results[key] = None if per_journey is None else round(1000 * per_journey, 2)
            results[f"steps_{suffix}"] = steps
    one, two = results["max_journeys_per_s_1_worker"], results["max_journeys_per_s_2_workers"]
    results["workers_2_over_1"] = round(two / one, 2) if one else None
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
