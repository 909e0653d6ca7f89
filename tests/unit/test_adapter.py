"""The adapter protocol: replies mapped to ok / fail / info, the bundled adapter's requests,
adapters loaded by module or file, and the plain blocking client against real sockets."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Collection, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loadtests.adapter import (
    AdapterError,
    OrderAdapter,
    OrderView,
    PlainHttp,
    Reply,
    load_adapter,
    result_of,
)
from loadtests.adapters.bundled import BundledAdapter, order_view

ORDER = {"order_id": "o-1", "status": "AWAITING_PAYMENT", "payment_id": "p-1", "amount": 500}


def test_a_success_is_ok_with_the_parsed_order() -> None:
    result = result_of(Reply(201, ORDER), order_view, success=(200, 201))
    assert result.type == "ok" and result.http_status == 201
    assert result.order == OrderView("o-1", "AWAITING_PAYMENT", "p-1", 500, ORDER)


def test_a_success_the_client_cannot_read_is_info_never_ok_or_fail() -> None:
    result = result_of(Reply(200, {"status": "PAID"}), order_view)
    assert result.type == "info" and "order_id" in result.error


def test_a_4xx_is_a_definite_fail_not_retried() -> None:
    result = result_of(Reply(422, {"error": "idempotency_key_reused"}), order_view)
    assert (result.type, result.retry, result.http_status) == ("fail", False, 422)
    assert result.error == "422 idempotency_key_reused"


def test_a_refused_connection_is_a_fail_worth_retrying() -> None:
    reply = Reply(0, transport_error="ConnectionRefusedError: x", refused=True)
    result = result_of(reply, order_view)
    assert (result.type, result.retry, result.http_status) == ("fail", True, None)


@pytest.mark.parametrize(
    "reply",
    [Reply(503, {"error": "dependency_unavailable"}), Reply(0, transport_error="TimeoutError")],
)
def test_a_5xx_or_a_lost_answer_is_info(reply: Reply) -> None:
    assert result_of(reply, order_view).type == "info"


def test_a_status_outside_success_is_not_ok() -> None:
    assert result_of(Reply(202, ORDER), order_view, success=(200, 201)).type == "fail"


class Recording:
    """An Http that answers from a script and remembers what it was asked."""

    def __init__(self, *replies: Reply) -> None:
        self.replies, self.seen = list(replies), list[dict[str, Any]]()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        name: str | None = None,
        expected: Collection[int] = (),
    ) -> Reply:
        self.seen.append(
            {"method": method, "path": path, "json": json, "headers": headers, "name": name}
        )
        return self.replies.pop(0)


def test_bundled_adapter_places_with_the_key_and_names_requests_by_path() -> None:
    http = Recording(Reply(201, ORDER), Reply(404, {"error": "not_found"}))
    adapter = BundledAdapter(http, {})
    placed = adapter.place_order(key="k-1", sku="sku-1", qty=2, amount=500, traceparent="00-a-b-01")
    missing = adapter.read_order("o-9")
    assert placed.type == "ok" and placed.order is not None and placed.order.payment_id == "p-1"
    assert missing.type == "fail" and missing.http_status == 404
    place, read = http.seen
    assert (place["method"], place["path"], place["name"]) == ("POST", "/orders", "/orders")
    assert place["headers"] == {"Idempotency-Key": "k-1", "traceparent": "00-a-b-01"}
    assert place["json"] == {"sku": "sku-1", "qty": 2, "amount": 500}
    assert (read["path"], read["name"]) == ("/orders/o-9", "/orders/[id]")


def test_load_adapter_by_module_path() -> None:
    assert load_adapter("loadtests.adapters.bundled:BundledAdapter") is BundledAdapter


def test_load_adapter_from_a_file_relative_to_the_target(tmp_path: Path) -> None:
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "mine.py").write_text(
        "from loadtests.adapter import OrderAdapter\nclass Mine(OrderAdapter):\n    pass\n"
    )
    adapter = load_adapter("client/mine.py:Mine", tmp_path)
    assert issubclass(adapter, OrderAdapter) and adapter.__name__ == "Mine"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("no_colon", "expected 'module.path:Class'"),
        ("loadtests.nowhere:X", "cannot import loadtests.nowhere"),
        ("loadtests.adapter:Reply", "no class Reply subclassing"),
        ("missing.py:X", "no file"),
        ("broken.py:X", "failed to import"),
    ],
)
def test_load_adapter_names_what_is_wrong(tmp_path: Path, spec: str, words: str) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(AdapterError, match="adapter") as caught:
        load_adapter(spec, tmp_path)
    assert words in str(caught.value) and spec in str(caught.value)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/hang":
            threading.Event().wait(2)
            return
        status = 200 if self.path == "/orders/o-1" else 404
        body = json.dumps(ORDER if status == 200 else {"error": "not_found"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_plain_http_reads_answers_and_classifies_transport_errors(server: str) -> None:
    adapter = BundledAdapter(PlainHttp(server, timeout_s=0.3), {})
    assert adapter.read_order("o-1").order == order_view(ORDER)
    assert adapter.read_order("o-2").type == "fail"
    hung = PlainHttp(server, timeout_s=0.3).request("GET", "/hang")
    assert not hung.answered and hung.ambiguous and "timed out" in hung.error
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    refused = BundledAdapter(PlainHttp(closed), {}).read_order("o-1")
    assert (refused.type, refused.retry) == ("fail", True)
