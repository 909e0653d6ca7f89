"""Every `chaosbed` command: read the arguments, call the library that does the work, print.

Each command imports its libraries when it runs: `chaosbed scenarios` must not pay for
matplotlib (the gate's report) or the Grafana SDK.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaosbed import proc
from chaosbed.exits import EXIT_HARNESS, EXIT_USAGE

if TYPE_CHECKING:
    from faults.scenario import Scenario


def in_repo(path: str | Path) -> Path:
    """A relative path that does not exist here but does in the repository (`slos/x.yaml`)."""
    candidate = Path(path)
    if candidate.exists() or candidate.is_absolute():
        return candidate
    inside = proc.PROJECT_ROOT / candidate
    return inside if inside.exists() else candidate


def chosen_bugs(args: argparse.Namespace) -> list[str]:
    """The planted bugs of `run`/`up`: `--bugs` when given (even empty), else $CHAOSBED_BUGS.

    Raises UnknownBugError naming the source the bad name came from.
    """
    from services.common.bugs import UnknownBugError, parse_bugs

    flag = getattr(args, "bugs", None)
    source, raw = ("--bugs", flag) if flag is not None else (
        "CHAOSBED_BUGS", os.environ.get("CHAOSBED_BUGS", ""))
    try:
        return sorted(parse_bugs(raw))
    except UnknownBugError as exc:
        message = str(exc).removeprefix("CHAOSBED_BUGS: ")
        raise UnknownBugError(f"{source}: {message}") from None


# --- chaosbed up ---------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    """`chaosbed up`: start the stack, print where everything is, run until Ctrl-C."""
    import rundir
    from chaosbed import binaries
    from chaosbed.stack import Stack, StackError, describe
    from faults import process
    from loadtests.config import DEFAULT_LOAD_METRICS_PORT
    from services.common.bugs import UnknownBugError

    try:
        bugs = chosen_bugs(args)
    except UnknownBugError as exc:
        print(f"chaosbed up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        target = _target(getattr(args, "target", None))
        run_dir = rundir.create_run_dir(args.runs_dir, "up")
    except (OSError, ValueError) as exc:
        print(f"chaosbed up: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.set()

    previous = {
        sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        try:
            stack = Stack.start(run_dir, bugs=bugs, observe=bool(args.observe), target=target)
        except (StackError, binaries.MissingBinary, process.ProcessError, ValueError) as exc:
            first_line = str(exc).splitlines()[0]
            print(f"chaosbed up: stack did not start: {first_line}", file=sys.stderr)
            print(f"chaosbed up: details in {run_dir}", file=sys.stderr)
            return EXIT_HARNESS
        with stack:
            # a hand-run Locust serves its client metrics there (loadtests/config.py)
            stack.add_scrape_target("loadgen", f"http://127.0.0.1:{DEFAULT_LOAD_METRICS_PORT}/metrics")
            print(describe(stack), flush=True)
            while not stop_requested.wait(0.5):
                pass
            print("chaosbed up: stopping", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- chaosbed run / scenarios ----------------------------------------------------------


def cmd_scenarios(args: argparse.Namespace) -> int:
    from faults.scenario import ScenarioError, list_scenarios

    try:
        scenarios = list_scenarios()
    except ScenarioError as exc:
        print(f"chaosbed scenarios: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    width = max((len(name) for name, _ in scenarios), default=0)
    for name, description in scenarios:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    """`chaosbed targets [PATH...]`: every shipped target and the given files, one line each."""
    from loadtests.target import TargetError, list_targets

    try:
        targets = list_targets(tuple(getattr(args, "paths", None) or ()))
    except TargetError as exc:
        print(f"chaosbed targets: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    width = max((len(t.name) for t in targets), default=0)
    for target in targets:
        audit = "full audit" if target.export else "black-box"
        print(f"{target.name:<{width}}  [{audit}]  {target.description}")
    return 0


def _target(name_or_path: str | None) -> Any:
    """The --target file loaded and its adapter importable, or None (the bundled service);
    raises ValueError naming the problem."""
    if not name_or_path:
        return None
    from loadtests.adapter import load_adapter
    from loadtests.target import load_target

    target = load_target(in_repo(name_or_path) if "/" in name_or_path else name_or_path)
    load_adapter(target.adapter, target.base_dir)
    target.secrets_from(os.environ)  # a url target's secret variables are set
    return target


def cmd_run(args: argparse.Namespace) -> int:
    """`chaosbed run`: every input is checked here, before anything starts."""
    from chaosbed.run import DEFAULT_SLO, RunPipeline, say
    from faults.catalog import Kind
    from faults.scenario import ScenarioError, load_scenario, scenario_path
    from services.common.bugs import UnknownBugError

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        say(f"bad scenario: {exc}")
        return EXIT_HARNESS
    if args.workers < 0:
        say(f"--workers must be >= 0, got {args.workers}")
        return EXIT_USAGE
    try:
        bugs = chosen_bugs(args)
    except UnknownBugError as exc:
        say(str(exc))
        return EXIT_USAGE
    slo_path = in_repo(args.slo) if args.slo else DEFAULT_SLO
    problem = _slo_problem(slo_path)
    if problem:
        say(f"bad SLO file: {problem}")
        return EXIT_HARNESS
    baseline = Path(args.baseline) if args.baseline else None
    if baseline is not None:
        problem = _baseline_problem(baseline, scenario, args, slo_path)
        if problem:
            say(f"--baseline {baseline}: {problem}")
            return EXIT_HARNESS
    attach = Path(args.attach) if args.attach else None
    if attach is not None and not attach.is_file():
        say(f"--attach {attach}: no such stack.json")
        return EXIT_HARNESS
    try:
        target = _target(getattr(args, "target", None))
    except ValueError as exc:
        say(f"bad target: {exc}")
        return EXIT_HARNESS
    if target is not None and attach is not None:
        say("--target and --attach: an attached stack already has its order service")
        return EXIT_USAGE
    if target is not None and not target.started:
        steps = [f"step {i} ({step.label()})" for i, step in enumerate(scenario.timeline)
                 if step.type.kind is Kind.PROCESS and step.target == "order"]  # fmt: skip
        if steps:
            say(f"--target {target.name}: runs at {target.url}, not started by chaosbed, but the "
                f"scenario kills, restarts or pauses order: {', '.join(steps)}; give the target "
                "a `start` command, or pick a scenario without process faults on order")
            return EXIT_USAGE
    if attach is not None:
        # an attached stack is not ours: we may not kill, restart or pause its processes
        steps = [f"step {i} ({step.label()})" for i, step in enumerate(scenario.timeline)
                 if step.type.kind is Kind.PROCESS]
        if steps:
            say(f"--attach: the scenario kills, restarts or pauses services of a stack this "
                f"run does not own: {', '.join(steps)}; run it without --attach")
            return EXIT_USAGE
    out = Path(args.out) if getattr(args, "out", None) else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        say(f"--out {out}: already exists and is not an empty directory")
        return EXIT_USAGE
    if getattr(args, "dry_run", False):  # every input checked above, as for a real run
        return _dry_run(scenario, slo_path)

    pipeline = RunPipeline(
        scenario,
        scenario_text=scenario_path(args.scenario).read_text(),
        runs_dir=Path(args.runs_dir),
        bugs=bugs,
        workers=args.workers,
        slo_path=slo_path,
        baseline=baseline,
        force_baseline=bool(getattr(args, "force_baseline", False)),
        attach=attach,
        observe=bool(args.observe),
        target=target,
        out=out,
        json_summary=bool(getattr(args, "json", False)),
    )
    return pipeline.execute()


def cmd_faults(args: argparse.Namespace) -> int:
    """`chaosbed faults`: the fault timeline alone (chaosbed/timeline.py)."""
    from chaosbed.timeline import TimelineOptions, run_timeline

    options = TimelineOptions(
        args.scenario,
        Path(args.attach),
        runs_dir=Path(args.runs_dir),
        repeat=bool(args.repeat),
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
    )
    return run_timeline(options)


def _dry_run(scenario: Scenario, slo_path: Path | None) -> int:
    """`chaosbed run --dry-run`: both files are valid (checked above); predict the samples."""
    from chaosbed.exits import EXIT_UNKNOWN
    from slos.model import load_slo
    from slos.predict import predict, render_predictions

    if slo_path is None:
        print("chaosbed run: --dry-run needs --slo FILE", file=sys.stderr)
        return EXIT_USAGE
    slo = load_slo(slo_path)
    predictions = predict(scenario, slo)
    print(render_predictions(scenario, slo, predictions))
    return EXIT_UNKNOWN if any(p.would_be_unknown for p in predictions) else 0


def _baseline_problem(baseline: Path, scenario: Scenario, args: argparse.Namespace,
                      slo_path: Path | None) -> str | None:
    """Why `--baseline` cannot be used for this run, before anything starts; or None."""
    from slos.baseline import check_comparable, require_tolerance
    from slos.evaluate import BaselineError
    from slos.model import load_slo

    if not (baseline / "result.json").is_file():
        return "not a finished run directory (no result.json)"
    if slo_path is None:
        return "needs --slo (the tolerance comes from the SLO file)"
    try:
        require_tolerance(load_slo(slo_path))
        current = {"scenario": scenario.name, "seed": scenario.seed, "workers": args.workers}
        check_comparable(current, baseline, force=bool(getattr(args, "force_baseline", False)))
    except BaselineError as exc:
        return str(exc)
    return None


def _slo_problem(path: Path) -> str | None:
    """The SLO file's load error, or None."""
    from slos.model import load_slo

    if not path.is_file():
        return f"{path}: no such file"
    try:
        load_slo(path)
    except ValueError as exc:
        return str(exc)
    return None


# --- chaosbed check / report -----------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from slos.gate import evaluate_run, render_text

    baseline = in_repo(args.baseline) if getattr(args, "baseline", None) else None
    gate = evaluate_run(Path(args.run_dir), in_repo(args.slo), baseline,
                        force_baseline=bool(getattr(args, "force_baseline", False)))
    print(render_text(gate))
    return gate.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    """`chaosbed report`: rebuild the outputs, with the SLO file the run recorded by default."""
    from slos.gate import GateError, evaluate_run, harness_error, recorded_slo, render_text

    run_dir = Path(args.run_dir)
    slo: str | None = getattr(args, "slo", None)
    if not slo:
        try:
            slo = recorded_slo(run_dir)
        except GateError as exc:
            failed = harness_error(run_dir, f"no --slo given and {exc}")
            print(render_text(failed))
            return failed.exit_code
    baseline = in_repo(args.baseline) if getattr(args, "baseline", None) else None
    gate = evaluate_run(run_dir, in_repo(slo), baseline,
                        force_baseline=bool(getattr(args, "force_baseline", False)))
    print(render_text(gate))
    return gate.exit_code


# --- chaosbed dashboards ---------------------------------------------------------------


def cmd_dashboards(args: argparse.Namespace, *, out: Callable[[str], None] = print) -> int:
    """`chaosbed dashboards`: regenerate dashboards/json/*.json from the builders."""
    from dashboards.build import JSON_DIR, write

    json_dir = Path(getattr(args, "out", None) or JSON_DIR)
    try:
        written = write(json_dir)
    except OSError as exc:
        print(f"chaosbed dashboards: cannot write {json_dir}: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    for path in written:
        out(f"wrote {path}")
    return 0
