"""A bare Starlette route on uvicorn, served exactly as the services are served: the unit
"one trivial request" that a journey's CPU cost is expressed in.

`python -m benchmarks.trivial_server PORT` serves `GET /ping` on 127.0.0.1:PORT;
`TrivialServer` runs it as a child process for a benchmark.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rundir import Closing

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


async def ping(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def app() -> Starlette:
    return Starlette(routes=[Route("/ping", ping)])


def serve(port: int) -> None:
    from services.common.server import serve as serve_service
    from services.common.settings import Settings

    # the services' own serve(): same uvicorn loop, parser and options, whatever they become
    serve_service(cast(Any, app()), Settings(service="trivial", port=port))


class TrivialServer(Closing):
    """The trivial server as a child process; `pid` for its CPU time, `url` to call it."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log_path.open("wb")
        self._popen = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.trivial_server", str(port)],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.pid = self._popen.pid
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._popen.poll() is not None:
                code = self._popen.returncode
                raise RuntimeError(f"trivial server exited at start (code {code})")
            try:
                if httpx.get(self.url + "/ping", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"trivial server not answering on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        self._log.close()

    def close(self) -> None:
        self.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
