"""`RequestLimits` (services/common/limits.py): one layer for the head and body limits.

A request whose framing bounds its body passes with its own receive and send; any other
body is counted as it is read, so an oversized one is 413 whatever it declared.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from services.common.limits import BodyTooLarge, RequestLimits

pytestmark = pytest.mark.anyio

LIMIT = 100


class Recorder:
    """An app that reads the whole body, then answers 200; remembers what it was given."""

    def __init__(self) -> None:
        self.receive: Receive | None = None
        self.send: Send | None = None
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.receive, self.send = receive, send
        more = True
        while more:
            message = await receive()
            self.body += message.get("body", b"")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "raw_path": b"/x",
        "query_string": b"",
        "headers": headers,
    }


async def _call(
    headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[Recorder, list[Message], Receive, Send]:
    app = Recorder()
    sent: list[Message] = []
    pending = list(chunks)

    async def receive() -> Message:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    await RequestLimits(app, header_limit=1024, body_limit=LIMIT)(_scope(headers), receive, send)
    return app, sent, receive, send


def _status(sent: list[Message]) -> tuple[int, Any]:
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body) if sent[0]["status"] != 200 else body


async def test_a_declared_length_within_the_limit_passes_unwrapped() -> None:
    app, sent, receive, send = await _call([(b"content-length", b"5")], [b"hello"])
    assert (app.receive, app.send) == (receive, send)
    assert _status(sent) == (200, b"ok")


async def test_no_length_and_no_transfer_encoding_passes_unwrapped() -> None:
    app, sent, receive, send = await _call([], [])
    assert (app.receive, app.send) == (receive, send)


async def test_a_declared_length_over_the_limit_is_413_before_the_app() -> None:
    app, sent, _, _ = await _call([(b"content-length", b"101")], [b"x" * 101])
    assert app.receive is None
    assert _status(sent) == (413, {"error": "body_too_large", "detail": BodyTooLarge(LIMIT).detail})


@pytest.mark.parametrize(
    "headers",
    [
        [(b"transfer-encoding", b"chunked")],
        [(b"content-length", b"5"), (b"content-length", b"5")],
        [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
        [(b"content-length", b"five")],
    ],
)
async def test_any_other_body_is_counted_as_read(headers: list[tuple[bytes, bytes]]) -> None:
    app, sent, receive, _ = await _call(headers, [b"x" * 60, b"x" * 60])
    assert app.receive is not receive
    assert _status(sent)[0] == 413
    app, sent, _, _ = await _call(headers, [b"x" * 50, b"x" * 50])
    assert _status(sent) == (200, b"ok") and app.body == b"x" * 100


async def test_an_oversized_head_is_431_before_the_body_limit() -> None:
    headers = [(b"content-length", b"101"), (b"x-pad", b"a" * 1024)]
    _, sent, _, _ = await _call(headers, [b"x" * 101])
    assert _status(sent)[0] == 431
