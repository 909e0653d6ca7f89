"""Audit speed and memory on synthetic runs of 100 k and 1 M orders (goal: 1 M orders < 10 s).

Each size runs in its own subprocess so its peak RSS (ru_maxrss) is its own.  Figures per size:
- `build_s`: building the in-memory records (3 history ops and ~12 export records per order);
- `audit_s` (wall) and `audit_cpu_s` (CPU of the process: steadier on a shared machine);
- `rss_records_mb`: resident memory once the records exist; `peak_rss_mb`: after the audit, so
  `peak_rss_mb - rss_records_mb` is what the audit itself added;
- at 100 k also `load_s`: reading the same run back from its NDJSON files (json parsing).

Run alone: `python -m benchmarks.bench_audit` (or `make bench`).
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


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(n_orders: int, *, with_load: bool) -> dict[str, Any]:
    from slos.audit import audit
    from slos.records import load_run
    from slos.synthetic import clean_run, write_run

    gc.disable()  # building millions of records: the cyclic GC would only rescan them
    started = time.perf_counter()
    records = clean_run(n_orders, faults=[(20, 10, "latency", "order_channel")])
    build_s = time.perf_counter() - started
    gc.enable()
    gc.collect()
    rss_records = _rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    result = audit(records)
    audit_s, audit_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures: dict[str, Any] = {
        "orders": n_orders,
        "history_ops": len(records.ops),
        "verdict": result.verdict,
        "build_s": round(build_s, 2),
        "audit_s": round(audit_s, 2),
        "audit_cpu_s": round(audit_cpu_s, 2),
        "rss_records_mb": round(rss_records),
        "peak_rss_mb": round(peak),
    }
    if with_load:
        with tempfile.TemporaryDirectory(prefix="chaosbed-bench-audit-") as tmp:
            run_dir = write_run(records, Path(tmp) / "run")
            del records
            gc.collect()
            started = time.perf_counter()
            loaded = load_run(run_dir)
            figures["load_s"] = round(time.perf_counter() - started, 2)
            figures["loaded_orders"] = len(loaded.orders)
    return figures


def main() -> dict[str, object]:
    results: dict[str, object] = {}
    for n in SIZES:
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_audit", "--child", str(n)],
            capture_output=True, text=True, timeout=1800, check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"bench_audit child for {n} orders failed: {child.stderr[-2000:]}")
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        for key, value in figures.items():
            if key != "orders":
                results[f"{label}_{key}"] = value
    audit_1m = results.get("1M_audit_s")
    if isinstance(audit_1m, int | float):
        results["1M_goal_s"] = GOAL_S
        results["1M_within_goal"] = audit_1m < GOAL_S
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", type=int, help="measure one size and print its JSON")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, with_load=args.child <= 100_000)))
    else:
        for key, value in main().items():
            print(f"{key}: {value}")
