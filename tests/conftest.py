"""Shared fixtures: real stacks (Toxiproxy + the three services) in temporary run dirs.

- `start_stack(**kwargs)` (function scope): start a Stack with `Stack.start` keyword
  arguments (bugs, service_env, seed_stock, direct, observe); stopped after the test.
- `shared_stack` (session scope): one default stack for tests that only read or use
  their own order ids; never break it (no faults, no knobs left set).
- `toxiproxy_api`: a bare toxiproxy-server (no proxies) for adapter tests.
- `wait_until(predicate, timeout_s=..., what=...)`: poll until true or fail the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chaosbed import binaries
from chaosbed.proc import free_port, wait_ready
from chaosbed.stack import Stack, toxiproxy_probe
from faults import process
from faults.toxiproxy import Toxiproxy

StartStack = Callable[..., Stack]
WaitUntil = Callable[..., Any]


@pytest.fixture
def start_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartStack]:
    started: list[Stack] = []

    def start(name: str = "stack", **kwargs: Any) -> Stack:
        stack = Stack.start(tmp_path_factory.mktemp(name), **kwargs)
        started.append(stack)
        return stack

    yield start
    for stack in reversed(started):
        stack.stop()


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack.start(tmp_path_factory.mktemp("shared")) as stack:
        yield stack


@pytest.fixture
def toxiproxy_api(tmp_path: Path) -> Iterator[Toxiproxy]:
    port = free_port()
    child = process.Child(
        [str(binaries.toxiproxy_server()), "-host", "127.0.0.1", "-port", str(port)],
        env={},
        log_path=tmp_path / "toxiproxy.log",
    )
    client = Toxiproxy(f"http://127.0.0.1:{port}")
    try:
        wait_ready(child, toxiproxy_probe(client), timeout_s=10)
        yield client
    finally:
        client.close()
        child.stop()


def _wait_until(
    predicate: Callable[[], Any], *, timeout_s: float = 20.0, interval_s: float = 0.1,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def wait_until() -> WaitUntil:
    return _wait_until
