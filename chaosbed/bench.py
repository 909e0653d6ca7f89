"""`make bench`: run every benchmark module side by side and print one table.

Each module in `benchmarks/` has `main() -> dict[str, object]` returning its figures;
ratios are computed inside a module from measurements taken in the same run, because
this machine is noisy and absolute numbers only mean something next to each other.
Results are also written to `runs/bench-<UTC timestamp>.json`.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = (
    "bench_overhead", "bench_instructions", "bench_flow", "bench_history", "bench_load",
    "bench_audit", "bench_gate",
)


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    results: dict[str, object] = {}
    failed = False
    for name in names:
        started = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            figures = module.main()
        except Exception:
            traceback.print_exc()
            figures = {"error": traceback.format_exc(limit=3)}
            failed = True
        figures = {**figures, "wall_s": round(time.monotonic() - started, 1)}
        results[name] = figures
        for key, value in figures.items():
            print(f"   {key}: {value}", flush=True)
    out = Path("runs") / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"results written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
