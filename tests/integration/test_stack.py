"""The Toxiproxy adapter and the stack supervisor against the real binaries and processes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaosbed.stack import PROXIES, SERVICES, Stack, StackError, toxiproxy_env
from faults import process
from faults.toxiproxy import ProxySpec, Toxiproxy, ToxiproxyError

pytestmark = pytest.mark.integration


def _connects(listen: str) -> bool:
    host, port = listen.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


# --- adapter ---------------------------------------------------------------------


def test_version_and_populate_create_and_replace(toxiproxy_api: Toxiproxy) -> None:
    assert toxiproxy_api.version() == "2.12.0"
    created = toxiproxy_api.populate(
        [ProxySpec("a", upstream="127.0.0.1:1"), ProxySpec("b", upstream="127.0.0.1:2")]
    )
    assert set(created) == {"a", "b"}
    assert created["a"]["upstream"] == "127.0.0.1:1"
    assert not created["a"]["listen"].endswith(":0")  # the server picked a real port
    replaced = toxiproxy_api.populate([ProxySpec("a", upstream="127.0.0.1:3")])
    assert replaced["a"]["upstream"] == "127.0.0.1:3"
    listed = toxiproxy_api.proxies()
    assert set(listed) == {"a", "b"}
    assert listed["a"]["upstream"] == "127.0.0.1:3"


def test_populate_rejects_duplicate_names(toxiproxy_api: Toxiproxy) -> None:
    with pytest.raises(ToxiproxyError, match="duplicate"):
        toxiproxy_api.populate([ProxySpec("a", "127.0.0.1:1"), ProxySpec("a", "127.0.0.1:2")])
    assert toxiproxy_api.proxies() == {}


def test_add_toxic_returns_it_and_remove_needs_it_to_exist(toxiproxy_api: Toxiproxy) -> None:
    toxiproxy_api.populate([ProxySpec("link", upstream="127.0.0.1:1")])
    toxic = toxiproxy_api.add_toxic(
        "link", "latency", stream="upstream", toxicity=0.5, attributes={"latency": 250}
    )
    assert toxic["name"] == "latency_upstream"
    assert toxic["attributes"]["latency"] == 250
    assert toxic["toxicity"] == 0.5
    named = toxiproxy_api.add_toxic("link", "timeout", attributes={"timeout": 0}, name="cut")
    assert named["name"] == "cut"
    assert {t["name"] for t in toxiproxy_api.toxics("link")} == {"latency_upstream", "cut"}

    with pytest.raises(ToxiproxyError, match="already exists") as dup:
        toxiproxy_api.add_toxic("link", "timeout", name="cut")
    assert dup.value.status == 409

    toxiproxy_api.remove_toxic("link", "cut")
    with pytest.raises(ToxiproxyError, match="'cut'.*'link'.*not found") as gone:
        toxiproxy_api.remove_toxic("link", "cut")
    assert gone.value.status == 404
    assert [t["name"] for t in toxiproxy_api.toxics("link")] == ["latency_upstream"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "down"}, "'down' is not a toxic"),
        ({"type": "latncy"}, "unknown toxic type 'latncy'"),
        ({"type": "latency", "stream": "sideways"}, "stream 'sideways'"),
        ({"type": "latency", "toxicity": 1.5}, "toxicity 1.5"),
        ({"type": "latency", "attributes": {"delay": 5}}, "no attribute 'delay'"),
        ({"type": "bandwidth", "attributes": {"rate": -1}}, "rate=-1"),
    ],
)
def test_bad_toxic_is_refused_and_changes_nothing(
    toxiproxy_api: Toxiproxy, kwargs: dict, message: str
) -> None:
    toxiproxy_api.populate([ProxySpec("link", upstream="127.0.0.1:1")])
    proxy = kwargs.pop("type")
    with pytest.raises(ToxiproxyError, match=message):
        toxiproxy_api.add_toxic("link", proxy, **kwargs)
    assert toxiproxy_api.toxics("link") == []


def test_unknown_proxy_error_names_it(toxiproxy_api: Toxiproxy) -> None:
    with pytest.raises(ToxiproxyError, match="'ghost'.*proxy not found"):
        toxiproxy_api.add_toxic("ghost", "latency", attributes={"latency": 1})
    with pytest.raises(ToxiproxyError, match="'ghost'"):
        toxiproxy_api.set_enabled("ghost", False)


def test_down_refuses_connections_and_reset_heals(toxiproxy_api: Toxiproxy) -> None:
    listen = toxiproxy_api.populate([ProxySpec("link", upstream="127.0.0.1:1")])["link"]["listen"]
    assert _connects(listen)
    toxiproxy_api.add_toxic("link", "latency", attributes={"latency": 10})
    assert toxiproxy_api.set_enabled("link", False)["enabled"] is False
    assert not _connects(listen)
    toxiproxy_api.reset()
    assert toxiproxy_api.proxies()["link"]["enabled"] is True
    assert toxiproxy_api.toxics("link") == []
    assert _connects(listen)


def test_unreachable_api_is_a_clear_error() -> None:
    from chaosbed.proc import free_port

    with Toxiproxy(f"http://127.0.0.1:{free_port()}", timeout_s=0.5) as dead, pytest.raises(
        ToxiproxyError, match="unreachable"
    ):
        dead.version()


# --- stack ------------------------------------------------------------------------


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_start_writes_stack_json_with_every_link(shared_stack: Stack) -> None:
    info = json.loads((shared_stack.run_dir / "stack.json").read_text())
    assert info == json.loads(json.dumps(shared_stack.info))
    assert set(info["services"]) == set(SERVICES)
    assert set(info["proxies"]) == set(PROXIES)
    for name, (_, target) in PROXIES.items():
        proxy = info["proxies"][name]
        assert proxy["upstream"] == f"127.0.0.1:{info['services'][target]['port']}", name
        assert proxy["url"] == f"http://{proxy['listen']}"
    live = shared_stack.toxiproxy.proxies()
    assert {name: p["upstream"] for name, p in live.items()} == {
        name: p["upstream"] for name, p in info["proxies"].items()
    }
    for name, svc in info["services"].items():
        assert process.alive(svc["pid"]), name
        body = httpx.get(svc["url"] + "/healthz", timeout=2.0).json()
        assert body["service"] == name
    # each link leads to the service it names
    for name, (_, target) in PROXIES.items():
        body = httpx.get(info["proxies"][name]["url"] + "/healthz", timeout=2.0).json()
        assert body["service"] == target, name
    assert info["admin_token"] and info["notify_secret"]
    assert info["toxiproxy"]["api"].startswith("http://127.0.0.1:")


def test_toxiproxy_runs_its_go_scheduler_on_one_thread(shared_stack: Stack) -> None:
    pid = shared_stack.info["toxiproxy"]["pid"]
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in item
    )
    assert environ.get("GOMAXPROCS") == os.environ.get("GOMAXPROCS", "1")
    assert environ.get("GODEBUG") == toxiproxy_env(os.environ)["GODEBUG"]
    assert "schedtrace=" in environ["GODEBUG"]


def test_toxiproxy_env_keeps_a_gomaxprocs_the_user_set() -> None:
    assert toxiproxy_env({"PATH": "/bin"}) == {
        "PATH": "/bin", "GOMAXPROCS": "1", "GODEBUG": "schedtrace=2147483647",
    }
    assert toxiproxy_env({"GOMAXPROCS": "2"})["GOMAXPROCS"] == "2"


def test_toxiproxy_env_adds_the_sysmon_setting_to_a_godebug_the_user_set() -> None:
    assert toxiproxy_env({"GODEBUG": "madvdontneed=1"})["GODEBUG"] == (
        "madvdontneed=1,schedtrace=2147483647"
    )
    assert toxiproxy_env({"GODEBUG": ""})["GODEBUG"] == "schedtrace=2147483647"
    # a scheduler trace the user asked for is theirs to keep
    assert toxiproxy_env({"GODEBUG": "schedtrace=1000,scheddetail=1"})["GODEBUG"] == (
        "schedtrace=1000,scheddetail=1"
    )


def _policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of `pid`."""
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_a_child_asked_for_batch_scheduling_runs_under_it_and_others_do_not(
    tmp_path: Path,
) -> None:
    batch = process.Child(["sleep", "30"], env=os.environ, log_path=tmp_path / "batch.log",
                          batch_scheduling=True)  # fmt: skip
    plain = process.Child(["sleep", "30"], env=os.environ, log_path=tmp_path / "plain.log")
    try:
        assert _policies(batch.pid) == {os.SCHED_BATCH}
        assert _policies(plain.pid) == {os.SCHED_OTHER}
    finally:
        batch.kill()
        plain.kill()


def test_toxiproxy_runs_under_batch_scheduling_and_the_services_do_not(
    shared_stack: Stack,
) -> None:
    """Every Toxiproxy thread, the Go runtime's started after exec too, is SCHED_BATCH, so
    its wake-ups do not preempt the services it forwards to."""
    toxiproxy = shared_stack.info["toxiproxy"]["pid"]
    assert len(os.listdir(f"/proc/{toxiproxy}/task")) > 1  # Go's own threads are included
    assert _policies(toxiproxy) == {os.SCHED_BATCH}
    for name in SERVICES:
        assert _policies(shared_stack.pid(name)) == {os.SCHED_OTHER}, name


def test_services_are_wired_through_the_proxies(shared_stack: Stack) -> None:
    env = shared_stack.info["service_env"]
    proxies = shared_stack.info["proxies"]
    assert env["order"]["CHAOSBED_INVENTORY_URL"] == proxies["order_inventory"]["url"]
    assert env["order"]["CHAOSBED_CHANNEL_URL"] == proxies["order_channel"]["url"]
    assert env["channel"]["CHAOSBED_NOTIFY_URL"] == (
        proxies["channel_notify"]["url"] + "/notifications/payment"
    )
    for name in SERVICES:
        assert env[name]["CHAOSBED_DB"] == str(shared_stack.run_dir / f"{name}.db")
    # admin endpoints accept the generated token and refuse a missing one
    assert httpx.get(shared_stack.url("order") + "/audit/export", timeout=5).status_code == 401
    assert isinstance(shared_stack.export("inventory"), list)


def test_down_link_refuses_and_heals(shared_stack: Stack) -> None:
    url = shared_stack.proxy_url("client_order")
    shared_stack.toxiproxy.set_enabled("client_order", False)
    try:
        assert not _healthy(url)
        assert _healthy(shared_stack.url("order"))  # only the link is down
    finally:
        shared_stack.toxiproxy.reset()
    assert _healthy(url)


def test_two_stacks_side_by_side(start_stack: Any) -> None:
    first: Stack = start_stack("one")
    second: Stack = start_stack("two")
    ports = [svc["port"] for s in (first, second) for svc in s.info["services"].values()]
    listens = [p["listen"] for s in (first, second) for p in s.info["proxies"].values()]
    assert len(set(ports)) == len(ports)
    assert len(set(listens)) == len(listens)
    assert first.info["toxiproxy"]["api"] != second.info["toxiproxy"]["api"]
    assert first.info["admin_token"] != second.info["admin_token"]
    for stack in (first, second):
        assert all(_healthy(stack.proxy_url(p)) for p in PROXIES)
    # a stack's token does not open the other stack
    foreign = httpx.get(
        second.url("order") + "/audit/export", headers=first.admin_headers(), timeout=5
    )
    assert foreign.status_code == 401


def test_kill_start_pause_resume_restart_and_stop(start_stack: Any) -> None:
    stack: Stack = start_stack("faults")
    old = stack.pid("channel")
    stack.kill("channel")
    assert not process.alive(old)
    assert not _healthy(stack.url("channel"))
    with pytest.raises(StackError, match="no process"):
        stack.pid("channel")
    new = stack.start_service("channel")
    assert new != old and process.alive(new)
    assert _healthy(stack.proxy_url("client_channel"))
    assert json.loads((stack.run_dir / "stack.json").read_text())["services"]["channel"][
        "pid"
    ] == new
    with pytest.raises(StackError, match="still running"):
        stack.start_service("channel")

    stack.pause("inventory")
    try:
        assert not _healthy(stack.url("inventory"))
        assert process.alive(stack.pid("inventory"))
    finally:
        stack.resume("inventory")
    assert _healthy(stack.url("inventory"))

    before = stack.pid("order")
    after = stack.restart("order")
    assert after != before and not process.alive(before)
    assert _healthy(stack.url("order"))

    stack.pause("order")  # a paused process must not block stop
    pids = [svc["pid"] for svc in stack.info["services"].values()]
    pids.append(stack.info["toxiproxy"]["pid"])
    stack.stop()
    assert [pid for pid in pids if process.alive(pid)] == []
    stack.stop()  # idempotent


def test_attach_controls_a_running_stack(start_stack: Any) -> None:
    owner: Stack = start_stack("attached")
    controller = Stack.attach(owner.run_dir / "stack.json")
    try:
        old = controller.pid("inventory")
        controller.kill("inventory")
        assert not process.alive(old)
        new = controller.start_service("inventory")
        assert _healthy(owner.url("inventory"))
        assert controller.toxiproxy.version() == "2.12.0"
    finally:
        controller.stop()
    assert process.alive(new), "detaching must not stop the stack"
    owner.stop()
    assert not process.alive(new), "the owner stops a service a controller restarted"


def test_unknown_names_are_clear_errors(shared_stack: Stack, tmp_path: Any) -> None:
    with pytest.raises(StackError, match="unknown service 'shipping'"):
        shared_stack.url("shipping")
    with pytest.raises(StackError, match="unknown proxy 'nowhere'"):
        shared_stack.proxy_url("nowhere")
    with pytest.raises(ValueError, match="unknown bug"):
        Stack.start(tmp_path, bugs=["no-such-bug"])
    assert not (tmp_path / "stack.json").exists()
    with pytest.raises(StackError, match="cannot attach"):
        Stack.attach(tmp_path / "missing.json")


def test_a_service_that_cannot_start_is_named_with_its_log(tmp_path: Any) -> None:
    with pytest.raises(StackError, match=r"service \w+ exited at start") as failed:
        Stack.start(tmp_path, service_env={"CHAOSBED_QUERY_AFTER_S": "soon"})
    assert "CHAOSBED_QUERY_AFTER_S" in str(failed.value)


_CRASHING_CALLER = """
import json, sys, time
from pathlib import Path
from chaosbed.stack import Stack
stack = Stack.start(Path(sys.argv[1]))
pids = [svc["pid"] for svc in stack.info["services"].values()]
print(json.dumps(pids + [stack.info["toxiproxy"]["pid"]]), flush=True)
time.sleep(60)
"""


def test_no_orphans_when_the_caller_is_killed(tmp_path: Any) -> None:
    import signal
    import subprocess
    import sys

    from chaosbed.proc import PROJECT_ROOT

    caller = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_CALLER, str(tmp_path)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert caller.stdout is not None
        pids = json.loads(caller.stdout.readline())
        assert all(process.alive(pid) for pid in pids)
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        assert [pid for pid in pids if not process.wait_gone(pid, 10.0)] == []
    finally:
        caller.kill()
        caller.wait()


def _chaosbed_up(runs_dir: Any, **env: str) -> Any:
    import os
    import subprocess
    import sys

    from chaosbed.proc import PROJECT_ROOT

    return subprocess.Popen(
        [sys.executable, "-m", "chaosbed", "up", "--runs-dir", str(runs_dir)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_chaosbed_up_runs_until_sigterm_and_cleans_up(tmp_path: Any) -> None:
    import signal

    up = _chaosbed_up(tmp_path)
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C to stop"):
                break
        banner = "".join(lines)
        (stack_json,) = tmp_path.glob("*-up/stack.json")
        info = json.loads(stack_json.read_text())
        for proxy in info["proxies"].values():
            assert proxy["url"] in banner
        pids = [svc["pid"] for svc in info["services"].values()] + [info["toxiproxy"]["pid"]]
        assert all(process.alive(pid) for pid in pids)
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
        assert [pid for pid in pids if process.alive(pid)] == []
    finally:
        up.kill()
        up.wait()


def test_chaosbed_up_that_cannot_start_says_why_and_exits_3(tmp_path: Any) -> None:
    up = _chaosbed_up(tmp_path, CHAOSBED_QUERY_AFTER_S="soon")
    _, err = up.communicate(timeout=60)
    assert up.returncode == 3
    assert "stack did not start: service" in err and "exited at start" in err


@pytest.mark.observe
def test_observed_stack_sends_services_to_prometheus_and_jaeger(start_stack: Any) -> None:
    stack: Stack = start_stack("observed", observe=True)
    observe = stack.info["observe"]
    assert observe["prometheus"].startswith("http://127.0.0.1:")
    assert observe["jaeger"].startswith("http://127.0.0.1:")
    for name in SERVICES:
        env = stack.info["service_env"][name]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == observe["otlp"]
        assert env["OTEL_SERVICE_NAME"] == name
    assert httpx.get(observe["prometheus"] + "/-/ready", timeout=5).status_code == 200
    pids = list(observe.get("pids", {}).values())
    stack.stop()
    assert [pid for pid in pids if process.alive(pid)] == []
