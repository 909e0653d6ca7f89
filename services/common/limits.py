"""Bounds on what a caller can make a service hold or repeat: request head size, echoed input.

uvicorn's httptools parser accepts header fields of any size, so `HeaderLimit` (installed
outermost by `base_app`) refuses an oversized request head before any other layer copies,
parses or quotes it: 431 for the header fields together, 414 for the request target.
`quote` is how every error message names a caller's value: a short prefix, never all of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

# how many characters of a caller's value an error message may quote
QUOTE_CHARS = 40


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr` of a caller's value cut to `limit` characters, saying how long the original was."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def header_bytes(scope: Scope) -> int:
    """Size of the request's header fields as sent: `name: value` plus CRLF per field."""
    return sum(len(name) + len(value) + 4 for name, value in scope.get("headers") or ())


def target_bytes(scope: Scope) -> int:
    """Size of the request target (path and query string) as sent."""
    path = scope.get("raw_path") or scope.get("path", "").encode()
    query = scope.get("query_string") or b""
    return len(path) + (len(query) + 1 if query else 0)


class HeaderLimit:
    """Pure ASGI guard: 431 when the header fields exceed `limit` bytes, 414 for the target."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if header_bytes(scope) > self.limit:
                detail = f"request header fields over {self.limit} bytes"
                await send_json(send, 431, {"error": "headers_too_large", "detail": detail})
                return
            if target_bytes(scope) > self.limit:
                detail = f"request target over {self.limit} bytes"
                await send_json(send, 414, {"error": "uri_too_long", "detail": detail})
                return
        await self.app(scope, receive, send)


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
