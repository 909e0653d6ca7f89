"""The one HTTP client the services use to call each other (through Toxiproxy).

It separates the two ways a call can go wrong, because the payment flow treats
them differently:
- `Unreachable`: the request certainly did not reach the peer (connect refused,
  connect timeout).  Safe to treat as "did not happen".
- `Ambiguous`: the request may have been processed (read timeout, reset after
  send).  Must be resolved by an idempotent retry or a query, never assumed failed.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common.telemetry import observe_client

_tracer = trace.get_tracer("chaosbed.http")


class PeerError(Exception):
    """Base for failed calls to another service."""


class Unreachable(PeerError):
    """The request never reached the peer."""


class Ambiguous(PeerError):
    """The request may or may not have been processed by the peer."""


class ServiceClient:
    def __init__(self, base_url: str, *, timeout_s: float, peer: str) -> None:
        self.peer = peer
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request with a client span and W3C trace context; PeerError on transport failure."""
        with _tracer.start_as_current_span(
            f"{method} {self.peer}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.path": path, "peer.service": self.peer},
        ) as span:
            carrier: dict[str, str] = dict(headers or {})
            propagate.inject(carrier)
            started = time.perf_counter()
            try:
                response = await self._client.request(
                    method, path, json=json, content=content, headers=carrier
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                observe_client(self.peer, method, None, time.perf_counter() - started)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise Unreachable(f"{self.peer}: {type(exc).__name__}: {exc}") from exc
            except httpx.HTTPError as exc:
                observe_client(self.peer, method, None, time.perf_counter() - started)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise Ambiguous(f"{self.peer}: {type(exc).__name__}: {exc}") from exc
            observe_client(self.peer, method, response.status_code, time.perf_counter() - started)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR, str(response.status_code)))
            return response

    async def close(self) -> None:
        await self._client.aclose()
