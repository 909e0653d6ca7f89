"""The process kit: free loopback ports, supervised children, waiting until a child answers.

The child wrapper itself is `faults.process.Child` (faults sits below chaosbed and kills or
pauses services through it); this module adds what only the orchestrator needs on top.

    port = free_port()
    child = process.Child([...], env=env, log_path=run_dir / "x.log", name="x")
    wait_ready(child, http_probe(client, f"http://127.0.0.1:{port}/healthz"), timeout_s=30)
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from faults.process import Child, ProcessError

__all__ = [
    "PROJECT_ROOT",
    "NotReady",
    "Probe",
    "free_port",
    "http_probe",
    "wait_ready",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # children run from here (python -m ...)

POLL_S = 0.05

# Returns None once the child is ready, otherwise what it saw instead (kept for the error).
Probe = Callable[[], str | None]

_handed_out: set[int] = set()


class NotReady(ProcessError):
    """A child exited during startup, or did not become ready in time."""

    def __init__(self, message: str, *, exited: bool) -> None:
        super().__init__(message)
        self.exited = exited


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port that is free now and outside the kernel's ephemeral range.

    Outgoing connections take their local port from the ephemeral range, so a port
    picked there can be taken before the service binds it; below the range it cannot.
    A port is handed out at most once per process, so two callers never get the same one.
    """
    low = 20000
    high = _ephemeral_range()[0] - 1
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randint(low, high) if high > low else 0
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen = int(sock.getsockname()[1])
        _handed_out.add(chosen)
        return chosen
    raise ProcessError(f"no free loopback port found between {low} and {high}")


def http_probe(client: httpx.Client, url: str) -> Probe:
    """Ready when `url` answers 200."""

    def probe() -> str | None:
        try:
            response = client.get(url)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if response.status_code == 200 else f"{url} answered {response.status_code}"

    return probe


def wait_ready(child: Child, probe: Probe, timeout_s: float, *, what: str | None = None) -> float:
    """Poll `probe` until it reports ready; the seconds from the child's start to ready.

    Raises NotReady (without the log: each caller shows it its own way) as soon as the child
    exits, or when `timeout_s` has passed.
    """
    what = what or child.name
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        if not child.running():
            raise NotReady(f"{what} exited at start (code {child.popen.returncode})", exited=True)
        seen = probe()
        if seen is None:
            return round(time.monotonic() - child.started_at, 3)
        last = seen
        if time.monotonic() > deadline:
            raise NotReady(f"{what} not ready after {timeout_s:.0f}s ({last})", exited=False)
        time.sleep(POLL_S)
