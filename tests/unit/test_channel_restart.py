"""A SIGKILLed channel process resumes its pending notifications after a restart."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaosbed.proc import NotReady, free_port, http_probe, wait_ready
from faults import process
from services.common.signing import SIGNATURE_HEADER, verify

pytestmark = pytest.mark.integration

SECRET = "restart-secret"
TOKEN = "restart-token"
ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def received() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/notifications/payment", got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def start_channel(db: Path, port: int, notify_url: str, log: Path) -> process.Child:
    env = {
        **os.environ,
        "CHAOSBED_PORT": str(port),
        "CHAOSBED_DB": str(db),
        "CHAOSBED_ADMIN_TOKEN": TOKEN,
        "CHAOSBED_NOTIFY_SECRET": SECRET,
        "CHAOSBED_NOTIFY_URL": notify_url,
    }
    child = process.Child(
        [sys.executable, "-m", "services.channel"], env=env, log_path=log, cwd=ROOT,
        name="channel",
    )
    with httpx.Client(timeout=0.5) as client:
        try:
            wait_ready(child, http_probe(client, f"http://127.0.0.1:{port}/healthz"), 20.0)
        except NotReady as exc:
            child.stop()
            pytest.fail(f"{exc}: {log.read_text()[-2000:]}")
    return child


def test_sigkill_then_restart_delivers_the_pending_notification(
    tmp_path: Path, received: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    notify_url, got = received
    db, log, port = tmp_path / "channel.sqlite", tmp_path / "channel.log", free_port()
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {TOKEN}"}

    first = start_channel(db, port, notify_url, log)
    try:
        knobs = {"notify_delay_ms": {"min": 3000, "max": 3000}}
        assert httpx.put(f"{base}/admin/behaviour", json=knobs, headers=admin).status_code == 200
        created = httpx.post(f"{base}/payments", json={"merchant_order_id": "o-1", "amount": 42})
        pid = created.json()["payment_id"]
        assert httpx.post(f"{base}/payments/{pid}/pay").status_code == 200
        first.kill()  # before the delayed first attempt
    finally:
        first.stop(10.0)
    assert got == []

    second = start_channel(db, port, notify_url, log)
    try:
        wait_for(lambda: len(got) >= 1, "the resumed notification")

        def acked() -> bool:
            export = httpx.get(f"{base}/audit/export", headers=admin).text
            return any(json.loads(line).get("acked") for line in export.splitlines())

        wait_for(acked, "the acked attempt in the export")
        state = httpx.get(f"{base}/payments/{pid}").json()
    finally:
        second.stop(10.0)
    headers, body = got[0]
    verify(SECRET, headers[SIGNATURE_HEADER.lower()], body, now=time.time(), tolerance_s=300)
    assert json.loads(body)["payment_id"] == pid
    assert state["status"] == "SUCCEEDED"
