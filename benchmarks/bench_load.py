"""How many complete shopper journeys per second the load generator sustains against a stack,
and what a journey costs Locust itself.

A journey is complete when the shopper placed, paid and saw PAID.  The target rate is stepped
up (short steady runs, paced with the scenario `rate`, with users enough that pacing and not
journey latency sets the rate) until the generator falls short of it by more than 10% or
Locust warns that a process is CPU-bound, twice in a row; the best sustained step is
reported, once with 1 and once with 2 worker processes, each series with the same time
budget (under four minutes each), against the same stack.  `workers_2_over_1` is their
ratio: where the stack is not the limit (`limited_by_*`), two workers must give >= 1.5x one.
Where the stack and Locust share the machine's cores and use them all, both series stop at
the machine's limit (`limited_by_*` names it, with each one's cores) and the ratio is ~1: it
shows Locust's scaling only on a machine with cores to spare for the stack.  So both series
run once more against the null stack (`benchmarks/trivial_server.py --null-stack`: the three
calls of a paid journey answered from memory, ~0.3 ms of CPU a journey), where Locust is the
limit: `peak_journeys_per_s_null_*` is the most journeys/s a step of each series completed,
and `workers_2_over_1_null_stack` their ratio, the load generator's own scaling.

Every user starts its first journey the moment it is spawned, so users are spawned at the
target rate (all of them within one pace period): their journeys are spread evenly over the
pace period instead of starting, and ending, in one burst per period (which made a window of
3.5 periods count 3 or 4 bursts: 71 journeys/s "achieved" at a target of 80 with the stack at
0.6 cores).  A step is measured in a window that leaves the spawning out: from two pace
periods after the first order (a user's first journey runs as it spawns, its second is due
within one pace period) for a whole number of pace periods.  The shoppers walk only the paid
path (`load.paths` all 0): the other paths never reach PAID.  In that window, from /proc
samples every 0.2 s: complete journeys per second, Locust's CPU per journey (master + workers:
`locust_cpu_ms_per_journey` of the highest sustained step of the 1-worker series,
`_2_workers` of the other), the stack's CPU per journey and `stack_cores`, its CPU per wall
second (near the machine's core count, the stack is the limit).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import proc_cpu
from benchmarks.journeys import stack_pids
from benchmarks.trivial_server import TrivialServer
from chaosbed.proc import free_port
from chaosbed.stack import Stack
from faults.scenario import JOURNEY_PATHS
from loadtests.runner import locust_command, read_history

REPO = Path(__file__).resolve().parent.parent
STEP_S = 12.0  # load duration of one step: two pace periods to spawn, three measured
# target journeys/s, stepped up until a step falls short: since Toxiproxy's sysmon stays
# awake (docs/perf.md) the stack and one worker sustain 480 on 2 cores, so the steps go on
RATES = (20, 40, 80, 160, 240, 320, 480, 640, 960)
# against the null stack (benchmarks/trivial_server.py) Locust is the limit: finer steps
# from where one worker is comfortable to beyond what two can reach on 2 cores
NULL_RATES = (480, 800, 1120, 1440, 1920, 2400, 2880)
SUSTAINED = 0.9  # achieved / target
SERIES_BUDGET_S = 220.0  # per worker count
BUSY_MACHINE = 0.9  # stack + Locust cores over the machine's: the machine is the limit
USERS_PER_RATE = 2  # each user paced every 2 s: a journey may take that long before users limit
SAMPLE_EVERY_S = 0.2  # CPU samples of Locust and the stack during a step
EDGE_S = 0.5  # kept out of the window at both ends (spawning, stopping)
RETRIES = 1  # a step that falls short is run once more before the series stops (noisy machine)

Samples = list[tuple[float, dict[str, float]]]  # (wall time, CPU seconds by process)


def journey_times(history: list[dict[str, Any]]) -> tuple[float | None, list[float]]:
    """(wall time of the first place_order, wall time each complete journey saw PAID).

    A journey is complete when its shopper paid successfully and then saw PAID.
    """
    paid = {r["key"] for r in history if r["f"] == "pay" and r["type"] == "ok"}
    seen: dict[str, float] = {}
    for r in history:
        if r["f"] == "poll" and r["type"] == "ok" and (r["value"] or {}).get("status") == "PAID":
            seen[r["key"]] = min(float(r["wall"]), seen.get(r["key"], float("inf")))
    starts = [
        float(r["wall"]) for r in history if r["f"] == "place_order" and r["type"] == "invoke"
    ]
    return (min(starts) if starts else None), [t for key, t in seen.items() if key in paid]


def window_delta(
    samples: Samples, start: float, end: float
) -> tuple[float, float, dict[str, float]]:
    """(t0, t1, CPU seconds of each process from t0 to t1): t0 and t1 are the first and the
    last sample within [start, end]; a process missing from either sample is left out."""
    inside = [(t, cpu) for t, cpu in samples if start <= t <= end]
    if len(inside) < 2:
        raise ValueError(f"fewer than two CPU samples between {start:.2f} and {end:.2f}")
    (t0, first), (t1, last) = inside[0], inside[-1]
    return t0, t1, {name: last[name] - first[name] for name in first if name in last}


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _sample(stack: dict[str, int], locust_pid: int) -> dict[str, float]:
    cpu = proc_cpu.snapshot(stack)
    for pid in (locust_pid, *_children(locust_pid)):  # the master and its forked workers
        with contextlib.suppress(proc_cpu.ProcCpuError):
            cpu[f"locust:{pid}"] = proc_cpu.cpu_seconds(pid)
    return cpu


def _run_sampled(
    argv: list[str], env: dict[str, str], stack: dict[str, int], log: Path
) -> Samples:
    samples: Samples = []
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, env={**os.environ, **env}, cwd=REPO, stdout=out,
                                 stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STEP_S + 60
        while popen.poll() is None:
            if time.monotonic() > deadline:
                popen.kill()
                popen.wait()
                raise RuntimeError(f"locust step did not end; log {log}")
            samples.append((time.time(), _sample(stack, popen.pid)))
            time.sleep(SAMPLE_EVERY_S)
    if popen.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"locust step exited {popen.returncode}:\n{tail}")
    return samples


def run_step(
    stack_info: dict[str, Any], pids: dict[str, int], rate: int, workers: int, run_dir: Path
) -> dict[str, Any]:
    """One step at `rate` journeys/s against the stack described by `stack_info` (its
    stack.json), whose processes `pids` are sampled for their CPU."""
    users = max(8, USERS_PER_RATE * rate)
    pace_s = users / rate
    load = {
        "users": users,
        "spawn_rate": rate,  # one pace period to spawn them all: arrivals spread evenly
        "rate": rate,
        "mix": {"shopper": 1},
        # paid journeys only: the flow's other paths (abandon, declined, ... 3 % each by
        # default) never reach PAID, and would count as a shortfall of 12-15 %
        "paths": dict.fromkeys(JOURNEY_PATHS, 0.0),
        "max_poll": 5,
    }
    run_dir.mkdir(parents=True)
    argv, env = locust_command(
        stack_info=stack_info, load=load, duration_s=STEP_S, seed=1, run_dir=run_dir,
        workers=workers, master_port=free_port() if workers else None,
    )
    samples = _run_sampled(argv, env, pids, run_dir / "locust.log")
    progress = json.loads((run_dir / "load_progress.json").read_text())
    load_start, paid_at = journey_times(read_history(run_dir / "history.ndjson"))
    if load_start is None:
        raise RuntimeError(f"step at {rate} journeys/s placed no order; see {run_dir}")
    # after spawning; a whole number of pace periods, in which every paced user completes
    # as many journeys wherever its start falls (Locust's distributed spawning comes in
    # bursts of a second): a window of 3.5 periods counted 3 or 4 of them
    # (spawning takes one pace period, and a user's second journey is due within the next:
    # its first runs the moment it spawns)
    start, end = load_start + 2 * pace_s + EDGE_S, load_start + STEP_S - EDGE_S
    periods = max(1, int((end - start) // pace_s))
    end = start + periods * pace_s
    achieved = sum(1 for t in paid_at if start <= t <= end) / (end - start)
    try:
        t0, t1, cpu = window_delta(samples, start, end)  # CPU: between the samples inside
    except ValueError as exc:
        # Locust's first order came so late that the window reaches past its run (a slow
        # start on a busy machine): not a measurement of the stack; retried like a short step
        sampled = f"{samples[0][0] - load_start:.1f}..{samples[-1][0] - load_start:.1f} s"
        return {
            "target": rate,
            "users": users,
            "problem": f"{exc} (Locust sampled {sampled} after its first order)",
            "cpu_warning": bool(progress.get("cpu_warning")),
            "sustained": False,
            "measured": False,
        }
    journeys = sum(1 for t in paid_at if t0 <= t <= t1)
    locust_cpu = sum(v for name, v in cpu.items() if name.startswith("locust:"))
    stack_cpu = sum(v for name, v in cpu.items() if name in pids)
    wall = t1 - t0
    return {
        "target": rate,
        "users": users,
        "window_s": round(end - start, 1),
        "journeys": journeys,
        "journeys_per_s": round(achieved, 1),
        "locust_cpu_ms_per_journey": round(1000 * locust_cpu / journeys, 2) if journeys else None,
        "stack_cpu_ms_per_journey": round(1000 * stack_cpu / journeys, 2) if journeys else None,
        "stack_cores": round(stack_cpu / wall, 2),
        "locust_cores": round(locust_cpu / wall, 2),
        "cpu_warning": bool(progress.get("cpu_warning")),
        "sustained": achieved >= SUSTAINED * rate and not progress.get("cpu_warning"),
    }


def _limit(steps: list[dict[str, Any]], cores: int | None = None, workers: int = 0) -> str:
    """Why the stepping stopped: the generator's CPU, the machine (the stack and Locust
    together on every core), the stack falling behind with cores to spare, or the budget."""
    last = steps[-1] if steps else None
    if last is None or last["sustained"]:
        return "time budget / highest step"
    if last.get("measured") is False:
        return f"not measured: {last['problem']}"
    if last["cpu_warning"]:
        return "load generator CPU (Locust warning)"
    cores = cores or len(os.sched_getaffinity(0))  # the cores this process may run on
    locust = last.get("locust_cores", 0.0)
    if workers and locust >= BUSY_MACHINE * workers and workers < cores:
        # each worker is one process on one core: all of them busy, with cores to spare
        return f"load generator CPU: Locust {locust} cores with {workers} worker(s)"
    used = last.get("stack_cores", 0.0) + locust
    if used >= BUSY_MACHINE * cores:
        return (
            f"the machine: the stack {last.get('stack_cores')} and Locust "
            f"{last.get('locust_cores')} of its {cores} cores"
        )
    return "the stack (no generator CPU warning)"


def run_series(
    stack_info: dict[str, Any], pids: dict[str, int], workers: int, rates: tuple[int, ...],
    work: Path, label: str = "",
) -> dict[str, Any]:
    """Steps up `rates` with `workers` Locust workers until one falls short twice (or the
    series' time budget ends); the figures of the series, named with `label`."""
    deadline = time.monotonic() + SERIES_BUDGET_S
    steps: list[dict[str, Any]] = []
    for rate in rates:
        for attempt in range(1 + RETRIES):
            if time.monotonic() + STEP_S + 10 > deadline:
                break
            step_dir = work / f"{label}w{workers}-r{rate}-{attempt}"
            step = run_step(stack_info, pids, rate, workers, step_dir)
            steps.append(step)
            if step["sustained"]:
                break
        if not steps or not steps[-1]["sustained"]:
            break
    best = max((s["target"] for s in steps if s["sustained"]), default=0)
    suffix = f"{label}{workers}_worker{'s' if workers > 1 else ''}"
    measured = [s for s in steps if s["sustained"]] or steps[-1:]
    key = f"locust_cpu_ms_per_journey_{suffix}"
    if not label and workers == 1:
        key = "locust_cpu_ms_per_journey"  # the name the issue gave it
    peak = max((s.get("journeys_per_s") or 0.0 for s in steps), default=0.0)
    return {
        f"max_journeys_per_s_{suffix}": best,
        # the most journeys/s any step completed: past the last sustained step, what the
        # load generator reached when it fell short (steps are coarse)
        f"peak_journeys_per_s_{suffix}": peak,
        f"limited_by_{suffix}": _limit(steps, workers=workers),
        key: measured[-1].get("locust_cpu_ms_per_journey") if measured else None,
        f"steps_{suffix}": steps,
    }


def null_stack_info(url: str, run_dir: Path) -> dict[str, Any]:
    """A stack.json's fields Locust reads, both pointing at the null stack: no proxy."""
    return {
        "run_dir": str(run_dir),
        "proxies": {name: {"url": url} for name in ("client_order", "client_channel")},
    }


def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = Path(tmp)
        with Stack.start(work / "stack") as stack:
            for workers in (1, 2):
                results.update(run_series(stack.info, stack_pids(stack), workers, RATES, work))
        one, two = results["max_journeys_per_s_1_worker"], results["max_journeys_per_s_2_workers"]
        results["workers_2_over_1"] = round(two / one, 2) if one else None
        # the same two series against a stack that costs next to nothing: Locust's own
        # scaling, which the bundled stack on a 2-core machine cannot show
        with TrivialServer(free_port(), work / "null-stack.log", null_stack=True) as null:
            info = null_stack_info(null.url, work)
            for workers in (1, 2):
                results.update(
                    run_series(info, {"null_stack": null.pid}, workers, NULL_RATES, work, "null_")
                )
        one = results["peak_journeys_per_s_null_1_worker"]
        two = results["peak_journeys_per_s_null_2_workers"]
        results["workers_2_over_1_null_stack"] = round(two / one, 2) if one else None
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
