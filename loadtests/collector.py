"""Locust plumbing for the history: who records, who writes, and how records travel.

- A process that runs users (a worker, or the single local process) has a `HistoryRecorder`;
  every second its new records go out as one batch, and at test stop a final batch follows
  with the count of records the process produced.
- The master (or the local process) merges batches with a `HistoryMerger` into
  `CHAOSBED_HISTORY`, rewrites `CHAOSBED_PROGRESS` every second, and serves client-side
  metrics on `CHAOSBED_LOAD_METRICS_PORT`.
- Workers receive the master's resolved configuration as the `--chaosbed-config` option, which
  Locust forwards to workers with every spawn message, so remote workers need no local files.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment
from locust.runners import STATE_INIT, STATE_STOPPED, MasterRunner, Runner, WorkerRunner
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from loadtests.config import LoadConfig, from_env, load_metrics_port, user_rng
from loadtests.forgery import KnownOrder
from loadtests.history import HistoryMerger, HistoryRecorder, Record
from rundir import NdjsonWriter, write_json

HISTORY_MESSAGE = "chaosbed_history"
STOP_MESSAGE = "chaosbed_stop"
CONFIG_OPTION = "chaosbed_config"
FLUSH_EVERY_S = 1.0
FINAL_WAIT_S = 20.0  # how long the master waits for the workers' last batches

log = logging.getLogger("chaosbed.load")


class KnownOrders:
    """Orders this process has seen recently; browsers read them, forgers attack them."""

    def __init__(self, size: int = 256) -> None:
        self._orders: deque[KnownOrder] = deque(maxlen=size)

    def add(self, order: KnownOrder) -> None:
        self._orders.append(order)

    def paid(self, order_id: str, txn_id: str) -> None:
        for i, known in enumerate(self._orders):
            if known.order_id == order_id:
                self._orders[i] = replace(known, txn_id=txn_id)
                return

    def sample(self, rng: random.Random) -> KnownOrder | None:
        return rng.choice(self._orders) if self._orders else None

    def __len__(self) -> int:
        return len(self._orders)


@dataclass
class LoadProcess:
    """The state one Locust process shares between its simulated users."""

    config: LoadConfig
    worker_index: int = 0
    node: str = "local"
    recorder: HistoryRecorder = field(default_factory=lambda: HistoryRecorder("local"))
    known_orders: KnownOrders = field(default_factory=KnownOrders)
    users_started: int = 0

    def next_user_index(self) -> int:
        self.users_started += 1
        return self.users_started - 1

    def user_rng(self, user_index: int) -> random.Random:
        return user_rng(self.config.seed, self.worker_index, user_index)


PROCESS = LoadProcess(config=LoadConfig())


class ClientMetrics:
    """chaosbed_client_requests_total{op,outcome} and chaosbed_client_latency_seconds{op}."""

    def __init__(self, port: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chaosbed_client_requests",
            "Logical client operations by outcome (ok, fail, info)",
            ["op", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "chaosbed_client_latency_seconds",
            "Client-side latency of logical operations, retries included",
            ["op"],
            registry=self.registry,
        )
        # loopback by default; a container sets CHAOSBED_LOAD_METRICS_HOST=0.0.0.0
        host = os.environ.get("CHAOSBED_LOAD_METRICS_HOST", "127.0.0.1")
        start_http_server(port, addr=host, registry=self.registry)

    def observe(self, record: Record, latency_s: float | None) -> None:
        self.requests.labels(op=record["f"], outcome=record["type"]).inc()
        if latency_s is not None:
            self.latency.labels(op=record["f"]).observe(latency_s)


class Collector:
    """Wires the history and progress into one Locust environment (any role)."""

    def __init__(self, environment: Environment, config: LoadConfig) -> None:
        if environment.runner is None:
            raise RuntimeError("the history collector needs a Locust runner")
        self.environment = environment
        self.runner: Runner = environment.runner
        self.is_master = isinstance(self.runner, MasterRunner)
        self.is_worker = isinstance(self.runner, WorkerRunner)
        self.merger: HistoryMerger | None = None
        self.history_writer: NdjsonWriter | None = None
        self.progress_path = _path_env("CHAOSBED_PROGRESS")
        self.metrics: ClientMetrics | None = None
        self.seq = 0
        self.final_sent = False
        self.started_at: float | None = None
        self.flusher: gevent.Greenlet | None = None
        self.progress: gevent.Greenlet | None = None
        if self.is_worker:
            self.runner.register_message(STOP_MESSAGE, self._on_stop_request)
        else:
            self._set_up_merging(config)
        events = environment.events
        events.test_start.add_listener(self.on_test_start)
        events.test_stop.add_listener(self.on_test_stop)
        events.quitting.add_listener(self.on_quitting)

    # -- master / local ------------------------------------------------------------------

    def _set_up_merging(self, config: LoadConfig) -> None:
        history_path = _path_env("CHAOSBED_HISTORY")
        if history_path is not None:
            self.history_writer = NdjsonWriter(history_path)
        metrics_port = load_metrics_port(os.environ)
        if metrics_port is not None:
            try:
                self.metrics = ClientMetrics(metrics_port)
            except OSError as exc:  # a second hand-run Locust: run without the exporter
                log.warning("client metrics not served on port %d: %s", metrics_port, exc)
        writer, metrics = self.history_writer, self.metrics
        self.merger = HistoryMerger(
            write=writer.write if writer else lambda record: None,
            on_complete=metrics.observe if metrics else lambda record, latency: None,
        )
        options = self.environment.parsed_options
        if options is not None:
            setattr(options, CONFIG_OPTION, config.to_json())
        if self.is_master:
            self.runner.register_message(HISTORY_MESSAGE, self._on_batch)

    def _on_batch(self, environment: Environment, msg: Any, **_: Any) -> None:
        assert self.merger is not None
        self.merger.add_batch(msg.data)

    def _wait_for_workers(self) -> None:
        assert self.merger is not None
        # A headless shape ends with quit(), which does not stop the workers' users first.
        assert isinstance(self.runner, MasterRunner)
        for client in list(self.runner.clients.all):
            self.runner.send_message(STOP_MESSAGE, None, client_id=client.id)
        options = self.environment.parsed_options
        expected = int(getattr(options, "expect_workers", 0) or 0) if options else 0
        deadline = time.monotonic() + FINAL_WAIT_S
        while time.monotonic() < deadline:
            if self.merger.complete() and len(self.merger.nodes) >= expected:
                return
            gevent.sleep(0.1)
        log.error("history incomplete: worker batches missing: %s", self.merger.report())

    def _write_progress(self, *, done: bool = False) -> None:
        if self.progress_path is None or self.merger is None:
            return
        total = self.runner.stats.total
        progress: dict[str, Any] = {
            "t": time.time(),
            "elapsed": 0.0 if self.started_at is None else time.monotonic() - self.started_at,
            "users": self.runner.user_count,
            "rps": round(total.current_rps, 2),
            "fail_per_s": round(total.current_fail_per_sec, 2),
            "ops": self.merger.ops(),
            "done": done,
            "cpu_warning": bool(
                self.runner.cpu_warning_emitted
                or getattr(self.runner, "worker_cpu_warning_emitted", False)
            ),
        }
        if done:
            progress["history"] = {
                "complete": self.merger.complete(),
                "nodes": self.merger.report(),
            }
        write_json(self.progress_path, progress)

    def _progress_loop(self) -> None:
        while True:
            try:
                self._write_progress()
            except OSError as exc:
                log.warning("could not write progress: %s", exc)
            gevent.sleep(1.0)

    # -- every role ----------------------------------------------------------------------

    def on_test_start(self, environment: Environment, **_: Any) -> None:
        self.started_at = time.monotonic()
        if not self.is_master:
            self._start_recording()
        if self.merger is not None and self.progress is None and self.progress_path is not None:
            self.progress = gevent.spawn(self._progress_loop)

    def _on_stop_request(self, environment: Environment, msg: Any, **_: Any) -> None:
        if not self.final_sent:
            self.runner.stop()

    def _start_recording(self) -> None:
        self.final_sent = False
        if self.is_worker:
            options = self.environment.parsed_options
            raw = getattr(options, CONFIG_OPTION, "") if options is not None else ""
            PROCESS.config = LoadConfig.from_json(raw) if raw else from_env()
            PROCESS.worker_index = int(getattr(self.runner, "worker_index", 0) or 0)
            PROCESS.node = f"w{PROCESS.worker_index}"
        if PROCESS.recorder.node != PROCESS.node:
            PROCESS.recorder = HistoryRecorder(PROCESS.node)
        self._deliver(start=True)
        if self.flusher is None:
            self.flusher = gevent.spawn(self._flush_loop)

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(FLUSH_EVERY_S)
            records = PROCESS.recorder.drain()
            if records:
                self._deliver(records)

    def _deliver(
        self, records: list[Record] | None = None, *, start: bool = False, final: bool = False
    ) -> None:
        self.seq += 1
        batch = {
            "node": PROCESS.recorder.node,
            "seq": self.seq,
            "records": records or [],
            "start": start,
            "final": final,
            "produced": PROCESS.recorder.produced,
        }
        if self.is_worker:
            self.runner.send_message(HISTORY_MESSAGE, batch)
        elif self.merger is not None:
            self.merger.add_batch(batch)

    def on_test_stop(self, environment: Environment, **_: Any) -> None:
        if not self.is_master:
            if self.flusher is not None:
                self.flusher.kill(block=True)
                self.flusher = None
            PROCESS.recorder.interrupt_open()
            self._deliver(PROCESS.recorder.drain(), final=True)
            self.final_sent = True
        if self.merger is not None:
            if self.is_master:
                self._wait_for_workers()
            if self.progress is not None:
                self.progress.kill(block=True)
                self.progress = None
            self._write_progress(done=True)

    def on_quitting(self, environment: Environment, **_: Any) -> None:
        if self.merger is None:
            return
        # SIGINT/SIGTERM mid-load: Locust fires `quitting` before it stops the runner, so stop
        # it here while the history is still open: open operations are completed as `info`
        if self.runner.state not in (STATE_INIT, STATE_STOPPED):
            self.runner.stop()
        if self.progress is not None:
            self.progress.kill(block=False)
            self.progress = None
        if self.history_writer is not None:
            self.history_writer.close()
            self.history_writer = None
            if environment.process_exit_code is None:
                # Request failures are the experiment's data, not the harness failing.
                environment.process_exit_code = 0 if self.merger.complete() else 3


def _path_env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None
