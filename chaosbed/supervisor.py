"""The supervisor: notices when a process the harness relies on dies outside the fault timeline.

`chaosbed run` asks `Supervisor.check(faulted)` on every tick of its main loop; a process
or health URL that answers a problem while its fault target is not in `faulted` (the targets
the scheduler has killed or paused at that moment) ends the run as a harness error.

    supervisor = Supervisor(stack.watched())
    supervisor.add(Watched("Locust master", child_problem(locust)))
    problem = supervisor.check(faulted={"order"})  # None while everything is as it should be
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from faults import process

# Returns None while the thing is alive, otherwise what happened to it, in a few words.
Check = Callable[[], str | None]

HEALTH_EVERY_S = 1.0  # an attached stack's health URLs are asked at most this often
HEALTH_GRACE_S = 2.0  # a URL must keep failing this long before it counts as dead
HEALTH_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Watched:
    """One thing that must stay alive; `target` is its fault target (a service name), if any."""

    name: str
    check: Check
    target: str | None = None


class Supervisor:
    def __init__(self, watched: Iterable[Watched] = ()) -> None:
        self._watched = list(watched)

    def add(self, *watched: Watched) -> None:
        self._watched.extend(watched)

    @property
    def names(self) -> list[str]:
        return [w.name for w in self._watched]

    def check(self, faulted: frozenset[str] | set[str] = frozenset()) -> str | None:
        """The first death outside the fault timeline, as one line; None when there is none."""
        for watched in self._watched:
            if watched.target is not None and watched.target in faulted:
                continue
            problem = watched.check()
            if problem is not None:
                return f"{watched.name} {problem} outside the fault timeline"
        return None


def child_problem(child: process.Child) -> Check:
    """A child we started: dead once it has exited (its exit code is the evidence)."""

    def check() -> str | None:
        code = child.popen.poll()
        if code is None:
            return None
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return f"(pid {child.pid}) {how}"

    return check


def pid_problem(pid: int) -> Check:
    """A process we did not start (a Locust worker): dead once the pid is gone or a zombie."""

    def check() -> str | None:
        return None if process.alive(pid) else f"(pid {pid}) died"

    return check


class HealthWatch:
    """An HTTP health URL of a stack we do not own: dead when it fails for HEALTH_GRACE_S."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.monotonic,
                 client: httpx.Client | None = None) -> None:
        self.url = url
        self._clock = clock
        self._client = client or httpx.Client(timeout=HEALTH_TIMEOUT_S)
        self._asked_at: float | None = None
        self._failing_since: float | None = None
        self._last = ""

    def probe(self) -> str | None:
        """Ask once: None when the URL answers 200, otherwise what it did."""
        try:
            response = self._client.get(self.url)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        return None if response.status_code == 200 else f"answered {response.status_code}"

    def __call__(self) -> str | None:
        now = self._clock()
        if self._asked_at is not None and now - self._asked_at < HEALTH_EVERY_S:
            return self._verdict(now)
        self._asked_at = now
        problem = self.probe()
        if problem is None:
            self._failing_since = None
        else:
            self._last = problem
            if self._failing_since is None:
                self._failing_since = now
        return self._verdict(now)

    def _verdict(self, now: float) -> str | None:
        if self._failing_since is None or now - self._failing_since < HEALTH_GRACE_S:
            return None
        return f"({self.url}) stopped answering: {self._last}"

    def close(self) -> None:
        self._client.close()


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (e.g. the workers Locust's `--processes` forks)."""
    children: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return children
    for task in tasks:
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(children))
