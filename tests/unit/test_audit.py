"""Every checker on hand-made records that hold its anomaly exactly once, and on clean ones."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from slos import checkers
from slos.audit import audit
from slos.checkers import CHECKERS, INFO_CLASSES, Facts
from slos.records import (
    InboxEntry,
    LedgerEntry,
    Notification,
    Op,
    Order,
    OutboxEntry,
    Records,
    StockEvent,
    Tombstone,
    Transition,
)
from slos.synthetic import T0, clean_run


def run(records: Records, cls: str) -> checkers.CheckResult:
    return CHECKERS[cls][1](Facts(records))


def found(records: Records, cls: str) -> list[str | None]:
    result = run(records, cls)
    return [e.get("order_id") or e.get("sku") for e in result.examples]


def op_of(r: Records, f: str, order_id: str) -> Op:
    return next(op for op in r.ops if op.f == f and op.order_id == order_id)


def order(r: Records, order_id: str) -> Order:
    return next(o for o in r.orders if o.order_id == order_id)


def charge(r: Records, order_id: str) -> LedgerEntry:
    return next(e for e in r.ledger if e.merchant_order_id == order_id)


# --- the plants: each edits clean records to hold one anomaly, and names who has it ----------


def lost_payment(r: Records) -> str:
    order(r, "o-1").status = "AWAITING_PAYMENT"
    return "o-1"


def false_success(r: Records) -> str:
    charge(r, "o-1").status = "failed"
    return "o-1"


def failed_but_charged(r: Records) -> str:
    op_of(r, "pay", "o-1").outcome = "fail"
    return "o-1"


def unexpected_payment(r: Records) -> str:
    r.ops.remove(op_of(r, "pay", "o-2"))
    return "o-2"


def orphan_charge(r: Records) -> str:
    order(r, "o-1").status = "CLOSED"
    op_of(r, "pay", "o-1").outcome = "info"
    return "o-1"


def unfunded_order(r: Records) -> str:
    e = charge(r, "o-1")
    r.ledger.append(LedgerEntry(99, "rf-1", e.payment_id, "o-1", "refund", e.amount,
                                "succeeded", e.t + 1, "rf-1"))
    return "o-1"


def duplicate_charge(r: Records) -> str:
    e = charge(r, "o-1")
    r.ledger.append(LedgerEntry(98, "x-dup", "p-dup", "o-1:retry-1", "charge", e.amount,
                                "succeeded", e.t + 1))
    return "o-1"


def duplicate_effect(r: Records) -> str:
    r.transitions.append(Transition("o-3", "PAID", "PAID", T0 + 50, "notify"))
    return "o-3"


def amount_mismatch(r: Records) -> str:
    charge(r, "o-2").amount = 999
    return "o-2"


def forged_accepted(r: Records) -> str:
    r.inbox.append(InboxEntry("x-1", "forged-1", "o-1", T0 + 5, "accepted"))
    return "o-1"


def forged_txn(r: Records) -> str:
    order(r, "o-2").txn_id = "x-forged"
    return "o-2"


def forged_in_log(r: Records) -> str:
    r.notifications.append(Notification("n-f", None, "o-3", "x-3", 1, T0 + 9, False, 400, True,
                                        False, None))
    r.inbox.append(InboxEntry("x-3", "n-f", "o-3", T0 + 9, "accepted"))
    return "o-3"


def lost_order(r: Records) -> str:
    r.ops.append(Op("place_order", "z", "w:1", "k-9", "o-9", T0, T0 + 0.1, 0.1, "ok", None,
                    None, None))
    return "o-9"


def lost_order_by_key(r: Records) -> str:
    r.ops.append(Op("place_order", "z", "w:1", "k-9", None, T0, T0 + 0.1, 0.1, "ok", None,
                    None, None))
    return "key:k-9"


def duplicate_order(r: Records) -> str:
    first = order(r, "o-1")
    r.orders.append(Order("o-1b", "k-1", first.sku, 1, 1000, "REJECTED", None, None,
                          first.created_at + 1, None, first.created_at + 1, None))
    return "o-1"


def stuck_order(r: Records) -> str:
    order(r, "o-2").status = "CREATED"
    return "o-2"


def oversell(r: Records) -> str:
    r.stock[1].available = -1
    return "sku-1"


def stock_not_conserved(r: Records) -> str:
    r.stock[2].available += 1
    return "sku-2"


def leaked_reservation(r: Records) -> str:
    res = next(x for x in r.reservations if x.order_id == "o-3")
    res.state, res.t_end, res.t_try = "TRY", None, T0 - 100  # ttl 60 s long past at the end
    return "o-3"


def hanging_try(r: Records) -> str:
    res = next(x for x in r.reservations if x.order_id == "o-2")
    r.tombstones.append(Tombstone("o-2", res.t_try - 1))
    return "o-2"


def empty_rollback_moved_stock(r: Records) -> str:
    r.stock_events.append(StockEvent("o-7", "empty_rollback", T0 + 3, 1))
    return "o-7"


def sold_unpaid(r: Records) -> str:
    r.ledger.remove(charge(r, "o-3"))
    return "o-3"


def outbox_lost(r: Records) -> str:
    r.outbox.append(OutboxEntry("ob-x", "o-2", "cancel", T0 + 4, None, 12))
    return "o-2"


def lost_acknowledgement(r: Records) -> str:
    r.receipts = [c for c in r.receipts if c.order_id != "o-3"]  # acked, never committed
    return "o-3"


PLANTS: list[tuple[str, Callable[[Records], str]]] = [
    ("P1", lost_payment), ("P2", false_success), ("P3", failed_but_charged),
    ("P4", unexpected_payment), ("P6", orphan_charge), ("P7", unfunded_order),
    ("P8", duplicate_charge), ("P9", duplicate_effect), ("P10", amount_mismatch),
    ("P12", forged_accepted), ("P12", forged_txn), ("P12", forged_in_log),
    ("P13", lost_acknowledgement),
    ("O1", lost_order), ("O1", lost_order_by_key), ("O2", duplicate_order), ("O3", stuck_order),
    ("I1", oversell), ("I2", stock_not_conserved), ("I3", leaked_reservation),
    ("I4", hanging_try), ("I4", empty_rollback_moved_stock), ("I5", sold_unpaid),
    ("Q1", outbox_lost),
]


def test_clean_records_have_no_anomaly() -> None:
    result = audit(clean_run(5))
    assert result.verdict == "valid", result.reasons
    for cls, check in result.checks.items():
        expected = "info" if cls in INFO_CLASSES else "valid"
        assert check.verdict == expected, (cls, check)
        if cls not in INFO_CLASSES:
            assert check.count == 0


def test_every_invalid_class_has_a_plant() -> None:
    planted = {cls for cls, _ in PLANTS}
    assert planted == set(CHECKERS) - INFO_CLASSES


@pytest.mark.parametrize(("cls", "plant"), PLANTS, ids=[p.__name__ for _, p in PLANTS])
def test_checker_finds_its_anomaly_once(cls: str, plant: Callable[[Records], str]) -> None:
    records = clean_run(5)
    assert run(records, cls).count == 0
    culprit = plant(records)
    result = run(records, cls)
    assert result.verdict == "invalid"
    assert result.count == 1
    assert found(records, cls) == [culprit]
    assert audit(records).verdict == "invalid"


def test_examples_carry_the_order_trace_id() -> None:
    records = clean_run(5)
    lost_payment(records)
    example = run(records, "P1").examples[0]
    assert example["trace_id"] == order(records, "o-1").trace_id
    assert "AWAITING_PAYMENT" in example["detail"]


def test_info_pay_that_the_ledger_shows_paid_is_recovered_not_lost() -> None:
    records = clean_run(5)
    op_of(records, "pay", "o-1").outcome = "info"
    result = audit(records)
    assert result.verdict == "valid", result.reasons
    assert result.checks["P5"].verdict == "info"
    assert [e["order_id"] for e in result.checks["P5"].examples] == ["o-1"]
    for cls in ("P1", "P2", "P3", "P6"):
        assert result.checks[cls].count == 0


def test_unfinished_pay_invoke_counts_as_info() -> None:
    records = clean_run(3)
    pay = op_of(records, "pay", "o-0")
    pay.outcome, pay.end, pay.latency = "info", None, None
    result = audit(records)
    assert result.checks["P5"].count == 1
    assert result.verdict == "valid"


def test_duplicate_notifications_alone_are_allowed() -> None:
    records = clean_run(5)
    first = next(n for n in records.notifications if n.merchant_order_id == "o-2")
    records.notifications.append(Notification(first.notify_id, first.payment_id, "o-2",
                                              first.txn_id, 2, first.t + 1, True, 200, False,
                                              False, None))
    records.inbox.append(InboxEntry(first.txn_id, first.notify_id, "o-2", first.t + 1,
                                    "duplicate"))
    result = audit(records)
    assert result.verdict == "valid", result.reasons
    assert result.checks["P9'"].verdict == "info"
    assert result.checks["P9'"].count == 1
    assert result.checks["P9"].count == 0
    assert result.checks["P12"].count == 0


def test_info_place_order_whose_order_exists_is_fine() -> None:
    records = clean_run(5)
    place = op_of(records, "place_order", "o-4")
    place.outcome, place.order_id = "info", None  # timed out: the shopper never saw the id
    assert audit(records).verdict == "valid"


def test_history_without_order_id_maps_through_the_idempotency_key() -> None:
    records = clean_run(5)
    for op in records.ops:
        op.order_id = None
    result = audit(records)
    assert result.verdict == "valid", result.reasons
    lost_payment(records)
    assert found(records, "P1") == ["o-1"]


def test_refunded_late_payment_is_not_an_orphan() -> None:
    records = clean_run(5)
    order(records, "o-1").status = "CLOSED"
    op_of(records, "pay", "o-1").outcome = "info"
    orphan = charge(records, "o-1")
    records.ledger.append(LedgerEntry(90, "rf", orphan.payment_id, "o-1", "refund", orphan.amount,
                                      "succeeded", orphan.t + 2, "rf"))
    records.reservations[1].state = "CANCELLED"
    records.stock[1].available += 1
    records.outbox = [o for o in records.outbox if o.order_id != "o-1"]
    records.transitions = [t for t in records.transitions
                           if not (t.order_id == "o-1" and t.to_state == "PAID")]
    result = audit(records)
    assert result.checks["P6"].count == 0
    assert result.checks["I5"].count == 0


def test_young_try_is_not_a_leak_yet() -> None:
    records = clean_run(5)
    res = records.reservations[3]
    res.state, res.t_end = "TRY", None
    res.t_try = records.reference_time() - res.ttl - records.run.sweep_every_s + 0.5
    assert run(records, "I3").count == 0
    res.t_try -= 1.0
    assert found(records, "I3") == ["o-3"]


def test_payment_lag_and_confirmation_stats() -> None:
    records = clean_run(4)
    records.ops.remove(op_of(records, "poll", "o-1"))
    result = audit(records)
    lag = result.checks["P11"]
    assert lag.verdict == "info" and lag.stats["count"] == 4
    assert lag.stats["p99"] == pytest.approx(0.05)
    conf = result.checks["P11'"]
    assert conf.stats["gave_up"] == 1
    assert conf.stats["gave_up_share"] == pytest.approx(0.25)
    assert [e["order_id"] for e in conf.examples] == ["o-1"]


def test_a_checker_that_raises_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: Facts) -> checkers.CheckResult:
        raise RuntimeError("boom")

    monkeypatch.setitem(CHECKERS, "P2", ("false success", broken))
    result = audit(clean_run(3))
    assert result.checks["P2"].verdict == "unknown"
    assert "boom" in (result.checks["P2"].error or "")
    assert result.verdict == "unknown"


def test_invalid_beats_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: Facts) -> checkers.CheckResult:
        raise KeyError("x")

    monkeypatch.setitem(CHECKERS, "P2", ("false success", broken))
    records = clean_run(3)
    lost_payment(records)
    assert audit(records).verdict == "invalid"


def test_zero_completed_operations_is_unknown() -> None:
    records = clean_run(3)
    for op in records.ops:
        op.outcome = "fail"
    result = audit(records)
    assert result.verdict in ("unknown", "invalid")
    assert any("no operation completed" in reason for reason in result.reasons)
    empty = Records()
    assert audit(empty).verdict == "unknown"


def test_example_count_is_capped() -> None:
    records = clean_run(30)
    for o in records.orders:
        o.status = "CREATED"
    result = audit(records, max_examples=4)
    assert result.checks["O3"].count == 30
    assert len(result.checks["O3"].examples) == 4


def test_refunding_a_second_charge_is_not_a_duplicate_effect() -> None:
    records = clean_run(5)
    duplicate_charge(records)
    records.inbox.append(InboxEntry("x-dup", "n-dup", "o-1", T0 + 30, "refund"))
    records.notifications.append(Notification("n-dup", "p-dup", "o-1:retry-1", "x-dup", 1,
                                              T0 + 30, True, 200, False, False, None))
    assert run(records, "P9").count == 0
    assert run(records, "P12").count == 0


def test_lost_acknowledgement_is_unknown_without_any_receipts() -> None:
    records = clean_run(5)
    records.receipts = []  # an order export that predates receipts cannot be judged
    assert run(records, "P13").verdict == "unknown"
