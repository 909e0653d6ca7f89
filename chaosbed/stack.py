"""The local stack supervisor: Toxiproxy, five proxies, the three services, stack.json.

`Stack.start(run_dir)` brings everything up on ephemeral loopback ports and returns a
handle the tests, the fault scheduler and `chaosbed up` use to reach, break and stop
it.  `Stack.attach(stack_json)` controls a stack another process started.

With `target=` (a `loadtests.target.Target`) the order service is the target's: a process
started from its command (own process group, log `order.log` in the run directory, stopped
with the stack) or one already running at its URL; either way `client_order` and
`channel_notify` lead to it and the service is still called "order" (faults name it so).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

import rundir
from chaosbed import binaries, proc
from chaosbed.supervisor import HealthWatch, Watched, child_problem
from faults import process
from faults.toxiproxy import ProxySpec, Toxiproxy, ToxiproxyError
from loadtests.target import Target, TargetError, render
from services.common.bugs import parse_bugs

SERVICES = ("inventory", "channel", "order")  # start order: dependencies first

# proxy name -> (caller, service it leads to); every link goes through Toxiproxy
PROXIES: dict[str, tuple[str, str]] = {
    "client_order": ("client", "order"),
    "client_channel": ("client", "channel"),
    "order_inventory": ("order", "inventory"),
    "order_channel": ("order", "channel"),
    "channel_notify": ("channel", "order"),
}

NOTIFY_PATH = "/notifications/payment"

# what a plain `chaosbed up` or a run without its own stock puts on the shelves
DEFAULT_SEED_STOCK: dict[str, int] = {"sku-1": 1_000_000, "sku-2": 1_000_000, "sku-3": 1_000_000}

HEALTH_TIMEOUT_S = 30.0
# Toxiproxy's Go scheduler on one thread: a third less CPU per proxied request than one
# thread per core (benchmarks/bench_flow.py, docs/perf.md), and a fraction of a core is all
# it uses at the stack's peak
TOXIPROXY_GOMAXPROCS = "1"
# Go's sysmon thread sleeps deeply whenever the one P is idle, and every system call after
# that wakes it: two extra context switches each time a quiet proxy gets a request, 40 % of
# Toxiproxy's CPU per journey here. sysmon never sleeps deeply while a scheduler trace is on
# (runtime/proc.go, sysmon), so ask for one every 2^31-1 ms (24.8 days of uptime: a host up
# longer than that writes one "SCHED" line to toxiproxy.log as the proxy starts, and one
# every 24.8 days after). Idle, sysmon then wakes every 10 ms: 0.2 % of a core.
TOXIPROXY_GODEBUG = "schedtrace=2147483647"
# and under SCHED_BATCH: each request wakes the proxy, and a woken proxy used to preempt the
# service that was running (it sleeps most of the time, so the scheduler favours it): the
# services then used 15-23 % more CPU per journey behind the proxy than without it. A batch
# task's wake-ups preempt nothing; it runs when a core is free or at the next tick, which
# only delays it when every core is busy (docs/decisions.md)
TOXIPROXY_BATCH_SCHEDULING = True
STOP_GRACE_S = 5.0


def toxiproxy_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of toxiproxy-server: `environ` with GOMAXPROCS=1 unless it sets one,
    and its GODEBUG with TOXIPROXY_GODEBUG added unless it sets `schedtrace` itself."""
    env = {"GOMAXPROCS": TOXIPROXY_GOMAXPROCS, **environ}
    godebug = [item for item in env.get("GODEBUG", "").split(",") if item.strip()]
    if not any(item.strip().startswith("schedtrace=") for item in godebug):
        env["GODEBUG"] = ",".join([*godebug, TOXIPROXY_GODEBUG])
    return env


class StackError(RuntimeError):
    """The stack could not be started or controlled; the message says which part and why."""


def _service_env(
    service: str,
    *,
    port: int,
    db: Path,
    admin_token: str,
    notify_secret: str,
    bugs: str,
    links: Mapping[str, str],
    seed_stock: Mapping[str, int],
) -> dict[str, str]:
    """The CHAOSBED_* variables of one service (docs/contracts.md)."""
    env = {
        "CHAOSBED_HOST": "127.0.0.1",
        "CHAOSBED_PORT": str(port),
        "CHAOSBED_DB": str(db),
        "CHAOSBED_ADMIN_TOKEN": admin_token,
        "CHAOSBED_NOTIFY_SECRET": notify_secret,
        "CHAOSBED_BUGS": bugs,
    }
    if service == "order":
        env["CHAOSBED_INVENTORY_URL"] = links["order_inventory"]
        env["CHAOSBED_CHANNEL_URL"] = links["order_channel"]
    elif service == "channel":
        env["CHAOSBED_NOTIFY_URL"] = links["channel_notify"] + NOTIFY_PATH
    elif service == "inventory":
        env["CHAOSBED_SEED_STOCK"] = json.dumps(dict(seed_stock))
    return env


def toxiproxy_probe(toxiproxy: Toxiproxy) -> proc.Probe:
    """Ready when the Toxiproxy API answers its version."""

    def probe() -> str | None:
        try:
            toxiproxy.version()
        except ToxiproxyError as exc:
            return str(exc)
        return None

    return probe


_live_stacks: set[Stack] = set()  # stopped at interpreter exit, whatever the caller forgot


@atexit.register
def _stop_live_stacks() -> None:
    for stack in list(_live_stacks):
        stack.stop()


class Stack(rundir.Closing):
    """A running stack.  Use as a context manager: `with Stack.start(run_dir) as stack:`."""

    def __init__(self, info: dict[str, Any], *, owned: bool) -> None:
        self._info = info
        self._owned = owned
        self._children: dict[str, process.Child] = {}
        self._toxiproxy_child: process.Child | None = None
        self._toxiproxy: Toxiproxy | None = None
        self._service_envs: dict[str, dict[str, str]] = {}
        self._observers: Any = None
        self._lock = threading.RLock()
        self._stopped = False
        self._health: list[HealthWatch] = []

    # --- lifecycle ------------------------------------------------------------

    @classmethod
    def start(
        cls,
        run_dir: Path,
        *,
        bugs: Iterable[str] = (),
        service_env: Mapping[str, str] | None = None,
        seed_stock: Mapping[str, int] | None = None,
        direct: bool = False,
        observe: bool = False,
        target: Target | None = None,
    ) -> Stack:
        """Start Toxiproxy (unless `direct`), the proxies and the services; write stack.json.

        `target`: the order service under test (default: the bundled one, as ever)."""
        bug_names = sorted(parse_bugs(",".join(bugs)))
        stock = dict(DEFAULT_SEED_STOCK if seed_stock is None else seed_stock)
        for sku, qty in stock.items():
            if not isinstance(qty, int) or isinstance(qty, bool) or qty < 0:
                raise StackError(f"seed_stock[{sku!r}]={qty!r} must be an integer >= 0")
        for key, value in (service_env or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise StackError(f"service_env[{key!r}]={value!r}: names and values must be str")
        try:  # a url target's secrets are the ones it was started with
            fixed = target.secrets_from(os.environ) if target is not None else {}
        except TargetError as exc:
            raise StackError(str(exc)) from None
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(mode=rundir.RUN_DIR_MODE, parents=True, exist_ok=True)
        ports = {name: proc.free_port() for name in SERVICES}
        if direct and target is not None and target.peers is not None:
            # no proxy in between: the url target calls inventory and channel themselves
            ports.update(
                inventory=target.peers.port("inventory"), channel=target.peers.port("channel")
            )
        info: dict[str, Any] = {
            "run_dir": str(run_dir),
            "admin_token": fixed.get("admin_token") or secrets.token_urlsafe(24),
            "notify_secret": fixed.get("notify_secret") or secrets.token_urlsafe(32),
            "direct": direct,
            "bugs": bug_names,
            "seed_stock": stock,
            "toxiproxy": None,
            "services": {
                name: {
                    "url": f"http://127.0.0.1:{ports[name]}",
                    "port": ports[name],
                    "pid": None,
                    "db": str(run_dir / f"{name}.db"),
                    "log": str(run_dir / f"{name}.log"),
                }
                for name in SERVICES
            },
            "proxies": {},
            "observe": {},
            "target": None,
        }
        if target is not None:
            info["target"] = _target_info(target)
            if target.url is not None:
                host_port = target.url.split("://", 1)[1]
                info["services"]["order"].update(
                    url=target.url, port=int(host_port.rsplit(":", 1)[1]), db=None
                )
            else:
                (run_dir / "order").mkdir(mode=rundir.RUN_DIR_MODE, exist_ok=True)
                info["services"]["order"]["db"] = str(run_dir / "order")
        stack = cls(info, owned=True)
        _live_stacks.add(stack)
        try:
            stack._start_all(service_env or {}, observe=observe)
        except BaseException:
            stack.stop()
            raise
        return stack

    def _start_all(self, overrides: Mapping[str, str], *, observe: bool) -> None:
        info = self._info
        if info["direct"]:
            links = {
                proxy: info["services"][target]["url"] for proxy, (_, target) in PROXIES.items()
            }
        else:
            self._start_toxiproxy()
            links = {proxy: spec["url"] for proxy, spec in info["proxies"].items()}
        target = info.get("target")
        for name in SERVICES:
            svc = info["services"][name]
            if name == "order" and target is not None:
                if not target["started"]:
                    continue  # already running elsewhere: nothing to start
                own = {k: render(v, self._placeholders(links)) for k, v in target["env"].items()}
                self._service_envs[name] = {**own, **overrides}
                continue
            self._service_envs[name] = {
                **_service_env(
                    name,
                    port=svc["port"],
                    db=Path(svc["db"]),
                    admin_token=info["admin_token"],
                    notify_secret=info["notify_secret"],
                    bugs=",".join(info["bugs"]),
                    links=links,
                    seed_stock=info["seed_stock"],
                ),
                **overrides,
            }
            if name == "channel" and target is not None:
                notify = links["channel_notify"] + target["notify_path"]
                self._service_envs[name]["CHAOSBED_NOTIFY_URL"] = notify
        if observe:
            self._start_observers()
        # lets an attached controller restart a service exactly as it was started
        info["service_env"] = self._service_envs
        if target is not None and target["started"]:
            values = self._placeholders(links)
            info["service_cmd"] = {
                "order": {
                    "argv": [render(part, values) for part in target["command"]],
                    "cwd": render(target["cwd"], values),
                }
            }
        for name in self._service_envs:
            self._spawn(name)
        for name in SERVICES:
            self._wait_healthy(name)
        self._seed_stock()
        self._write()

    def _placeholders(self, links: Mapping[str, str]) -> dict[str, str]:
        """What a target's templates may use (loadtests/target.py PLACEHOLDERS)."""
        info = self._info
        target = info["target"]
        return {
            "channel": links["order_channel"],
            "inventory": links["order_inventory"],
            "notify_secret": info["notify_secret"],
            "admin_token": info["admin_token"],
            "port": str(info["services"]["order"]["port"]),
            "db_dir": str(info["services"]["order"]["db"]),
            "run_dir": info["run_dir"],
            "python": sys.executable,
            "repo": str(proc.PROJECT_ROOT),
            "target_dir": target["dir"],
            "bugs": ",".join(info["bugs"]),
        }

    def _start_toxiproxy(self) -> None:
        run_dir = Path(self._info["run_dir"])
        try:
            binary = binaries.toxiproxy_server()
        except binaries.MissingBinary as exc:
            raise StackError(str(exc)) from exc
        port = proc.free_port()
        log = run_dir / "toxiproxy.log"
        child = process.Child(
            [str(binary), "-host", "127.0.0.1", "-port", str(port), "-proxy-metrics"],
            env=toxiproxy_env(os.environ),
            log_path=log,
            name="toxiproxy-server",
            batch_scheduling=TOXIPROXY_BATCH_SCHEDULING,
        )
        self._toxiproxy_child = child
        api = f"http://127.0.0.1:{port}"
        self._info["toxiproxy"] = {"api": api, "pid": child.pid, "log": str(log)}
        self._toxiproxy = Toxiproxy(api)
        try:
            proc.wait_ready(child, toxiproxy_probe(self._toxiproxy), HEALTH_TIMEOUT_S)
        except proc.NotReady as exc:
            raise StackError(f"{exc}; last lines of {log}:\n{process.log_tail(log)}") from exc
        # a url target was configured in advance: the proxies it calls listen where it calls
        peers = (self._info.get("target") or {}).get("peers") or {}
        fixed = {"order_inventory": peers.get("inventory"), "order_channel": peers.get("channel")}
        specs = [
            ProxySpec(
                name,
                upstream=self._info["services"][target]["url"].split("://", 1)[1],
                listen=fixed.get(name) or "127.0.0.1:0",
            )
            for name, (_, target) in PROXIES.items()
        ]
        try:
            created = self._toxiproxy.populate(specs)
        except ToxiproxyError as exc:
            hint = (
                f" (the target's peers: {peers['inventory']} and {peers['channel']} must be free)"
                if peers
                else ""
            )
            raise StackError(f"could not create the proxies: {exc}{hint}") from exc
        self._info["proxies"] = {
            name: {
                "listen": created[name]["listen"],
                "upstream": created[name]["upstream"],
                "url": f"http://{created[name]['listen']}",
            }
            for name in PROXIES
        }

    def _start_observers(self) -> None:
        """Prometheus + Jaeger before the services, so their OTLP settings reach them."""
        from chaosbed import observe as observe_module

        targets = {
            name: f"{svc['url']}/metrics" for name, svc in self._info["services"].items()
        }
        if self._info["toxiproxy"]:
            targets["toxiproxy"] = f"{self._info['toxiproxy']['api']}/metrics"
        try:
            observers = observe_module.start_observers(Path(self._info["run_dir"]), targets)
        except RuntimeError as exc:  # ObserveError, MissingBinary
            raise StackError(f"observers did not start: {exc}") from exc
        self._observers = observers
        self._info["observe"] = observers.info()
        for name in self._service_envs:
            extra = observers.service_env(name)
            self._service_envs[name] = {**extra, **self._service_envs[name]}

    def _spawn(self, name: str) -> None:
        svc = self._info["services"][name]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._service_envs[name]}
        own = (self._info.get("service_cmd") or {}).get(name)
        argv = own["argv"] if own else [sys.executable, "-m", f"services.{name}"]
        cwd = Path(own["cwd"]) if own else proc.PROJECT_ROOT
        try:
            child = process.Child(
                argv,
                env=env,
                log_path=Path(svc["log"]),
                cwd=cwd,
                die_with_parent=self._owned,
                name=f"target {self._info['target']['name']}" if own else f"services.{name}",
            )
        except process.ProcessError as exc:
            raise StackError(f"{name}: {exc} (cwd {cwd})") from exc
        with self._lock:
            self._children[name] = child
            svc["pid"] = child.pid

    def _wait_healthy(self, name: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        svc = self._info["services"][name]
        log = Path(svc["log"])
        target = self._info.get("target") if name == "order" else None
        health = target["health"] if target else "/healthz"
        if target:
            timeout_s = float(target["startup_timeout"])  # the target file's, not ours
        what = f"target {target['name']}" if target else f"service {name}"
        with httpx.Client(timeout=1.0) as client:
            probe = proc.http_probe(client, svc["url"] + health)
            if name not in self._children:  # a target already running at its URL
                if probe() is not None:
                    raise StackError(f"{what} at {svc['url']}{health} does not answer: {probe()}")
                return
            try:
                proc.wait_ready(self._children[name], probe, timeout_s, what=what)
            except proc.NotReady as exc:
                raise StackError(f"{exc}; last lines of {log}:\n{process.log_tail(log)}") from exc

    def _seed_stock(self) -> None:
        """Make sure every seeded sku is on the shelf (the inventory may also read the env)."""
        stock = self._info["seed_stock"]
        if not stock:
            return
        base = self.url("inventory")
        with httpx.Client(timeout=5.0, headers=self.admin_headers()) as client:
            missing = [
                sku for sku in stock if client.get(f"{base}/stock/{sku}").status_code != 200
            ]
            if not missing:
                return
            items = [{"sku": sku, "qty": stock[sku]} for sku in missing]
            response = client.put(f"{base}/admin/stock", json={"items": items})
            if response.status_code >= 300:
                raise StackError(
                    f"inventory refused the seed stock {items}: "
                    f"{response.status_code} {response.text[:300]}"
                )

    def _write(self) -> None:
        rundir.write_json(Path(self._info["run_dir"]) / "stack.json", self._info)

    def stop(self) -> None:
        """Stop everything this stack started (SIGTERM, SIGKILL after a grace period); reap all."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        _live_stacks.discard(self)
        for watch in self._health:
            watch.close()
        if not self._owned:
            # services this controller restarted belong to the stack, not to us: leave them
            if self._toxiproxy is not None:
                self._toxiproxy.close()
            return
        for name in reversed(SERVICES):
            child = self._children.get(name)
            if child is not None:
                child.stop(STOP_GRACE_S)
            # a controller attached to this stack may have restarted it under a new pid
            recorded = self._recorded_pid(name)
            if recorded and (child is None or recorded != child.pid) and self._is_ours(
                recorded, name
            ):
                process.stop_pid(recorded, STOP_GRACE_S)
        if self._observers is not None:
            try:
                self._observers.stop()
            except Exception as exc:  # stopping must go on
                print(f"chaosbed: stopping observers failed: {exc}", file=sys.stderr)
        if self._toxiproxy is not None:
            self._toxiproxy.close()
        if self._toxiproxy_child is not None:
            self._toxiproxy_child.stop(STOP_GRACE_S)

    def _is_ours(self, pid: int, name: str) -> bool:
        own = (self._info.get("service_cmd") or {}).get(name)
        return _runs(pid, own["argv"][-1] if own else f"services.{name}")

    def _recorded_pid(self, name: str) -> int | None:
        try:
            data = rundir.read_json(Path(self._info["run_dir"]) / "stack.json")
            pid = data["services"][name]["pid"]
        except (rundir.RunDirError, KeyError, TypeError):
            return None
        return int(pid) if pid else None

    def close(self) -> None:
        self.stop()

    # --- supervision ------------------------------------------------------------

    def health_urls(self) -> dict[str, str]:
        """What answers 200 while the stack is alive: Toxiproxy's API and each service."""
        urls = {}
        if self._info.get("toxiproxy"):
            urls["Toxiproxy"] = f"{self._info['toxiproxy']['api']}/version"
        for name, svc in self._info["services"].items():
            urls[f"service {name}"] = f"{svc['url']}/healthz"
        return urls

    def health_problems(self) -> list[str]:
        """Every health URL that does not answer 200 now, with what it did instead."""
        problems = []
        for name, url in self.health_urls().items():
            watch = HealthWatch(url)
            try:
                problem = watch.probe()
            finally:
                watch.close()
            if problem is not None:
                problems.append(f"{name} ({url}): {problem}")
        return problems

    def watched(self) -> list[Watched]:
        """What must stay alive while the stack is in use (chaosbed/supervisor.py): every
        process this stack started, or the health URLs of a stack it is attached to."""
        if not self._owned:
            watched = []
            for name, url in self.health_urls().items():
                watch = HealthWatch(url)
                self._health.append(watch)
                target = name.removeprefix("service ") if name.startswith("service ") else None
                watched.append(Watched(name, watch, target=target))
            return watched
        items: list[Watched] = []
        if self._toxiproxy_child is not None:
            items.append(Watched("Toxiproxy", child_problem(self._toxiproxy_child)))
        target = self._info.get("target")
        for name in SERVICES:
            if name == "order" and target and not target["started"]:
                # a url target is not ours to watch as a process: its health URL, as attached
                watch = HealthWatch(self._info["services"]["order"]["url"] + target["health"])
                self._health.append(watch)
                items.append(Watched(f"target {target['name']}", watch, target=name))
                continue
            items.append(Watched(f"service {name}", self._service_check(name), target=name))
        observers = self._observers
        if observers is not None:
            for observer in observers.alive():
                items.append(Watched(observer, self._observer_check(observers, observer)))
        return items

    def _service_check(self, name: str) -> Callable[[], str | None]:
        def check() -> str | None:
            child = self._children.get(name)  # the current one: a heal restarts it
            if child is None:
                return "has no process"
            return child_problem(child)()

        return check

    @staticmethod
    def _observer_check(observers: Any, name: str) -> Callable[[], str | None]:
        def check() -> str | None:
            return None if observers.alive().get(name, False) else "exited"

        return check

    @classmethod
    def attach(cls, stack_json: Path) -> Stack:
        """Control a stack started elsewhere (signals by pid; owns nothing it did not start)."""
        try:
            info = rundir.read_json(stack_json)
        except rundir.RunDirError as exc:
            raise StackError(f"cannot attach: {exc}") from exc
        missing = {"run_dir", "admin_token", "services", "proxies"} - set(info)
        if missing:
            raise StackError(f"cannot attach: {stack_json} lacks {', '.join(sorted(missing))}")
        stack = cls(info, owned=False)
        if info.get("toxiproxy"):
            stack._toxiproxy = Toxiproxy(info["toxiproxy"]["api"])
        envs = info.get("service_env")
        if isinstance(envs, Mapping):
            stack._service_envs = {name: dict(env) for name, env in envs.items()}
        _live_stacks.add(stack)
        return stack

    # --- addresses --------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        """The content of stack.json."""
        return self._info

    @property
    def run_dir(self) -> Path:
        return Path(self._info["run_dir"])

    @property
    def owned(self) -> bool:
        """False for a stack this process attached to: it may not start or stop its processes."""
        return self._owned

    @property
    def toxiproxy(self) -> Toxiproxy:
        if self._toxiproxy is None:
            raise StackError("this stack runs without Toxiproxy (direct=True)")
        return self._toxiproxy

    def url(self, service: str) -> str:
        """The service's own address (bypasses Toxiproxy: for audits and admin calls)."""
        return str(self._service(service)["url"])

    def proxy_url(self, proxy: str) -> str:
        """The address of a link; in a direct stack, the address of the service it leads to."""
        if proxy not in PROXIES:
            raise StackError(f"unknown proxy {proxy!r}; known: {', '.join(PROXIES)}")
        if self._info.get("direct"):
            return self.url(PROXIES[proxy][1])
        return str(self._info["proxies"][proxy]["url"])

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._info['admin_token']}"}

    def add_scrape_target(self, job: str, url: str) -> None:
        """Let this stack's Prometheus (when observing) scrape one more metrics endpoint."""
        if self._observers is not None:
            self._observers.add_targets({job: url})
        elif targets_file := (self._info.get("observe") or {}).get("targets_file"):
            from chaosbed.observe import add_file_targets  # attached: observers run elsewhere

            add_file_targets(Path(targets_file), {job: url})

    def pid(self, service: str) -> int:
        pid = self._service(service)["pid"]
        if not pid:
            target = self._info.get("target")
            if service == "order" and target and not target["started"]:
                raise StackError(
                    f"target {target['name']} runs at {target['url']}, not started by chaosbed: "
                    "process faults cannot reach it"
                )
            raise StackError(f"service {service} has no process")
        return int(pid)

    def _service(self, service: str) -> dict[str, Any]:
        try:
            return dict(self._info["services"][service])
        except KeyError:
            raise StackError(
                f"unknown service {service!r}; known: {', '.join(self._info['services'])}"
            ) from None

    # --- process faults -----------------------------------------------------------

    def kill(self, service: str) -> None:
        """SIGKILL the service and reap it; `start_service` brings it back."""
        pid = self.pid(service)
        child = self._children.get(service)
        if child is not None and child.pid == pid:
            child.kill()
        else:
            process.signal_pid(pid, signal.SIGKILL)
            if not process.wait_gone(pid, 10.0):
                raise StackError(f"service {service} (pid {pid}) survived SIGKILL")
        with self._lock:
            self._info["services"][service]["pid"] = None
        self._write()

    def start_service(self, service: str, *, timeout_s: float = HEALTH_TIMEOUT_S) -> int:
        """Start a stopped service again on the same port and database; returns the new pid."""
        svc = self._service(service)
        if svc["pid"] and process.alive(int(svc["pid"])):
            raise StackError(f"service {service} is still running (pid {svc['pid']})")
        if service not in self._service_envs:
            raise StackError(
                f"cannot start {service}: its environment is unknown (stack.json lacks service_env)"
            )
        self._spawn(service)
        self._wait_healthy(service, timeout_s)
        self._write()
        return self.pid(service)

    def restart(self, service: str, *, grace_s: float = STOP_GRACE_S) -> int:
        """Graceful restart: SIGTERM, SIGKILL after `grace_s`, then start again."""
        pid = self.pid(service)
        child = self._children.get(service)
        if child is not None and child.pid == pid:
            child.stop(grace_s)
        elif not process.stop_pid(pid, grace_s):
            raise StackError(f"service {service} (pid {pid}) did not stop")
        with self._lock:
            self._info["services"][service]["pid"] = None
        return self.start_service(service)

    def pause(self, service: str) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing."""
        if not self._signal(service, signal.SIGSTOP):
            raise StackError(f"service {service} is not running")

    def resume(self, service: str) -> None:
        if not self._signal(service, signal.SIGCONT):
            raise StackError(f"service {service} is not running")

    def _signal(self, service: str, sig: signal.Signals) -> bool:
        """Signal a service; a child of ours as a whole process group (a target's command
        may be a wrapper around the server)."""
        pid = self.pid(service)
        child = self._children.get(service)
        if child is not None and child.pid == pid and child.running():
            child.signal(sig)
            return True
        return process.signal_pid(pid, sig)

    # --- records ------------------------------------------------------------------

    def export(self, service: str, *, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """The service's /audit/export records (NDJSON), fetched directly, not through a proxy."""
        url = self.url(service) + "/audit/export"
        try:
            response = httpx.get(url, headers=self.admin_headers(), timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise StackError(f"export from {service} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise StackError(
                f"export from {service} answered {response.status_code}: {response.text[:300]}"
            )
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def _runs(pid: int, marker: str) -> bool:
    """True when `pid`'s command line has the argument `marker` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return marker.encode() in cmdline


def _target_info(target: Target) -> dict[str, Any]:
    """The target as stack.json records it: attached controllers and Locust read it there."""
    return {
        "name": target.name,
        "file": target.source,
        "dir": target.base_dir,
        "started": target.started,
        "url": target.url,
        "command": list(target.start.command) if target.start else None,
        "cwd": target.start.cwd if target.start else None,
        "env": dict(target.start.env) if target.start else {},
        "health": target.health,
        "startup_timeout": target.startup_timeout,
        "notify_path": target.notify_path,
        "adapter": target.adapter,
        "options": dict(target.options),
        "export": target.export,
        "peers": target.peers.model_dump() if target.peers else None,
        "notify_secret_env": target.notify_secret_env,
        "admin_token_env": target.admin_token_env,
    }


def describe(stack: Stack) -> str:
    """Human summary of where everything listens."""
    info = stack.info
    lines = [f"chaosbed stack running — run directory {info['run_dir']}"]
    lines.append("services:")
    for name, svc in info["services"].items():
        lines.append(f"  {name:<16} {svc['url']}  (pid {svc['pid']}, docs {svc['url']}/docs)")
    if info["proxies"]:
        lines.append("links (Toxiproxy):")
        for name, proxy in info["proxies"].items():
            lines.append(f"  {name:<16} {proxy['url']}  -> {proxy['upstream']}")
        lines.append(f"toxiproxy API      {info['toxiproxy']['api']}")
    for name, url in (info.get("observe") or {}).items():
        if isinstance(url, str) and url.startswith("http"):
            lines.append(f"{name:<18} {url}")
    stack_json = Path(info["run_dir"]) / "stack.json"
    lines.append(f"stack.json         {stack_json}")
    # printed output ends up in logs: the token stays in the 0600 file
    lines.append(f"admin token        jq -r .admin_token {stack_json}")
    lines.append("Ctrl-C to stop")
    return "\n".join(lines)
