"""Observability end to end with the real binaries: a stack with Prometheus + Jaeger, real load.

- every PromQL expression of every generated dashboard returns data from the real Prometheus,
  the fault gauge coming from a real `chaosbed faults --attach` timeline;
- every dashboard's fault-annotation query returns the timeline's recorded fault windows;
- a histogram exemplar's trace id is a trace the real Jaeger returns;
- a paid order's trace holds channel, order and inventory spans including the notification
  handling, every span connected to the order's trace by a parent or a link;
- the service log lines of a request carry the trace and span ids of its spans.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import rundir
from chaosbed import binaries
from chaosbed.exits import EXIT_INTERRUPTED
from chaosbed.proc import free_port
from chaosbed.stack import Stack
from dashboards.build import dashboard_queries
from loadtests.runner import locust_command
from services.common.telemetry import iter_log_records

pytestmark = [pytest.mark.integration, pytest.mark.observe, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
LOAD = {
    "shape": "steady",
    "users": 4,
    "spawn_rate": 4,
    "rate": 8,
    "mix": {"shopper": 6, "browser": 1, "forger": 1},
    "skus": {"sku-1": 100000, "sku-2": 100000},
    "max_poll": "5s",
}
LOAD_SECONDS = 60.0  # upper bound; the test stops Locust as soon as it has what it needs
# the fault timeline `chaosbed faults --repeat` runs beside the load: one window per cycle,
# with a gap long enough for the scrapes to see it healed
FAULT_SCENARIO = """
name: observe-faults
description: one short latency window on order_channel every 8 s
duration: 8s
seed: 7
load: {shape: steady, users: 1, spawn_rate: 1}
timeline:
  - {at: 1s, for: 4s, target: order_channel, fault: latency, params: {latency: 5ms}}
"""
WINDOW_SLACK_S = 2.5  # scrape interval (1 s) + annotation step (1 s) + the heal's own call
SERVICE_TIMINGS = {
    "CHAOSBED_QUERY_AFTER_S": "2",
    "CHAOSBED_RECONCILE_EVERY_S": "2",
    "CHAOSBED_ACCESS_LOG": "all",  # by default only failed requests are logged
}


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack with observers, the harness gauge with one fault active, and Locust running."""
    for name in ("prometheus", "jaeger", "toxiproxy-server"):
        try:
            binaries.find(name)
        except binaries.MissingBinary as exc:
            pytest.fail(f"observation binaries missing (run make setup): {exc}")
    run_dir = tmp_path_factory.mktemp("observe")
    stack = Stack.start(
        run_dir, observe=True, service_env=SERVICE_TIMINGS, seed_stock=LOAD["skus"]
    )
    locust: subprocess.Popen[bytes] | None = None
    timeline: subprocess.Popen[bytes] | None = None
    try:
        observers = stack._observers
        assert observers is not None, "Stack.start(observe=True) started no observers"
        scenario = run_dir / "observe-faults.yaml"
        scenario.write_text(FAULT_SCENARIO)
        faults_runs = run_dir / "faults-runs"
        with (run_dir / "faults.log").open("ab") as log:
            # the attached timeline adds its gauge to this stack's Prometheus by itself
            timeline = subprocess.Popen(
                [sys.executable, "-m", "chaosbed", "faults", str(scenario), "--attach",
                 str(run_dir / "stack.json"), "--repeat", "--runs-dir", str(faults_runs)],
                env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT,
            )
        load_port = free_port()
        stack.add_scrape_target("loadgen", f"http://127.0.0.1:{load_port}/metrics")
        argv, env = locust_command(
            stack_info=stack.info, load=LOAD, duration_s=LOAD_SECONDS, seed=7,
            run_dir=run_dir, workers=0,
        )
        env["CHAOSBED_LOAD_METRICS_PORT"] = str(load_port)
        with (run_dir / "locust.log").open("ab") as log:
            locust = subprocess.Popen(
                argv, env={**os.environ, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        yield {
            "stack": stack,
            "prometheus": observers.prometheus_url,
            "jaeger": observers.jaeger_url,
            "run_dir": run_dir,
            "locust": locust,
            "timeline": timeline,
            "faults_runs": faults_runs,
        }
    finally:
        for child in (locust, timeline):
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(timeout=5)
        stack.stop()


def _poll(check: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.5)


def _jaeger_trace(jaeger: str, trace_id: str) -> dict[str, Any] | None:
    response = httpx.get(f"{jaeger}/api/traces/{trace_id}", timeout=5)
    if response.status_code != 200:
        return None
    data = response.json().get("data") or []
    return data[0] if data else None


@pytest.fixture(scope="module")
def paid_order(observed: dict[str, Any]) -> dict[str, Any]:
    """One order placed and paid through the client proxies under a trace id we chose."""
    stack: Stack = observed["stack"]
    trace_id = secrets.token_hex(16)
    traceparent = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    with httpx.Client(timeout=10) as client:
        placed = client.post(
            f"{stack.proxy_url('client_order')}/orders",
            json={"sku": "sku-1", "qty": 1, "amount": 1234},
            headers={"Idempotency-Key": f"observe-{uuid.uuid4().hex}", **traceparent},
        )
        assert placed.status_code == 201, placed.text
        order = placed.json()
        assert order["status"] == "AWAITING_PAYMENT", order
        paid = client.post(
            f"{stack.proxy_url('client_channel')}/payments/{order['payment_id']}/pay",
            json={}, headers=traceparent,
        )
        assert paid.status_code == 200, paid.text

        def is_paid() -> bool:
            url = f"{stack.proxy_url('client_order')}/orders/{order['order_id']}"
            return bool(client.get(url).json()["status"] == "PAID")

        _poll(is_paid, timeout_s=30, what=f"order {order['order_id']} to be PAID")
    return {**order, "trace_id": trace_id}


def _services_of(trace: dict[str, Any]) -> dict[str, str]:
    """span id -> service name."""
    processes = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    return {span["spanID"]: processes[span["processID"]] for span in trace["spans"]}


SHOPPER_CALLS = {"POST /orders", "POST /payments/{payment_id}/pay"}


def _trace_problems(trace: dict[str, Any] | None, trace_id: str) -> list[str]:
    """What keeps `trace` from being a paid order's connected, three-service trace."""
    if trace is None:
        return [f"Jaeger has no trace {trace_id}"]
    services = _services_of(trace)
    problems = []
    missing = {"order", "channel", "inventory"} - set(services.values())
    if missing:
        problems.append(f"no spans from {sorted(missing)}")
    if not any(
        s["operationName"] == "POST /notifications/payment" and services[s["spanID"]] == "order"
        for s in trace["spans"]
    ):
        problems.append("the order service's notification handling is not in the trace")
    for span in trace["spans"]:
        refs = span.get("references") or []
        if not any(r["traceID"] == trace_id for r in refs):
            problems.append(f"{span['operationName']} has no parent or link in the trace")
        elif span["operationName"] not in SHOPPER_CALLS and not any(
            r["spanID"] in services for r in refs
        ):
            # only the shopper's own (unexported) client spans may be missing from Jaeger
            problems.append(f"{services[span['spanID']]} {span['operationName']}: parent unknown")
    return problems


def test_paid_order_trace_spans_all_three_services(
    observed: dict[str, Any], paid_order: dict[str, Any]
) -> None:
    trace_id = paid_order["trace_id"]
    deadline = time.monotonic() + 30
    while problems := _trace_problems(_jaeger_trace(observed["jaeger"], trace_id), trace_id):
        if time.monotonic() > deadline:
            pytest.fail(f"trace {trace_id}: " + "; ".join(problems))
        time.sleep(0.5)


def test_request_logs_carry_the_trace_and_span_ids(
    observed: dict[str, Any], paid_order: dict[str, Any]
) -> None:
    trace_id = paid_order["trace_id"]
    trace = _poll(
        lambda: _jaeger_trace(observed["jaeger"], trace_id), timeout_s=20, what="trace"
    )
    spans_by_service: dict[str, set[str]] = {}
    for span_id, service in _services_of(trace).items():
        spans_by_service.setdefault(service, set()).add(span_id)
    run_dir: Path = observed["run_dir"]
    for service in ("order", "channel", "inventory"):
        lines = [
            r for r in iter_log_records(run_dir / f"{service}.log") if r.get("trace_id") == trace_id
        ]
        assert lines, f"{service}.log has no line with trace id {trace_id}"
        assert {r["span_id"] for r in lines} & spans_by_service[service], (
            f"{service}: log span ids are not spans of the trace in Jaeger"
        )


def _instant(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_every_dashboard_query_returns_data(
    observed: dict[str, Any], paid_order: dict[str, Any]
) -> None:
    prometheus = observed["prometheus"]
    queries = dashboard_queries()
    empty: list[str] = list(queries)

    def all_answered() -> bool:
        if observed["locust"].poll() is not None:
            pytest.fail(f"Locust exited early ({observed['locust'].returncode}); see locust.log")
        empty[:] = [expr for expr in queries if not _instant(prometheus, expr)]
        return not empty

    deadline = time.monotonic() + 45
    while not all_answered():
        if time.monotonic() > deadline:
            pytest.fail("dashboard queries without data:\n" + "\n".join(empty))
        time.sleep(1)


def test_metric_families_used_by_dashboards_are_scraped(observed: dict[str, Any]) -> None:
    """`... or vector(0)` keeps panels readable; this catches a misspelt metric behind it."""
    names = set()
    for expr in dashboard_queries():
        names |= set(re.findall(r"\b((?:chaosbed|toxiproxy)_[a-z_]+)", expr))
    metadata = httpx.get(f"{observed['prometheus']}/api/v1/metadata", timeout=10).json()["data"]
    for name in sorted(names):
        family = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert family in metadata or name in metadata, f"{name}: no scraped metric family"


def test_exemplar_trace_ids_resolve_in_jaeger(
    observed: dict[str, Any], paid_order: dict[str, Any]
) -> None:
    prometheus, jaeger = observed["prometheus"], observed["jaeger"]
    now = time.time()

    def exemplar_trace_ids() -> list[str]:
        response = httpx.get(
            f"{prometheus}/api/v1/query_exemplars",
            params={
                "query": "chaosbed_http_server_request_duration_seconds_bucket",
                "start": now - 600, "end": time.time() + 1,
            },
            timeout=10,
        )
        ids = []
        for series in response.json()["data"]:
            for exemplar in series["exemplars"]:
                ids.append(exemplar["labels"]["trace_id"])
        return ids

    trace_ids = _poll(exemplar_trace_ids, timeout_s=20, what="exemplars in Prometheus")
    # the oldest exemplars' spans have certainly been exported (batch delay 0.5 s)
    found = _poll(
        lambda: next((t for t in trace_ids[:20] if _jaeger_trace(jaeger, t)), None),
        timeout_s=20, what="an exemplar's trace in Jaeger",
    )
    trace = _jaeger_trace(jaeger, found)
    assert trace is not None and trace["traceID"] == found


def test_observers_are_recorded_in_stack_json(observed: dict[str, Any]) -> None:
    info = observed["stack"].info["observe"]
    assert info["prometheus"] == observed["prometheus"]
    assert info["jaeger"] == observed["jaeger"]
    ready = httpx.get(f"{observed['prometheus']}/-/ready", timeout=5)
    assert ready.status_code == 200
    print(f"observer startup: {observed['stack']._observers.startup_s}", file=sys.stderr)


def test_bad_scrape_targets_are_refused_before_anything_starts(tmp_path: Path) -> None:
    from chaosbed.observe import ObserveError, start_observers

    with pytest.raises(ObserveError, match="must be an http"):
        start_observers(tmp_path, {"order": "127.0.0.1:8000/metrics"})
    with pytest.raises(ObserveError, match="job name"):
        start_observers(tmp_path, {"Order Service": "http://127.0.0.1:8000/metrics"})
    assert list(tmp_path.iterdir()) == []  # no config written, no process started


def test_set_targets_with_bad_input_changes_nothing(observed: dict[str, Any]) -> None:
    from chaosbed.observe import ObserveError

    observers = observed["stack"]._observers
    before = observers.targets_file.read_text()
    with pytest.raises(ObserveError, match="loadgen"):
        observers.add_targets({"loadgen": "ftp://127.0.0.1:1/metrics"})
    assert observers.targets_file.read_text() == before


def _fault_windows(faults_runs: Path) -> list[tuple[float, float]]:
    """(applied, healed) wall times of every completed window `chaosbed faults` recorded."""
    (run,) = [p for p in faults_runs.iterdir() if p.is_dir()]
    applied: dict[tuple[int, int], float] = {}
    windows = []
    for event in rundir.iter_ndjson(run / "faults.ndjson"):
        assert event["ok"], event
        key = (event["cycle"], event["step"])
        if event["event"] == "apply":
            applied[key] = event["t"]
        else:
            windows.append((applied.pop(key), event["t"]))
    return windows


def _regions(values: list[list[Any]], step_s: float) -> list[tuple[float, float]]:
    """Contiguous runs of points, as Grafana turns an annotation query's points into regions."""
    regions: list[tuple[float, float]] = []
    for ts, _ in values:
        t = float(ts)
        if regions and t - regions[-1][1] <= step_s + 0.001:
            regions[-1] = (regions[-1][0], t)
        else:
            regions.append((t, t))
    return regions


def _first_sample(prometheus: str, metric: str) -> float | None:
    """When Prometheus first scraped `metric` (in the last ten minutes), or None."""
    now = time.time()
    response = httpx.get(
        f"{prometheus}/api/v1/query_range",
        params={"query": f"count({metric})", "start": now - 600, "end": now, "step": 1},
        timeout=10,
    )
    result = response.json()["data"]["result"]
    return float(result[0]["values"][0][0]) if result else None


def test_fault_annotations_return_the_fault_windows_of_the_run(observed: dict[str, Any]) -> None:
    timeline = observed["timeline"]

    def two_windows_healed_a_while_ago() -> list[tuple[float, float]] | None:
        if timeline.poll() is not None:
            pytest.fail(f"chaosbed faults exited early ({timeline.returncode}); see faults.log")
        if not any(p.is_dir() for p in observed["faults_runs"].glob("*")):
            return None
        # the first scrape of the new gauge may come after its first window began
        seen = _first_sample(observed["prometheus"], "chaosbed_fault_active")
        if seen is None:
            return None
        windows = [w for w in _fault_windows(observed["faults_runs"]) if w[0] > seen + 1]
        ready = len(windows) >= 2 and time.time() > windows[-1][1] + 2 * WINDOW_SLACK_S
        return windows if ready else None

    windows = _poll(two_windows_healed_a_while_ago, timeout_s=90, what="two healed windows")
    annotations = {}
    for path in sorted((ROOT / "dashboards" / "json").glob("*.json")):
        for annotation in json.loads(path.read_text())["annotations"]["list"]:
            annotations[annotation["expr"]] = float(annotation["step"].removesuffix("s"))
    assert annotations, "no dashboard has a fault annotation"
    start, end = windows[0][0] - WINDOW_SLACK_S, windows[-1][1] + WINDOW_SLACK_S
    for expr, step_s in annotations.items():
        response = httpx.get(
            f"{observed['prometheus']}/api/v1/query_range",
            params={"query": expr, "start": start, "end": end, "step": step_s},
            timeout=10,
        )
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        (series,) = body["data"]["result"]
        assert series["metric"]["fault"] == "latency"
        assert series["metric"]["target"] == "order_channel"
        regions = _regions(series["values"], step_s)
        assert len(regions) == len(windows), (expr, regions, windows)
        for (applied, healed), (first, last) in zip(windows, regions, strict=True):
            assert abs(first - applied) <= WINDOW_SLACK_S, (expr, first, applied)
            assert abs(last - healed) <= WINDOW_SLACK_S, (expr, last, healed)


def test_the_timeline_heals_and_stops_on_sigterm(observed: dict[str, Any]) -> None:
    stack: Stack = observed["stack"]
    timeline = observed["timeline"]
    _poll(lambda: stack.toxiproxy.toxics("order_channel"), timeout_s=20, what="a toxic")
    timeline.send_signal(signal.SIGTERM)
    assert timeline.wait(timeout=30) == EXIT_INTERRUPTED
    assert stack.toxiproxy.toxics("order_channel") == []
