"""Audit speed and memory on synthetic runs of 100 k and 1 M orders (goal: 1 M orders < 10 s).

A size runs as two subprocesses, so each peak RSS (ru_maxrss) is its own:
- the writer builds the records in memory (`clean_run`: 3 history ops and ~13 export records per
  order), audits them (`audit_built_s`, comparable with figures from before the NDJSON path was
  measured) and writes them as a run directory (`write_s`);
- the reader does what the gate does: `load_s` reads that directory back from NDJSON, then
  `audit_s` (wall) and `audit_cpu_s` (CPU of the process: steadier on a shared machine) audit it;
  `rss_loaded_mb` is resident memory once loaded and `peak_rss_mb` the peak of load + audit, so
  their difference is what the audit itself added.
`1M_over_100k_audit` is the 1 M audit time over the 100 k one, from the same run (10 = linear).

Bounded to about two minutes.  Run alone: `python -m benchmarks.bench_audit` (or `make bench`).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = (100_000, 1_000_000)
GOAL_S = 10.0
CHILD_TIMEOUT_S = 600


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(n_orders: int, run_dir: Path) -> dict[str, Any]:
    """Build n orders in memory, audit them, write them to `run_dir`."""
    from slos.audit import audit
    from slos.records import gc_paused
    from slos.synthetic import clean_run, write_run

    started = time.perf_counter()
    with gc_paused():  # millions of new records: the cyclic GC would only rescan them
        records = clean_run(n_orders, faults=[(20, 10, "latency", "order_channel")])
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    verdict = audit(records).verdict
    audit_built_s = time.perf_counter() - started
    started = time.perf_counter()
    with gc_paused():
        write_run(records, run_dir)
    return {
        "build_s": round(build_s, 2),
        "audit_built_s": round(audit_built_s, 2),
        "built_verdict": verdict,
        "write_s": round(time.perf_counter() - started, 2),
        "ndjson_mb": round(sum(p.stat().st_size for p in run_dir.rglob("*.ndjson")) / 2**20),
    }


def read(run_dir: Path) -> dict[str, Any]:
    """Load `run_dir` and audit it, as the gate does."""
    from slos.audit import audit
    from slos.records import load_run

    started = time.perf_counter()
    records = load_run(run_dir)
    load_s = time.perf_counter() - started
    gc.collect()
    rss_loaded = _rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    result = audit(records)
    audit_s, audit_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "orders": len(records.orders),
        "history_ops": len(records.ops),
        "verdict": result.verdict,
        "load_s": round(load_s, 2),
        "audit_s": round(audit_s, 2),
        "audit_cpu_s": round(audit_cpu_s, 2),
        "rss_loaded_mb": round(rss_loaded),
        "peak_rss_mb": round(_peak_mb()),
    }


def _child(*args: str) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_audit", *args],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"bench_audit {' '.join(args)} failed: {child.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return figures


def main() -> dict[str, object]:
    results: dict[str, object] = {}
    for n in SIZES:
        label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        with tempfile.TemporaryDirectory(prefix="chaosbed-bench-audit-") as tmp:
            run_dir = str(Path(tmp) / "run")
            figures = {**_child("--write", str(n), run_dir), **_child("--read", run_dir)}
        for key, value in figures.items():
            if key != "orders":
                results[f"{label}_{key}"] = value
    audit_100k, audit_1m = results.get("100k_audit_s"), results.get("1M_audit_s")
    if isinstance(audit_1m, int | float):
        results["1M_goal_s"] = GOAL_S
        results["1M_within_goal"] = audit_1m < GOAL_S
        if isinstance(audit_100k, int | float) and audit_100k > 0:
            results["1M_over_100k_audit"] = round(audit_1m / audit_100k, 1)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", nargs=2, metavar=("ORDERS", "RUN_DIR"),
                        help="build, audit and write one synthetic run; print its JSON figures")
    parser.add_argument("--read", metavar="RUN_DIR",
                        help="load and audit one run directory; print its JSON figures")
    args = parser.parse_args()
    if args.write:
        print(json.dumps(write(int(args.write[0]), Path(args.write[1]))))
    elif args.read:
        print(json.dumps(read(Path(args.read))))
    else:
        for key, value in main().items():
            print(f"{key}: {value}")
