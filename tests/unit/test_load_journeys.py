"""The simulated users against a scripted TCP server: what each outcome becomes in the history.

Locust monkey-patches the standard library with gevent on import, so the users run in a child
process (the probe below) and report back as JSON; this test process never imports Locust.
The server is real sockets: resets are TCP RSTs, timeouts are a server that never answers,
refusals a closed port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = r'''
import dataclasses, json, socket, struct, sys
import gevent
from gevent.server import StreamServer
import loadtests.locustfile as lf
from loadtests.collector import PROCESS
from loadtests.config import LoadConfig
from loadtests.history import check_pairing
from locust.env import Environment

lf.RETRY_BACKOFF_S = 0.001
lf.POLL_FIRST_S = 0.001
script, seen = [], []

def handle(sock, _addr):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(l.split(": ", 1) for l in lines[1:])
    size = int(headers.get("Content-Length", headers.get("content-length", "0")))
    while len(body) < size:
        body += sock.recv(65536)
    seen.append({"line": lines[0], "headers": headers, "body": body.decode()})
    action = script.pop(0) if script else ("reset",)
    if action[0] == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    elif action[0] == "hang":
        gevent.sleep(5)
    else:
        payload = json.dumps(action[2]).encode()
        head = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        sock.sendall(head % (action[1], len(payload)) + payload)

server = StreamServer(("127.0.0.1", 0), handle)
server.start()
url = f"http://127.0.0.1:{server.server_port}"
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    closed_url = f"http://127.0.0.1:{s.getsockname()[1]}"
PROCESS.config = LoadConfig(channel_url=url, request_timeout_s=0.5, load=PROCESS.config.load)

def shopper(host=url):
    lf.Shopper.host = host
    env = Environment(user_classes=[lf.Shopper], host=host)
    return lf.Shopper(env)

ORDER = {"order_id": "o-1", "idempotency_key": "k", "payment_id": "p-1", "amount": 500,
         "status": "AWAITING_PAYMENT"}
VIEW = lf.OrderView("o-1", "AWAITING_PAYMENT", "p-1", 500, ORDER, key="k")
results = {}
def case(name, actions, fn):
    script[:] = [tuple(a) for a in actions]
    seen.clear()
    returned = fn()
    if dataclasses.is_dataclass(returned):
        returned = dataclasses.asdict(returned)
    records = PROCESS.recorder.drain()
    results[name] = {"returned": returned, "records": records, "requests": seen[:],
                     "pairing": check_pairing(records)}

case("place_reset", [], lambda: shopper().place_order())
case("place_hang", [["hang"]] * 4, lambda: shopper().place_order())
case("place_refused", [], lambda: shopper(closed_url).place_order())
case("place_503_then_ok", [["status", 503, {"error": "dependency_unavailable"}]] * 2
     + [["status", 201, ORDER]], lambda: shopper().place_order())
case("place_422", [["status", 422, {"error": "idempotency_key_reused"}]],
     lambda: shopper().place_order())
case("pay_declined", [["status", 402, {"error": "payment_declined"}]],
     lambda: shopper().pay(VIEW))
case("pay_reset_then_ok", [["reset"], ["status", 200, {"txn_id": "t-1", "status": "SUCCEEDED"}]],
     lambda: shopper().pay(VIEW))
case("poll_paid", [["status", 200, {**ORDER, "status": "PAID"}]],
     lambda: shopper().poll(VIEW))
PAID = {**ORDER, "status": "PAID"}
case("wait_until_paid", [["status", 200, ORDER]] * 2 + [["status", 200, PAID]],
     lambda: shopper().wait_for_confirmation(VIEW))
PROCESS.known_orders.add(lf.KnownOrder("o-1", "p-1", 500, key="k"))
def forger():
    lf.Forger.host = url
    return lf.Forger(Environment(user_classes=[lf.Forger], host=url))
case("forge_refused", [["status", 400, {"error": "bad_signature"}]],
     lambda: forger().forge_notification())
case("forge_accepted", [["status", 200, {"result": "success"}]],
     lambda: forger().forge_notification())
PROCESS.users_started = 0
bodies = []
for _ in range(2):
    PROCESS.users_started = 0
    case("seeded", [["status", 422, {"error": "x"}]], lambda: shopper().place_order())
    bodies.append(json.loads(results["seeded"]["requests"][0]["body"]))
results["seeded_bodies"] = bodies
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CHAOSBED_LOAD", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def outcome(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["f"], r["type"]) for r in result["records"]]


def test_reset_after_sending_is_info_after_retries_with_the_same_key(probe: dict) -> None:
    result = probe["place_reset"]
    assert outcome(result) == [("place_order", "invoke"), ("place_order", "info")]
    assert result["pairing"] == [] and result["returned"] is None
    keys = {r["headers"]["Idempotency-Key"] for r in result["requests"]}
    assert len(result["requests"]) == 4 and len(keys) == 1
    assert keys == {result["records"][0]["key"]}
    error = result["records"][1]["error"]
    assert error.startswith(("ConnectionResetError", "HTTPConnectionClosed"))


def test_timeout_is_info_never_fail(probe: dict) -> None:
    result = probe["place_hang"]
    assert outcome(result) == [("place_order", "invoke"), ("place_order", "info")]
    assert "timed out" in result["records"][1]["error"]


def test_connection_refused_is_fail(probe: dict) -> None:
    result = probe["place_refused"]
    assert outcome(result) == [("place_order", "invoke"), ("place_order", "fail")]
    assert "ConnectionRefusedError" in result["records"][1]["error"]


def test_503_is_retried_with_the_same_key_until_placed(probe: dict) -> None:
    result = probe["place_503_then_ok"]
    assert outcome(result) == [("place_order", "invoke"), ("place_order", "ok")]
    assert len(result["requests"]) == 3
    assert len({r["headers"]["Idempotency-Key"] for r in result["requests"]}) == 1
    ok = result["records"][1]
    assert ok["order_id"] == "o-1" and ok["value"]["status"] == "AWAITING_PAYMENT"
    # The trace id the history holds is the one sent in the traceparent header.
    assert {r["headers"]["traceparent"].split("-")[1] for r in result["requests"]} == {
        ok["trace_id"]
    }


def test_a_certain_refusal_is_fail_without_retry(probe: dict) -> None:
    result = probe["place_422"]
    assert outcome(result) == [("place_order", "invoke"), ("place_order", "fail")]
    assert len(result["requests"]) == 1
    assert "idempotency_key_reused" in result["records"][1]["error"]


def test_declined_payment_is_fail(probe: dict) -> None:
    result = probe["pay_declined"]
    assert outcome(result) == [("pay", "invoke"), ("pay", "fail")]
    assert result["returned"] is False
    assert result["requests"][0]["line"] == "POST /payments/p-1/pay HTTP/1.1"


def test_pay_retries_an_ambiguous_reset_and_records_the_charge(probe: dict) -> None:
    result = probe["pay_reset_then_ok"]
    assert outcome(result) == [("pay", "invoke"), ("pay", "ok")]
    assert result["records"][1]["value"] == {"payment_id": "p-1", "txn_id": "t-1"}
    assert result["returned"] is True and len(result["requests"]) == 2


def test_poll_records_the_status_it_saw(probe: dict) -> None:
    result = probe["poll_paid"]
    assert outcome(result) == [("poll", "invoke"), ("poll", "ok")]
    assert result["records"][1]["value"] == {"status": "PAID"}
    assert result["returned"] == "PAID"


def test_payment_processing_page_polls_until_paid(probe: dict) -> None:
    result = probe["wait_until_paid"]
    statuses = [r["value"]["status"] for r in result["records"] if r["type"] == "ok"]
    assert statuses == ["AWAITING_PAYMENT", "AWAITING_PAYMENT", "PAID"]
    assert result["pairing"] == []


def test_forged_notification_outcomes_are_what_the_server_answered(probe: dict) -> None:
    refused, accepted = probe["forge_refused"], probe["forge_accepted"]
    assert outcome(refused) == [("forge", "invoke"), ("forge", "fail")]
    assert outcome(accepted) == [("forge", "invoke"), ("forge", "ok")]
    value = accepted["records"][1]["value"]
    assert value["kind"] in {"unsigned", "wrong_key", "stale_timestamp", "altered_replay"}
    assert value["http_status"] == 200 and accepted["records"][1]["order_id"] == "o-1"
    assert accepted["requests"][0]["line"] == "POST /notifications/payment HTTP/1.1"


def test_the_same_seed_and_user_place_the_same_order(probe: dict) -> None:
    first, second = probe["seeded_bodies"]
    assert first == second
    assert set(first) == {"sku", "qty", "amount"}
