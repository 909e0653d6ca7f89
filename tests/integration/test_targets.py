"""A real started target: the bundled order service launched from a target file (through a
shell wrapper, as a customer's start script would be), behind Toxiproxy, reached only through
its adapter; process faults reach its whole process group; stopping leaves nothing behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from chaosbed import proc
from chaosbed.stack import Stack, StackError
from faults import process
from faults.scenario import load_scenario
from loadtests.adapter import PlainHttp, Result
from loadtests.adapters.bundled import BundledAdapter
from loadtests.target import load_target

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

WRAPPED = """\
name: wrapped
description: the bundled order service behind a shell start script
start:
  command: ["/bin/sh", "-c", "echo starting {{target}}; {python} -m services.order; echo gone"]
  cwd: "{repo}"
  env:
    CHAOSBED_HOST: "127.0.0.1"
    CHAOSBED_PORT: "{port}"
    CHAOSBED_DB: "{db_dir}/order.db"
    CHAOSBED_ADMIN_TOKEN: "{admin_token}"
    CHAOSBED_NOTIFY_SECRET: "{notify_secret}"
    CHAOSBED_INVENTORY_URL: "{inventory}"
    CHAOSBED_CHANNEL_URL: "{channel}"
startup_timeout: 30s
adapter: loadtests.adapters.bundled:BundledAdapter
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    target_file = tmp_path / "wrapped.yaml"
    target_file.write_text(WRAPPED)
    with Stack.start(tmp_path / "run", target=load_target(target_file)) as running:
        yield running


def _until(read: Callable[[], Result], done: Callable[[Result], bool]) -> Result:
    deadline = time.monotonic() + 15
    while True:
        result = read()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_a_started_target_is_ours_behind_toxiproxy_and_survives_a_kill(stack: Stack) -> None:
    info = stack.info
    assert info["target"]["name"] == "wrapped" and not info["target"]["export"]
    pid = stack.pid("order")
    assert os.getpgid(pid) == pid  # its own process group
    log = Path(info["services"]["order"]["log"])
    assert log.parent == stack.run_dir and "starting {target}" in log.read_text()
    # the shopper's path: place through client_order, pay at the channel, notified via
    # channel_notify at the target's notify path
    port = info["services"]["order"]["port"]
    assert info["proxies"]["client_order"]["upstream"].endswith(f":{port}")
    shop = BundledAdapter(PlainHttp(stack.proxy_url("client_order")), {})
    placed = shop.place_order(key="k-target-1", sku="sku-1", qty=1, amount=1200)
    assert placed.type == "ok" and placed.order is not None and placed.order.payment_id
    order = placed.order
    paid = httpx.post(
        f"{stack.proxy_url('client_channel')}/payments/{order.payment_id}/pay", json={}, timeout=5
    )
    assert paid.status_code == 200, paid.text
    seen = _until(
        lambda: shop.read_order(order.order_id),
        lambda r: r.order is not None and r.order.status == "PAID",
    )
    assert seen.order is not None and seen.order.status == "PAID", seen

    stack.kill("order")
    assert not process.alive(pid)
    refused = shop.read_order(order.order_id)
    assert refused.type in ("fail", "info") and refused.order is None
    new_pid = stack.start_service("order")
    assert new_pid != pid
    again = shop.read_order(order.order_id)  # same database: the order survived the crash
    assert again.order is not None and again.order.status == "PAID"


def test_pause_stops_the_whole_group_and_resume_brings_it_back(stack: Stack) -> None:
    shop = BundledAdapter(PlainHttp(stack.url("order"), timeout_s=1.0), {})
    assert shop.check_health().type == "ok"
    stack.pause("order")
    try:
        stalled = shop.check_health()
        assert stalled.type == "info" and "timed out" in stalled.error
    finally:
        stack.resume("order")
    assert _until(shop.check_health, lambda r: r.type == "ok").type == "ok"


def test_stopping_the_stack_stops_the_target_and_its_children(tmp_path: Path) -> None:
    target_file = tmp_path / "wrapped.yaml"
    target_file.write_text(WRAPPED)
    stack = Stack.start(tmp_path / "run", target=load_target(target_file))
    group = stack.pid("order")
    members = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == group]
    assert len(members) >= 1
    stack.stop()
    assert not any(process.alive(int(p)) for p in members)


def test_a_target_that_never_gets_healthy_is_a_stack_error_naming_it(tmp_path: Path) -> None:
    target_file = tmp_path / "dead.yaml"
    target_file.write_text(
        WRAPPED.replace("name: wrapped", "name: dead")
        .replace(
            '"echo starting {{target}}; {python} -m services.order; echo gone"',
            '"echo no server here; sleep 60"',
        )
        .replace("startup_timeout: 30s", "startup_timeout: 2s")
    )
    with pytest.raises(StackError, match="target dead") as caught:
        Stack.start(tmp_path / "run", target=load_target(target_file))
    assert "no server here" in str(caught.value)  # the last lines of its log


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


URL_TARGET = """\
name: running
description: the bundled order service, started by hand before chaosbed
url: http://127.0.0.1:{port}
peers:
  inventory: 127.0.0.1:{inventory}
  channel: 127.0.0.1:{channel}
notify_secret_env: RUNNING_NOTIFY_SECRET
admin_token_env: RUNNING_ADMIN_TOKEN
export: true
adapter: loadtests.adapters.bundled:BundledAdapter
"""


@contextmanager
def _running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timings: Mapping[str, str]
) -> Iterator[Path]:
    """The bundled order service started by hand, configured only from its target file's
    addresses and the secrets in chaosbed's environment (plus `timings`, the CHAOSBED_*
    settings chaosbed cannot give a service it does not start); yields that target file."""
    port, inventory, channel = proc.free_port(), proc.free_port(), proc.free_port()
    monkeypatch.setenv("RUNNING_NOTIFY_SECRET", "notify-secret-given-in-advance")
    monkeypatch.setenv("RUNNING_ADMIN_TOKEN", "admin-token-given-in-advance")
    env = {
        **os.environ,
        **timings,
        "CHAOSBED_HOST": "127.0.0.1",
        "CHAOSBED_PORT": str(port),
        "CHAOSBED_DB": str(tmp_path / "order.db"),
        "CHAOSBED_NOTIFY_SECRET": "notify-secret-given-in-advance",
        "CHAOSBED_ADMIN_TOKEN": "admin-token-given-in-advance",
        "CHAOSBED_INVENTORY_URL": f"http://127.0.0.1:{inventory}",
        "CHAOSBED_CHANNEL_URL": f"http://127.0.0.1:{channel}",
    }
    log = (tmp_path / "running.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, "-m", "services.order"], cwd=REPO, env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while not _healthy(f"http://127.0.0.1:{port}/healthz"):  # running before chaosbed
            assert child.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.1)
        target_file = tmp_path / "running.yaml"
        target_file.write_text(URL_TARGET.format(port=port, inventory=inventory, channel=channel))
        yield target_file
    finally:
        child.terminate()
        child.wait(10)
        log.close()


@pytest.fixture
def running_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with _running(tmp_path, monkeypatch, {}) as target_file:
        yield target_file


def test_a_url_target_calls_the_proxies_at_its_peers_and_checks_notifications_with_its_secret(
    tmp_path: Path, running_service: Path
) -> None:
    target = load_target(running_service)
    assert target.peers is not None
    with Stack.start(tmp_path / "run", target=target) as stack:
        info = stack.info
        assert not info["target"]["started"] and info["services"]["order"]["pid"] is None
        assert info["proxies"]["order_inventory"]["listen"] == target.peers.inventory
        assert info["proxies"]["order_channel"]["listen"] == target.peers.channel
        assert info["proxies"]["client_order"]["upstream"] == str(target.url).split("://")[1]
        shop = BundledAdapter(PlainHttp(stack.proxy_url("client_order")), {})
        placed = shop.place_order(key="k-url-1", sku="sku-1", qty=1, amount=700)
        # reserved at chaosbed's inventory and charged at its channel, through the proxies
        assert placed.type == "ok" and placed.order is not None and placed.order.payment_id
        order = placed.order
        paid = httpx.post(
            f"{stack.proxy_url('client_channel')}/payments/{order.payment_id}/pay",
            json={},
            timeout=5,
        )
        assert paid.status_code == 200, paid.text
        # the channel's notification was signed with the secret the service was started with
        seen = _until(
            lambda: shop.read_order(order.order_id),
            lambda r: r.order is not None and r.order.status == "PAID",
        )
        assert seen.order is not None and seen.order.status == "PAID", seen
        # and the export answers chaosbed's admin token: the one given in advance
        exported = stack.export("order")
        assert any(row.get("order_id") == order.order_id for row in exported), exported[:3]


def test_a_url_targets_peer_address_in_use_is_a_stack_error_naming_it(
    tmp_path: Path, running_service: Path
) -> None:
    target = load_target(running_service)
    assert target.peers is not None
    busy = socket.socket()
    busy.bind(("127.0.0.1", target.peers.port("channel")))
    busy.listen()
    try:
        with pytest.raises(StackError, match="could not create the proxies") as caught:
            Stack.start(tmp_path / "run", target=target)
        assert target.peers.channel in str(caught.value)
    finally:
        busy.close()


def test_a_url_targets_unset_secret_is_a_stack_error_before_anything_starts(
    tmp_path: Path, running_service: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNNING_NOTIFY_SECRET")
    with pytest.raises(StackError, match="notify_secret_env: RUNNING_NOTIFY_SECRET is not set"):
        Stack.start(tmp_path / "run", target=load_target(running_service))
    assert not (tmp_path / "run").exists()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_a_url_target_passes_callback_storm_audited_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # started with the scenario's timings, as its operator would (chaosbed cannot set them)
    timings = load_scenario("callback-storm").service_env()
    with _running(tmp_path, monkeypatch, timings) as target_file:
        runs = tmp_path / "runs"
        command = [sys.executable, "-m", "chaosbed", "run", "callback-storm", "--slo",
                   "slos/smoke.yaml", "--target", str(target_file), "--runs-dir", str(runs)]
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=420, check=False
        )
    evidence = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, evidence
    run_dir = sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink())[-1]
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["mode"] == "full", evidence
    stack = json.loads((run_dir / "stack.json").read_text())
    assert stack["services"]["order"]["pid"] is None  # chaosbed never owned it
