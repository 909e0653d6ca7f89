"""`chaosbed run` end to end against the real stack: Toxiproxy, three services, Locust.

A shortened smoke scenario runs as a subprocess while a thread watches Toxiproxy (through the
adapter) and the service pids, so the checks see what really happened, not what was logged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import rundir
from faults import process
from faults.drivers import toxic_name
from faults.scenario import load_scenario
from faults.scheduler import plan
from faults.toxiproxy import Toxiproxy, ToxiproxyError
from loadtests.runner import check_pairing

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

SHORT_SMOKE = """\
name: short-smoke
description: a shortened smoke run for the tests
duration: 16s
seed: 42
settle: 4s
load:
  shape: steady
  users: 4
  spawn_rate: 4
  rate: 8
  mix: {shopper: 8, browser: 1, forger: 1}
  skus: {sku-1: 10000}
  max_poll: 4s
services: {query_after_s: 1, close_after_s: 3, reconcile_every_s: 1, reservation_ttl_s: 20,
           sweep_every_s: 1}
timeline:
  - {at: 2s, for: 4s, target: order_channel, fault: latency, params: {latency: 100ms}}
  - {at: 3s, for: 3s, target: client_channel, fault: reset_peer, params: {toxicity: 0.3}}
  - {at: 7s, for: 3s, target: order, fault: kill}
  - {at: 11s, for: 3s, target: channel, fault: notify_drop, params: {rate: 1.0}}
"""

# long windows: the run is interrupted while they are active
LONG_FAULTS = """\
name: interrupted
description: faults that are still active when the run is interrupted
duration: 60s
seed: 1
settle: 5s
load: {shape: steady, users: 2, spawn_rate: 2, rate: 4, skus: {sku-1: 10000}}
services: {close_after_s: 3}
timeline:
  - {at: 1s, for: 50s, target: order_channel, fault: latency, params: {latency: 50ms}}
  - {at: 1s, for: 50s, target: client_order, fault: down}
  - {at: 1s, for: 50s, target: inventory, fault: pause}
  - {at: 1s, for: 50s, target: channel, fault: notify_duplicate, params: {rate: 0.5}}
"""


@dataclass
class Watch:
    """What a thread saw while the run went on."""

    toxics: list[tuple[float, float, str, set[str]]] = field(default_factory=list)
    pids: list[tuple[float, int | None, bool]] = field(default_factory=list)
    drop_rate: list[tuple[float, float, float]] = field(default_factory=list)
    stack: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _start(scenario: Path, runs: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chaosbed", "run", str(scenario), "--runs-dir", str(runs), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_dir(runs: Path, proc: subprocess.Popen[str], timeout_s: float = 60) -> Path:
    """The run directory once its stack.json names the harness metrics (stack is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for candidate in runs.glob("*"):
            if candidate.is_symlink():  # runs/latest
                continue
            try:
                if "harness_metrics" in rundir.read_json(candidate / "stack.json"):
                    return candidate
            except rundir.RunDirError:
                pass
        if proc.poll() is not None:
            pytest.fail(f"chaosbed run exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.1)
    pytest.fail("the run never wrote a stack.json")


def _watch(run_dir: Path, proc: subprocess.Popen[str], watch: Watch) -> None:
    info = rundir.read_json(run_dir / "stack.json")
    watch.stack = info
    toxiproxy = Toxiproxy(info["toxiproxy"]["api"], timeout_s=1.0)
    order_url = info["services"]["order"]["url"]
    knobs_url = info["services"]["channel"]["url"] + "/admin/behaviour"
    admin = {"Authorization": f"Bearer {info['admin_token']}"}
    with toxiproxy, httpx.Client(timeout=0.5) as client:
        while proc.poll() is None:
            before = time.time()
            try:
                names = {t["name"] for t in toxiproxy.toxics("order_channel")}
                names |= {t["name"] for t in toxiproxy.toxics("client_channel")}
            except ToxiproxyError:  # slow under load, or the stack is being stopped
                time.sleep(0.1)
                continue
            watch.toxics.append((before, time.time(), "links", names))
            try:
                pid = rundir.read_json(run_dir / "stack.json")["services"]["order"]["pid"]
            except (rundir.RunDirError, KeyError):
                pid = None
            try:
                healthy = client.get(order_url + "/healthz").status_code == 200
            except httpx.HTTPError:
                healthy = False
            watch.pids.append((time.time(), pid, healthy))
            before = time.time()
            try:
                knobs = client.get(knobs_url, headers=admin).json()
                watch.drop_rate.append((before, time.time(), float(knobs["notify_drop_rate"])))
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"chaosbed run did not finish in {timeout_s:.0f}s:\n{out}")
    return out


def _gone(pid: int) -> bool:
    return process.wait_gone(pid, 10.0)


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions `text` (e.g. Locust's --csv path in the run dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and process.alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _stack_pids(info: dict[str, Any]) -> list[int]:
    pids = [int(info["toxiproxy"]["pid"])]
    pids += [int(svc["pid"]) for svc in info["services"].values() if svc.get("pid")]
    return pids


def test_short_smoke_run_end_to_end(tmp_path: Path) -> None:
    scenario_file = tmp_path / "short-smoke.yaml"
    scenario_file.write_text(SHORT_SMOKE)
    scenario = load_scenario(scenario_file)
    runs = tmp_path / "runs"
    proc = _start(scenario_file, runs)
    watch = Watch()
    try:
        run_dir = _run_dir(runs, proc)
        watcher = threading.Thread(target=_watch, args=(run_dir, proc, watch), daemon=True)
        watcher.start()
        out = _finish(proc, 180)
        watcher.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out

    # the secrets stay in stack.json (0600, in a 0700 run dir): no log, export or report has them
    info = rundir.read_json(run_dir / "stack.json")
    assert run_dir.stat().st_mode & 0o777 == 0o700
    assert (run_dir / "stack.json").stat().st_mode & 0o777 == 0o600
    for secret in (info["admin_token"], info["notify_secret"]):
        assert secret not in out
        leaks = [p.name for p in run_dir.rglob("*") if p.is_file() and p.name != "stack.json"
                 and secret.encode() in p.read_bytes()]
        assert leaks == []

    # the run directory is complete
    for name in ("scenario.yaml", "stack.json", "run.json", "faults.ndjson", "history.ndjson",
                 "load_progress.json", "locust.log", "exports/order.ndjson",
                 "exports/channel.ndjson", "exports/inventory.ndjson",
                 # gated without --slo by the default file
                 "audit.json", "result.json", "junit.xml", "report.md", "report.html"):
        assert (run_dir / name).is_file(), f"{name} missing"
    assert (run_dir / "scenario.yaml").read_text() == SHORT_SMOKE
    run = rundir.read_json(run_dir / "run.json")
    assert run["status"] == "complete"
    assert run["slo"] == str(REPO / "slos" / "smoke.yaml")
    assert (runs / "latest").resolve() == run_dir.resolve()
    assert run["started"] <= run["load_started"] < run["load_ended"] < run["settle_ended"]
    assert rundir.read_ndjson(run_dir / "exports/order.ndjson"), "empty order export"

    # faults.ndjson follows the timeline: every step applied then healed, in plan order
    records = rundir.read_ndjson(run_dir / "faults.ndjson")
    assert all(r["ok"] for r in records), records
    assert [(r["event"], r["step"]) for r in records] == [
        (e.action, e.index) for e in plan(scenario.timeline)
    ]
    times = {(r["event"], r["step"]): r["t"] for r in records}
    for index, step in enumerate(scenario.timeline):
        offset = times[("apply", index)] - run["load_started"]
        assert offset >= step.at  # never early
        assert times[("heal", index)] > times[("apply", index)]

    # the toxics were really on their proxies during their window, and only then
    for index in (0, 1):
        name = toxic_name(index, scenario.timeline[index])
        applied, healed = times[("apply", index)], times[("heal", index)]
        seen = [(b, a) for b, a, _, names in watch.toxics if name in names]
        assert seen, f"{name} never seen on its proxy"
        assert all(after >= applied and before <= healed for before, after in seen)
        assert any(before > healed for before, _, _, _ in watch.toxics), "not watched after heal"
        assert not any(
            name in names for before, _, _, names in watch.toxics if before > healed
        ), f"{name} still there after its heal"

    # the kill really killed the order service; the heal started a new, healthy one
    kill_at, back_at = times[("apply", 2)], times[("heal", 2)]
    before = {pid for t, pid, _ in watch.pids if t < kill_at and pid}
    after = {pid for t, pid, ok in watch.pids if t > back_at and pid and ok}
    assert len(before) == 1 and after, (before, after)
    assert before.isdisjoint(after)
    assert not any(ok for t, _, ok in watch.pids if kill_at + 0.5 < t < back_at - 1.0)

    # the channel knob was set for its window and restored after
    applied, healed = times[("apply", 3)], times[("heal", 3)]
    assert any(rate == 1.0 for _, _, rate in watch.drop_rate)
    assert all(rate == 0.0 for before, _, rate in watch.drop_rate if before > healed)
    assert all(rate == 0.0 for _, after, rate in watch.drop_rate if after < applied)
    assert any(before > healed for before, _, _ in watch.drop_rate)

    # every invoke has exactly one completion (an open one counts as info)
    history = rundir.read_ndjson(run_dir / "history.ndjson")
    assert history
    problems = [p for p in check_pairing(history) if not p.endswith("invoke without completion")]
    assert problems == []

    # nothing left behind: Toxiproxy, every service pid ever seen, Locust
    final = rundir.read_json(run_dir / "stack.json")
    pids = set(_stack_pids(final)) | set(_stack_pids(watch.stack))
    pids |= {pid for _, pid, _ in watch.pids if pid}
    assert all(_gone(pid) for pid in pids), [p for p in pids if process.alive(p)]
    assert _processes_mentioning(str(run_dir)) == []


def test_sigint_heals_every_fault_and_stops_every_process(tmp_path: Path) -> None:
    scenario_file = tmp_path / "interrupted.yaml"
    scenario_file.write_text(LONG_FAULTS)
    runs = tmp_path / "runs"
    proc = _start(scenario_file, runs)
    try:
        run_dir = _run_dir(runs, proc)
        stack = rundir.read_json(run_dir / "stack.json")
        faults = run_dir / "faults.ndjson"
        deadline = time.monotonic() + 60
        while sum(1 for r in _records(faults) if r["event"] == "apply") < 4:
            assert proc.poll() is None, _finish(proc, 5)
            assert time.monotonic() < deadline, "faults were never applied"
            time.sleep(0.1)
        with Toxiproxy(stack["toxiproxy"]["api"]) as toxiproxy:
            assert toxiproxy.toxics("order_channel"), "latency not applied"
            assert toxiproxy.proxy("client_order")["enabled"] is False
        proc.send_signal(signal.SIGINT)
        out = _finish(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted" in out

    records = _records(faults)
    healed = {r["step"] for r in records if r["event"] == "heal" and r["ok"]}
    assert healed == {0, 1, 2, 3}, records
    assert rundir.read_json(run_dir / "run.json")["status"] == "interrupted"
    assert all(_gone(pid) for pid in _stack_pids(stack))
    assert _processes_mentioning(str(run_dir)) == []


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def test_bad_scenario_or_slo_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHORT_SMOKE.replace("target: order, fault: kill", "target: order_channel, "
                                       "fault: kill"))
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "chaosbed", "run", str(bad), "--runs-dir", str(runs)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3
    assert "bad.yaml:19: timeline step 2 (kill on order_channel)" in result.stderr
    assert not runs.exists()

    good = tmp_path / "good.yaml"
    good.write_text(SHORT_SMOKE)
    slo = tmp_path / "slo.yaml"
    slo.write_text("name: x\nobjectives:\n  - {name: y, sli: latncy, pass: 'p(99) < 1s'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "chaosbed", "run", str(good), "--slo", str(slo),
         "--runs-dir", str(runs)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3
    assert "bad SLO file" in result.stderr and "latncy" in result.stderr
    assert not runs.exists()


def test_locust_dying_heals_stops_and_fails_the_harness(tmp_path: Path) -> None:
    scenario_file = tmp_path / "interrupted.yaml"
    scenario_file.write_text(LONG_FAULTS)
    runs = tmp_path / "runs"
    proc = _start(scenario_file, runs)
    try:
        run_dir = _run_dir(runs, proc)
        stack = rundir.read_json(run_dir / "stack.json")
        deadline = time.monotonic() + 60
        while not (locust := _processes_mentioning(str(run_dir / "locust"))) or not any(
            r["event"] == "apply" for r in _records(run_dir / "faults.ndjson")
        ):
            assert proc.poll() is None, _finish(proc, 5)
            assert time.monotonic() < deadline, "the load never started"
            time.sleep(0.1)
        for pid in locust:
            os.kill(pid, signal.SIGKILL)
        out = _finish(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out
    assert "harness failure: Locust died" in out
    records = _records(run_dir / "faults.ndjson")
    applied = {r["step"] for r in records if r["event"] == "apply" and r["ok"]}
    healed = {r["step"] for r in records if r["event"] == "heal" and r["ok"]}
    assert applied and healed == applied
    assert rundir.read_json(run_dir / "run.json")["status"] == "failed"
    assert all(_gone(pid) for pid in _stack_pids(stack))
    assert _processes_mentioning(str(run_dir)) == []
