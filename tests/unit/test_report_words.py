"""The report's plain words: what each anomaly costs, objectives as promises, the headline,
the comparison — fed hand-made records and results, with and without anomalies."""

from __future__ import annotations

import re

import pytest

from slos.audit import audit
from slos.checkers import MAX_EXAMPLES, CheckResult
from slos.evaluate import ObjectiveResult
from slos.records import LedgerEntry, Records, Transition
from slos.report_impact import Exposure, exposure
from slos.report_words import (
    anomaly_changes,
    change_words,
    comparison_line,
    fault_label,
    headline,
    impact_sentence,
    load_words,
    measured,
    money,
    params_words,
    promise,
    seconds,
    status,
    total_sentence,
)
from slos.synthetic import clean_run

JARGON = re.compile(r"\b[PIOQ]\d+'?(?=\W|$)|p\(\d+\)|\binvalid\b|error budget|\(key\)|==")


def objective(name: str = "place order latency", sli: str = "latency",
              op: str | None = "place_order", text: str = "p(99) < 300ms",
              measured_value: float | None = 0.02, tier: str = "pass", *, key: bool = False,
              phase: str = "all", samples: int = 200, baseline: dict | None = None
              ) -> ObjectiveResult:
    return ObjectiveResult(name=name, sli=sli, op=op, phase=phase, key=key, objective=text,
                           warning=None, measured=measured_value, shown="", samples=samples,
                           min_samples=20, tier=tier, baseline=baseline)


def shipped_twice(records: Records, indexes: list[int]) -> None:
    """Plant P9: a second PAID transition for each order."""
    for i in indexes:
        o = records.orders[i]
        records.transitions.append(Transition(o.order_id, "AWAITING_PAYMENT", "PAID",
                                              (o.t_paid or 0.0) + 1, "notify"))


# --- what each anomaly costs -------------------------------------------------


def test_a_clean_run_costs_nothing_and_says_so() -> None:
    records = clean_run(50)
    exposed = exposure(audit(records), records)
    assert exposed.impacts == [] and exposed.money == 0
    assert total_sentence(exposed) == ""
    text = headline("pass", [objective()], audit(records), exposed)
    assert text == ("No money or stock was lost, no order was lost or duplicated, and the "
                    "1 objective was met.")


def test_orders_shipped_twice_are_priced_from_the_order_export() -> None:
    records = clean_run(50)
    for i, amount in ((3, 1250), (4, 99_00), (5, 1)):
        records.orders[i].amount = amount
        records.ledger[i].amount = amount
    records.orders[4].qty = 2
    shipped_twice(records, [3, 4, 5])
    exposed = exposure(audit(records), records)
    [p9] = exposed.impacts
    assert p9.cls == "P9" and p9.count == 3 and p9.complete
    assert p9.money == 1250 + 99_00 + 1 and p9.units == 4
    assert impact_sentence(p9) == ("3 orders were confirmed or shipped more than once — "
                                   "about ¥111.51 of goods, 4 units of stock.")
    assert not JARGON.search(impact_sentence(p9))


def test_every_affected_order_is_priced_not_only_the_audits_examples() -> None:
    records = clean_run(60)
    shipped = list(range(MAX_EXAMPLES + 15))
    shipped_twice(records, shipped)
    result = audit(records)
    assert len(result.checks["P9"].examples) == MAX_EXAMPLES  # the audit keeps only a few
    [p9] = exposure(result, records).impacts
    assert p9.count == len(shipped) and p9.complete
    assert p9.money == 1000 * len(shipped)  # every order, not 10 of them
    assert len(p9.examples) == MAX_EXAMPLES  # the page still shows the audit's examples


def test_a_double_charge_costs_the_extra_charge() -> None:
    records = clean_run(20)
    first = records.ledger[2]
    records.ledger.append(LedgerEntry(999, "x-again", "p-again", first.merchant_order_id,
                                      "charge", 700, "succeeded", first.t + 1))
    exposed = exposure(audit(records), records)
    p8 = next(i for i in exposed.impacts if i.cls == "P8")
    assert p8.money == 700
    assert impact_sentence(p8) == "1 shopper was charged twice — ¥7.00 charged too much."


def test_an_order_under_two_problems_is_counted_once_in_the_total() -> None:
    records = clean_run(20)
    records.orders[7].status = "AWAITING_PAYMENT"  # P1 and P6 (and stuck: O3) for one order
    exposed = exposure(audit(records), records)
    assert {i.cls for i in exposed.impacts} >= {"P1", "P6"}
    assert sum(i.money or 0 for i in exposed.impacts) > 1000
    assert exposed.money == 1000 and exposed.orders == 1
    assert total_sentence(exposed).startswith("In all, ¥10.00, 1 order at risk")


def test_an_order_the_databases_do_not_have_is_priced_at_least() -> None:
    records = clean_run(20)
    records.orders[5].status = "AWAITING_PAYMENT"
    del records.orders[6]  # charged, never stored: P6 for an order without an amount in D
    exposed = exposure(audit(records), records)
    orphan = next(i for i in exposed.impacts if i.cls == "P6")
    assert orphan.count == 2 and orphan.money == 2000  # the channel's charges still count
    lost = next(i for i in exposed.impacts if i.cls == "P1")
    assert lost.count == 2 and not lost.complete  # o-6 has no order amount to add
    assert "at least ¥10.00" in impact_sentence(lost)


def test_the_worst_problem_leads_the_headline() -> None:
    records = clean_run(50)
    records.orders[7].status = "AWAITING_PAYMENT"
    shipped_twice(records, [10, 11, 12])
    result = audit(records)
    exposed = exposure(result, records)
    assert exposed.impacts[0].cls == "P9"  # ¥30 of goods before ¥10 of lost payment
    missed = [objective(tier="fail", measured_value=2.0),
              objective("no money lost", "anomaly", None, "count == 0", 2, "fail", key=True)]
    text = headline("fail", missed, result, exposed)
    assert text.startswith("3 orders were confirmed or shipped more than once — about ¥30.00")
    assert "other problems with money, orders or stock" in text
    assert text.endswith("; also missed: place order latency.")  # not the anomaly objective
    assert not JARGON.search(text), text


# --- objectives as promises ------------------------------------------------------


@pytest.mark.parametrize(("result", "classes", "words"), [
    (objective(), (), "99 % of orders are placed in under 300 ms."),
    (objective(sli="success_rate", op="pay", text="rate >= 99.5%", phase="steady"), (),
     "At least 99.5 % of payment attempts succeed in normal operation."),
    (objective(sli="latency", op="pay", text="max <= 2s"), (),
     "All payments are answered in at most 2 s."),
    (objective(sli="throughput", op="place_order", text="value >= 10"), (),
     "At least 10 orders placed per second."),
    (objective(sli="recovery_time", op=None, text="max < 10s"), (),
     "After each fault ends, the shop is back to normal in under 10 s."),
    (objective(sli="payment_lag", op=None, text="p(95) < 5s"), (),
     "95 % of payments reach their order in under 5 s after the charge."),
    (objective(sli="confirmation_time", op=None, text="rate >= 99%"), (),
     "At least 99 % of paying shoppers see their order paid."),
    (objective(sli="anomaly", op=None, text="count == 0"), ("P1", "P6"),
     "No lost payments, no charges for orders never marked paid."),
])
def test_objectives_read_as_promises(result: ObjectiveResult, classes: tuple[str, ...],
                                     words: str) -> None:
    assert promise(result, classes) == words
    assert not JARGON.search(words)


def test_what_was_measured_and_whether_it_was_met() -> None:
    slow = objective(measured_value=0.412, tier="fail")
    assert measured(slow) == "99 % within 412 ms" and status(slow) == "missed"
    rate = objective(sli="success_rate", text="rate >= 99%", measured_value=0.9732)
    assert measured(rate) == "97.32 % succeeded"
    lost = objective(sli="anomaly", text="count == 0", measured_value=358, tier="fail")
    assert measured(lost) == "358 found"
    assert measured(objective(sli="anomaly", text="count == 0", measured_value=0)) == "none found"
    few = objective(tier="unknown", samples=10)
    assert status(few) == "not enough evidence: 10 measurements, 20 needed"


def test_a_missed_objective_without_lost_money_says_what_was_missed() -> None:
    records = clean_run(50)
    result = audit(records)
    slow = objective(measured_value=2.0, tier="fail")
    text = headline("fail", [slow], result, Exposure([]))
    assert text == ("No money or stock was lost, but 1 objective was missed — place order "
                    "latency: 99 % of orders are placed in under 300 ms — measured 99 % within "
                    "2 s.")
    unknown = headline("unknown", [objective(tier="unknown", samples=10)], result, Exposure([]))
    assert unknown == ("Not enough evidence to tell whether it is safe to release: place order "
                       "latency (not enough evidence: 10 measurements, 20 needed).")


# --- the comparison with the baseline ------------------------------------------------


def test_changes_against_the_baseline_in_words() -> None:
    worse = objective(measured_value=0.412, tier="fail", baseline={
        "measured": 0.22, "change": 0.8727, "regressed": True})
    assert change_words(worse) == "worse, by more than allowed (+87%)"
    assert comparison_line(worse) == ("place order latency: 99 % within 412 ms now, 99 % within "
                                      "220 ms in the baseline run — worse, by more than allowed "
                                      "(+87%).")
    better = objective(sli="success_rate", text="rate >= 99%", measured_value=0.999,
                       baseline={"measured": 0.99, "change": 0.0091, "regressed": False})
    assert change_words(better) == "better (+1%)"
    same = objective(baseline={"measured": 0.02, "change": 0.0, "regressed": False})
    assert change_words(same) == "unchanged"


def test_problems_that_appeared_or_went_away_since_the_baseline() -> None:
    records = clean_run(30)
    shipped_twice(records, [1, 2])
    now = audit(records)
    before = {"checks": {
        "P9": {"verdict": "valid", "count": 0, "name": "duplicate effect"},
        "O3": {"verdict": "invalid", "count": 4, "name": "stuck order"}}}
    lines = anomaly_changes(now, before)
    assert lines == [
        "New: 2 orders were confirmed or shipped more than once (the baseline run had none).",
        "Fixed: no stuck orders now (the baseline run had 4).",
    ]
    assert anomaly_changes(audit(clean_run(30)), {"checks": {}}) == []


# --- small pieces ------------------------------------------------------------


def test_money_seconds_and_faults_in_words() -> None:
    assert money(123_456_78) == "¥123,457" and money(1250) == "¥12.50"
    assert seconds(0.3) == "300 ms" and seconds(4.25) == "4.2 s" and seconds(113) == "1 min 53 s"
    assert fault_label("latency", "order_channel") == "slow network · order→channel"
    assert fault_label("mystery_fault", "elsewhere") == "mystery fault · elsewhere"
    assert params_words({"latency": "300ms", "jitter": "100ms", "toxicity": 0.5}) == \
        "+300ms, ± 100ms, on 50 % of connections"
    assert load_words({"shape": "steady", "users": 12, "rate": 15,
                       "mix": {"shopper": 9, "browser": 1, "forger": 0}}) == \
        ("12 simulated users, steady load, about 15 shopping journeys a second "
         "(mix 9 shoppers : 1 browser)")
    assert load_words({}) == ""


def test_an_unknown_class_still_gets_a_sentence() -> None:
    check = CheckResult("Z9", "teleported parcel", "invalid", 2, [])
    from slos.report_impact import Impact

    impact = Impact(check.cls, check.name, check.count, [])
    assert impact_sentence(impact) == "2 problems of the kind “teleported parcel” were found."


def test_an_order_created_twice_costs_the_duplicate() -> None:
    import dataclasses

    records = clean_run(20)
    first = records.orders[4]
    records.orders.append(dataclasses.replace(first, order_id="o-4-again", amount=650, qty=3,
                                              status="CLOSED"))
    exposed = exposure(audit(records), records)
    o2 = next(i for i in exposed.impacts if i.cls == "O2")
    assert (o2.count, o2.money, o2.units) == (1, 650, 3)  # the second order, not the first
    assert impact_sentence(o2) == ("1 order was created twice — ¥6.50 of duplicate orders, "
                                   "3 units of stock.")
