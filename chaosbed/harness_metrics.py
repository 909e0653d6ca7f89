"""The harness's own metrics: `chaosbed_fault_active{fault,target}` on a loopback port.

Prometheus scrapes it during a run (job `harness`) so Grafana can annotate fault windows.
"""

from __future__ import annotations

from collections.abc import Iterable
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from rundir import Closing


class HarnessMetrics(Closing):
    """Owns a private registry (never the global one) and the HTTP server exposing it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._fault_active = Gauge(
            "chaosbed_fault_active",
            "1 while the fault is applied to the target, else 0",
            ["fault", "target"],
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None
        self.url: str | None = None

    def declare(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Expose 0 for every (fault, target) of the timeline from the start."""
        for fault, target in pairs:
            self._fault_active.labels(fault=fault, target=target).set(0)

    def set_active(self, fault: str, target: str, active: bool) -> None:
        self._fault_active.labels(fault=fault, target=target).set(1 if active else 0)

    def value(self, fault: str, target: str) -> float:
        sample = self.registry.get_sample_value(
            "chaosbed_fault_active", {"fault": fault, "target": target}
        )
        return 0.0 if sample is None else sample

    def serve(self, *, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving on `host:port` (default: an ephemeral loopback port; a container
        binds 0.0.0.0 on a fixed one); returns the metrics URL."""
        if self.url is None:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
            bound = self._server.server_address[1]
            # a wildcard bind is reachable on loopback, the address local scrapers use
            shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
            self.url = f"http://{shown}:{bound}/metrics"
        return self.url

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
            self._thread = None
            self.url = None
