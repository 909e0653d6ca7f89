"""The history recorder and the master's merger: pairing, unknowns, uniqueness, dedupe."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from loadtests.history import (
    HistoryError,
    HistoryMerger,
    HistoryRecorder,
    check_pairing,
    read_history,
    summarize,
)


class Ticks:
    """A clock that advances one second per reading."""

    def __init__(self) -> None:
        self._t = itertools.count(100)

    def __call__(self) -> float:
        return float(next(self._t))


def recorder(node: str = "w0") -> HistoryRecorder:
    return HistoryRecorder(node, clock=Ticks(), wall=Ticks())


def test_each_outcome_pairs_an_invoke_with_exactly_one_completion() -> None:
    rec = recorder()
    with rec.begin("place_order", process="w0:1", key="k1", value={"sku": "a"}) as op:
        op.order_id = "o-1"
        op.ok({"status": "AWAITING_PAYMENT"})
    with rec.begin("pay", process="w0:1", key="k1", order_id="o-1") as op:
        op.fail("402 payment_declined")
    with rec.begin("poll", process="w0:1", key="k1", order_id="o-1") as op:
        op.info("ReadTimeout")
    records = rec.drain()
    assert [(r["f"], r["type"]) for r in records] == [
        ("place_order", "invoke"),
        ("place_order", "ok"),
        ("pay", "invoke"),
        ("pay", "fail"),
        ("poll", "invoke"),
        ("poll", "info"),
    ]
    assert check_pairing(records) == []
    place_invoke, place_ok = records[0], records[1]
    assert place_invoke["op_id"] == place_ok["op_id"]
    assert place_invoke["trace_id"] == place_ok["trace_id"]
    assert place_invoke["order_id"] is None and place_ok["order_id"] == "o-1"
    assert place_ok["time"] > place_invoke["time"]
    assert records[3]["error"] == "402 payment_declined"
    assert rec.produced == 6 and rec.drain() == []


def test_an_operation_left_unfinished_is_info_never_fail() -> None:
    rec = recorder()
    with rec.begin("pay", process="w0:1", key="k"):
        pass
    with pytest.raises(KeyError), rec.begin("pay", process="w0:1", key="k"):
        raise KeyError("bug in the journey")

    class GreenletExitLike(BaseException):
        """What gevent raises in a user greenlet when Locust stops the load."""

    with pytest.raises(GreenletExitLike), rec.begin("poll", process="w0:1", key="k"):
        raise GreenletExitLike()
    completions = [r for r in rec.drain() if r["type"] != "invoke"]
    assert [r["type"] for r in completions] == ["info", "info", "info"]
    assert completions[0]["error"] == "not completed"
    assert completions[1]["error"].startswith("interrupted: KeyError")
    assert completions[2]["error"] == "interrupted: load stopped"


def test_completing_twice_is_refused() -> None:
    rec = recorder()
    op = rec.begin("pay", process="w0:1")
    op.ok()
    with pytest.raises(HistoryError, match="already completed as ok"):
        op.info("late timeout")
    assert [r["type"] for r in rec.drain()] == ["invoke", "ok"]


def test_unknown_operation_names_the_known_ones() -> None:
    with pytest.raises(HistoryError, match="place_order, pay, poll, forge, browse"):
        recorder().begin("refund", process="w0:1")


def test_interrupt_open_completes_what_is_in_flight() -> None:
    rec = recorder()
    rec.begin("place_order", process="w0:1", key="k1")
    done = rec.begin("place_order", process="w0:2", key="k2")
    done.ok()
    assert rec.open_count == 1
    assert rec.interrupt_open() == 1
    records = rec.drain()
    assert check_pairing(records) == []
    assert records[-1]["type"] == "info" and records[-1]["key"] == "k1"


def test_op_ids_and_trace_ids_are_unique_across_nodes() -> None:
    recs = [recorder("w0"), recorder("w1"), recorder("w0")]  # a restarted worker reuses its name
    ops = [r.begin("browse", process="p") for r in recs for _ in range(200)]
    assert len({op.op_id for op in ops}) == 600
    assert len({op.trace_id for op in ops}) == 600
    header = ops[0].traceparent.split("-")
    assert header[0] == "00" and header[1] == ops[0].trace_id and len(header[2]) == 16


def test_check_pairing_finds_each_problem() -> None:
    def rec(kind: str, op_id: str) -> dict[str, str]:
        return {"type": kind, "op_id": op_id, "f": "pay"}

    problems = check_pairing(
        [
            rec("invoke", "a"),
            rec("ok", "a"),
            rec("info", "a"),  # completed twice
            rec("fail", "b"),  # completion without invoke
            rec("invoke", "c"),  # never completed
            rec("invoke", "d"),
            rec("invoke", "d"),  # invoked twice
            rec("ok", "d"),
        ]
    )
    assert problems == [
        "a: completed twice (ok, info)",
        "b: fail without an invoke",
        "d: invoked twice",
        "c: invoke without completion",
    ]


def batch(node: str, seq: int, records: list[dict], **flags: object) -> dict:
    return {"node": node, "seq": seq, "records": records, **flags}


def test_merger_writes_batches_from_many_workers_once() -> None:
    w0, w1 = recorder("w0"), recorder("w1")
    written: list[dict] = []
    merger = HistoryMerger(write=written.append)
    merger.start_node("w0")
    merger.start_node("w1")
    with w0.begin("place_order", process="w0:0", key="a") as op:
        op.ok()
    first = batch("w0", 1, w0.drain(), produced=w0.produced)
    assert merger.add_batch(first) == 2
    assert merger.add_batch(first) == 0  # a resent batch is ignored
    with w1.begin("pay", process="w1:0", key="b") as op:
        op.info("timeout")
    w1_records = w1.drain()
    merger.add_batch(batch("w1", 1, w1_records, produced=w1.produced))
    # The same records again under a new sequence number: deduplicated per record.
    assert merger.add_batch(batch("w1", 2, w1_records, produced=w1.produced)) == 0
    assert not merger.complete()  # no final batch yet
    merger.add_batch(batch("w0", 2, [], final=True, produced=w0.produced))
    merger.add_batch(batch("w1", 3, [], final=True, produced=w1.produced))
    assert merger.complete()
    assert len(written) == 4 and check_pairing(written) == []
    assert merger.report()["w1"] == {
        "produced": 2,
        "written": 2,
        "duplicates": 2,
        "batches": 3,
        "final": True,
    }
    assert merger.ops() == {
        "place_order": {"ok": 1, "fail": 0, "info": 0},
        "pay": {"ok": 0, "fail": 0, "info": 1},
    }


def test_merger_reports_a_lost_batch_as_incomplete() -> None:
    w0 = recorder("w0")
    merger = HistoryMerger()
    with w0.begin("browse", process="w0:0") as op:
        op.ok()
    w0.drain()  # this batch never reaches the master
    merger.add_batch(batch("w0", 2, [], final=True, produced=w0.produced))
    assert not merger.complete()
    assert merger.report()["w0"]["written"] == 0 and merger.report()["w0"]["produced"] == 2


def test_merger_second_completion_for_an_op_is_dropped() -> None:
    merger = HistoryMerger()
    invoke = {"type": "invoke", "op_id": "x", "f": "pay", "time": 1.0}
    merger.add_batch(batch("w0", 1, [invoke, {**invoke, "type": "info", "time": 3.0}]))
    merger.add_batch(batch("w0", 2, [{**invoke, "type": "ok", "time": 4.0}]))
    assert merger.ops() == {"pay": {"ok": 0, "fail": 0, "info": 1}}


def test_merger_reports_latency_of_each_completion() -> None:
    seen: list[tuple[str, float | None]] = []
    merger = HistoryMerger(on_complete=lambda rec, latency: seen.append((rec["type"], latency)))
    invoke = {"type": "invoke", "op_id": "x", "f": "pay", "time": 10.0}
    merger.add_batch(batch("w0", 1, [invoke]))
    merger.add_batch(batch("w0", 2, [{**invoke, "type": "ok", "time": 10.25}]))
    assert seen == [("ok", 0.25)]


def test_summarize_and_read_history_round_trip(tmp_path: Path) -> None:
    rec = recorder()
    with rec.begin("place_order", process="w0:0", key="a") as op:
        op.ok()
    with rec.begin("pay", process="w0:0", key="a") as op:
        op.info("reset")
    path = tmp_path / "history.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in rec.drain()))
    summary = summarize(read_history(path))
    assert summary["records"] == 4 and summary["problems"] == []
    assert summary["ops"]["pay"] == {"invoke": 1, "ok": 0, "fail": 0, "info": 1}
