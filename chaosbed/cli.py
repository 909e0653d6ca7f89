"""`chaosbed` command line: the parser, and dispatch to chaosbed/commands.py.

Exit codes (chaosbed/exits.py): 0 pass · 1 an objective failed · 2 unknown · 3 harness error ·
64 usage · 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from chaosbed import commands
from chaosbed.exits import EXIT_USAGE

BUGS_HELP = "planted bugs to switch on (comma separated; default: $CHAOSBED_BUGS)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"chaosbed: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chaosbed", description="Chaos and observability testbed for payment flows"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", help="start the local stack (services behind Toxiproxy) until Ctrl-C")
    up.add_argument("--observe", action="store_true", help="also start Prometheus and Jaeger")
    up.add_argument("--runs-dir", default="runs", help="where the run directory is created")
    up.add_argument("--bugs", help=BUGS_HELP)
    up.add_argument("--target", help="the order service under test: targets/NAME.yaml or a path")

    run = sub.add_parser("run", help="run a chaos scenario and gate on it")
    run.add_argument("scenario", help="scenario name (faults/scenarios/NAME.yaml) or a path")
    run.add_argument(
        "--slo", help="SLO file to gate on (default slos/smoke.yaml); the exit code is its verdict"
    )
    run.add_argument(
        "--workers", type=int, default=0, help="Locust worker processes (0 = in the master)"
    )
    run.add_argument("--baseline", help="a previous run directory to compare against")
    run.add_argument("--force-baseline", action="store_true",
                     help="compare with a baseline of another scenario, seed or worker count")
    run.add_argument("--dry-run", action="store_true",
                     help="validate the scenario and SLO file, predict each objective's samples "
                          "(exit 2 if some would be unknown); start nothing")
    run.add_argument("--attach", help="use a running stack described by this stack.json")
    run.add_argument("--observe", action="store_true", help="also start Prometheus and Jaeger")
    run.add_argument("--runs-dir", default="runs", help="where the run directory is created")
    run.add_argument("--out", help="the run directory itself (new or empty), instead of "
                     "RUNS_DIR/<timestamp>-<scenario>")
    run.add_argument("--json", action="store_true",
                     help="print the result summary as JSON on stdout (progress on stderr)")
    run.add_argument("--bugs", help=BUGS_HELP)
    run.add_argument(
        "--target", help="the order service under test: targets/NAME.yaml or a path (bundled)"
    )

    faults = sub.add_parser(
        "faults", help="run a scenario's fault timeline (no load) against an attached stack"
    )
    faults.add_argument("scenario", help="scenario name (faults/scenarios/NAME.yaml) or a path")
    faults.add_argument("--attach", required=True, help="the stack's stack.json")
    faults.add_argument("--repeat", action="store_true", help="start again until Ctrl-C")
    faults.add_argument("--metrics-host", default="127.0.0.1", help="fault gauge bind address")
    faults.add_argument("--metrics-port", type=int, default=0, help="fault gauge port (0: free)")
    faults.add_argument("--runs-dir", default="runs", help="where the run directory is created")

    check = sub.add_parser("check", help="evaluate an SLO file against a finished run")
    check.add_argument("run_dir")
    check.add_argument("--slo", required=True)
    check.add_argument("--baseline", help="a previous run directory to compare against")
    check.add_argument("--force-baseline", action="store_true",
                       help="compare with a baseline of another scenario, seed or worker count")

    report = sub.add_parser("report", help="rebuild result.json, junit.xml and reports of a run")
    report.add_argument("run_dir")
    report.add_argument("--slo", help="SLO file (default: the one recorded in the run)")
    report.add_argument("--baseline", help="a previous run directory to compare against")
    report.add_argument("--force-baseline", action="store_true",
                        help="compare with a baseline of another scenario, seed or worker count")

    sub.add_parser("scenarios", help="list the shipped scenarios")
    targets = sub.add_parser("targets", help="list the order services under test (targets/)")
    targets.add_argument("paths", nargs="*", help="more target files to check and list")
    sub.add_parser("dashboards", help="regenerate the Grafana dashboard JSON")
    return parser


COMMANDS = {
    "up": commands.cmd_up,
    "run": commands.cmd_run,
    "faults": commands.cmd_faults,
    "scenarios": commands.cmd_scenarios,
    "targets": commands.cmd_targets,
    "check": commands.cmd_check,
    "report": commands.cmd_report,
    "dashboards": commands.cmd_dashboards,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)
