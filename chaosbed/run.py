"""`chaosbed run SCENARIO`: stack → load + fault timeline → heal → settle → exports → gate.

Every input is validated before anything starts.  Whatever happens after that (the end of
the load, Ctrl-C/SIGTERM, Locust dying, a harness error), every fault is healed and every
process this run started is stopped before `RunPipeline.execute` returns (the command
line's checks of its arguments are chaosbed/commands.py:cmd_run).

A supervisor (chaosbed/supervisor.py) watches every process the run relies on; one that
dies outside the fault timeline stops the load, and the run ends as a harness error (exit 3,
result.json `verdict: error`, a JUnit `<error>`, run.json `status: failed`).

Exit codes: the gate's 0/1/2 (with --slo, else with DEFAULT_SLO); 3 harness failure;
64 usage; 130 Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

import rundir
from chaosbed import proc
from chaosbed.exits import EXIT_HARNESS, EXIT_INTERRUPTED
from chaosbed.harness_metrics import HarnessMetrics
from chaosbed.progress import RunProgress, read_load_progress
from chaosbed.stack import Stack
from chaosbed.supervisor import Supervisor, Watched, child_pids, pid_problem
from faults import process
from faults.catalog import Kind
from faults.drivers import StackDriver
from faults.scenario import Scenario
from faults.scheduler import Outcome, Scheduler
from loadtests.runner import locust_command
from loadtests.target import Target, load_target

SERVICES = ("order", "channel", "inventory")

# the gate of a run without --slo (README, docs/checks.md)
DEFAULT_SLO = proc.PROJECT_ROOT / "slos" / "smoke.yaml"

LOAD_START_TIMEOUT_S = 60.0  # Locust boot until its first load_progress.json
LOAD_OVERRUN_S = 60.0  # Locust still running this long after the load duration: stuck
EARLY_EXIT_SLACK_S = 5.0  # Locust ending sooner than this before the duration: it died
LOCUST_STOP_GRACE_S = 10.0
# Locust's workers leave first when the load ends: only a death before this counts
WORKER_END_SLACK_S = 5.0
TICK_S = 0.2


class HarnessFailure(RuntimeError):
    """The harness itself failed (stack, Locust, exports); one clear line for the user."""


def say(message: str) -> None:
    print(f"chaosbed run: {message}", file=sys.stderr, flush=True)


# --- signals ---------------------------------------------------------------------------


class _Interrupt:
    """Raise KeyboardInterrupt on SIGINT/SIGTERM, but never halfway through applying or
    healing a fault (`with INTERRUPT.deferred():`): then it is raised once that is done."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending:
            self._pending = False
            raise KeyboardInterrupt


INTERRUPT = _Interrupt()


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM both end the run the Ctrl-C way."""
    previous = {sig: signal.signal(sig, INTERRUPT) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C must not leave processes or faults behind."""
    previous = {
        sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the pipeline ----------------------------------------------------------------------


class RunPipeline:
    def __init__(
        self,
        scenario: Scenario,
        *,
        scenario_text: str,
        runs_dir: Path,
        bugs: list[str],
        workers: int,
        slo_path: Path | None,
        baseline: Path | None,
        attach: Path | None,
        observe: bool,
        target: Target | None = None,
        out: Path | None = None,
        json_summary: bool = False,
        force_baseline: bool = False,
    ) -> None:
        self.scenario = scenario
        self.scenario_text = scenario_text
        self.runs_dir = runs_dir
        self.bugs = bugs
        self.workers = workers
        self.slo_path = slo_path
        self.baseline = baseline
        self.force_baseline = force_baseline
        self.attach = attach
        self.observe = observe
        self.target = target  # None: the bundled order service
        self.out = out
        self.json_summary = json_summary
        self.supervisor = Supervisor()
        self.run_dir: Path | None = None
        self.meta: dict[str, Any] = {}
        self.stack: Stack | None = None
        self.locust: process.Child | None = None
        self.driver: StackDriver | None = None
        self.scheduler: Scheduler | None = None
        self.faults_log: rundir.NdjsonWriter | None = None
        self.metrics = HarnessMetrics()
        self.console = Console(stderr=True)
        self.progress = RunProgress(f"chaosbed run {scenario.name}", console=self.console)
        self._t0: float | None = None
        self._cleaned = False

    # --- the run -------------------------------------------------------------------

    def execute(self) -> int:
        try:
            if self.out is not None:
                self.run_dir = rundir.create_named_run_dir(self.out)
            else:
                self.run_dir = rundir.create_run_dir(self.runs_dir, self.scenario.name)
            (self.run_dir / "scenario.yaml").write_text(self.scenario_text)
            rundir.point_latest(self.runs_dir, self.run_dir)
        except (OSError, rundir.RunDirError) as exc:
            say(f"harness failure: cannot create the run directory: {exc}")
            return EXIT_HARNESS
        self.meta = {
            "scenario": self.scenario.name,
            "started": time.time(),
            "load_started": None,
            "load_ended": None,
            "settle_ended": None,
            "ended": None,
            "bugs": self.bugs,
            "slo": str(self.slo_path) if self.slo_path else None,
            "workers": self.workers,
            "seed": self.scenario.seed,
            "baseline": str(self.baseline) if self.baseline else None,
            "attached": str(self.attach) if self.attach else None,
            "target": self.target.name if self.target else None,
            "status": "running",
            "error": None,
            **build_identity(),
        }
        self._write_meta()
        say(f"run directory {self.run_dir}")
        try:
            with _signals_interrupt():
                with self.progress:
                    try:
                        self._run()
                    except BaseException:
                        # inside the live panel, so its last state shows the faults healed
                        with _signals_ignored():
                            self._cleanup()
                            self.progress.update(active=self._active())
                            self.progress.phase("stopped")
                        raise
                code = self._finish()
        except KeyboardInterrupt:
            with _signals_ignored():
                self._cleanup()
            self._end("interrupted")
            healed = "faults healed" if not self._active() else "SOME FAULTS NOT HEALED"
            self._interrupted_result(healed)
            say(f"interrupted: {healed}, processes stopped; partial run in {self.run_dir}")
            return EXIT_INTERRUPTED
        except Exception as exc:
            with _signals_ignored():
                self._cleanup()
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, HarnessFailure):
                message = f"{type(exc).__name__}: {message}"
            return self._harness_error(message)
        return code

    def _end(self, status: str, error: str | None = None) -> None:
        self.meta["status"] = status
        self.meta["ended"] = time.time()
        if error is not None:
            self.meta["error"] = error
        self._write_meta()

    def _harness_error(self, message: str) -> int:
        """The harness failed: run.json `failed`, result.json `error`, JUnit `<error>`, one
        plain line on stderr; never a FAIL verdict."""
        assert self.run_dir is not None
        self._end("failed", message)
        try:
            from slos.gate import harness_error

            self._print_summary(harness_error(self.run_dir, message).summary())
        except Exception as exc:  # the line below still says what went wrong
            say(f"could not write result.json: {type(exc).__name__}: {exc}")
        say(f"harness failure: {message} (details in {self.run_dir})")
        return EXIT_HARNESS

    def _interrupted_result(self, healed: str) -> None:
        """result.json and junit.xml of an interrupted run: verdict `error`, exit 130, so a CI
        job cancelled mid-run finds a result that says no verdict was reached, and why."""
        assert self.run_dir is not None
        message = f"interrupted by SIGINT/SIGTERM before the gate ran ({healed})"
        try:
            from slos.gate import harness_error

            self._print_summary(
                harness_error(self.run_dir, message, exit_code=EXIT_INTERRUPTED).summary())
        except Exception as exc:
            say(f"could not write result.json: {type(exc).__name__}: {exc}")

    def _print_summary(self, summary: dict[str, Any]) -> None:
        if self.json_summary:
            print(json.dumps(summary, indent=2, default=str), flush=True)

    def _run(self) -> None:
        assert self.run_dir is not None
        self._start_stack()
        self._start_load()
        self._drive_load()
        self._heal_all()
        self._settle()
        self._collect_exports()
        with _signals_ignored():
            self._cleanup()

    # --- phases --------------------------------------------------------------------

    def _start_stack(self) -> None:
        assert self.run_dir is not None
        if self.attach is not None:
            self.progress.phase(f"attaching to {self.attach}")
            self.stack = Stack.attach(self.attach)
            recorded = self.stack.info.get("target")
            if self.target is None and isinstance(recorded, dict) and recorded.get("file"):
                self.target = load_target(recorded["file"])  # the attached stack's target
            dead = self.stack.health_problems()
            if dead:
                raise HarnessFailure(
                    f"attached stack {self.attach} is not alive: {'; '.join(dead)}")
            if self.scenario.services:
                say("attached stack keeps its own service timings; scenario `services` ignored")
        else:
            self.progress.phase("starting stack")
            self.stack = Stack.start(
                self.run_dir,
                bugs=self.bugs,
                # the seed also drives the channel's random fault decisions (replayable runs)
                service_env={
                    **self.scenario.service_env(),
                    "CHAOSBED_SEED": str(self.scenario.seed),
                },
                seed_stock=dict(self.scenario.load.skus),
                observe=self.observe,
                target=self.target,
            )
        stack = self.stack
        self.supervisor.add(*stack.watched())
        self.metrics.declare(self.scenario.fault_targets())
        url = self.metrics.serve()
        stack.info["harness_metrics"] = url
        self._write_stack_json()
        stack.add_scrape_target("harness", url)
        self.driver = StackDriver(stack)
        self.faults_log = rundir.NdjsonWriter(self.run_dir / "faults.ndjson")
        self.scheduler = Scheduler(
            self.scenario.timeline,
            self.driver,
            record=self.faults_log.write,
            gauge=self.metrics,
            on_outcome=self._show_outcome,
        )

    def _start_load(self) -> None:
        assert self.run_dir is not None and self.stack is not None
        self.progress.phase("starting load generator")
        argv, env = locust_command(
            stack_info=self.stack.info,
            load=self.scenario.load_dict(),
            duration_s=self.scenario.duration,
            seed=self.scenario.seed,
            run_dir=self.run_dir,
            workers=self.workers,
            master_port=proc.free_port() if self.workers else None,
        )
        if self.stack.info.get("observe"):
            # client-side latency/throughput from the load generator, next to the server's
            load_port = proc.free_port()
            env["CHAOSBED_LOAD_METRICS_PORT"] = str(load_port)
            self.stack.add_scrape_target("loadgen", f"http://127.0.0.1:{load_port}/metrics")
        locust = self.locust = process.Child(
            argv,
            env={**os.environ, **env},
            log_path=self.run_dir / "locust.log",
            cwd=proc.PROJECT_ROOT,
            name="Locust",
        )
        progress_file = self.run_dir / "load_progress.json"
        first: dict[str, Any] = {}

        def load_started() -> str | None:
            progress = read_load_progress(progress_file)
            if progress is None:
                return "no load_progress.json yet"
            first.update(progress)
            return None

        try:
            proc.wait_ready(locust, load_started, LOAD_START_TIMEOUT_S)
        except proc.NotReady as exc:
            log = self.run_dir / "locust.log"
            detail = _last_line(log) if exc.exited else f"see {log}"
            raise HarnessFailure(f"{exc}: {detail}") from exc
        # Locust writes its first progress as the load starts; `elapsed` covers the delay
        since = max(0.0, float(first.get("elapsed") or 0.0))
        # wall clock read first: the timeline's apply times can never look early
        wall, now = time.time(), time.monotonic()
        self._t0 = now - since
        self.meta["load_started"] = wall - since
        self._write_meta()
        for pid in child_pids(locust.pid):  # the workers `--processes` forked
            self.supervisor.add(Watched("Locust worker", self._worker_check(pid)))

    def _drive_load(self) -> None:
        assert self.scheduler is not None and self._t0 is not None and self.run_dir is not None
        assert self.locust is not None
        locust = self.locust
        duration = self.scenario.duration
        self.scheduler.begin(self._t0)
        self.progress.phase("load", duration)
        progress_file = self.run_dir / "load_progress.json"
        while True:
            now = time.monotonic()
            with INTERRUPT.deferred():  # an apply or heal is finished and recorded
                self.scheduler.tick(now)
            self.progress.update(load=read_load_progress(progress_file), active=self._active())
            if not locust.running():
                break
            self._supervise()
            if now - self._t0 > duration + LOAD_OVERRUN_S:
                raise HarnessFailure(
                    f"Locust still running {LOAD_OVERRUN_S:.0f}s after the load duration "
                    f"(see {self.run_dir / 'locust.log'})"
                )
            due = self.scheduler.next_due()
            wait = TICK_S if due is None else max(0.0, min(TICK_S, self._t0 + due - now))
            time.sleep(wait)
        elapsed = time.monotonic() - self._t0
        code = locust.popen.returncode
        self.meta["load_ended"] = time.time()
        self._write_meta()
        if code != 0:
            raise HarnessFailure(
                f"Locust died after {elapsed:.0f}s with code {code}: "
                f"{_last_line(self.run_dir / 'locust.log')}"
            )
        if elapsed < duration - EARLY_EXIT_SLACK_S:
            raise HarnessFailure(
                f"Locust stopped after {elapsed:.0f}s of a {duration:g}s load "
                f"(see {self.run_dir / 'locust.log'})"
            )

    def _heal_all(self) -> None:
        if self.scheduler is not None:
            self.progress.phase("healing")
            self.scheduler.heal_all()

    def _settle(self) -> None:
        settle = self.scenario.settle
        self.progress.phase("settle (active query, reconciliation)", settle)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            self.progress.update(active=self._active())
            self._supervise()
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
        self.meta["settle_ended"] = time.time()
        self._write_meta()

    def _collect_exports(self) -> None:
        assert self.run_dir is not None and self.stack is not None
        self.progress.phase("collecting audit exports")
        exports = self.run_dir / "exports"
        exports.mkdir(exist_ok=True)
        blackbox = self.target is not None and not self.target.export
        for service in SERVICES:
            if service == "order" and blackbox:
                continue  # the target serves no export: its orders are read back below
            try:
                records = self.stack.export(service)
            except Exception as exc:
                raise HarnessFailure(f"audit export of {service} failed: {exc}") from exc
            rundir.write_ndjson(exports / f"{service}.ndjson", records)
        if blackbox:
            self._final_read(exports / "channel.ndjson")

    def _final_read(self, channel_export: Path) -> None:
        """Black-box: every order of the history and the ledger, read through the adapter."""
        assert self.run_dir is not None and self.stack is not None and self.target is not None
        from loadtests.adapter import PlainHttp, load_adapter
        from loadtests.final_read import write_final_read

        self.progress.phase("final read of every order (black-box audit)")
        target = self.target
        adapter = load_adapter(target.adapter, target.base_dir)(
            PlainHttp(self.stack.url("order")), {"health_path": target.health, **target.options}
        )
        ledger_orders = {
            str(r["merchant_order_id"])
            for r in rundir.iter_ndjson(channel_export)
            if r.get("merchant_order_id") is not None
        }
        write_final_read(self.run_dir, adapter, ledger_orders=ledger_orders)

    def _finish(self) -> int:
        """After a complete run: heal problems, the gate's verdict, the exit code."""
        assert self.run_dir is not None
        heal_errors = self.scheduler.heal_errors if self.scheduler is not None else []
        if heal_errors:
            raise HarnessFailure(f"heal failed, the system was not restored: {heal_errors[0]}")
        self._end("complete")
        return self._gate()

    def _gate(self) -> int:
        assert self.run_dir is not None and self.slo_path is not None
        from slos.gate import ERROR, evaluate_run, render_text  # matplotlib: only when gating

        self.console.print("evaluating objectives…", highlight=False)
        try:
            result = evaluate_run(self.run_dir, self.slo_path, self.baseline,
                                  force_baseline=self.force_baseline)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HarnessFailure(f"the gate could not evaluate the run: {first}") from exc
        if result.verdict == ERROR:
            raise HarnessFailure(f"the gate could not evaluate the run: {result.error}")
        text = render_text(result)
        if not result.outputs:
            text += f"\nreport: {result.run_dir}"
        # with --json, stdout is the summary alone; the words go with the progress
        print(text, file=sys.stderr if self.json_summary else sys.stdout, flush=True)
        self._print_summary(result.summary())
        return int(result.exit_code)

    # --- cleanup -------------------------------------------------------------------

    def _cleanup(self) -> None:
        """Stop Locust, heal, stop the stack (unless attached).  Safe to call twice."""
        if self._cleaned:
            return
        steps: list[tuple[str, Callable[[], None]]] = [
            ("stop Locust", self._stop_locust),  # first: no load on a stack being healed
            ("heal faults", self._heal_quietly),
            ("stop stack", self._stop_stack),
            ("close", self._close),
        ]
        for what, action in steps:
            try:
                action()
            except Exception as exc:  # cleanup goes on: nothing may be left behind
                say(f"cleanup: {what} failed: {type(exc).__name__}: {exc}")
        self._cleaned = True

    def _heal_quietly(self) -> None:
        if self.scheduler is not None:
            self.scheduler.heal_all()

    def _stop_locust(self) -> None:
        """SIGINT to the master alone: it stops its users (and its workers'), whose open
        operations are completed as `info`, and writes the history before it exits."""
        locust = self.locust
        if locust is None or not locust.running():
            return
        self.progress.phase("stopping load")
        process.signal_pid(locust.pid, signal.SIGINT)
        try:
            locust.popen.wait(timeout=LOCUST_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            say(f"Locust did not stop {LOCUST_STOP_GRACE_S:.0f}s after SIGINT; killing it")
        locust.stop(LOCUST_STOP_GRACE_S)  # reaps; TERM then KILL the group if still there

    def _stop_stack(self) -> None:
        if self.stack is None:
            return
        if self.attach is not None:
            self._write_stack_json()  # our copy, with the pids as they are now
        else:
            self.progress.phase("stopping stack")
        self.stack.stop()

    def _close(self) -> None:
        if self.driver is not None:
            self.driver.close()
        if self.faults_log is not None:
            self.faults_log.close()
            self.faults_log = None
        self.metrics.close()

    # --- helpers -------------------------------------------------------------------

    def _supervise(self) -> None:
        """A death outside the fault timeline ends the run (as a harness error)."""
        problem = self.supervisor.check(self._faulted())
        if problem is not None:
            self.progress.log(f"[bold red]{problem}[/]")
            raise HarnessFailure(problem)

    def _faulted(self) -> set[str]:
        """The services the timeline has killed or paused at this moment."""
        if self.scheduler is None:
            return set()
        return {step.target for _, step in self.scheduler.active()
                if step.type.kind is Kind.PROCESS}

    def _worker_check(self, pid: int) -> Callable[[], str | None]:
        alive = pid_problem(pid)

        def check() -> str | None:
            assert self._t0 is not None
            if time.monotonic() - self._t0 > self.scenario.duration - WORKER_END_SLACK_S:
                return None  # the load is ending: workers leave before the master
            return alive()

        return check

    def _active(self) -> list[str]:
        if self.scheduler is None:
            return []
        return [step.label() for _, step in self.scheduler.active()]

    def _show_outcome(self, outcome: Outcome) -> None:
        started = self.meta.get("load_started")
        elapsed = outcome.t - started if started is not None else 0.0
        what = f"step {outcome.index}: {outcome.step.label()}"
        stamp = f"[{elapsed:6.1f}s]"
        if outcome.ok:
            verb = "applied" if outcome.event == "apply" else "healed"
            self.progress.log(f"{stamp} {verb} {what}")
        elif outcome.event == "apply":
            self.progress.log(f"[yellow]{stamp} could not apply {what}: {outcome.error}[/]")
        else:
            self.progress.log(f"[bold red]{stamp} HEAL FAILED {what}: {outcome.error}[/]")

    def _write_meta(self) -> None:
        if self.run_dir is not None:
            rundir.write_json(self.run_dir / "run.json", self.meta)

    def _write_stack_json(self) -> None:
        assert self.run_dir is not None and self.stack is not None
        rundir.write_json(self.run_dir / "stack.json", self.stack.info)


def build_identity() -> dict[str, Any]:
    """The commit under test, for the report: `git_revision` ("unknown" outside a git checkout)
    and `git_dirty` (uncommitted changes to tracked files; None when unknown)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=proc.PROJECT_ROOT, capture_output=True,
                                  text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    revision = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if revision else None
    return {"git_revision": revision or "unknown",
            "git_dirty": None if status is None else bool(status)}


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"
