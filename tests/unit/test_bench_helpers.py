"""The helpers the benchmarks compute their figures with: /proc CPU reads, history cloning,
cachegrind totals."""

from __future__ import annotations

import os
import sqlite3
import statistics
from pathlib import Path

import pytest

from benchmarks import bench_history, bench_instructions, history_seed, proc_cpu

# --- /proc/<pid>/stat --------------------------------------------------------------------


def _own_stat() -> str:
    return Path(f"/proc/{os.getpid()}/stat").read_text()


def test_stat_parsing_reads_utime_and_stime_of_a_real_stat_line() -> None:
    stat = _own_stat()
    fields = stat[stat.rfind(")") + 2 :].split()
    # fields 14 and 15 of proc(5), counted from the state field (3)
    assert proc_cpu.parse_stat_ticks(stat) == int(fields[11]) + int(fields[12])


def test_stat_parsing_survives_a_command_name_with_spaces_and_parentheses() -> None:
    stat = _own_stat()
    pid, rest = stat.split(" (", 1)
    tricky = f"{pid} (py (bench) 1) 2){rest[rest.rfind(')') + 1 :]}"
    assert proc_cpu.parse_stat_ticks(tricky) == proc_cpu.parse_stat_ticks(stat)


def test_cpu_seconds_grows_with_work_done() -> None:
    before = proc_cpu.cpu_seconds(os.getpid())
    ticks_before = os.times()
    # enough work for several clock ticks, however fast the machine
    total = 0
    while os.times().user + os.times().system - ticks_before.user - ticks_before.system < 0.05:
        total += sum(range(10_000))
    assert proc_cpu.cpu_seconds(os.getpid()) > before


@pytest.mark.parametrize(
    "line, problem",
    [("no parenthesis here", r"no '\)'"), ("1 (x) S 1 2", "too short"),
     ("1 (x) S 1 2 3 4 5 6 7 8 9 10 u s 1", "not integers")],
)
def test_a_bad_stat_line_is_refused_with_the_problem(line: str, problem: str) -> None:
    with pytest.raises(proc_cpu.ProcCpuError, match=problem):
        proc_cpu.parse_stat_ticks(line)


def test_a_gone_process_names_its_pid() -> None:
    with pytest.raises(proc_cpu.ProcCpuError, match="pid 999999999"):
        proc_cpu.cpu_seconds(999_999_999)


def test_per_unit_ms_divides_each_process_delta() -> None:
    per = proc_cpu.per_unit_ms({"order": 1.0, "channel": 2.0}, {"order": 1.5, "channel": 2.1}, 50)
    assert per == pytest.approx({"order": 10.0, "channel": 2.0})
    with pytest.raises(ValueError, match="units must be > 0"):
        proc_cpu.per_unit_ms({"order": 1.0}, {"order": 2.0}, 0)
    with pytest.raises(ValueError, match="channel"):
        proc_cpu.per_unit_ms({"order": 1.0}, {"order": 2.0, "channel": 1.0}, 1)


# --- history cloning -----------------------------------------------------------------------

SCHEMA = """
CREATE TABLE orders (order_id TEXT PRIMARY KEY, idempotency_key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL, created_at REAL NOT NULL, t_paid REAL, ttl REAL NOT NULL);
CREATE TABLE ledger (seq INTEGER PRIMARY KEY AUTOINCREMENT, txn_id TEXT, order_id TEXT NOT NULL,
    t REAL NOT NULL, refund_id TEXT UNIQUE);
CREATE TRIGGER ledger_append_only BEFORE DELETE ON ledger BEGIN SELECT RAISE(ABORT, 'no'); END;
CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL);
CREATE TABLE recon_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), cursor INTEGER NOT NULL,
    swept_at REAL);
"""


def _template(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.executemany(
        "INSERT INTO orders VALUES (?, ?, 'PAID', ?, ?, 60.0)",
        [("o1", "k1", 1000.0, 1001.0), ("o2", "k2", 1002.0, None)],
    )
    conn.executemany(
        "INSERT INTO ledger (txn_id, order_id, t, refund_id) VALUES (?, ?, ?, NULL)",
        [("x1", "o1", 1001.0), ("x2", "o2", 1003.0)],
    )
    conn.execute("INSERT INTO stock VALUES ('bench', 5)")
    conn.execute("INSERT INTO recon_cursor VALUES (1, 2, NULL)")
    conn.commit()
    conn.close()


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_cloning_suffixes_ids_backdates_times_and_keeps_durations(tmp_path: Path) -> None:
    db = tmp_path / "order.db"
    _template(db)
    clones = {c.table: c for c in history_seed.clone_database(db, 3)}

    assert set(clones) == {"orders", "ledger"}  # stock and the cursor have no identifiers
    assert clones["orders"].rows_after == 8 and clones["ledger"].rows_after == 8
    step, age = history_seed.STEP_S, history_seed.AGE_S
    assert ("o1-h2", "k1-h2", "PAID", 1000.0 - 2 * step - age, 1001.0 - 2 * step - age, 60.0) in (
        _rows(db, "SELECT * FROM orders")
    )
    assert ("o2-h3", None) in _rows(db, "SELECT order_id, t_paid FROM orders")
    ledger = _rows(db, "SELECT seq, txn_id, order_id, refund_id FROM ledger ORDER BY seq")
    # template rows keep their sequence numbers; copies follow, the oldest copy first
    assert ledger[:2] == [(1, "x1", "o1", None), (2, "x2", "o2", None)]
    assert [row[0] for row in ledger] == list(range(1, 9))
    assert ledger[2][1:3] == ("x1-h3", "o1-h3") and ledger[-1][1:3] == ("x2-h1", "o2-h1")
    assert _rows(db, "SELECT * FROM stock") == [("bench", 5)]


def test_ids_agree_across_databases_cloned_with_the_same_copies(tmp_path: Path) -> None:
    order_db, channel_db = tmp_path / "order.db", tmp_path / "channel.db"
    _template(order_db)
    _template(channel_db)
    history_seed.clone_database(order_db, 2)
    history_seed.clone_database(channel_db, 2)
    assert _rows(order_db, "SELECT order_id FROM orders ORDER BY order_id") == _rows(
        channel_db, "SELECT order_id FROM ledger ORDER BY order_id"
    )


def test_cursor_moves_past_the_cloned_ledger(tmp_path: Path) -> None:
    order_db, channel_db = tmp_path / "order.db", tmp_path / "channel.db"
    _template(order_db)
    _template(channel_db)
    history_seed.clone_database(channel_db, 4)
    assert history_seed.advance_recon_cursor(order_db, channel_db) == 10
    assert _rows(order_db, "SELECT cursor FROM recon_cursor") == [(10,)]


def test_a_clash_with_existing_rows_is_refused_and_rolled_back(tmp_path: Path) -> None:
    db = tmp_path / "order.db"
    _template(db)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO orders VALUES ('o1-h1', 'k9', 'PAID', 1.0, NULL, 60.0)")
    conn.commit()
    conn.close()
    with pytest.raises(history_seed.HistorySeedError, match="table orders"):
        history_seed.clone_database(db, 2)
    assert len(_rows(db, "SELECT * FROM orders")) == 3
    assert len(_rows(db, "SELECT * FROM ledger")) == 2


def test_copies_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="copies must be >= 1"):
        history_seed.clone_database(tmp_path / "x.db", 0)


def test_history_ratio_is_taken_round_by_round() -> None:
    # a slow minute halves round 2's history stack and round 3's both stacks
    history, fresh = [450.0, 225.0, 225.0], [500.0, 500.0, 250.0]
    ratios = bench_history.round_ratios(history, fresh)
    assert ratios == pytest.approx([0.9, 0.45, 0.9])
    assert statistics.median(ratios) == pytest.approx(0.9)
    # the figure before, the ratio of the two medians, reads 0.45 from the same rounds
    assert statistics.median(history) / statistics.median(fresh) == pytest.approx(0.45)


@pytest.mark.parametrize(
    ("history", "fresh", "problem"),
    [([1.0], [1.0, 2.0], "as many history as fresh"), ([], [], "as many"),
     ([1.0], [0.0], "completed no journeys")],
)
def test_history_rounds_that_cannot_be_paired_are_refused(
    history: list[float], fresh: list[float], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        bench_history.round_ratios(history, fresh)


# --- Locust CPU per journey (bench_load) ---------------------------------------------------


def test_window_delta_takes_the_samples_inside_the_window() -> None:
    from benchmarks.bench_load import window_delta

    samples = [
        (10.0, {"order": 1.0, "locust:7": 0.5}),
        (10.2, {"order": 1.1, "locust:7": 0.6, "locust:8": 0.1}),
        (10.4, {"order": 1.3, "locust:7": 0.8, "locust:8": 0.2}),
        (10.6, {"order": 9.0, "locust:7": 9.0}),
    ]
    t0, t1, cpu = window_delta(samples, 10.1, 10.5)
    assert (t0, t1) == (10.2, 10.4)
    assert cpu == pytest.approx({"order": 0.2, "locust:7": 0.2, "locust:8": 0.1})
    with pytest.raises(ValueError, match="fewer than two CPU samples"):
        window_delta(samples, 10.5, 10.55)


def test_a_step_that_could_not_be_measured_is_named_as_the_limit_not_the_stack() -> None:
    from benchmarks.bench_load import _limit

    unmeasured = {"target": 80, "sustained": False, "measured": False, "cpu_warning": False,
                  "problem": "fewer than two CPU samples between 1.00 and 7.00"}  # fmt: skip
    stack_bound = {"target": 80, "sustained": False, "cpu_warning": False}
    assert _limit([unmeasured]) == f"not measured: {unmeasured['problem']}"
    assert _limit([stack_bound]) == "the stack (no generator CPU warning)"
    assert _limit([{**stack_bound, "cpu_warning": True}]).startswith("load generator CPU")


def test_a_step_with_every_core_busy_names_the_machine_as_the_limit() -> None:
    from benchmarks.bench_load import _limit

    short = {"target": 640, "sustained": False, "cpu_warning": False}
    busy = {**short, "stack_cores": 1.39, "locust_cores": 0.55}
    assert _limit([busy], cores=2) == "the machine: the stack 1.39 and Locust 0.55 of its 2 cores"
    spare = {**short, "stack_cores": 0.9, "locust_cores": 0.3}
    assert _limit([spare], cores=2) == "the stack (no generator CPU warning)"
    assert _limit([busy], cores=4) == "the stack (no generator CPU warning)"
    assert _limit([{**busy, "sustained": True}], cores=2) == "time budget / highest step"
    one_worker = {**short, "stack_cores": 0.3, "locust_cores": 1.05}
    assert _limit([one_worker], cores=2, workers=1).startswith("load generator CPU: Locust 1.05")
    assert _limit([one_worker], cores=2, workers=2) == "the stack (no generator CPU warning)"


def test_a_journey_counts_once_paid_and_seen_paid() -> None:
    from benchmarks.bench_load import journey_times

    def rec(f: str, kind: str, key: str, wall: float, status: str | None = None) -> dict:
        return {"f": f, "type": kind, "key": key, "wall": wall,
                "value": {"status": status} if status else None}

    history = [
        rec("place_order", "invoke", "a", 1.0), rec("place_order", "invoke", "b", 1.5),
        rec("place_order", "invoke", "c", 2.0),
        rec("pay", "ok", "a", 2.1), rec("poll", "ok", "a", 2.5, "AWAITING_PAYMENT"),
        rec("poll", "ok", "a", 2.9, "PAID"), rec("poll", "ok", "a", 3.5, "PAID"),
        rec("pay", "fail", "b", 2.2), rec("poll", "ok", "b", 2.6, "PAID"),  # pay not ok
        rec("pay", "ok", "c", 2.3),  # never seen PAID
    ]
    assert journey_times(history) == (1.0, [2.9])


def test_a_series_stops_after_a_step_falls_short_twice_and_keeps_its_peak(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from benchmarks import bench_load

    achieved = {480: 481.0, 800: 802.0, 1120: 1003.5}  # one worker tops out near 1000
    ran: list[int] = []

    def step(info: dict, pids: dict, rate: int, workers: int, run_dir: Path) -> dict:
        ran.append(rate)
        got = achieved[rate]
        return {"target": rate, "journeys_per_s": got, "sustained": got >= 0.9 * rate,
                "cpu_warning": False, "stack_cores": 0.3, "locust_cores": 1.05,
                "locust_cpu_ms_per_journey": 1.0}  # fmt: skip

    monkeypatch.setattr(bench_load, "run_step", step)
    figures = bench_load.run_series({}, {}, 1, (480, 800, 1120, 1440), tmp_path, "null_")
    assert ran == [480, 800, 1120, 1120]  # the short step retried once, then the series ends
    assert figures["max_journeys_per_s_null_1_worker"] == 800
    assert figures["peak_journeys_per_s_null_1_worker"] == 1003.5
    assert figures["locust_cpu_ms_per_journey_null_1_worker"] == 1.0
    assert figures["limited_by_null_1_worker"] == (
        "load generator CPU: Locust 1.05 cores with 1 worker(s)"
    )


# --- the null stack (benchmarks/trivial_server.py --null-stack) ----------------------------


def test_the_null_stack_answers_a_paid_journey_as_the_bundled_adapter_reads_it() -> None:
    from fastapi.testclient import TestClient

    from benchmarks.trivial_server import null_stack_app
    from loadtests.adapters.bundled import order_view

    client = TestClient(null_stack_app())
    body = {"sku": "bench", "qty": 1, "amount": 250}
    placed = client.post("/orders", json=body, headers={"Idempotency-Key": "k-1"})
    assert placed.status_code == 201
    order = order_view(placed.json())
    assert (order.status, order.amount) == ("AWAITING_PAYMENT", 250)
    again = client.post("/orders", json=body, headers={"Idempotency-Key": "k-1"})
    assert (again.status_code, again.json()) == (200, placed.json())  # same key, same order
    other = client.post("/orders", json=body, headers={"Idempotency-Key": "k-2"})
    assert order_view(other.json()).order_id != order.order_id
    assert client.get(f"/orders/{order.order_id}").json()["status"] == "AWAITING_PAYMENT"
    paid = client.post(f"/payments/{order.payment_id}/pay", json={})
    assert paid.status_code == 200 and paid.json()["txn_id"]
    assert order_view(client.get(f"/orders/{order.order_id}").json()).status == "PAID"
    assert client.get(f"/orders/{other.json()['order_id']}").json()["status"] == "AWAITING_PAYMENT"


def test_the_null_stack_refuses_what_it_does_not_know() -> None:
    from fastapi.testclient import TestClient

    from benchmarks.trivial_server import null_stack_app

    client = TestClient(null_stack_app())
    no_key = client.post("/orders", json={"amount": 1})
    assert no_key.status_code == 400 and "Idempotency-Key" in no_key.json()["detail"]
    assert client.get("/orders/o-404").status_code == 404
    assert client.post("/payments/pay-404/pay", json={}).status_code == 404
    assert client.get("/healthz").status_code == 200


def test_null_stack_info_points_the_orders_and_the_wallet_at_it(tmp_path: Path) -> None:
    from benchmarks.bench_load import null_stack_info
    from loadtests.runner import locust_command

    info = null_stack_info("http://127.0.0.1:9", tmp_path)
    argv, env = locust_command(stack_info=info, load={"users": 2, "spawn_rate": 2, "rate": 1},
                               duration_s=1, seed=1, run_dir=tmp_path, workers=0)  # fmt: skip
    assert argv[argv.index("--host") + 1] == "http://127.0.0.1:9"
    assert env["CHAOSBED_CHANNEL_URL"] == "http://127.0.0.1:9"


# --- cachegrind totals (bench_instructions) ------------------------------------------------

_CACHEGRIND = """# callgrind format
version: 1
creator: valgrind-3.19.0
pid: 4242
cmd: python -m benchmarks.bench_overhead --child
positions: line
events: {events}
fl=(1) ceval.c
fn=(1) _PyEval_EvalFrameDefault
10 7 1
summary: {summary}
"""


def test_the_instruction_total_is_read_by_the_events_header(tmp_path: Path) -> None:
    out = tmp_path / "cachegrind.out"
    out.write_text(_CACHEGRIND.format(events="I1mr Ir D1mr", summary="31 2478207 5"))
    assert bench_instructions.read_total(out) == 2478207


@pytest.mark.parametrize(
    ("events", "summary", "problem"),
    [("Dr Dw", "summary: 1 2", "no Ir among the events"), ("Ir", "", "no summary line")],
)
def test_a_cachegrind_file_without_a_total_is_refused(
    tmp_path: Path, events: str, summary: str, problem: str
) -> None:
    out = tmp_path / "cachegrind.out"
    text = _CACHEGRIND.format(events=events, summary="1 2")
    out.write_text(text if summary else text.replace("summary: 1 2\n", ""))
    with pytest.raises(ValueError, match=problem):
        bench_instructions.read_total(out)


def test_instructions_per_request_are_the_difference_over_the_extra_requests() -> None:
    assert bench_instructions.per_request(1_000_000, 3_000_000, 400) == 5000.0
    with pytest.raises(ValueError, match="fewer instructions"):
        bench_instructions.per_request(3_000_000, 1_000_000, 400)
    with pytest.raises(ValueError, match="at least one request"):
        bench_instructions.per_request(1, 2, 0)
