"""Build and serve one service: the FastAPI shell every service shares.

`serve` runs uvicorn with `OneWriteProtocol`: uvicorn's httptools protocol, except that a
response's head and its first body message leave in one socket write instead of two (on
loopback each write is a TCP segment whose delivery the sender's CPU pays for: the second
write was about a tenth of each service's CPU per request).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from services.common import telemetry
from services.common.api import ServiceRoute, install_errors
from services.common.lean import lean_router, without_exit_stack
from services.common.limits import RequestLimits
from services.common.settings import Settings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def base_app(
    settings: Settings, *, title: str, description: str, lifespan: Lifespan | None = None
) -> FastAPI:
    """A FastAPI app with JSON errors, header and body limits, /healthz, /metrics, telemetry."""
    # no trailing-slash redirects: an unknown path is a JSON 404, not an empty 307
    app = FastAPI(
        title=title,
        description=description,
        version="0.1.0",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.router.route_class = ServiceRoute  # before any route is added
    lean_router(app)
    without_exit_stack(app, ServiceRoute)
    install_errors(app)
    telemetry.setup(app, settings.service)
    # added last, so outermost: nothing else copies or quotes an oversized head first
    app.add_middleware(
        RequestLimits,
        header_limit=settings.max_header_bytes,
        body_limit=settings.max_body_bytes,
    )

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": settings.service}

    return app


# Young objects the cyclic GC lets accumulate before a collection (CPython's default: 700).
# A request in flight holds a few hundred tracked objects (coroutines, dicts, spans) that
# refcounting frees when it ends; with 16-32 requests in flight the default threshold ran a
# young collection every ~14 requests, each walking every in-flight request's objects.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """The services' cyclic-GC settings, once the app is built (imports, routes, models):
    what exists then is moved out of the collector's sight (`gc.freeze`), so a full
    collection no longer walks the ~10^5 objects of the loaded libraries (tens of ms of a
    stalled event loop each), and young collections run 14x less often.  A request makes no
    reference cycle (gc.DEBUG_SAVEALL found none after 1 500 traced orders), so what the
    collector would find is rare: it is still collected, a little later."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def serve(app: FastAPI, settings: Settings) -> None:
    """Run on the configured loopback port until SIGTERM/SIGINT."""
    tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=OneWriteProtocol,
        # nothing in front of a service forwards a client's address (Toxiproxy is a TCP
        # proxy): an X-Forwarded-For header from a caller on 127.0.0.1 must not be believed
        proxy_headers=False,
        timeout_graceful_shutdown=3,
    )


class _GatheredWrites:
    """Stands in for a connection's transport while one response is written: keeps the
    writes and passes them on as one (`flush`, or before closing); the rest is the
    transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def flush(self) -> None:
        if self.parts:
            data = b"".join(self.parts)
            self.parts.clear()
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle with the response head held back until the next
    message (the body, or its first chunk), so both go out in one write.

    The head is still produced and checked by uvicorn's own code, into `_GatheredWrites`;
    if no body message follows (the app fails, or returns), the held head is written
    before the connection is closed, as uvicorn would have written it.
    """

    _gathered: _GatheredWrites | None = None

    async def send(self, message: ASGISendEvent) -> None:
        gathered = self._gathered
        if gathered is not None:  # the message after the head: write both at once
            self._gathered = None
            try:
                await super().send(message)
            finally:
                self.transport = gathered.transport
                gathered.flush()
            return
        if message["type"] == "http.response.start" and not self.response_started:
            gathered = _GatheredWrites(self.transport)
            self.transport = gathered  # type: ignore[assignment]
            try:
                await super().send(message)
            except BaseException:
                self.transport = gathered.transport
                gathered.flush()
                raise
            if self.transport is gathered and not self.disconnected:
                self._gathered = gathered
            else:  # nothing was written, or the connection went away meanwhile
                self.transport = gathered.transport
                gathered.flush()
            return
        await super().send(message)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose cycles are `OneWriteCycle`s."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        cycle.__class__ = OneWriteCycle  # same slots and state: only `send` differs
        super()._start_asgi_task(cycle, app)


async def no_lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
