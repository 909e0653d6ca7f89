"""The harness against real processes: deaths outside the fault timeline, attached stacks,
CHAOSBED_BUGS, Ctrl-C.

Each test runs `chaosbed run` (or `up`) as a subprocess on a short scenario written into
tmp_path, breaks something real (SIGKILL to Toxiproxy or a service, a stopped stack), and
checks the run's files and that no process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rundir
from chaosbed.stack import Stack
from faults import process
from loadtests.runner import check_pairing

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# long enough that a kill at a few seconds is mid-load; the latency toxic keeps requests in
# flight, so an interrupt finds open operations
LONG = """\
name: harness-long
description: a long load with one network fault, broken by the tests
duration: 45s
seed: 3
settle: 3s
load: {shape: steady, users: 4, spawn_rate: 4, rate: 8, skus: {sku-1: 10000}, max_poll: 3s}
services: {close_after_s: 3}
timeline:
  - {at: 1s, for: 40s, target: client_order, fault: latency, params: {latency: 150ms}}
"""

SHORT = """\
name: harness-short
description: the shortest real run
duration: 4s
seed: 5
settle: 1s
load: {shape: steady, users: 2, spawn_rate: 2, rate: 4, skus: {sku-1: 10000}, max_poll: 2s}
services: {close_after_s: 3}
timeline: []
"""

WITH_KILL = SHORT.replace("timeline: []", "timeline:\n  - {at: 1s, for: 1s, target: order, "
                          "fault: kill}")


def _scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def _chaosbed(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chaosbed", *args], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _load_running(runs: Path, proc: subprocess.Popen[str], timeout_s: float = 60) -> Path:
    """The run directory once Locust has written its first progress (the load is on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for candidate in runs.glob("2*"):
            if (candidate / "load_progress.json").is_file() and (
                candidate / "stack.json").is_file():
                return candidate
        if proc.poll() is not None:
            pytest.fail(f"chaosbed run exited early ({proc.returncode}):\n{_output(proc)}")
        time.sleep(0.1)
    pytest.fail("the load never started")


def _output(proc: subprocess.Popen[str], timeout_s: float = 90) -> str:
    out, err = proc.communicate(timeout=timeout_s)
    return f"{out}\n--- stderr ---\n{err}"


def _stack_pids(info: dict[str, Any]) -> list[int]:
    pids = [svc["pid"] for svc in info["services"].values() if svc.get("pid")]
    if info.get("toxiproxy"):
        pids.append(info["toxiproxy"]["pid"])
    return [int(p) for p in pids]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and process.alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _processes_with_env(entry: str) -> list[int]:
    """Live processes whose environment holds `entry` (NAME=value)."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            environ = (proc_dir / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.encode() in environ and process.alive(int(proc_dir.name)):
            found.append(int(proc_dir.name))
    return found


def _assert_harness_error(run_dir: Path, reason: str) -> None:
    """exit 3's files: run.json failed, result.json error with the reason, a JUnit <error>."""
    run = rundir.read_json(run_dir / "run.json")
    assert run["status"] == "failed" and reason in run["error"], run
    result = rundir.read_json(run_dir / "result.json")
    assert result["verdict"] == "error" and result["exit_code"] == 3
    assert reason in result["error"]
    root = ET.parse(run_dir / "junit.xml").getroot()
    assert root.get("errors") == "1" and root.get("failures") == "0"
    errors = [e for e in root.iter("error")]
    assert len(errors) == 1 and reason in (errors[0].get("message") or "")


def _kill_mid_load(tmp_path: Path, started: list[subprocess.Popen[str]],
                   pid_of: str) -> tuple[Path, dict[str, Any], float, str, int]:
    runs = tmp_path / "runs"
    proc = _chaosbed("run", str(_scenario(tmp_path, LONG)), "--runs-dir", str(runs))
    started.append(proc)
    run_dir = _load_running(runs, proc)
    time.sleep(3)  # well inside the load and the latency window
    info = rundir.read_json(run_dir / "stack.json")
    victim = info["toxiproxy"]["pid"] if pid_of == "toxiproxy" else info["services"][pid_of]["pid"]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    out = _output(proc)
    return run_dir, info, time.monotonic() - killed_at, out, proc.returncode


def test_toxiproxy_killed_mid_load_is_a_harness_error(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    run_dir, info, seconds, out, code = _kill_mid_load(tmp_path, started, "toxiproxy")
    assert code == 3, out
    assert seconds < 15, f"exit {seconds:.1f}s after the kill"
    assert "verdict: FAIL" not in out and "verdict:" not in out
    stderr = out.split("--- stderr ---", 1)[1]
    lines = [line for line in stderr.splitlines() if "harness failure:" in line]
    assert len(lines) == 1 and "Toxiproxy" in lines[0] and "outside the fault timeline" in lines[0]
    _assert_harness_error(run_dir, "Toxiproxy")
    # the load stopped at once: no operation started after the kill's detection + stop
    history = rundir.read_ndjson(run_dir / "history.ndjson")
    assert history and check_pairing(history) == []
    assert all(_gone(pid) for pid in _stack_pids(info))
    assert _processes_mentioning(str(run_dir)) == []


def test_service_killed_outside_the_timeline_is_a_harness_error(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    run_dir, info, seconds, out, code = _kill_mid_load(tmp_path, started, "inventory")
    assert code == 3, out
    assert seconds < 15, f"exit {seconds:.1f}s after the kill"
    assert "verdict:" not in out
    _assert_harness_error(run_dir, "service inventory")
    assert all(_gone(pid) for pid in _stack_pids(info))
    assert _processes_mentioning(str(run_dir)) == []


def test_a_kill_in_the_timeline_is_no_harness_error(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    """The control for the two above: the same supervisor lets the timeline's own kill be."""
    runs = tmp_path / "runs"
    proc = _chaosbed("run", str(_scenario(tmp_path, WITH_KILL)), "--runs-dir", str(runs),
                     "--out", str(tmp_path / "out"))
    started.append(proc)
    out = _output(proc)
    assert proc.returncode in (0, 1, 2), out  # a verdict, whatever it is: not a harness error
    run = rundir.read_json(tmp_path / "out" / "run.json")
    assert run["status"] == "complete", run
    faults = rundir.read_ndjson(tmp_path / "out" / "faults.ndjson")
    assert [(r["event"], r["ok"]) for r in faults] == [("apply", True), ("heal", True)]
    assert (runs / "latest").resolve() == (tmp_path / "out").resolve()


def _gone(pid: int) -> bool:
    return process.wait_gone(pid, 5.0)


def test_attach_to_a_dead_stack_fails_before_any_load(
    tmp_path: Path, start_stack: Any, started: list[subprocess.Popen[str]]
) -> None:
    stack: Stack = start_stack("dead")
    stack_json = stack.run_dir / "stack.json"
    info = rundir.read_json(stack_json)
    stack.stop()
    runs = tmp_path / "runs"
    began = time.monotonic()
    proc = _chaosbed("run", str(_scenario(tmp_path, LONG)), "--runs-dir", str(runs),
                     "--attach", str(stack_json))
    started.append(proc)
    out = _output(proc, 60)
    assert proc.returncode == 3, out
    assert time.monotonic() - began < 30  # the 45 s load never ran
    assert "not alive" in out and "verdict:" not in out
    (run_dir,) = [p for p in runs.iterdir() if not p.is_symlink()]
    assert not (run_dir / "locust.log").exists() and not (run_dir / "history.ndjson").exists()
    _assert_harness_error(run_dir, "not alive")
    # nothing of the dead stack was started again
    for svc in info["services"].values():
        assert _processes_with_env(f"CHAOSBED_DB={svc['db']}") == []


def test_attach_refuses_process_faults_on_a_stack_it_does_not_own(
    tmp_path: Path, start_stack: Any
) -> None:
    stack: Stack = start_stack("owner")
    pids = {name: stack.pid(name) for name in ("order", "channel", "inventory")}
    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "chaosbed", "run", str(_scenario(tmp_path, WITH_KILL)),
         "--runs-dir", str(runs), "--attach", str(stack.run_dir / "stack.json")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 64, done.stderr
    assert "step 0 (kill on order)" in done.stderr and "does not own" in done.stderr
    assert not runs.exists()
    assert {name: stack.pid(name) for name in pids} == pids
    assert all(process.alive(pid) for pid in pids.values())


def test_chaosbed_bugs_in_the_environment_switches_bugs_on(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    scenario = str(_scenario(tmp_path, SHORT))
    env = {"CHAOSBED_BUGS": "notify-not-idempotent"}
    proc = _chaosbed("run", scenario, "--out", str(tmp_path / "env"), "--json", env=env)
    started.append(proc)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 1, 2), err
    assert rundir.read_json(tmp_path / "env" / "stack.json")["bugs"] == ["notify-not-idempotent"]
    summary = json.loads(out)  # --json: stdout is the summary alone
    assert summary["schema_version"] == 1 and summary["run_dir"] == str(tmp_path / "env")
    # the flag wins, even when it names no bug
    proc = _chaosbed("run", scenario, "--out", str(tmp_path / "flag"), "--bugs", "", env=env)
    started.append(proc)
    assert proc.wait(timeout=120) in (0, 1, 2), _output(proc)
    assert rundir.read_json(tmp_path / "flag" / "stack.json")["bugs"] == []


@pytest.mark.parametrize("command", ["run", "up"])
def test_bad_bug_names_are_usage_errors_naming_their_source(
    tmp_path: Path, command: str
) -> None:
    args = [sys.executable, "-m", "chaosbed", command]
    if command == "run":
        args.append(str(_scenario(tmp_path, SHORT)))
    args += ["--runs-dir", str(tmp_path / "runs")]
    by_flag = subprocess.run([*args, "--bugs", "bogus"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert by_flag.returncode == 64
    assert "--bugs: unknown bug(s) bogus" in by_flag.stderr
    assert "CHAOSBED_BUGS" not in by_flag.stderr
    by_env = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "CHAOSBED_BUGS": "bogus"})
    assert by_env.returncode == 64
    assert "CHAOSBED_BUGS: unknown bug(s) bogus" in by_env.stderr
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_completes_every_open_operation(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    runs = tmp_path / "runs"
    proc = _chaosbed("run", str(_scenario(tmp_path, LONG)), "--runs-dir", str(runs))
    started.append(proc)
    run_dir = _load_running(runs, proc)
    time.sleep(4)  # inside the latency window: requests are in flight
    proc.send_signal(signal.SIGINT)
    out = _output(proc)
    assert proc.returncode == 130, out
    history = rundir.read_ndjson(run_dir / "history.ndjson")
    assert history and check_pairing(history) == []
    interrupted = [r for r in history if r["type"] == "info"
                   and str(r.get("error", "")).startswith("interrupted")]
    # with 4 users behind a 150 ms toxic some are always mid-operation: none recorded means
    # the history lost them (Locust closing it before stopping its users)
    assert interrupted, "no operation completed as interrupted"
    stderr = out.split("--- stderr ---", 1)[1]
    assert "interrupted: faults healed" in stderr
    status_lines = [line for line in stderr.splitlines() if "active faults" in line]
    assert status_lines and status_lines[-1].endswith("active faults none"), status_lines[-1:]
    records = rundir.read_ndjson(run_dir / "faults.ndjson")
    assert [(r["event"], r["ok"]) for r in records] == [("apply", True), ("heal", True)]
    assert rundir.read_json(run_dir / "run.json")["status"] == "interrupted"
    # a cancelled CI job still finds a result: no verdict reached, and why
    result = rundir.read_json(run_dir / "result.json")
    assert (result["verdict"], result["exit_code"]) == ("error", 130), result
    assert "interrupted" in result["error"] and "faults healed" in result["error"], result
    junit = (run_dir / "junit.xml").read_text()
    assert "<error" in junit and "interrupted" in junit, junit
    assert _processes_mentioning(str(run_dir)) == []


def test_a_locust_worker_killed_mid_load_is_a_harness_error(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    runs = tmp_path / "runs"
    proc = _chaosbed("run", str(_scenario(tmp_path, LONG)), "--runs-dir", str(runs),
                     "--workers", "2")
    started.append(proc)
    run_dir = _load_running(runs, proc)
    time.sleep(3)
    locust = _processes_mentioning(str(run_dir / "locust"))  # forked workers share the argv
    master = [pid for pid in locust if _parent(pid) not in locust]
    workers = [pid for pid in locust if _parent(pid) in master]
    assert len(master) == 1 and len(workers) == 2, (master, workers)
    os.kill(workers[0], signal.SIGKILL)
    killed_at = time.monotonic()
    out = _output(proc)
    assert proc.returncode == 3, out
    assert time.monotonic() - killed_at < 15
    _assert_harness_error(run_dir, f"Locust worker (pid {workers[0]})")
    assert _processes_mentioning(str(run_dir)) == []


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def test_an_attached_stack_dying_mid_load_is_a_harness_error_and_is_not_restarted(
    tmp_path: Path, start_stack: Any, started: list[subprocess.Popen[str]]
) -> None:
    stack: Stack = start_stack("owner")
    runs = tmp_path / "runs"
    proc = _chaosbed("run", str(_scenario(tmp_path, LONG)), "--runs-dir", str(runs),
                     "--attach", str(stack.run_dir / "stack.json"))
    started.append(proc)
    run_dir = _load_running(runs, proc)
    time.sleep(3)
    stack.kill("channel")  # the owner's process, outside the run's timeline
    killed_at = time.monotonic()
    out = _output(proc)
    assert proc.returncode == 3, out
    assert time.monotonic() - killed_at < 15
    _assert_harness_error(run_dir, "service channel")
    # the run started nothing of the stack it does not own, and left the rest of it running
    channel = stack.info["services"]["channel"]
    assert _processes_with_env(f"CHAOSBED_DB={channel['db']}") == []
    assert process.alive(stack.pid("order")) and process.alive(stack.pid("inventory"))
    problems = stack.health_problems()
    assert len(problems) == 1 and problems[0].startswith("service channel"), problems


def test_chaosbed_bugs_in_the_environment_of_up(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    runs = tmp_path / "runs"
    proc = _chaosbed("up", "--runs-dir", str(runs), env={"CHAOSBED_BUGS": "no-active-query"})
    started.append(proc)
    deadline = time.monotonic() + 60
    while not any(p.name == "stack.json" for p in runs.glob("*/stack.json")):
        assert proc.poll() is None and time.monotonic() < deadline, _output(proc, 5)
        time.sleep(0.1)
    (stack_json,) = runs.glob("*/stack.json")
    while "services" not in (info := rundir.read_json(stack_json)) or not all(
        svc["pid"] for svc in info["services"].values()
    ):
        time.sleep(0.1)
    assert info["bugs"] == ["no-active-query"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert all(_gone(pid) for pid in _stack_pids(info))


@pytest.mark.observe
def test_prometheus_killed_while_observing_is_a_harness_error(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    runs = tmp_path / "runs"
    proc = _chaosbed("run", str(_scenario(tmp_path, LONG)), "--runs-dir", str(runs),
                     "--observe")
    started.append(proc)
    run_dir = _load_running(runs, proc, timeout_s=120)
    time.sleep(2)
    prometheus = _processes_mentioning(str(run_dir / "prometheus"))
    assert len(prometheus) == 1, prometheus
    os.kill(prometheus[0], signal.SIGKILL)
    killed_at = time.monotonic()
    out = _output(proc)
    assert proc.returncode == 3, out
    assert time.monotonic() - killed_at < 15
    _assert_harness_error(run_dir, "prometheus")
    assert _processes_mentioning(str(run_dir)) == []
