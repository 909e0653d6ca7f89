"""`chaosbed faults SCENARIO --attach stack.json`: a scenario's fault timeline, no load.

For a stack someone else drives (a hand-run Locust, `docker compose`): the timeline is
applied and healed on time, every event recorded in `faults.ndjson` of a new run directory,
and the harness gauge `chaosbed_fault_active{fault,target}` served so the dashboards'
fault annotations and the Chaos dashboard show the windows.  `--repeat` starts the
timeline again every scenario duration until SIGINT/SIGTERM; whatever ends it, every
fault is healed first.

The gauge is served on `--metrics-host:--metrics-port` (default 127.0.0.1, a free port)
and, when the attached stack is observed (`chaosbed up --observe`), added to its
Prometheus's scrape targets as job `harness`.  The channel admin token (behaviour faults)
is `$CHAOSBED_ADMIN_TOKEN` when set, else stack.json's: a compose stack's token comes from
the compose environment.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import rundir
from chaosbed.exits import EXIT_HARNESS, EXIT_INTERRUPTED, EXIT_USAGE
from chaosbed.harness_metrics import HarnessMetrics
from chaosbed.stack import Stack, StackError
from faults.catalog import Kind
from faults.drivers import StackDriver
from faults.scenario import Scenario, ScenarioError, load_scenario
from faults.scheduler import Outcome, Scheduler

TICK_S = 0.2


class TimelineError(RuntimeError):
    """The timeline cannot run against this stack; the message says why."""


def say(message: str) -> None:
    print(f"chaosbed faults: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TimelineOptions:
    scenario: str
    attach: Path
    runs_dir: Path = Path("runs")
    repeat: bool = False
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0


def process_fault_problem(scenario: Scenario, stack: Stack) -> str | None:
    """Why the scenario's process faults cannot run here (no pids to signal), or None."""
    steps = [s for s in scenario.timeline if s.type.kind is Kind.PROCESS]
    without_pid = sorted(
        {s.target for s in steps if not stack.info["services"][s.target].get("pid")}
    )
    if not without_pid:
        return None
    return (
        f"scenario {scenario.name} has process faults ({steps[0].label()}) but the attached "
        f"stack records no pid for {', '.join(without_pid)} (containers?): choose a scenario "
        "with network and behaviour faults only"
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _signals(handler: Callable[[int, FrameType | None], None] | int) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Timeline:
    """One attached stack, its driver, the gauge and the faults log; `run()` drives it."""

    def __init__(self, scenario: Scenario, stack: Stack, run_dir: Path, options: TimelineOptions):
        self.scenario = scenario
        self.stack = stack
        self.run_dir = run_dir
        self.options = options
        self.metrics = HarnessMetrics()
        self.driver = StackDriver(stack)
        self.faults_log = rundir.NdjsonWriter(run_dir / "faults.ndjson")
        self.scheduler: Scheduler | None = None
        self.cycles = 0

    def serve_gauge(self) -> str:
        self.metrics.declare(self.scenario.fault_targets())
        url = self.metrics.serve(host=self.options.metrics_host, port=self.options.metrics_port)
        self.stack.add_scrape_target("harness", url)
        return url

    def run(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Every cycle of the timeline (one unless `repeat`), each healed at its end."""
        while True:
            self.cycles += 1
            scheduler = self.scheduler = Scheduler(
                self.scenario.timeline,
                self.driver,
                record=self._record,
                gauge=self.metrics,
                on_outcome=_show,
            )
            t0 = clock()
            scheduler.begin(t0)
            while clock() - t0 < self.scenario.duration:
                now = clock()
                scheduler.tick(now)
                due = scheduler.next_due()
                left = t0 + (self.scenario.duration if due is None else due) - now
                time.sleep(max(0.0, min(TICK_S, left)))
            scheduler.heal_all()
            if scheduler.heal_errors:
                raise TimelineError("heal failed: " + "; ".join(scheduler.heal_errors))
            if not self.options.repeat:
                return

    def _record(self, event: Mapping[str, Any]) -> None:
        self.faults_log.write({**event, "cycle": self.cycles})

    def close(self) -> None:
        """Heal what is still active, stop serving the gauge, close the log (idempotent)."""
        try:
            if self.scheduler is not None:
                self.scheduler.heal_all()
        finally:
            self.driver.close()
            self.faults_log.close()
            self.metrics.close()
            self.stack.stop()  # attached: releases the Toxiproxy client only


def _show(outcome: Outcome) -> None:
    verb = {"apply": "applied", "heal": "healed"}[outcome.event]
    what = f"step {outcome.index}: {outcome.step.label()}"
    if outcome.ok:
        print(f"{verb} {what}", flush=True)
    else:
        say(f"could not {outcome.event} {what}: {outcome.error}")


def run_timeline(options: TimelineOptions) -> int:
    """The `chaosbed faults` command: check every input, then drive the timeline."""
    if not 0 <= options.metrics_port < 65536:
        say(f"--metrics-port must be 0-65535, got {options.metrics_port}")
        return EXIT_USAGE
    try:
        scenario = load_scenario(options.scenario)
    except ScenarioError as exc:
        say(f"bad scenario: {exc}")
        return EXIT_HARNESS
    if not options.attach.is_file():
        say(f"--attach {options.attach}: no such stack.json")
        return EXIT_HARNESS
    try:
        stack = Stack.attach(options.attach)
    except StackError as exc:
        say(str(exc))
        return EXIT_HARNESS
    if token := os.environ.get("CHAOSBED_ADMIN_TOKEN"):
        stack.info["admin_token"] = token
    problem = process_fault_problem(scenario, stack)
    if problem:
        stack.stop()
        say(problem)
        return EXIT_HARNESS
    try:
        run_dir = rundir.create_run_dir(options.runs_dir, f"faults-{scenario.name}")
    except (OSError, rundir.RunDirError) as exc:
        stack.stop()
        say(f"cannot create the run directory: {exc}")
        return EXIT_HARNESS
    timeline = Timeline(scenario, stack, run_dir, options)
    try:
        with _signals(_interrupt):
            url = timeline.serve_gauge()
            say(f"run directory {run_dir}; fault gauge at {url}")
            timeline.run()
    except KeyboardInterrupt:
        with _signals(signal.SIG_IGN):
            timeline.close()
        say(f"interrupted after {timeline.cycles} cycle(s): faults healed")
        return EXIT_INTERRUPTED
    except (TimelineError, OSError, StackError) as exc:
        with _signals(signal.SIG_IGN):
            timeline.close()
        say(f"harness failure: {exc}")
        return EXIT_HARNESS
    with _signals(signal.SIG_IGN):
        timeline.close()
    say(f"timeline complete: {run_dir / 'faults.ndjson'}")
    return 0
