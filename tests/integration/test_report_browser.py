"""report.html in a real headless Chromium: the verdict reads first, every chart shows the fault
windows, the page fetches nothing and logs no console error.  Driven over the DevTools protocol."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slos.gate import evaluate_run
from slos.synthetic import clean_run, write_run

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1200,1800"]
SLO = {
    "name": "browser",
    "min_samples": 20,
    "objectives": [
        {"name": "place order latency", "sli": "latency", "op": "place_order",
         "pass": "p(99) < 300ms"},
        {"name": "no money lost", "sli": "anomaly", "class": ["P1", "P6"],
         "pass": "count == 0", "key": True},
    ],
}


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} within {timeout}s")
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[str]:
    """A headless Chromium; yields the DevTools websocket URL of a blank page."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            pages = [t for t in json.load(answer) if t.get("type") == "page"]
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def test_report_in_chromium(tmp_path: Path, browser: str) -> None:
    import yaml

    slo = tmp_path / "browser.yaml"
    slo.write_text(yaml.safe_dump(SLO))
    records = clean_run(300, faults=[(15, 10, "latency", "order_channel"),
                                     (35, 8, "down", "channel_notify")])
    run = write_run(records, tmp_path / "run")
    gate = evaluate_run(run, slo, None)
    assert gate.exit_code == 0

    page = DevTools(browser)
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=(run / "report.html").as_uri())
        page.wait_for("Page.loadEventFired")
        verdict = page.evaluate("document.querySelector('#verdict').innerText")
        figures = page.evaluate(
            "[...document.querySelectorAll('figure')].map(f => f.dataset.faultWindows)")
        legend = page.evaluate("document.querySelectorAll('ul.fault-windows li').length")
        images_ok = page.evaluate(
            "[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        first_heading = page.evaluate(
            "document.querySelector('#verdict').getBoundingClientRect().top"
            " < document.querySelector('figure').getBoundingClientRect().top")
        shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (run / "report.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        page.close()

    assert "Release looks safe: no money or stock was lost" in verdict
    assert figures == ["2", "2", "2"]
    assert legend == 2
    assert images_ok is True
    assert first_heading is True
    assert (run / "report.png").stat().st_size > 10_000

    problems = [e for e in page.events if _is_problem(e)]
    assert problems == [], problems
    requests = [e["params"]["request"]["url"] for e in page.events
                if e.get("method") == "Network.requestWillBeSent"]
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


def _is_problem(event: dict[str, Any]) -> bool:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown" or method == "Network.loadingFailed":
        return True
    if method == "Runtime.consoleAPICalled":
        return params.get("type") in ("error", "assert")
    if method == "Log.entryAdded":
        return params.get("entry", {}).get("level") == "error"
    return False
