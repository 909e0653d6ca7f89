"""Telemetry's cost in instructions: bench_overhead's paths counted by cachegrind, noise-free.

bench_overhead's ratios are wall-clock and CPU time, which a shared machine moves by several
per cent from run to run.  The number of instructions a request executes does not depend on
what else the machine runs, so this module counts them: each variant's bench_overhead child
runs under `valgrind --tool=cachegrind` (no cache simulation) twice, with LOW and HIGH bursts
after the same warm-up, and the difference of the two processes' totals divided by the extra
requests is the instructions of one request (start-up, imports and warm-up cancel out; the
order path's peers, a real direct stack, run natively and are not counted).

Figures per path (`minimal`, `order`) and variant (`bare`, `ours_untraced`, `ours_sampled`,
`ours`; see bench_overhead): `{path}_{variant}_instructions` per request;
`{path}_ours_instructions_ratio` = bare / ours (the instruction count's counterpart of
bench_overhead's `{path}_ours_ratio`), `{path}_untraced_instructions_ratio` and
`{path}_sampled_instructions_ratio` = bare / ours_untraced and bare / ours_sampled;
`{path}_spans_instructions` = ours - ours_untraced (the spans, their context and their
export), `{path}_telemetry_instructions` = ours - bare.  Runs with two repeats of a
variant differed by under 1 %.  Without valgrind (`make setup` installs it) the figures are a
`skipped` line.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench_overhead import BURST, _Child

VARIANTS = ("bare", "ours_untraced", "ours_sampled", "ours")
LOW, HIGH = 1, 6  # bursts after the warm-up, in the two runs of a variant
PARALLEL = 2  # children under valgrind at once (each is single-threaded in effect)
EXIT_S = 300  # valgrind writes its counts at exit; a child under it runs ~50x slower


def read_total(path: Path) -> int:
    """The instruction total (`Ir`) of a cachegrind output file."""
    events: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            if "Ir" not in events:
                raise ValueError(f"{path}: no Ir among the events {events}")
            return int(line.split()[1:][events.index("Ir")])
    raise ValueError(f"{path}: no summary line (did valgrind finish?)")


def per_request(low: int, high: int, requests: int) -> float:
    """Instructions of one request from two totals `requests` apart."""
    if requests <= 0:
        raise ValueError("the two runs must differ by at least one request")
    if high < low:
        raise ValueError(f"the longer run counted fewer instructions ({high} < {low})")
    return (high - low) / requests


def _count(
    variant: str, target: str, bursts: int, workdir: Path, extra: list[str]
) -> int:
    label = f"-{bursts}"
    out = workdir / f"cachegrind-{target}-{variant}{label}.out"
    wrapper = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
    ]  # fmt: skip
    child = _Child(variant, target, workdir, extra, wrapper=wrapper, label=label)
    try:
        child.ready()
        for _ in range(bursts):
            child.burst()
    finally:
        child.stop(timeout_s=EXIT_S)
    if child.popen.returncode != 0:
        raise RuntimeError(f"{child.name} under valgrind exited {child.popen.returncode}")
    return read_total(out)


def _count_all(
    target: str, workdir: Path, extra: Callable[[str, int], list[str]]
) -> dict[tuple[str, int], int]:
    jobs = [(variant, bursts) for variant in VARIANTS for bursts in (LOW, HIGH)]
    totals: dict[tuple[str, int], int] = {}
    errors: list[BaseException] = []

    def run(variant: str, bursts: int) -> None:
        try:
            totals[(variant, bursts)] = _count(
                variant, target, bursts, workdir, extra(variant, bursts)
            )
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
            errors.append(exc)

    for start in range(0, len(jobs), PARALLEL):
        threads = [threading.Thread(target=run, args=job) for job in jobs[start : start + PARALLEL]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    return totals


def main() -> dict[str, object]:
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed (make setup installs it)"}
    from chaosbed.stack import Stack

    figures: dict[str, object] = {"variants": ",".join(VARIANTS), "bursts": f"{LOW} vs {HIGH}"}
    with tempfile.TemporaryDirectory(prefix="chaosbed-bench-instructions-") as tmp:
        workdir = Path(tmp)
        with Stack.start(
            workdir / "stack", direct=True, seed_stock={"bench": 100_000_000}
        ) as stack:
            peers = ["--inventory", stack.url("inventory"), "--channel", stack.url("channel")]
            for target in BURST:

                def extra(variant: str, bursts: int, target: str = target) -> list[str]:
                    if target != "order":
                        return []
                    return [*peers, "--db", str(workdir / f"order-{variant}-{bursts}.db")]

                totals = _count_all(target, workdir, extra)
                requests = (HIGH - LOW) * BURST[target]
                each = {
                    v: per_request(totals[(v, LOW)], totals[(v, HIGH)], requests) for v in VARIANTS
                }
                for v in VARIANTS:
                    figures[f"{target}_{v}_instructions"] = round(each[v])
                figures[f"{target}_ours_instructions_ratio"] = round(each["bare"] / each["ours"], 3)
                for short in ("untraced", "sampled"):
                    figures[f"{target}_{short}_instructions_ratio"] = round(
                        each["bare"] / each[f"ours_{short}"], 3
                    )
                spans = each["ours"] - each["ours_untraced"]
                figures[f"{target}_spans_instructions"] = round(spans)
                figures[f"{target}_telemetry_instructions"] = round(each["ours"] - each["bare"])
    return figures


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key}: {value}")
