"""The services' HTTP client against real loopback sockets: which failures are ambiguous."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from services.common import telemetry
from services.common.http import Ambiguous, ServiceClient, Unreachable

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_answer_is_read_with_status_and_json() -> None:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        body = b'{"state":"CONFIRMED"}'
        writer.write(
            b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server, url = await _serve(answer)
    client = ServiceClient(url, timeout_s=2.0, peer="inventory")
    try:
        response = await client.request("POST", "/reservations?x=1", json={"order_id": "o-1"})
    finally:
        await client.close()
        server.close()
    assert (response.status_code, response.json()) == (409, {"state": "CONFIRMED"})
    request = seen[0]
    assert request.startswith(b"POST /reservations?x=1 HTTP/1.1\r\n")
    assert b'\r\n\r\n{"order_id":"o-1"}' in request
    assert b"content-type: application/json" in request.lower()


async def test_a_cookie_a_peer_sets_is_never_sent_back() -> None:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # two requests on the kept-alive connection
            seen.append(await _read_request(reader))
            writer.write(
                b"HTTP/1.1 200 OK\r\nset-cookie: session=abc; Path=/\r\n"
                b"content-length: 2\r\n\r\n{}"
            )
            await writer.drain()
        writer.close()

    server, url = await _serve(answer)
    # a host name, not an IP: a default aiohttp cookie jar keeps this cookie and resends it
    client = ServiceClient(url.replace("127.0.0.1", "localhost"), timeout_s=2.0, peer="channel")
    try:
        for _ in range(2):
            assert (await client.request("GET", "/payments/p-1")).status_code == 200
    finally:
        await client.close()
        server.close()
    assert len(seen) == 2
    assert all(b"cookie:" not in request.lower() for request in seen)


async def test_refused_connection_is_unreachable() -> None:
    client = ServiceClient(f"http://127.0.0.1:{_closed_port()}", timeout_s=2.0, peer="channel")
    try:
        with pytest.raises(Unreachable, match="channel: ClientConnectorError"):
            await client.request("GET", "/payments/p-1")
    finally:
        await client.close()


async def test_connection_closed_after_the_request_was_sent_is_ambiguous() -> None:
    received: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await _read_request(reader))  # the peer got it and may have acted on it
        writer.close()

    server, url = await _serve(hang_up)
    client = ServiceClient(url, timeout_s=2.0, peer="inventory")
    try:
        with pytest.raises(Ambiguous, match="inventory: ServerDisconnectedError"):
            await client.request("POST", "/reservations/o-1/confirm")
        # a GET is not silently sent again either: the fault reaches the caller once
        with pytest.raises(Ambiguous):
            await client.request("GET", "/reservations/o-1")
    finally:
        await client.close()
        server.close()
    assert [r.split(b" ")[0] for r in received] == [b"POST", b"GET"]


async def test_no_answer_in_time_is_ambiguous() -> None:
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await release.wait()
        writer.close()

    server, url = await _serve(stall)
    client = ServiceClient(url, timeout_s=0.2, peer="channel")
    try:
        with pytest.raises(Ambiguous, match="channel: SocketTimeoutError"):
            await client.request("POST", "/payments", json={"merchant_order_id": "o-1"})
    finally:
        release.set()
        await client.close()
        server.close()


async def test_untraced_call_passes_the_callers_traceparent_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(telemetry, "_tracing", False)
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server, url = await _serve(answer)
    client = ServiceClient(url, timeout_s=2.0, peer="order")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        with telemetry.continued_span("notify", traceparent, kind=telemetry.SpanKind.PRODUCER):
            await client.request("POST", "/notifications/payment", content=b"{}")
    finally:
        await client.close()
        server.close()
    assert f"traceparent: {traceparent}".encode() in seen[0].lower()
