"""`serve`'s protocol: a response leaves in one socket write, and is the response uvicorn wrote."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from services.common.server import OneWriteProtocol

pytestmark = pytest.mark.anyio

GET = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingTransport(asyncio.Transport):
    """What a protocol wrote, write by write; closed or not."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.closed_by_response = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _answer(app: Any, protocol_class: type[HttpToolsProtocol], request: bytes) -> Any:
    config = uvicorn.Config(app, http=protocol_class, log_config=None, lifespan="off")
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(20):
        await asyncio.sleep(0)
    transport.closed_by_response = transport.closed
    protocol.connection_lost(None)
    return transport


async def plain(scope: Scope, receive: Receive, send: Send) -> None:
    body = b'{"status":"ok"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def test_head_and_body_leave_in_one_write_and_match_uvicorn() -> None:
    ours = await _answer(plain, OneWriteProtocol, GET)
    stock = await _answer(plain, HttpToolsProtocol, GET)
    assert len(stock.writes) == 2  # what the protocol is for: uvicorn writes head, then body
    assert len(ours.writes) == 1
    assert ours.writes[0] == b"".join(stock.writes)
    assert ours.writes[0].endswith(b'\r\n\r\n{"status":"ok"}')
    assert not ours.closed_by_response


async def test_pipelined_requests_each_answered_in_one_write_in_order() -> None:
    ours = await _answer(plain, OneWriteProtocol, GET + GET.replace(b"/x", b"/y"))
    assert len(ours.writes) == 2
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") for w in ours.writes)


async def streamed(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for part in (b"a", b"b"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def test_streamed_body_head_goes_with_first_chunk_then_chunks_as_sent() -> None:
    ours = await _answer(streamed, OneWriteProtocol, GET)
    stock = await _answer(streamed, HttpToolsProtocol, GET)
    assert b"".join(ours.writes) == b"".join(stock.writes)
    assert len(ours.writes) == len(stock.writes) - 1 == 3
    assert ours.writes[0].endswith(b"\r\n\r\n1\r\na\r\n")


async def head_then_fail(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("broken after the head")


async def test_head_held_back_is_written_before_the_close_when_the_app_fails() -> None:
    ours = await _answer(head_then_fail, OneWriteProtocol, GET)
    stock = await _answer(head_then_fail, HttpToolsProtocol, GET)
    assert ours.writes == stock.writes
    assert ours.writes and ours.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert ours.closed_by_response and stock.closed_by_response


async def test_connection_close_request_is_answered_then_closed() -> None:
    request = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ours = await _answer(plain, OneWriteProtocol, request)
    assert len(ours.writes) == 1
    assert b"connection: close\r\n" in ours.writes[0]
    assert ours.writes[0].endswith(b'{"status":"ok"}')
    assert ours.closed_by_response


@pytest.fixture
def gc_restored() -> Any:
    import gc

    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_gc_freezes_what_exists_and_raises_the_young_threshold(gc_restored: Any) -> None:
    import gc

    from services.common.server import GC_YOUNG_THRESHOLD, tune_gc

    _, older, oldest = gc.get_threshold()
    already_frozen = gc.get_freeze_count()
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, older, oldest)
    assert GC_YOUNG_THRESHOLD > 700  # above CPython's default, or there is nothing to tune
    assert gc.get_freeze_count() > already_frozen + 10_000  # the loaded libraries


def test_after_tune_gc_a_reference_cycle_is_still_collected(gc_restored: Any) -> None:
    import gc
    import weakref

    from services.common.server import tune_gc

    tune_gc()

    class Node:
        other: Any = None

    first, second = Node(), Node()
    first.other, second.other = second, first
    alive = weakref.ref(first)
    del first, second
    assert alive() is not None  # refcounting alone cannot free a cycle
    gc.collect(0)
    assert alive() is None


def test_serve_tunes_gc_before_uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common import server
    from services.common.settings import Settings

    calls: list[str] = []
    monkeypatch.setattr(server, "tune_gc", lambda: calls.append("tune_gc"))
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kwargs: calls.append("run"))
    server.serve(None, Settings(service="order"))  # type: ignore[arg-type]
    assert calls == ["tune_gc", "run"]
