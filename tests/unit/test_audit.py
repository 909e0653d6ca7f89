"""Every checker on hand-made records that hold its anomaly exactly once, and on clean ones."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from slos import checkers
from slos import records as records_module
from slos.audit import audit
from slos.checkers import CHECKERS, INFO_CLASSES, Facts
from slos.records import (
    InboxEntry,
    LedgerEntry,
    Notification,
    Op,
    Order,
    OrderRefund,
    OutboxEntry,
    Records,
    RecordsError,
    StockEvent,
    Tombstone,
    Transition,
    load_run,
)
from slos.synthetic import T0, clean_run, write_run


def run(records: Records, cls: str) -> checkers.CheckResult:
    return CHECKERS[cls](Facts(records))


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


def paid_but_unconfirmed(r: Records) -> str:
    res = next(x for x in r.reservations if x.order_id == "o-3")
    res.state, res.t_end = "TRY", None  # paid, never confirmed; young: no I3 yet
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
    ("I6", paid_but_unconfirmed), ("Q1", outbox_lost),
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
    def broken(_: Facts) -> checkers.Found:
        raise RuntimeError("boom")

    monkeypatch.setitem(CHECKERS, "P2", replace(CHECKERS["P2"], find=broken))
    result = audit(clean_run(3))
    assert result.checks["P2"].verdict == "unknown"
    assert "boom" in (result.checks["P2"].error or "")
    assert result.verdict == "unknown"


def test_invalid_beats_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: Facts) -> checkers.Found:
        raise KeyError("x")

    monkeypatch.setitem(CHECKERS, "P2", replace(CHECKERS["P2"], find=broken))
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


# --- the fast paths agree with the general ones ------------------------------------------------


def test_earliest_pay_and_poll_count_when_an_order_has_several() -> None:
    records = clean_run(3)
    pay, poll = op_of(records, "pay", "o-1"), op_of(records, "poll", "o-1")
    assert pay.end is not None and poll.end is not None
    records.ops.append(Op("pay", "b-again", "w:2", "k-1", "o-1", pay.start - 1, pay.end - 0.5,
                          0.01, "ok", None, "SUCCEEDED", None))  # an earlier ack of the same pay
    records.ops.append(Op("poll", "c-late", "w:2", "k-1", "o-1", poll.start + 5, poll.end + 5,
                          0.01, "ok", None, "PAID", None))  # a later poll changes nothing
    waits = run(records, "P11'").stats
    assert waits["count"] == 3
    assert waits["max"] == pytest.approx(poll.end - (pay.end - 0.5))


def test_a_payment_charged_twice_counts_once() -> None:
    records = clean_run(4)
    e = charge(records, "o-2")
    records.ledger.append(LedgerEntry(77, "x-2b", e.payment_id, "o-2", "charge", e.amount,
                                      "succeeded", e.t + 1))
    for cls in ("P2", "P6", "P7", "P8", "P10", "I5"):
        assert run(records, cls).count == 0, cls
    assert Facts(records).charges["o-2"] == (e,)


def test_reserved_quantities_other_than_one_are_summed() -> None:
    records = clean_run(4)
    records.reservations[0].qty = 3
    assert found(records, "I2") == ["sku-0"]
    records.stock[0].available -= 2
    assert run(records, "I2").count == 0
    assert Facts(records).reserved["CONFIRMED"]["sku-0"] == 3


def test_payment_lag_with_a_repeated_order_row_and_a_refund() -> None:
    records = clean_run(4)
    records.orders.append(order(records, "o-1"))  # the same order exported twice
    assert run(records, "P11").stats["count"] == 5
    e = charge(records, "o-2")
    records.ledger.append(LedgerEntry(90, e.txn_id, e.payment_id, "o-2", "refund", e.amount,
                                      "succeeded", e.t + 1, "rf-x"))
    assert run(records, "P11").stats["count"] == 4  # o-2 no longer has a live charge


def test_duplicate_notifications_without_txn_ids_are_counted_by_pair() -> None:
    records = clean_run(3)
    for n in records.notifications:
        n.txn_id = None
    assert run(records, "P9'").count == 0
    first = records.notifications[0]
    records.notifications.append(Notification(first.notify_id, None, first.merchant_order_id,
                                              None, 2, first.t + 1, True, 200, False, False,
                                              None))
    assert run(records, "P9'").count == 1


def test_paid_order_with_another_orders_charge_txn_is_not_forged() -> None:
    records = clean_run(3)
    order(records, "o-1").txn_id = "x-2"  # odd, but x-2 is a real charge: not P12's business
    assert run(records, "P12").count == 0


# --- loading run directories ---------------------------------------------------------------


def _same_records(loaded: Records, expected: Records) -> None:
    for name in ("payments", "ledger", "notifications", "orders", "transitions", "inbox",
                 "receipts", "outbox", "stock", "reservations", "stock_events", "faults"):
        assert getattr(loaded, name) == getattr(expected, name), name
    assert len(loaded.ops) == len(expected.ops)
    by_id = {op.op_id: op for op in loaded.ops}  # unfinished ops come last once loaded
    for want in expected.ops:
        got = by_id[want.op_id]
        assert (got.f, got.op_id, got.key, got.order_id, got.outcome, got.status, got.error) == (
            want.f, want.op_id, want.key, want.order_id, want.outcome, want.status, want.error)
        assert got.start == want.start
        assert got.end == pytest.approx(want.end) and got.latency == pytest.approx(want.latency)


def _varied_run() -> Records:
    records = clean_run(40, faults=[(5, 2, "latency", "order_channel")])
    records.faults[0].params = {"latency": 0.2, "jitter": 0.05}
    e = charge(records, "o-3")
    records.ledger.append(LedgerEntry(50, e.txn_id, e.payment_id, "o-3", "refund", e.amount,
                                      "succeeded", e.t + 1, "rf-x-3"))
    order(records, "o-4").flags = ["unfunded", "bill_x"]
    pay = op_of(records, "pay", "o-5")
    pay.outcome, pay.end, pay.latency, pay.status = "info", None, None, None
    op_of(records, "poll", "o-6").error = "timeout, retried"
    records.tombstones.append(Tombstone("o-7", T0 + 1))
    return records


def test_loaded_run_equals_the_written_records(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_module, "CHUNK_BYTES", 4096)  # many chunks, and their seams
    records = _varied_run()
    loaded = load_run(write_run(records, tmp_path / "run"))
    _same_records(loaded, records)
    assert audit(loaded).to_dict()["checks"] == audit(records).to_dict()["checks"]


def test_loaded_strings_are_shared_between_records(tmp_path: Path) -> None:
    loaded = load_run(write_run(clean_run(5), tmp_path / "run"))
    first = loaded.orders[0]
    assert first.order_id is loaded.transitions[0].order_id is loaded.ops[0].order_id
    assert first.status is loaded.orders[1].status


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("chunk_bytes", [4096, 1 << 20])
def test_blank_lines_and_a_torn_last_line_are_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int) -> None:
    monkeypatch.setattr(records_module, "CHUNK_BYTES", chunk_bytes)
    records = _varied_run()
    run_dir = write_run(records, tmp_path / "run")
    history = run_dir / "history.ndjson"
    lines = _lines(history)
    lines.insert(37, "\n")
    lines.insert(3, "   \n")
    history.write_text("".join(lines) + '{"type": "invoke", "f": "pay", "op_')  # writer killed
    _same_records(load_run(run_dir), records)


@pytest.mark.parametrize(("bad", "error"), [
    ('{"type": "ledger", "t": 1.0\n', "not valid JSON"),
    ('{"type": "payment", "payment_id": "p"}, {"type": "payment"}\n', "not valid JSON"),
    ("[1, 2]\n", "not a JSON object"),
    ('{"type": "ledger", "merchant_order_id": "o-1", "kind": "charge", "t": "soon"}\n',
     "bad record"),
    ('{"type": "payment", "payment_id": "p-x", "amount": 5}\n', "bad record"),
])
@pytest.mark.parametrize("chunk_bytes", [4096, 1 << 20])
def test_a_bad_line_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str,
                             error: str, chunk_bytes: int) -> None:
    monkeypatch.setattr(records_module, "CHUNK_BYTES", chunk_bytes)
    run_dir = write_run(clean_run(40), tmp_path / "run")
    channel = run_dir / "exports" / "channel.ndjson"
    lines = _lines(channel)
    lines.insert(70, bad)
    channel.write_text("".join(lines))
    with pytest.raises(RecordsError, match=rf"channel.ndjson:71: {error}"):
        load_run(run_dir)


def test_a_bad_history_line_is_named(tmp_path: Path) -> None:
    run_dir = write_run(clean_run(10), tmp_path / "run")
    history = run_dir / "history.ndjson"
    lines = _lines(history)
    lines[11] = lines[11].replace('"time": ', '"time": "x", "was": ')  # a completion
    history.write_text("".join(lines))
    with pytest.raises(RecordsError, match=r"history.ndjson:12: history record .* bad"):
        load_run(run_dir)


def test_values_of_other_json_types_are_converted_as_one_by_one(tmp_path: Path) -> None:
    run_dir = write_run(clean_run(3), tmp_path / "run")
    order_path = run_dir / "exports" / "order.ndjson"
    lines = _lines(order_path)
    lines[0] = (lines[0].replace('"qty": 1', '"qty": "2"')
                .replace('"t_paid": ', '"t_paid": null, "x": '))
    lines[1] = (lines[1].replace('"amount": 1000', '"amount": 999.0')
                .replace('"sku": "sku-1"', '"sku": ""'))
    order_path.write_text("".join(lines))
    loaded = load_run(run_dir)
    assert (loaded.orders[0].qty, loaded.orders[0].t_paid) == (2, None)
    assert (loaded.orders[1].amount, loaded.orders[1].sku) == (999, None)


def _pay_after_close(r: Records, order_id: str, *, refunded: bool, charge_after: float = 2.0,
                     ledger_close: bool = True, inventory_cancel: bool = True,
                     reason: str = "paid_after_close") -> None:
    """The order timed out and was closed; the shopper's charge landed `charge_after` seconds
    after the close (negative: before it); the order service refunds it giving `reason`.
    The close is recorded by the channel (`ledger_close`) and the inventory
    (`inventory_cancel`), as the real services do."""
    o = order(r, order_id)
    closed = o.created_at + 1.0
    o.status, o.t_paid, o.t_final = "CLOSED", None, closed
    r.transitions = [
        t for t in r.transitions if not (t.order_id == order_id and t.to_state == "PAID")
    ]
    r.transitions.append(Transition(order_id, "AWAITING_PAYMENT", "CLOSED", closed, "close"))
    r.outbox = [b for b in r.outbox if b.order_id != order_id]
    for res in r.reservations:
        if res.order_id == order_id:
            res.state, res.t_end = "CANCELLED", closed + 0.1
    r.stock_events = [e for e in r.stock_events
                      if not (e.order_id == order_id and e.kind == "confirm")]
    if inventory_cancel:
        r.stock_events.append(StockEvent(order_id, "cancel", closed + 0.1, 1))
    for s in r.stock:
        if s.sku == o.sku:
            s.available += o.qty
    c = charge(r, order_id)
    c.t = closed + charge_after
    if ledger_close:
        r.ledger.append(LedgerEntry(len(r.ledger) + 1, None, c.payment_id, order_id, "close", 0,
                                    "succeeded", closed))
    refund_at = max(closed, c.t) + 3.0
    r.order_refunds.append(OrderRefund(order_id, f"rf-{c.txn_id}", c.txn_id, c.amount,
                                       refund_at, reason))
    if refunded:
        r.ledger.append(LedgerEntry(len(r.ledger) + 1, c.txn_id, c.payment_id, order_id,
                                    "refund", c.amount, "succeeded", refund_at,
                                    f"rf-{c.txn_id}"))


def test_a_late_payment_that_was_refunded_is_not_lost() -> None:
    records = clean_run(5)
    _pay_after_close(records, "o-2", refunded=True)
    assert run(records, "P1").count == 0 and run(records, "P2").count == 0
    assert found(records, "P14") == ["o-2"] and run(records, "P14").verdict == "info"
    assert run(records, "P6").count == 0
    assert audit(records).verdict == "valid"


@pytest.mark.parametrize(("ledger_close", "inventory_cancel"), [(True, False), (False, True)])
def test_either_the_channel_or_the_inventory_dates_the_close(
        ledger_close: bool, inventory_cancel: bool) -> None:
    records = clean_run(5)
    _pay_after_close(records, "o-2", refunded=True, ledger_close=ledger_close,
                     inventory_cancel=inventory_cancel)
    assert found(records, "P14") == ["o-2"]
    assert run(records, "P1").count == 0 and run(records, "P2").count == 0


@pytest.mark.parametrize("reason", ["paid_after_close", "duplicate_charge", "customer_request"])
def test_a_payment_charged_before_the_close_then_refunded_is_lost_whatever_the_reason(
        reason: str) -> None:
    records = clean_run(5)
    # the order service closed a paid order and refunded it, calling it a late payment
    _pay_after_close(records, "o-2", refunded=True, charge_after=-0.5, reason=reason)
    assert found(records, "P1") == ["o-2"]
    assert found(records, "P2") == ["o-2"]
    assert run(records, "P14").count == 0
    assert audit(records).verdict == "invalid"


def test_a_refund_reason_without_any_close_record_is_not_a_late_payment() -> None:
    records = clean_run(5)
    # only the order service says the order was closed: neither channel nor inventory does
    _pay_after_close(records, "o-2", refunded=True, ledger_close=False, inventory_cancel=False)
    assert found(records, "P1") == ["o-2"] and found(records, "P2") == ["o-2"]
    assert run(records, "P14").count == 0


def test_a_paid_order_still_try_at_the_end_of_settle_is_flagged_before_its_ttl() -> None:
    records = clean_run(5)
    assert run(records, "I6").count == 0
    paid_but_unconfirmed(records)
    res = next(x for x in records.reservations if x.order_id == "o-3")
    assert records.reference_time() - res.t_try < res.ttl  # too young for I3
    assert run(records, "I3").count == 0
    assert found(records, "I6") == ["o-3"]
    assert "TRY" in run(records, "I6").examples[0]["detail"]


def test_an_unpaid_order_still_try_is_not_paid_but_unconfirmed() -> None:
    records = clean_run(5)
    paid_but_unconfirmed(records)
    records.ledger.remove(charge(records, "o-3"))
    order(records, "o-3").status = "AWAITING_PAYMENT"
    assert run(records, "I6").count == 0
    assert found(records, "O3") == ["o-3"]  # the stuck order is O3's business


def test_a_late_payment_never_refunded_is_an_orphan_charge() -> None:
    records = clean_run(5)
    _pay_after_close(records, "o-2", refunded=False)
    assert found(records, "P6") == ["o-2"]
    assert found(records, "P1") == ["o-2"]  # the shopper was told paid; nothing made it right
    assert run(records, "P14").count == 0


def test_a_late_pay_op_counts_as_a_pay_attempt() -> None:
    records = clean_run(5)
    op_of(records, "pay", "o-1").f = "late_pay"
    assert run(records, "P4").count == 0


# --- the registry: every documented class declared once, each exercised with and without ----

# CHECKS.md's anomaly table (id → verdict); the design doc itself is not in the repository.
CHECKS_MD = {
    "P1": "invalid", "P2": "invalid", "P3": "invalid", "P4": "invalid", "P5": "info",
    "P6": "invalid", "P7": "invalid", "P8": "invalid", "P9": "invalid", "P9'": "info",
    "P10": "invalid", "P11": "info", "P11'": "info", "P12": "invalid",
    "O1": "invalid", "O2": "invalid", "O3": "invalid",
    "I1": "invalid", "I2": "invalid", "I3": "invalid", "I4": "invalid", "I5": "invalid",
    "Q1": "invalid",
}
CONTRACTS_MD = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def _documented_classes(text: str) -> list[tuple[str, str]]:
    """(id, verdict) of each row of an anomaly table: `| id | name | definition | verdict |`."""
    rows = re.findall(r"^\| ((?:P|O|I|Q)\d+'?) \| [^|]+ \| [^|]+ \| ([^|]+) \|", text, re.M)
    return [(cls, "info" if verdict.strip().startswith("info") else "invalid")
            for cls, verdict in rows]


def test_registry_holds_every_documented_class_once_with_its_verdict() -> None:
    beyond = _documented_classes(CONTRACTS_MD.read_text())
    assert [cls for cls, _ in beyond] == ["P13", "P14", "I6"]
    documented = list(CHECKS_MD.items()) + beyond
    assert len({cls for cls, _ in documented}) == len(documented)  # no class in both docs
    assert {cls: c.verdict for cls, c in CHECKERS.items()} == dict(documented)
    assert {cls for cls, verdict in documented if verdict == "info"} == set(INFO_CLASSES)
    assert all(cls == c.cls for cls, c in CHECKERS.items())


def test_a_class_declared_twice_is_refused() -> None:
    before = dict(CHECKERS)
    with pytest.raises(ValueError, match=r"anomaly class P1 is declared twice"):
        checkers.checker("P1", "lost again")(checkers.lost_acknowledged_payment.find)
    with pytest.raises(ValueError, match=r"verdict 'maybe'"):
        checkers.checker("Z9", "undecided", verdict="maybe")
    assert dict(CHECKERS) == before


def test_gate_plain_words_and_slo_classes_come_from_the_registry() -> None:
    from slos import gate, model

    assert gate.PLAIN is checkers.PLAIN
    assert set(checkers.PLAIN) <= set(CHECKERS) - INFO_CLASSES
    assert model._classes() == ", ".join(CHECKERS)


def recovered(r: Records) -> str:
    op_of(r, "pay", "o-1").outcome = "info"  # the shopper never heard back; the order is paid
    return "o-1"


def notified_twice(r: Records) -> str:
    first = next(n for n in r.notifications if n.merchant_order_id == "o-2")
    r.notifications.append(Notification(first.notify_id, first.payment_id, "o-2", first.txn_id,
                                        2, first.t + 1, True, 200, False, False, None))
    return "o-2"


def uncharged_run() -> Records:
    records = clean_run(5)
    records.ledger = []
    return records


def one_payment_lag(r: Records) -> None:
    r.ledger.append(charge(clean_run(5), "o-1"))  # P11 reports samples, not orders
    return None


def never_saw_paid(r: Records) -> str:
    r.ops.remove(op_of(r, "poll", "o-1"))
    return "o-1"


def late_payment_refunded(r: Records) -> str:
    _pay_after_close(r, "o-2", refunded=True)
    return "o-2"


# (class, plant, the records it plants in); an invalid class's plants are PLANTS above.
INFO_PLANTS: list[tuple[str, Callable[[Records], str | None], Callable[[], Records]]] = [
    ("P5", recovered, lambda: clean_run(5)), ("P9'", notified_twice, lambda: clean_run(5)),
    ("P11", one_payment_lag, uncharged_run), ("P11'", never_saw_paid, lambda: clean_run(5)),
    ("P14", late_payment_refunded, lambda: clean_run(5)),
]
EXERCISES = [(cls, plant, lambda: clean_run(5)) for cls, plant in PLANTS] + INFO_PLANTS


def test_every_registered_checker_is_exercised() -> None:
    assert {cls for cls, _, _ in EXERCISES} == set(CHECKERS)


@pytest.mark.parametrize(("cls", "plant", "base"), EXERCISES,
                         ids=[f"{cls}-{plant.__name__}" for cls, plant, _ in EXERCISES])
def test_each_checker_with_and_without_its_anomaly(
        cls: str, plant: Callable[[Records], str | None], base: Callable[[], Records]) -> None:
    records = base()
    without = run(records, cls)
    assert (without.count, without.examples) == (0, [])
    assert without.verdict == ("info" if cls in INFO_CLASSES else "valid")
    culprit = plant(records)
    found_it = run(records, cls)
    assert (found_it.cls, found_it.name, found_it.verdict) == (
        cls, CHECKERS[cls].name, CHECKERS[cls].verdict)
    assert found_it.count == 1
    assert found(records, cls) == ([] if culprit is None else [culprit])


def _general_shapes(r: Records) -> None:
    """Records that leave every shortcut of the facts for its general path and change no fact:
    a zero refund (no single-charge ledger), a failed and a second, later ok pay, a second PAID
    poll, a rejected unknown notification and a notification without txn, all for o-4."""
    e = charge(r, "o-4")
    r.ledger.append(LedgerEntry(97, e.txn_id, e.payment_id, "o-4", "refund", 0, "succeeded",
                                e.t + 1, "rf-zero"))
    pay, poll = op_of(r, "pay", "o-4"), op_of(r, "poll", "o-4")
    assert pay.end is not None and poll.end is not None
    r.ops.append(replace(pay, op_id="pay-failed", start=pay.start - 2, end=pay.start - 1,
                         outcome="fail"))
    r.ops.append(replace(pay, op_id="pay-again", start=pay.end + 1, end=pay.end + 2))
    r.ops.append(replace(poll, op_id="poll-again", start=poll.end + 3, end=poll.end + 4))
    r.inbox.append(InboxEntry("x-4", "n-unknown", "o-4", T0 + 8, "rejected"))
    next(n for n in r.notifications if n.merchant_order_id == "o-4").txn_id = None


@pytest.mark.parametrize("plant", [None, lost_payment, false_success, failed_but_charged,
                                   unexpected_payment, duplicate_charge, amount_mismatch,
                                   forged_accepted, forged_txn, sold_unpaid])
def test_general_paths_agree_with_the_shortcuts(plant: Callable[[Records], str] | None) -> None:
    shortcut, general = clean_run(5), clean_run(5)
    if plant is not None:
        plant(shortcut)
        plant(general)
    _general_shapes(general)
    facts = Facts(general)
    assert facts.single_charges is None and facts.outcomes("pay").not_ok
    assert len(facts.outcomes("pay").ok_ids) > len(facts.outcomes("pay").ok)
    assert audit(general).to_dict()["checks"] == audit(shortcut).to_dict()["checks"]


def test_a_late_payer_is_not_a_shopper_who_gave_up_waiting() -> None:
    records = clean_run(5, every_path=True)  # o-refund: paid a closed order, refunded
    conf = run(records, "P11'")
    assert conf.stats["gave_up"] == 0 and conf.count == 0
    assert Facts(records).late_payers == {"o-late_pay", "o-refund"}
    late = next(op for op in records.ops if op.f == "late_pay" and op.order_id == "o-refund")
    late.f = "pay"  # the same pay by a shopper who then waits for PAID: it never came
    assert found(records, "P11'") == ["o-refund"]


def test_a_declined_pay_that_charged_is_failed_but_charged() -> None:
    records = clean_run(5, every_path=True)
    assert run(records, "P3").count == 0
    failed = next(e for e in records.ledger
                  if e.merchant_order_id == "o-declined" and e.status == "failed")
    failed.status = "succeeded"  # the channel took the money of a declined card
    assert found(records, "P3") == ["o-declined"]
