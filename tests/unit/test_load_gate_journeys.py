"""The journeys the gate's self-test adds: the impatient shopper and the late payer.

Their HTTP steps (place_order, pay, poll) are the shopper's, tested in test_load_journeys.py;
here the steps are scripted and the test checks what each journey does with their answers.
Locust monkey-patches the standard library on import, so the users run in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from faults.scenario import LoadSpec, load_scenario

REPO = Path(__file__).resolve().parents[2]

PROBE = r'''
import json
from dataclasses import replace
import loadtests.locustfile as lf
from loadtests.client import Reply
from loadtests.collector import PROCESS
from locust.env import Environment

lf.POLL_FIRST_S = 0.001
lf.POLL_MAX_S = 0.001
ORDER = lf.OrderView("o-1", "AWAITING_PAYMENT", "p-1", 500, key="k-1")
results = {}

def user(cls, placed, polled, paid=True):
    cls.host = "http://127.0.0.1:9"
    u = cls(Environment(user_classes=[cls], host=cls.host))
    calls = []
    placed, polled = list(placed), list(polled)
    def place_order(resubmit=None):
        calls.append(["place", resubmit])
        return placed.pop(0)
    def pay(order, f="pay"):
        calls.append([f, order.payment_id])
        return paid
    def poll(order):
        calls.append(["poll", order.order_id])
        return polled.pop(0) if polled else "AWAITING_PAYMENT"
    u.place_order, u.pay, u.poll = place_order, pay, poll
    return u, calls

# the correct service shows the same payment; the buggy one a new one: both are paid
for name, shown in [("same", ORDER), ("new", replace(ORDER, payment_id="p-2"))]:
    u, calls = user(lf.ImpatientShopper, [ORDER, shown], ["PAID"])
    u.buy_twice()
    results["impatient_" + name] = calls
u, calls = user(lf.ImpatientShopper, [ORDER, replace(ORDER, status="PAID")], ["PAID"])
u.buy_twice()
results["impatient_already_paid"] = calls
u, calls = user(lf.ImpatientShopper, [ORDER], [], paid=False)
u.buy_twice()
results["impatient_declined"] = calls

u, calls = user(lf.LatePayer, [ORDER], ["AWAITING_PAYMENT", "CLOSED"])
u.pay_too_late()
results["late_closed"] = calls
u, calls = user(lf.LatePayer, [ORDER], ["PAID"])
u.pay_too_late()
results["late_paid_anyway"] = calls
u, calls = user(lf.LatePayer, [ORDER], [])
u.config = replace(u.config, load={**u.config.load, "late_pay_wait": 0.05})
u.pay_too_late()
results["late_gave_up"] = calls[-1]

# the late pay is its own operation in the history
lf.call = lambda *a, **k: Reply(status=200, body={"txn_id": "t-1", "status": "SUCCEEDED"})
lf.LatePayer.host = "http://127.0.0.1:9"
payer = lf.LatePayer(Environment(user_classes=[lf.LatePayer], host=lf.LatePayer.host))
PROCESS.recorder.drain()
payer.pay(ORDER, f="late_pay")
results["late_pay_history"] = [[r["f"], r["type"]] for r in PROCESS.recorder.drain()]
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env["CHAOSBED_LOAD"] = json.dumps(
        {"mix": {"shopper": 1, "impatient": 1, "late_payer": 1}, "late_pay_wait": 5}
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_impatient_shopper_resubmits_the_same_request_and_pays_what_it_is_shown(
    probe: dict[str, Any],
) -> None:
    same, new = probe["impatient_same"], probe["impatient_new"]
    first, again = same[0], same[2]
    assert first[0] == again[0] == "place" and first[1] is not None
    assert again[1] == first[1]  # the same idempotency key and body: a page refresh
    assert [c[0] for c in same[:4]] == ["place", "pay", "place", "pay"]
    assert same[3] == ["pay", "p-1"] and new[3] == ["pay", "p-2"]
    assert same[4] == ["poll", "o-1"]


def test_impatient_shopper_does_not_pay_a_paid_order_or_resubmit_after_a_decline(
    probe: dict[str, Any],
) -> None:
    assert [c[0] for c in probe["impatient_already_paid"]] == ["place", "pay", "place", "poll"]
    assert [c[0] for c in probe["impatient_declined"]] == ["place", "pay"]


def test_late_payer_pays_only_once_its_order_is_closed(probe: dict[str, Any]) -> None:
    assert probe["late_closed"] == [
        ["place", None], ["poll", "o-1"], ["poll", "o-1"], ["late_pay", "p-1"]
    ]
    assert [c[0] for c in probe["late_paid_anyway"]] == ["place", "poll"]
    assert probe["late_gave_up"][0] == "poll"  # not closed within late_pay_wait: no pay


def test_late_pay_is_its_own_operation_in_the_history(probe: dict[str, Any]) -> None:
    assert probe["late_pay_history"] == [["late_pay", "invoke"], ["late_pay", "ok"]]


def test_new_user_classes_are_off_unless_a_scenario_names_them() -> None:
    spec = LoadSpec()
    assert spec.mix == {"shopper": 8, "browser": 1, "forger": 1}
    assert LoadSpec.model_validate({"mix": {"impatient": 1, "late_payer": 2}}).mix == {
        "impatient": 1, "late_payer": 2
    }
    with pytest.raises(ValueError, match="mix"):
        LoadSpec.model_validate({"mix": {"sloth": 1}})


def test_gate_selftest_exercises_every_trigger() -> None:
    scenario = load_scenario("gate-selftest")
    faults = {(step.fault, step.target) for step in scenario.timeline}
    assert {("kill", "order"), ("notify_duplicate", "channel"), ("notify_drop", "channel"),
            ("pay_after_close", "channel")} <= faults
    mix = scenario.load.mix
    assert mix.get("impatient", 0) > 0 and mix.get("late_payer", 0) > 0 and mix.get("forger", 0)
    assert min(scenario.load.skus.values()) < 100  # a scarce sku for the flash sale
    assert scenario.load.shape == "flash_sale"
    # a crash must not push a shopper's pay past its order's close while pay_after_close is on
    kill_end = max(s.end for s in scenario.timeline if s.fault == "kill")
    late_from = min(s.at for s in scenario.timeline if s.fault == "pay_after_close")
    assert late_from - kill_end >= float(scenario.services["close_after_s"])
