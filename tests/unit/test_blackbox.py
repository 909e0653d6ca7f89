"""The black-box audit: with no order export, the order records are the final read; classes
decided from the history, the ledger and the inventory give the full audit's verdicts, and
those that need the order service's internals answer unknown, never valid."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loadtests.adapter import OrderAdapter, OrderView, Result
from loadtests.final_read import orders_in_history, read_every_order
from slos.audit import AuditResult, audit
from slos.blackbox import NEEDS_EXPORT, UNDECIDABLE
from slos.records import Op, Records, RecordsError, StockEvent, load_run
from slos.synthetic import clean_run, write_run


def final_read_rows(
    r: Records, overrides: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """What a final read of the orders in `r` would have written (the adapter saw them)."""
    rows = []
    for o in r.orders:
        row = {"type": "final_read", "order_id": o.order_id, "outcome": "ok",
               "status": o.status, "payment_id": o.payment_id, "amount": o.amount,
               "key": o.idempotency_key, "sku": o.sku, "qty": o.qty,
               "created_at": o.created_at, "trace_id": o.trace_id, "http_status": 200,
               "error": None, "t": 0.0}
        rows.append({**row, **(overrides or {}).get(o.order_id, {})})
    return rows


def both_audits(
    tmp_path: Path,
    plant: Callable[[Records], None] | None = None,
    reads: dict[str, dict[str, Any]] | None = None,
) -> tuple[AuditResult, AuditResult]:
    """(full audit, black-box audit) of the same run."""
    r = clean_run(20)
    if plant is not None:
        plant(r)
    run_dir = write_run(r, tmp_path / "run")
    full = audit(load_run(run_dir))
    (run_dir / "exports" / "order.ndjson").unlink()
    lines = [json.dumps(row) for row in final_read_rows(r, reads)]
    (run_dir / "final_read.ndjson").write_text("\n".join(lines) + "\n")
    return full, audit(load_run(run_dir))


def verdicts(result: AuditResult) -> dict[str, str]:
    return {cls: check.verdict for cls, check in result.checks.items()}


def test_a_clean_run_black_box_decides_what_it_can_and_answers_unknown_for_the_rest(
    tmp_path: Path,
) -> None:
    full, black = both_audits(tmp_path)
    assert full.mode == "full" and full.verdict == "valid"
    assert black.mode == "blackbox" and black.verdict == "unknown"
    for cls in ("P1", "P2", "P3", "P4", "P6", "P7", "P8", "P10", "O1", "O2", "O3",
                "I1", "I2", "I3", "I4", "I5"):
        assert black.checks[cls].verdict == "valid", cls
    for cls in (*UNDECIDABLE, "P9", "P12"):
        check = black.checks[cls]
        assert check.verdict == "unknown" and NEEDS_EXPORT in (check.error or ""), cls
    assert any("P13" in reason and NEEDS_EXPORT in reason for reason in black.reasons)


def orphan_charge(r: Records) -> None:
    r.orders[1].status = "CLOSED"


def duplicate_charge(r: Records) -> None:
    first = r.ledger[2]
    r.ledger.append(type(first)(999, "x-dup", "p-dup", first.merchant_order_id, "charge",
                                first.amount, "succeeded", first.t + 1))


def oversell(r: Records) -> None:
    r.stock[0].available = -1


def lost_payment(r: Records) -> None:
    r.orders[3].status = "AWAITING_PAYMENT"


@pytest.mark.parametrize(
    ("plant", "cls"),
    [(orphan_charge, "P6"), (duplicate_charge, "P8"), (oversell, "I1"), (lost_payment, "P1")],
)
def test_visible_anomalies_get_the_full_audits_verdict(
    tmp_path: Path, plant: Callable[[Records], None], cls: str
) -> None:
    full, black = both_audits(tmp_path, plant)
    assert full.checks[cls].verdict == black.checks[cls].verdict == "invalid"
    assert full.checks[cls].count == black.checks[cls].count
    assert black.verdict == "invalid"


def test_a_double_confirm_at_the_inventory_is_a_black_box_duplicate_effect(
    tmp_path: Path,
) -> None:
    def confirm_twice(r: Records) -> None:
        first = next(e for e in r.stock_events if e.kind == "confirm")
        r.stock_events.append(StockEvent(first.order_id, "confirm", first.t + 1, 0))

    _, black = both_audits(tmp_path, confirm_twice)
    assert black.checks["P9"].verdict == "invalid" and black.checks["P9"].count == 1


def test_an_accepted_forgery_on_an_unfunded_order_is_visible(tmp_path: Path) -> None:
    def forged(r: Records) -> None:
        victim = r.orders[4]
        r.ledger = [e for e in r.ledger if e.merchant_order_id != victim.order_id]
        r.ops = [op for op in r.ops if not (op.f == "pay" and op.order_id == victim.order_id)]
        t = victim.created_at + 0.5
        r.ops.append(Op("forge", "f1", "w:2", victim.idempotency_key, victim.order_id, t,
                        t + 0.01, 0.01, "ok", None, None, None))

    full, black = both_audits(tmp_path, forged)
    assert black.checks["P12"].verdict == "invalid" and black.checks["P7"].verdict == "invalid"
    assert full.checks["P7"].verdict == "invalid"


def test_a_placed_order_the_target_does_not_know_is_lost(tmp_path: Path) -> None:
    _, black = both_audits(tmp_path, reads={"o-5": {"outcome": "fail", "status": None,
                                                    "http_status": 404}})
    assert black.checks["O1"].verdict == "invalid"
    assert [e["order_id"] for e in black.checks["O1"].examples] == ["o-5"]


def test_two_orders_for_one_key_are_a_duplicate_order(tmp_path: Path) -> None:
    _, black = both_audits(tmp_path, reads={"o-6": {"key": "k-7"}})
    assert black.checks["O2"].verdict == "invalid"


def test_an_inconclusive_final_read_leaves_the_order_classes_unknown(tmp_path: Path) -> None:
    _, black = both_audits(tmp_path, reads={"o-2": {"outcome": "info", "status": None,
                                                    "error": "TimeoutError"}})
    for cls in ("O1", "O3", "P1", "P6", "P7"):
        assert black.checks[cls].verdict == "unknown", cls
        assert "final read of 1 order" in (black.checks[cls].error or "")
    assert black.checks["I1"].verdict == "valid"


def test_a_bad_final_read_row_names_its_line(tmp_path: Path) -> None:
    r = clean_run(3)
    run_dir = write_run(r, tmp_path / "run")
    (run_dir / "exports" / "order.ndjson").unlink()
    rows = final_read_rows(r)
    del rows[1]["outcome"]
    (run_dir / "final_read.ndjson").write_text("".join(json.dumps(x) + "\n" for x in rows))
    with pytest.raises(RecordsError, match=r"final_read.ndjson:2: bad record"):
        load_run(run_dir)


def test_neither_order_export_nor_final_read_is_a_missing_file(tmp_path: Path) -> None:
    run_dir = write_run(clean_run(3), tmp_path / "run")
    (run_dir / "exports" / "order.ndjson").unlink()
    with pytest.raises(RecordsError, match=r"exports/order.ndjson \(or final_read.ndjson\)"):
        load_run(run_dir)


# --- the loadtests side: what is read, and how often ------------------------------------


def test_orders_in_history_carry_what_the_shopper_asked_for() -> None:
    history: list[dict[str, Any]] = [
        {"type": "invoke", "f": "place_order", "op_id": "1", "key": "k-1", "order_id": None,
         "value": {"sku": "s", "qty": 2, "amount": 700}, "wall": 1.0},
        {"type": "ok", "f": "place_order", "op_id": "1", "key": "k-1", "order_id": "o-1",
         "value": {"status": "AWAITING_PAYMENT"}, "wall": 1.2, "trace_id": "t1"},
        {"type": "invoke", "f": "browse", "op_id": "2", "order_id": "o-9", "wall": 2.0},
    ]
    orders = orders_in_history(history, also=["o-ledger"])
    assert orders["o-1"] == {"key": "k-1", "sku": "s", "qty": 2, "amount": 700,
                             "created_at": 1.2, "trace_id": "t1"}
    assert orders["o-9"] == {} and orders["o-ledger"] == {}


class Scripted(OrderAdapter):
    def __init__(self, answers: dict[str, list[Result]]) -> None:
        super().__init__(http=None, options={})  # type: ignore[arg-type]
        self.answers, self.reads = answers, list[str]()

    def read_order(self, order_id: str, *, traceparent: str | None = None) -> Result:
        self.reads.append(order_id)
        return self.answers[order_id].pop(0)


def test_the_final_read_retries_unclear_reads_and_keeps_definite_answers() -> None:
    view = OrderView("o-1", "PAID", "p-1", None)
    adapter = Scripted({
        "o-1": [Result("info", error="timeout"), Result("ok", order=view)],
        "o-2": [Result("fail", http_status=404, error="404 not_found")],
        "o-3": [Result("info", error="reset")] * 3,
    })
    rows = read_every_order(adapter, {"o-1": {"amount": 500}, "o-2": {}, "o-3": {}},
                            backoff_s=0)
    assert [r["outcome"] for r in rows] == ["ok", "fail", "info"]
    assert rows[0]["status"] == "PAID" and rows[0]["amount"] == 500  # asked for, not shown
    assert adapter.reads == ["o-1", "o-1", "o-2", "o-3", "o-3", "o-3"]


# --- the SLO file decides whether "needs the target's export" blocks ----------------------

POLICY_SLO = {
    "name": "policy",
    "min_samples": 1,
    "objectives": [
        {"name": "money", "sli": "anomaly", "class": ["P1", "P6", "P13"], "pass": "count == 0"},
        {"name": "messages", "sli": "anomaly", "class": ["Q1"], "pass": "count == 0"},
        {"name": "lag", "sli": "payment_lag", "pass": "p(99) < 30s"},
    ],
}


def black_box_run(tmp_path: Path, plant: Callable[[Records], None] | None = None) -> Path:
    r = clean_run(20, every_path=True)
    if plant is not None:
        plant(r)
    run_dir = write_run(r, tmp_path / "run")
    (run_dir / "exports" / "order.ndjson").unlink()
    lines = [json.dumps(row) for row in final_read_rows(r)]
    (run_dir / "final_read.ndjson").write_text("\n".join(lines) + "\n")
    return run_dir


def gate_with(run_dir: Path, policy: str | None) -> dict[str, Any]:
    from slos.gate import gate_records
    from slos.model import SloFile

    data = dict(POLICY_SLO, **({"needs_export": policy} if policy else {}))
    result = gate_records(run_dir, load_run(run_dir), SloFile.model_validate(data))
    return {o.name: o for o in result.objectives} | {"verdict": result.verdict}


def test_needs_export_blocks_by_default_and_allow_decides_on_what_was_seen(
    tmp_path: Path,
) -> None:
    run_dir = black_box_run(tmp_path)
    blocked = gate_with(run_dir, None)
    assert blocked["verdict"] == "unknown"
    assert blocked["money"].tier == "unknown" and "P13" in blocked["money"].reason
    allowed = gate_with(run_dir, "allow")
    assert allowed["verdict"] == "pass"
    money = allowed["money"]
    assert money.tier == "pass" and "P13 not decided" in money.reason, money.reason
    assert NEEDS_EXPORT in money.reason
    for name in ("messages", "lag"):  # nothing of them visible: not applicable, with the reason
        assert allowed[name].tier == "not_applicable", allowed[name]
        assert NEEDS_EXPORT in allowed[name].reason


def test_an_anomaly_found_fails_whatever_stayed_undecided(tmp_path: Path) -> None:
    def lose_payment(r: Records) -> None:
        r.orders[3].status = "CLOSED"  # paid and charged, the order closed: P1, P6

    run_dir = black_box_run(tmp_path, lose_payment)
    for policy in (None, "allow"):
        gate = gate_with(run_dir, policy)
        assert gate["money"].tier == "fail", (policy, gate["money"].reason)
        assert gate["verdict"] == "fail"


def test_needs_export_refuses_other_words(tmp_path: Path) -> None:
    from slos.model import SloFileError, load_slo

    path = tmp_path / "slo.yaml"
    path.write_text(json.dumps(dict(POLICY_SLO, needs_export="maybe")))
    with pytest.raises(SloFileError, match="needs_export"):
        load_slo(path)
