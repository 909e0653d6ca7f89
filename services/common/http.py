"""The one HTTP client the services use to call each other (through Toxiproxy), on aiohttp.

It separates the two ways a call can go wrong, because the payment flow treats
them differently:
- `Unreachable`: the request certainly did not reach the peer (connect refused,
  DNS, connect timeout, no pooled connection in time).  Safe to treat as "did not happen".
- `Ambiguous`: the request may have been processed (read timeout, reset after
  send).  Must be resolved by an idempotent retry or a query, never assumed failed.

Timeouts are per phase like before (connect incl. waiting for a pooled connection, and
each socket read, `timeout_s` each); connections are kept alive and pooled per client.
"""

from __future__ import annotations

import json as jsonlib
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.common import telemetry
from services.common.telemetry import observe_client

MAX_CONNECTIONS = 64
# below uvicorn's 5 s keep-alive, so a pooled connection is not reused as the server drops it
KEEPALIVE_S = 4.0


class PeerError(Exception):
    """Base for failed calls to another service."""


class Unreachable(PeerError):
    """The request never reached the peer."""


class Ambiguous(PeerError):
    """The request may or may not have been processed by the peer."""


@dataclass(frozen=True)
class PeerResponse:
    """A peer's answer, read in full: status code and body."""

    status_code: int
    content: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not JSON."""
        return jsonlib.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


_JSON_HEADERS = {"Content-Type": "application/json"}


class ServiceClient:
    """Calls to one peer; `open()` in the app's lifespan, `close()` at shutdown."""

    def __init__(self, base_url: str, *, timeout_s: float, peer: str) -> None:
        self.peer = peer
        self._base_url = base_url.rstrip("/")
        self._target = telemetry.Peer.of(peer, self._base_url)
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> aiohttp.ClientSession:
        """Create the pooled session (needs the running loop); idempotent."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S, ttl_dns_cache=None
            )
            # no cookie jar: peers set no cookies, and the default jar's per-request filtering
            # and updating cost about a third of a call here
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            # like the httpx client before: no silent resend of an idempotent request after a
            # reset, so a fault reaches the flow as it happened (aiohttp has no public switch)
            session._retry_connection = False
            self._session = session
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> PeerResponse:
        """One request with W3C trace context (and a client span when tracing); PeerError on
        transport failure."""
        if json is not None:
            content = jsonlib.dumps(json, separators=(",", ":")).encode()
            headers = {**_JSON_HEADERS, **(headers or {})}
        span = telemetry.start_client_span(self._target, method, path)
        carrier = telemetry.outgoing_headers(headers, span)
        started = time.perf_counter()
        try:
            response = await self._send(method, path, content, carrier)
        except PeerError as exc:
            observe_client(self.peer, method, None, time.perf_counter() - started, span)
            telemetry.client_span_failed(span, exc.__cause__ or exc)
            raise
        else:
            elapsed = time.perf_counter() - started
            observe_client(self.peer, method, response.status_code, elapsed, span)
            telemetry.client_span_answered(span, response.status_code)
            return response
        finally:
            if span is not None:
                span.end()

    async def _send(
        self, method: str, path: str, content: bytes | None, headers: dict[str, str]
    ) -> PeerResponse:
        # apps driven without a lifespan (benchmarks, tests) open on first use
        session = self._session or await self.open()
        try:
            async with session.request(
                method, self._base_url + path, data=content, headers=headers
            ) as response:
                body = await response.read()
                return PeerResponse(response.status, body)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # refused / DNS / connect or pool timeout: nothing was sent
            raise Unreachable(f"{self.peer}: {type(exc).__name__}: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Ambiguous(f"{self.peer}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
