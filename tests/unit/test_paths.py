"""Which paths a run walked (from H, L and inventory events), and objectives over unwalked ones."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from faults.scenario import (
    DEFAULT_PATH_SHARE,
    JOURNEY_PATHS,
    LoadSpec,
    ScenarioError,
    load_scenario,
)
from slos.audit import audit
from slos.checkers import CHECKERS
from slos.evaluate import Evaluator
from slos.facts import Facts
from slos.gate import gate_records
from slos.model import load_slo
from slos.paths import PATH_CLASSES, PATHS, depends_on, never_walked, path_counts, path_orders
from slos.records import LedgerEntry, Records, StockEvent, load_run
from slos.synthetic import clean_run, write_run

ANOMALY_SLO = """\
name: paths
min_samples: 1
objectives:
  - {name: no money lost, sli: anomaly, class: [P1, P6], pass: "count == 0"}
  - {name: no forgery, sli: anomaly, class: [P12], pass: "count == 0"}
  - {name: few duplicates, sli: anomaly, class: [O2], pass: "count <= 1"}
"""


def walked() -> Records:
    return clean_run(5, every_path=True)


def orders_on(records: Records, path: str) -> set[str]:
    return path_orders(Facts(records))[path]


def test_a_run_that_walks_every_path_counts_each() -> None:
    counts = path_counts(Facts(walked()))
    assert counts == {"paid": 7, **dict.fromkeys(JOURNEY_PATHS, 1)}
    result = audit(walked())
    assert result.verdict == "valid", result.reasons
    assert result.to_dict()["paths"] == counts and result.to_dict()["never_walked"] == []


def test_the_happy_path_alone_leaves_every_other_path_unwalked() -> None:
    result = audit(clean_run(5))
    assert result.paths["paid"] == 5
    assert result.never_walked() == list(JOURNEY_PATHS)


@pytest.mark.parametrize("path", JOURNEY_PATHS)
def test_each_path_is_counted_on_its_own_order(path: str) -> None:
    assert orders_on(walked(), path) == {f"o-{path}"}


def test_path_counts_ignore_the_order_services_labels() -> None:
    records = walked()
    before = path_counts(Facts(records))
    for order in records.orders:  # the service under test says whatever it likes
        order.status, order.flags, order.t_paid = "PAID", ["paid_after_close"], None
    records.order_refunds.clear()
    records.transitions.clear()
    records.inbox.clear()
    assert path_counts(Facts(records)) == before


def test_abandon_needs_the_inventory_to_release_the_stock() -> None:
    records = walked()
    records.stock_events = [e for e in records.stock_events
                            if not (e.order_id == "o-abandon" and e.kind == "cancel")]
    assert orders_on(records, "abandon") == set()


def test_declined_needs_a_failed_charge_in_the_ledger() -> None:
    records = walked()
    records.ledger = [e for e in records.ledger
                      if not (e.merchant_order_id == "o-declined" and e.status == "failed")]
    assert orders_on(records, "declined") == set()


def test_a_late_pay_before_the_close_is_not_a_pay_after_close() -> None:
    records = walked()
    late = next(op for op in records.ops if op.f == "late_pay" and op.order_id == "o-late_pay")
    late.start -= 10.0  # before the channel closed the payment and inventory released the stock
    assert orders_on(records, "late_pay") == set()


def test_a_late_pay_the_channel_charged_is_not_a_refused_one() -> None:
    records = walked()
    close = next(e for e in records.ledger
                 if e.merchant_order_id == "o-late_pay" and e.kind == "close")
    records.ledger.append(LedgerEntry(900, "x-l", "p-late_pay", "o-late_pay", "charge", 1000,
                                      "succeeded", close.t + 1.0))
    assert orders_on(records, "late_pay") == set()


def test_refund_and_retry_and_slow_notify_need_their_evidence() -> None:
    records = walked()
    records.ledger = [e for e in records.ledger if e.kind != "refund"]
    assert orders_on(records, "refund") == set()
    records = walked()
    records.ops = [op for op in records.ops if op.op_id != "place_order-retry-1"]
    assert orders_on(records, "retry") == set()
    records = walked()
    for n in records.notifications:
        if n.merchant_order_id == "o-slow_notify":
            charge = next(e for e in records.ledger if e.txn_id == n.txn_id)
            n.t = charge.t + records.run.query_after_s - 0.1  # in time after all
    assert orders_on(records, "slow_notify") == set()
    records.notifications = [n for n in records.notifications
                             if n.merchant_order_id != "o-slow_notify"]
    assert orders_on(records, "slow_notify") == {"o-slow_notify"}  # never notified: asked


def test_paid_needs_the_stock_confirmed() -> None:
    records = clean_run(3)
    records.stock_events = [e for e in records.stock_events
                            if not (e.order_id == "o-1" and e.kind == "confirm")]
    assert orders_on(records, "paid") == {"o-0", "o-2"}
    records.stock_events.append(StockEvent("o-1", "confirm", 0.0, 0))
    assert orders_on(records, "paid") == {"o-0", "o-1", "o-2"}


def test_the_dependency_map_names_known_paths_and_classes() -> None:
    assert set(PATHS) == {"paid", *JOURNEY_PATHS}
    assert set(PATH_CLASSES) == set(PATHS)
    for classes in PATH_CLASSES.values():
        assert set(classes) <= set(CHECKERS)
    assert depends_on("P8") == ["retry"]
    assert depends_on("P6") == ["paid", "refund", "slow_notify"]
    assert depends_on("P12") == []
    counts = {"paid": 3, "refund": 0, "slow_notify": 0, "retry": 0}
    assert never_walked(["P1", "P6"], counts) == ["refund", "slow_notify"]
    assert never_walked(["P1", "P6"], {"paid": 3}) == []  # not counted is not unwalked
    assert never_walked(["P12"], {}) == []


def _objectives(records: Records, tmp_path: Path) -> dict[str, tuple[str, str]]:
    path = tmp_path / "paths.yaml"
    path.write_text(ANOMALY_SLO)
    results = Evaluator(records, audit(records), load_slo(path)).run()
    return {r.name: (r.tier, r.reason) for r in results}


def test_an_objective_over_an_unwalked_path_is_unknown_not_pass(tmp_path: Path) -> None:
    tiers = _objectives(clean_run(30), tmp_path)
    assert tiers["no money lost"] == (
        "unknown", "path refund never walked; path slow_notify never walked")
    assert tiers["few duplicates"] == ("unknown", "path retry never walked")
    assert tiers["no forgery"][0] == "pass"  # forgers are not a path of the flow
    walked_tiers = _objectives(clean_run(30, every_path=True), tmp_path)
    assert {name: tier for name, (tier, _) in walked_tiers.items()} == dict.fromkeys(
        walked_tiers, "pass")


def test_an_anomaly_found_on_an_unwalked_run_still_fails(tmp_path: Path) -> None:
    records = clean_run(30)
    records.orders[3].status = "AWAITING_PAYMENT"  # a lost payment, whatever was walked
    assert _objectives(records, tmp_path)["no money lost"][0] == "fail"


def test_result_json_reports_the_paths(tmp_path: Path) -> None:
    slo = tmp_path / "paths.yaml"
    slo.write_text(ANOMALY_SLO)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    gate = gate_records(run_dir, clean_run(30), load_slo(slo))
    assert gate.verdict == "unknown"
    result = gate.to_dict()
    assert result["audit"]["paths"]["paid"] == 30
    assert result["audit"]["never_walked"] == list(JOURNEY_PATHS)
    assert any("path refund never walked" in p for p in gate.problems)


# --- the shares of the load spec -------------------------------------------------------


def test_every_shipped_scenario_walks_every_path_by_default() -> None:
    for name in ("smoke", "baseline", "network-chaos", "callback-storm", "crash-restart",
                 "flash-sale", "blackhole", "gate-selftest"):
        paths = load_scenario(name).load.paths
        assert paths == dict.fromkeys(JOURNEY_PATHS, DEFAULT_PATH_SHARE), name
        assert load_scenario(name).load.mix.get("shopper", 0) > 0, name


def test_load_paths_override_some_and_keep_the_rest() -> None:
    spec = LoadSpec.model_validate({"paths": {"declined": 0.1, "refund": 0}})
    assert spec.paths["declined"] == 0.1 and spec.paths["refund"] == 0
    assert spec.paths["abandon"] == DEFAULT_PATH_SHARE


@pytest.mark.parametrize(("paths", "error"), [
    ("{declined: 0.7, abandon: 0.5}",
     r":6: load.paths: path shares add up to 1.32 > 1 \(abandon 0.5, declined 0.7"),
    ("{declined: -0.1}", r":6: load.paths.declined: Input should be greater than or equal"),
    ("{sleepy: 0.1}", r":6: load.paths.sleepy.*'abandon', 'declined'"),
])
def test_bad_path_shares_name_the_line(tmp_path: Path, paths: str, error: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ndescription: x\nduration: 10s\nload:\n  users: 2\n"
                    f"  paths: {paths}\n")
    with pytest.raises(ScenarioError, match=error):
        load_scenario(path)


def test_journey_paths_take_their_share_and_the_journey_count_stays() -> None:
    spec = LoadSpec()
    rng = random.Random(7)
    draws = 20_000
    taken = Counter(spec.journey_path(rng.random()) for _ in range(draws))
    assert sum(taken.values()) == draws  # one journey per draw, whatever the path
    for path in JOURNEY_PATHS:
        assert abs(taken[path] / draws - DEFAULT_PATH_SHARE) < 0.006, path
    assert taken[None] / draws == pytest.approx(1 - 6 * DEFAULT_PATH_SHARE, abs=0.01)
    assert LoadSpec.model_validate({"paths": dict.fromkeys(JOURNEY_PATHS, 0)}).journey_path(
        0.0) is None
    assert spec.journey_path(0.0) == JOURNEY_PATHS[0]


def test_the_active_query_time_comes_from_the_recorded_scenario(tmp_path: Path) -> None:
    run_dir = write_run(clean_run(3), tmp_path / "run")
    assert load_run(run_dir).run.query_after_s == 3.0  # the services' default
    scenario = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    (run_dir / "scenario.yaml").write_text(yaml.safe_dump(
        {**scenario, "services": {"query_after_s": 1}}))
    assert load_run(run_dir).run.query_after_s == 1.0
