"""The evaluator: SLIs from the history, phases from faults, tiers, samples, baseline."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.history import LOAD_STOPPED
from slos.audit import audit
from slos.evaluate import BaselineError, Evaluator, ObjectiveResult, fault_windows
from slos.model import SloFile
from slos.records import FaultEvent, Records
from slos.synthetic import T0, clean_run

FAULT_AT, FAULT_FOR = 20.0, 10.0  # seconds after T0


def slo(*objectives: dict[str, Any], min_samples: int = 10, **extra: Any) -> SloFile:
    return SloFile.model_validate({"name": "t", "min_samples": min_samples,
                                   "objectives": list(objectives), **extra})


def measure(records: Records, *objectives: dict[str, Any], min_samples: int = 10,
            previous: dict[str, Any] | None = None, **extra: Any) -> list[ObjectiveResult]:
    file = slo(*objectives, min_samples=min_samples, **extra)
    return Evaluator(records, audit(records), file).run(previous)


def faulty_run(fail_after_heal: float = 0.0) -> Records:
    """200 orders over 60 s; place_order fails during the fault and `fail_after_heal` s after."""
    r = clean_run(200, faults=[(FAULT_AT, FAULT_FOR, "down", "client_order")])
    start, end = T0 + FAULT_AT, T0 + FAULT_AT + FAULT_FOR + fail_after_heal
    for op in r.ops:
        if op.f == "place_order" and start <= op.start < end:
            op.outcome = "fail"
    return r


def one(records: Records, **objective: Any) -> ObjectiveResult:
    return measure(records, {"name": "o", **objective})[0]


def test_latency_tiers() -> None:
    r = clean_run(50)
    assert one(r, sli="latency", op="place_order", **{"pass": "p(99) < 30ms"}).tier == "pass"
    warn = one(r, sli="latency", op="place_order", warning="p(99) < 50ms",
               **{"pass": "p(99) < 10ms"})
    assert warn.tier == "warning"
    fail = one(r, sli="latency", op="place_order", warning="p(99) < 15ms",
               **{"pass": "p(99) < 10ms"})
    assert fail.tier == "fail"
    assert fail.measured == pytest.approx(0.02)
    assert "measured 20ms vs objective p(99) < 10ms" in fail.reason
    assert fail.samples == 50


def test_too_few_samples_is_unknown_never_pass() -> None:
    r = clean_run(5)
    result = one(r, sli="latency", op="pay", **{"pass": "p(99) < 10s"})
    assert result.tier == "unknown"
    assert "only 5 sample(s), the file needs 10" in result.reason


def test_success_rate_counts_info_against_success() -> None:
    r = clean_run(100)
    pays = [op for op in r.ops if op.f == "pay"]
    pays[0].outcome = "info"
    pays[1].outcome = "fail"
    result = one(r, sli="success_rate", op="pay", **{"pass": "rate >= 99%"})
    assert result.measured == pytest.approx(0.98)
    assert result.tier == "fail"
    assert result.error_budget_used == pytest.approx(2.0)
    ok = one(r, sli="success_rate", op="pay", **{"pass": "rate >= 96%"})
    assert ok.tier == "pass" and ok.error_budget_used == pytest.approx(0.5)


def test_phases_split_the_run_at_fault_windows() -> None:
    r = faulty_run()
    windows = fault_windows(r)
    assert [(w.fault, w.start, w.end, w.healed) for w in windows] == [
        ("down", T0 + FAULT_AT, T0 + FAULT_AT + FAULT_FOR, True)]
    steady, fault, whole = measure(
        r,
        {"name": "steady", "sli": "success_rate", "op": "place_order", "phase": "steady",
         "pass": "rate >= 99%"},
        {"name": "fault", "sli": "success_rate", "op": "place_order", "phase": "fault",
         "pass": "rate >= 99%"},
        {"name": "all", "sli": "success_rate", "op": "place_order", "pass": "rate >= 99%"},
    )
    assert steady.measured == 1.0 and steady.tier == "pass"
    assert fault.measured == 0.0 and fault.tier == "fail"
    assert whole.measured == pytest.approx(1 - FAULT_FOR / 60, abs=0.01)


def test_recovery_time_after_a_heal() -> None:
    r = faulty_run(fail_after_heal=3.0)
    result = one(r, sli="recovery_time", op="place_order", **{"pass": "max < 2s"})
    assert result.samples == 1
    assert result.measured == pytest.approx(3.0, abs=1.0)
    assert result.tier == "fail"
    quick = one(faulty_run(), sli="recovery_time", op="place_order", **{"pass": "max < 2s"})
    assert quick.measured == pytest.approx(0.0) and quick.tier == "pass"


def test_recovery_phase_covers_ops_until_success_is_back() -> None:
    r = faulty_run(fail_after_heal=3.0)
    recovery, steady = measure(
        r,
        {"name": "recovery", "sli": "success_rate", "op": "place_order", "phase": "recovery",
         "pass": "rate >= 99%", "min_samples": 1},
        {"name": "steady", "sli": "success_rate", "op": "place_order", "phase": "steady",
         "pass": "rate >= 99%"},
    )
    assert recovery.measured == 0.0  # the 3 s after the heal, all failing
    assert steady.measured == 1.0


def test_no_heal_means_no_recovery_sample() -> None:
    records = clean_run(50)
    records.faults.append(FaultEvent("apply", 0, "latency", "order_channel", T0 + 5, False,
                                     error="toxiproxy refused"))  # applied, never healed
    result = one(records, sli="recovery_time", **{"pass": "max < 10s"})
    assert result.tier == "unknown"
    allowed = one(records, sli="recovery_time", min_samples=0, **{"pass": "max < 10s"})
    assert allowed.tier == "pass"


PHASED = (
    {"name": "recovers", "sli": "recovery_time", "pass": "max < 10s"},
    {"name": "fast in faults", "sli": "latency", "op": "place_order", "phase": "fault",
     "pass": "p(95) < 2s"},
    {"name": "fast in recovery", "sli": "latency", "op": "place_order", "phase": "recovery",
     "pass": "p(95) < 2s", "min_samples": 0},
    {"name": "fast when steady", "sli": "latency", "op": "place_order", "phase": "steady",
     "pass": "p(95) < 2s"},
)


def test_objectives_of_a_phase_the_run_lacks_are_not_applicable() -> None:
    results = measure(clean_run(50), *PHASED)
    tiers = {r.name: r.tier for r in results}
    assert tiers == {"recovers": "not_applicable", "fast in faults": "not_applicable",
                     "fast in recovery": "not_applicable", "fast when steady": "pass"}
    assert "nothing to recover from" in results[0].reason
    assert "no fault phase" in results[1].reason


def test_a_run_with_faults_has_those_phases() -> None:
    records = faulty_run()
    for op in records.ops:  # the fault slows place_order instead of failing it
        op.outcome = "ok"
    results = measure(records, *PHASED)
    assert "not_applicable" not in {r.tier for r in results}
    assert results[0].tier == "pass" and results[1].tier == "pass"
    assert results[1].samples > 0


def test_a_fault_that_failed_to_apply_keeps_its_phases_applicable() -> None:
    records = clean_run(50)
    records.faults.append(FaultEvent("apply", 0, "latency", "order_channel", T0 + 5, False,
                                     error="toxiproxy refused"))
    assert one(records, **PHASED[1]).tier == "unknown"


def test_a_run_without_a_fault_record_cannot_say_not_applicable() -> None:
    records = clean_run(50)
    records.missing.append("faults.ndjson")
    assert one(records, **PHASED[1]).tier == "unknown"


def test_throughput_payment_lag_and_confirmation() -> None:
    r = clean_run(120)
    throughput, lag, conf, confirmed = measure(
        r,
        {"name": "tp", "sli": "throughput", "op": "place_order", "pass": "value >= 2"},
        {"name": "lag", "sli": "payment_lag", "pass": "p(99) < 100ms"},
        {"name": "conf", "sli": "confirmation_time", "pass": "p(95) < 1s"},
        {"name": "seen", "sli": "confirmation_time", "pass": "rate >= 99%"},
    )
    assert throughput.measured == pytest.approx(2.0)
    assert throughput.tier == "pass"
    assert lag.measured == pytest.approx(0.05) and lag.tier == "pass"
    assert conf.tier == "pass"
    assert confirmed.measured == 1.0


def test_anomaly_objective_counts_its_classes() -> None:
    r = clean_run(20, every_path=True)
    r.orders[3].status = "AWAITING_PAYMENT"  # lost payment, orphan charge, stuck order
    money, orders = measure(
        r,
        {"name": "money", "sli": "anomaly", "class": ["P1", "P6"], "pass": "count == 0"},
        {"name": "orders", "sli": "anomaly", "class": ["O1", "O2"], "pass": "count == 0"},
    )
    assert money.measured == 2 and money.tier == "fail"
    assert orders.measured == 0 and orders.tier == "pass"


def test_baseline_regression_fails_the_objective() -> None:
    r = clean_run(50)
    latency = {"name": "lat", "sli": "latency", "op": "place_order", "pass": "p(99) < 1s"}
    rate = {"name": "rate", "sli": "success_rate", "op": "place_order", "pass": "rate >= 90%"}
    before = {"objectives": [{"name": "lat", "measured": 0.015},
                             {"name": "rate", "measured": 1.0}]}
    policy = {"max_regression": "+10%"}
    lat, ok_rate = measure(r, latency, rate, previous=before, baseline=policy)
    assert lat.tier == "fail"
    assert "regressed +33.3% vs baseline" in lat.reason
    assert lat.baseline is not None and lat.baseline["regressed"]
    assert ok_rate.tier == "pass"
    within = {"objectives": [{"name": "lat", "measured": 0.0195}]}
    assert measure(r, latency, previous=within, baseline=policy)[0].tier == "pass"
    looser = {"max_regression": "+50%"}  # the file's tolerance, not a default, decides
    assert measure(r, latency, previous=before, baseline=looser)[0].tier == "pass"


def test_a_baseline_without_the_files_tolerance_is_refused() -> None:
    r = clean_run(50)
    latency = {"name": "lat", "sli": "latency", "op": "place_order", "pass": "p(99) < 1s"}
    with pytest.raises(BaselineError, match="no baseline.max_regression"):
        measure(r, latency, previous={"objectives": [{"name": "lat", "measured": 0.015}]})


def test_a_shopper_still_waiting_when_the_load_ended_did_not_give_up() -> None:
    """100 orders over 60 s: 3 payers in the middle and the last 3 never see PAID."""
    records = clean_run(100)
    blind = {"o-40", "o-41", "o-42", "o-97", "o-98", "o-99"}
    records.ops = [op for op in records.ops if not (op.f == "poll" and op.order_id in blind)]
    seen = {"name": "seen", "sli": "confirmation_time", "pass": "rate >= 99%"}
    counted = one(records, **seen)
    assert counted.samples == 100 and counted.measured == pytest.approx(0.94)
    records.run.max_poll = 10.0  # the last three paid within 10 s of the load's end
    result = one(records, **seen)
    assert result.samples == 97 and result.measured == pytest.approx(94 / 97)
    assert "3 shopper(s) never saw PAID; 3 still waiting when the load ended" in result.reason


def test_an_operation_cut_short_by_the_load_stopping_is_not_a_failure() -> None:
    records = clean_run(100)
    places = [op for op in records.ops if op.f == "place_order"]
    places[-1].outcome, places[-1].error = "info", LOAD_STOPPED  # open when Locust stopped
    places[50].outcome, places[50].error = "info", "ReadTimeout"  # the service never answered
    rate = {"name": "ok", "sli": "success_rate", "op": "place_order", "pass": "rate >= 99.5%"}
    result = one(records, **rate)
    assert result.samples == 99 and result.measured == pytest.approx(98 / 99)
    assert "1 cut short when the load stopped (not counted)" in result.reason
