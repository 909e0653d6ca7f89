"""Build and serve one service: the FastAPI shell every service shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import uvicorn
from fastapi import FastAPI

from services.common import telemetry
from services.common.api import BodyLimit, ServiceRoute, install_errors
from services.common.limits import HeaderLimit
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
    install_errors(app)
    telemetry.setup(app, settings.service)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    # added last, so outermost: nothing else copies or quotes an oversized head first
    app.add_middleware(HeaderLimit, limit=settings.max_header_bytes)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": settings.service}

    return app


def serve(app: FastAPI, settings: Settings) -> None:
    """Run on the configured loopback port until SIGTERM/SIGINT."""
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=3,
    )


async def no_lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
