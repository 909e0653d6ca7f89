"""Real Prometheus and Jaeger v2 for a local stack, started before the services.

Order of use by the stack supervisor:

1. `observers = start_observers(run_dir, targets)` — `targets` maps a scrape job name
   (`order`, `channel`, `inventory`, `toxiproxy`, `harness`, `loadgen`, ...) to the full URL of
   its metrics endpoint (`http://127.0.0.1:P/metrics`).  Ports are allocated before the
   processes start, so the URLs are known; a target that is not up yet is simply scraped
   as down until it is.
2. Start the services with `observers.service_env(name)` merged into their environment
   (OTLP/HTTP export to Jaeger, parent-based always-on sampling, short batch delay).
3. `observers.set_targets({...})` at any time rewrites the file_sd targets file; Prometheus
   picks the change up within a second or two (no restart).
4. Write `observers.info()` into stack.json under `"observe"`; `observers.stop()` at the end.
"""

from __future__ import annotations

import atexit
import json
import os
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from chaosbed import binaries, proc
from faults import process

SCRAPE_INTERVAL = "1s"
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
_JOB_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class ObserveError(RuntimeError):
    """Prometheus or Jaeger could not be started, or a scrape target is malformed."""


def _file_sd_groups(targets: Mapping[str, str]) -> list[dict[str, Any]]:
    """file_sd target groups, one per job, validated: bad input changes nothing."""
    groups = []
    for job, url in sorted(targets.items()):
        if not job or not set(job) <= _JOB_NAME_CHARS:
            raise ObserveError(
                f"scrape job name {job!r} must be lowercase letters, digits, '_' or '-'"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ObserveError(
                f"scrape target {job}={url!r} must be an http(s) URL with host and port, "
                "e.g. http://127.0.0.1:8000/metrics"
            )
        groups.append(
            {
                "targets": [f"{parts.hostname}:{parts.port}"],
                "labels": {
                    "job": job,
                    "__scheme__": parts.scheme,
                    "__metrics_path__": parts.path or "/metrics",
                },
            }
        )
    return groups


def prometheus_config(targets_file: Path) -> dict[str, Any]:
    """Prometheus config: every target from one file_sd file, scraped every second."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "storage": {"exemplars": {"max_exemplars": 100_000}},
        "scrape_configs": [
            {
                "job_name": "chaosbed",
                "scrape_timeout": "900ms",
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
            }
        ],
    }


def jaeger_config(*, otlp_port: int, query_port: int, grpc_port: int) -> dict[str, Any]:
    """Jaeger v2 all-in-one, in-memory, everything on loopback, no self-telemetry ports."""
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {
                "resource": {"service.name": "jaeger"},
                "metrics": {"level": "none"},
                "logs": {"level": "warn"},
            },
        },
        "extensions": {
            "jaeger_query": {
                "storage": {"traces": "memstore"},
                "enable_tracing": False,
                "http": {"endpoint": f"127.0.0.1:{query_port}"},
                "grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
            },
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100_000}}}},
        },
        "receivers": {
            "otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{otlp_port}"}}}
        },
        "processors": {"batch": {"timeout": "200ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }


@dataclass(eq=False)
class Observers:
    """Running Prometheus + Jaeger for one run directory."""

    run_dir: Path
    prometheus_url: str
    jaeger_url: str
    otlp_endpoint: str
    targets_file: Path
    startup_s: dict[str, float]
    _processes: list[process.Child] = field(default_factory=list, repr=False)
    _targets: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """OTEL_* variables every service needs to export its traces to this Jaeger."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }

    def service_env(self, service: str) -> dict[str, str]:
        return {**self.env, "OTEL_SERVICE_NAME": service}

    @property
    def targets(self) -> dict[str, str]:
        return dict(self._targets)

    def set_targets(self, targets: Mapping[str, str]) -> None:
        """Replace the scrape targets (job name -> metrics URL); Prometheus reloads them."""
        groups = _file_sd_groups(targets)
        tmp = self.targets_file.with_name(f".{self.targets_file.name}.tmp")
        tmp.write_text(json.dumps(groups, indent=2) + "\n")
        os.replace(tmp, self.targets_file)
        self._targets = dict(targets)

    def add_targets(self, targets: Mapping[str, str]) -> None:
        self.set_targets({**self._targets, **targets})

    def info(self) -> dict[str, str]:
        """The `observe` section of stack.json (`chaosbed up` prints each URL; an attached
        controller adds its scrape targets to `targets_file`)."""
        return {
            "prometheus": self.prometheus_url,
            "jaeger": self.jaeger_url,
            "otlp": self.otlp_endpoint,
            "targets_file": str(self.targets_file),
        }

    def alive(self) -> dict[str, bool]:
        return {p.name: p.running() for p in self._processes}

    def stop(self) -> None:
        """Stop both processes (SIGTERM, then SIGKILL after 5 s); safe to call twice."""
        while self._processes:
            self._processes.pop().stop(STOP_GRACE_S)

    def __enter__(self) -> Observers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_file_targets(targets_file: Path, targets: Mapping[str, str]) -> None:
    """Add (or replace, by job) scrape targets in the file_sd file of observers another
    process owns, e.g. the gauge of `chaosbed faults --attach` for `chaosbed up --observe`."""
    groups = _file_sd_groups(targets)  # validated before the file is touched
    try:
        current = json.loads(targets_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ObserveError(f"cannot read the scrape targets {targets_file}: {exc}") from exc
    kept = [g for g in current if g.get("labels", {}).get("job") not in targets]
    tmp = targets_file.with_name(f".{targets_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(kept + groups, indent=2) + "\n")
    os.replace(tmp, targets_file)


_running: weakref.WeakSet[Observers] = weakref.WeakSet()


@atexit.register
def _stop_running() -> None:
    """Never leave Prometheus or Jaeger behind when the interpreter exits (even on a crash)."""
    for observers in list(_running):
        observers.stop()


def _spawn(name: str, argv: list[str], log_path: Path) -> process.Child:
    try:
        return process.Child(argv, env=os.environ, log_path=log_path, name=name)
    except process.ProcessError as exc:
        raise ObserveError(f"could not start {name} ({argv[0]}): {exc}") from exc


def _wait_ready(child: process.Child, url: str, client: httpx.Client, timeout_s: float) -> float:
    """Seconds from the child's spawn until `url` answers 200; the log tail if it does not."""
    try:
        return proc.wait_ready(child, proc.http_probe(client, url), timeout_s)
    except proc.NotReady as exc:
        raise ObserveError(
            f"{exc}; last lines of {child.log_path}:\n{process.log_tail(child.log_path)}"
        ) from exc


def start_observers(
    run_dir: Path,
    targets: Mapping[str, str] | None = None,
    *,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Observers:
    """Start real Prometheus and Jaeger v2 on free loopback ports and wait until both are ready.

    `targets`: scrape job name -> metrics URL (may be changed later with `set_targets`).
    Raises `ObserveError` (or `binaries.MissingBinary`) with a clear message on failure, after
    stopping whatever it had started.
    """
    run_dir = Path(run_dir)
    groups = _file_sd_groups(targets or {})  # validate before starting anything
    prometheus_bin = binaries.prometheus()
    jaeger_bin = binaries.jaeger()

    prom_dir = run_dir / "prometheus"
    prom_dir.mkdir(parents=True, exist_ok=True)
    targets_file = prom_dir / "targets.json"
    targets_file.write_text(json.dumps(groups, indent=2) + "\n")
    prom_config = prom_dir / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump(prometheus_config(targets_file), sort_keys=False))
    prom_port = proc.free_port()

    otlp_port, query_port, grpc_port = proc.free_port(), proc.free_port(), proc.free_port()
    jaeger_yaml = run_dir / "jaeger.yaml"
    jaeger_yaml.write_text(
        yaml.safe_dump(
            jaeger_config(otlp_port=otlp_port, query_port=query_port, grpc_port=grpc_port),
            sort_keys=False,
        )
    )

    processes: list[process.Child] = []
    try:
        prom_log = run_dir / "prometheus.log"
        prom = _spawn(
            "prometheus",
            [
                str(prometheus_bin),
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--enable-feature=exemplar-storage",
                "--storage.tsdb.retention.time=7d",
                "--log.level=warn",
            ],
            prom_log,
        )
        processes.append(prom)
        jaeger_log = run_dir / "jaeger.log"
        jaeger = _spawn("jaeger", [str(jaeger_bin), f"--config={jaeger_yaml}"], jaeger_log)
        processes.append(jaeger)

        prometheus_url = f"http://127.0.0.1:{prom_port}"
        jaeger_url = f"http://127.0.0.1:{query_port}"
        # waited in turn under one deadline: jaeger's figure may include prometheus's wait
        deadline = time.monotonic() + ready_timeout_s
        startup_s: dict[str, float] = {}
        with httpx.Client(timeout=1.0) as client:
            for child, url in ((prom, f"{prometheus_url}/-/ready"),
                               (jaeger, f"{jaeger_url}/api/services")):
                left = max(0.0, deadline - time.monotonic())
                startup_s[child.name] = _wait_ready(child, url, client, left)
    except BaseException:
        for child in reversed(processes):
            child.stop(STOP_GRACE_S)
        raise

    observers = Observers(
        run_dir=run_dir,
        prometheus_url=prometheus_url,
        jaeger_url=jaeger_url,
        otlp_endpoint=f"http://127.0.0.1:{otlp_port}",
        targets_file=targets_file,
        startup_s=startup_s,
        _processes=processes,
        _targets=dict(targets or {}),
    )
    _running.add(observers)
    return observers
