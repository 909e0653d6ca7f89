"""`chaosbed faults`: every input is checked before anything is applied or served."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaosbed.cli import build_parser, main
from chaosbed.exits import EXIT_HARNESS, EXIT_USAGE
from chaosbed.stack import Stack
from chaosbed.timeline import TimelineOptions, process_fault_problem, run_timeline
from faults.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_STACK = ROOT / "deploy" / "compose-stack.json"


def test_the_cli_hands_every_option_to_the_timeline() -> None:
    args = build_parser().parse_args(
        [
            "faults",
            "smoke",
            "--attach",
            "s.json",
            "--repeat",
            "--metrics-host",
            "0.0.0.0",
            "--metrics-port",
            "9647",
            "--runs-dir",
            "/tmp/r",
        ]
    )
    assert (args.command, args.scenario, args.attach, args.repeat) == (
        "faults",
        "smoke",
        "s.json",
        True,
    )
    assert (args.metrics_host, args.metrics_port, args.runs_dir) == ("0.0.0.0", 9647, "/tmp/r")
    with pytest.raises(SystemExit) as usage:
        main(["faults", "smoke"])  # --attach is required
    assert usage.value.code == EXIT_USAGE


def test_process_faults_are_refused_on_a_stack_without_pids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = Stack.attach(COMPOSE_STACK)
    try:
        problem = process_fault_problem(load_scenario("crash-restart"), stack)
        assert problem is not None and "no pid for" in problem
        assert process_fault_problem(load_scenario("network-chaos"), stack) is None
    finally:
        stack.stop()
    code = run_timeline(TimelineOptions("crash-restart", COMPOSE_STACK, runs_dir=tmp_path))
    assert code == EXIT_HARNESS
    assert "has process faults" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before a run directory exists


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        (TimelineOptions("no-such-scenario", COMPOSE_STACK), EXIT_HARNESS, "bad scenario"),
        (
            TimelineOptions("smoke", Path("/nonexistent/stack.json")),
            EXIT_HARNESS,
            "no such stack.json",
        ),
        (TimelineOptions("smoke", COMPOSE_STACK, metrics_port=70000), EXIT_USAGE, "--metrics-port"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(
    options: TimelineOptions, code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_timeline(options) == code
    assert message in capsys.readouterr().err
