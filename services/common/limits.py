"""Bounds on what a caller can make a service hold or repeat: request head size, echoed input.

uvicorn's httptools parser accepts header fields of any size, so `RequestLimits` (installed
outermost by `base_app`) refuses an oversized request head before any other layer copies,
parses or quotes it: 431 for the header fields together, 414 for the request target; and a
body over its limit, 413 (one layer for both: each layer is a coroutine per request).
`quote` is how every error message names a caller's value: a short prefix, never all of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# how many characters of a caller's value an error message may quote
QUOTE_CHARS = 40


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr` of a caller's value cut to `limit` characters, saying how long the original was."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def target_bytes(scope: Scope) -> int:
    """Size of the request target (path and query string) as sent."""
    path = scope.get("raw_path") or scope.get("path", "").encode()
    query = scope.get("query_string") or b""
    return len(path) + (len(query) + 1 if query else 0)


class RequestLimits:
    """Pure ASGI guard, installed outermost: 431 when the header fields exceed `header_limit`
    bytes, 414 for the target, 413 for a body over `body_limit` bytes, declared or chunked.

    A declared Content-Length over the limit is refused before the route runs; a chunked
    body is counted as it is read and raises `BodyTooLarge`, an HTTPException the framework
    passes through its body parsing (any other exception there becomes a 400).  A request
    whose framing already bounds its body (one Content-Length within the limit, or neither
    it nor Transfer-Encoding: no body) passes with its own receive and send, unwrapped.
    """

    def __init__(self, app: ASGIApp, header_limit: int, body_limit: int) -> None:
        self.app = app
        self.header_limit = header_limit
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = 0
        declared: bytes | None = None  # the last Content-Length, as the framework reads it
        lengths = 0
        transfer_encoded = False
        for name, value in scope.get("headers") or ():
            size += len(name) + len(value) + 4
            if name == b"content-length":
                declared = value
                lengths += 1
            elif name == b"transfer-encoding":
                transfer_encoded = True
        if size > self.header_limit:
            detail = f"request header fields over {self.header_limit} bytes"
            await send_json(send, 431, {"error": "headers_too_large", "detail": detail})
            return
        if target_bytes(scope) > self.header_limit:
            detail = f"request target over {self.header_limit} bytes"
            await send_json(send, 414, {"error": "uri_too_long", "detail": detail})
            return
        if declared is not None and declared.isdigit() and int(declared) > self.body_limit:
            await send_json(send, 413, self._too_large())
            return
        if not transfer_encoded and lengths <= 1 and (declared is None or declared.isdigit()):
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.body_limit:
                    raise BodyTooLarge(self.body_limit)
            return message

        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            # read outside a route (no exception handler): answer here unless one started
            if started:
                raise
            await send_json(send, 413, self._too_large())

    def _too_large(self) -> dict[str, Any]:
        return {"error": "body_too_large", "detail": BodyTooLarge(self.body_limit).detail}


class BodyTooLarge(StarletteHTTPException):
    """A body that grew past the limit while it was read (chunked): answered 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


async def send_json(send: Send, status: int, body: Mapping[str, Any]) -> None:
    """Answer with a small JSON body."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
