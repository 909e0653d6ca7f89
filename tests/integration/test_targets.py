"""A real started target: the bundled order service launched from a target file (through a
shell wrapper, as a customer's start script would be), behind Toxiproxy, reached only through
its adapter; process faults reach its whole process group; stopping leaves nothing behind."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from chaosbed.stack import Stack, StackError
from faults import process
from loadtests.adapter import PlainHttp, Result
from loadtests.adapters.bundled import BundledAdapter
from loadtests.target import load_target

pytestmark = pytest.mark.integration

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
