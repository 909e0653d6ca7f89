"""The gate on synthetic run directories: exit codes, result.json, junit.xml, report.md/html."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaosbed.commands import cmd_check, cmd_report
from slos.checkers import CHECKERS
from slos.gate import evaluate_run
from slos.records import Records, RecordsError, load_run
from slos.synthetic import clean_run as synthetic_run
from slos.synthetic import write_run

GATE = {
    "name": "unit",
    "min_samples": 20,
    "objectives": [
        {"name": "place order latency", "sli": "latency", "op": "place_order",
         "pass": "p(99) < 300ms", "warning": "p(99) < 1s"},
        {"name": "place order succeeds", "sli": "success_rate", "op": "place_order",
         "phase": "steady", "pass": "rate >= 99%"},
        {"name": "no money lost", "sli": "anomaly", "class": ["P1", "P6"], "pass": "count == 0",
         "key": True},
    ],
}


def clean_run(n: int, **kwargs: Any) -> Records:
    """A synthetic run that walks every path of the flow: the gate can decide on it."""
    return synthetic_run(n, every_path=True, **kwargs)


def slo_file(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump({**GATE, **changes}))
    return path


def run_dir(tmp_path: Path, records: Records | None = None, name: str = "run") -> Path:
    r = records or clean_run(200, faults=[(20, 10, "latency", "order_channel")])
    return write_run(r, tmp_path / name)


def test_pass(tmp_path: Path) -> None:
    gate = evaluate_run(run_dir(tmp_path), slo_file(tmp_path), None)
    assert (gate.verdict, gate.exit_code) == ("pass", 0)
    assert gate.headline.startswith("Release looks safe: no money or stock was lost")
    for name in ("audit.json", "result.json", "junit.xml", "report.md", "report.html"):
        assert (gate.run_dir / name).is_file(), name
    result = json.loads((gate.run_dir / "result.json").read_text())
    assert result["verdict"] == "pass" and result["exit_code"] == 0
    first = result["objectives"][0]
    assert first["measured"] == pytest.approx(0.02) and first["tier"] == "pass"
    assert first["samples"] == 200 + 7 and first["objective"] == "p(99) < 300ms"  # + paths
    assert result["audit"]["verdict"] == "valid"
    assert json.loads((gate.run_dir / "audit.json").read_text())["verdict"] == "valid"


def test_lost_payment_fails_the_gate(tmp_path: Path) -> None:
    records = clean_run(200)
    records.orders[7].status = "AWAITING_PAYMENT"
    gate = evaluate_run(run_dir(tmp_path, records), slo_file(tmp_path), None)
    assert (gate.verdict, gate.exit_code) == ("fail", 1)
    assert gate.headline.startswith("Release is NOT safe")
    assert "lost by the order service" in gate.headline
    money = next(o for o in gate.objectives if o.name == "no money lost")
    assert money.tier == "fail" and money.measured == 2


def test_a_slow_objective_fails_without_losing_money(tmp_path: Path) -> None:
    records = clean_run(200, place_latency=2.0)
    gate = evaluate_run(run_dir(tmp_path, records), slo_file(tmp_path), None)
    assert gate.exit_code == 1
    assert "no money or stock was lost" in gate.headline
    assert "place order latency" in gate.headline


def test_warning_passes_with_exit_zero(tmp_path: Path) -> None:
    records = clean_run(200, place_latency=0.5)
    gate = evaluate_run(run_dir(tmp_path, records), slo_file(tmp_path), None)
    assert (gate.verdict, gate.exit_code) == ("warning", 0)


def test_too_few_samples_is_unknown(tmp_path: Path) -> None:
    gate = evaluate_run(run_dir(tmp_path, clean_run(10)), slo_file(tmp_path), None)
    assert (gate.verdict, gate.exit_code) == ("unknown", 2)
    assert "not enough evidence" in gate.headline


def test_bad_slo_file_is_a_harness_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    run = run_dir(tmp_path)
    bad = slo_file(tmp_path, objectives=[{"name": "x", "sli": "latency", "op": "pay",
                                          "pass": "p(99) < banana"}])
    assert not (run / "result.json").exists()
    gate = evaluate_run(run, bad, None)
    assert (gate.verdict, gate.exit_code) == ("error", 3)
    assert "objective 0 ('x')" in (gate.error or "")
    assert not (run / "result.json").exists()  # bad input to the gate changes nothing
    fine = tmp_path / "fine.yaml"
    fine.write_text(yaml.safe_dump(GATE))
    good = evaluate_run(run, fine, None)
    before = (run / "result.json").read_text()
    evaluate_run(run, bad, None)
    assert (run / "result.json").read_text() == before, "a bad SLO file overwrote the result"
    assert good.exit_code == 0
    args = argparse.Namespace(run_dir=str(run), slo=str(bad), baseline=None)
    assert cmd_check(args) == 3
    assert "expected a number at 'banana'" in capsys.readouterr().out


def test_missing_required_file_is_a_harness_error(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    (run / "exports" / "order.ndjson").unlink()
    gate = evaluate_run(run, slo_file(tmp_path), None)
    assert gate.exit_code == 3
    assert "exports/order.ndjson" in (gate.error or "")


def test_loader_tolerates_missing_optional_files(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    for name in ("faults.ndjson", "run.json", "scenario.yaml", "exports/inventory.ndjson"):
        (run / name).unlink()
    records = load_run(run)
    assert set(records.missing) == {"faults.ndjson", "run.json", "scenario.yaml",
                                    "exports/inventory.ndjson"}
    assert len(records.orders) == 200 + 6 and not records.faults  # one more on each path


def test_loader_names_the_bad_line(tmp_path: Path) -> None:
    run = run_dir(tmp_path)
    with (run / "exports" / "channel.ndjson").open("a") as out:
        out.write(json.dumps({"type": "ledger", "kind": "charge"}) + "\n")
        out.write(json.dumps({"type": "payment"}) + "\n")
    with pytest.raises(RecordsError, match=r"channel.ndjson:\d+: bad record"):
        load_run(run)


def test_loader_pairs_history_and_keeps_unfinished_invokes(tmp_path: Path) -> None:
    run = run_dir(tmp_path, clean_run(3))
    with (run / "history.ndjson").open("a") as out:
        out.write(json.dumps({"type": "invoke", "f": "pay", "op_id": "late", "process": "w:2",
                              "key": "k-1", "order_id": None, "time": 1.0,
                              "wall": 1_700_000_001.0}) + "\n")
    records = load_run(run)
    late = next(op for op in records.ops if op.op_id == "late")
    assert late.outcome == "info" and late.end is None
    ok = next(op for op in records.ops if op.op_id == "a0")
    assert ok.outcome == "ok" and ok.latency == pytest.approx(0.02)


def test_junit_has_one_testcase_per_objective_and_class(tmp_path: Path) -> None:
    records = clean_run(200)
    records.orders[7].status = "AWAITING_PAYMENT"
    gate = evaluate_run(run_dir(tmp_path, records), slo_file(tmp_path), None)
    root = ET.parse(gate.run_dir / "junit.xml").getroot()
    assert root.tag == "testsuites"
    cases = list(root.iter("testcase"))
    assert len(cases) == len(GATE["objectives"]) + len(CHECKERS)  # type: ignore[arg-type]
    by_name = {c.get("name"): c for c in cases}
    failure = by_name["no money lost"].find("failure")
    assert failure is not None
    assert failure.get("message") == "measured 2 vs objective count == 0"
    p1 = by_name["P1 lost acknowledged payment"].find("failure")
    assert p1 is not None and "o-7" in (p1.text or "")
    assert by_name["place order latency"].find("failure") is None
    assert int(root.get("failures", "0")) == sum(
        1 for c in cases if c.find("failure") is not None)


def test_report_markdown_and_html(tmp_path: Path) -> None:
    records = clean_run(200, faults=[(20, 10, "latency", "order_channel"),
                                     (40, 5, "kill", "order")])
    records.orders[7].status = "AWAITING_PAYMENT"
    gate = evaluate_run(run_dir(tmp_path, records), slo_file(tmp_path), None)
    md = (gate.run_dir / "report.md").read_text()
    assert "FAIL" in md and "| no money lost 🔑 |" in md and "P1 lost acknowledged payment" in md
    html = (gate.run_dir / "report.html").read_text()
    assert "Release is NOT safe" in html
    hooks = [int(n) for n in re.findall(r'data-fault-windows="(\d+)"', html)]
    assert hooks == [2, 2, 2]
    assert html.count('<li data-fault="') == 2
    assert "data:image/png;base64," in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "the page must not fetch anything"
    assert "o-7" in html and records.orders[7].trace_id in html


TOLERANT = {"baseline": {"max_regression": "+10%"}}


def test_baseline_comparison(tmp_path: Path) -> None:
    before = evaluate_run(run_dir(tmp_path, clean_run(200), "before"), slo_file(tmp_path), None)
    slower = clean_run(200, place_latency=0.05)
    gate = evaluate_run(run_dir(tmp_path, slower, "after"), slo_file(tmp_path, **TOLERANT),
                        before.run_dir)
    assert gate.exit_code == 1
    latency = gate.objectives[0]
    assert latency.tier == "fail" and "regressed" in latency.reason
    html = (gate.run_dir / "report.html").read_text()
    assert "Compared with the baseline run" in html
    missing = evaluate_run(gate.run_dir, slo_file(tmp_path, **TOLERANT), tmp_path / "nope")
    assert missing.exit_code == 3 and "no such run directory" in (missing.error or "")


def test_cmd_report_uses_the_slo_recorded_in_the_run(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    slo = slo_file(tmp_path)
    run = write_run(clean_run(200), tmp_path / "rec", slo=str(slo))
    code = cmd_report(argparse.Namespace(run_dir=str(run), slo=None, baseline=None))
    out = capsys.readouterr().out
    assert code == 0
    assert "verdict: PASS" in out and "report.html" in out
    bare = write_run(clean_run(20), tmp_path / "bare")
    assert cmd_report(argparse.Namespace(run_dir=str(bare), slo=None, baseline=None)) == 3
    assert "records no SLO file" in capsys.readouterr().out


def test_loader_reads_the_sweeper_period_and_run_times(tmp_path: Path) -> None:
    run = run_dir(tmp_path, clean_run(3))
    (run / "scenario.yaml").write_text(yaml.safe_dump(
        {"name": "smoke", "duration": "40s", "settle": "15s", "services": {"sweep_every_s": 1},
         "load": {"max_poll": "10s"}}))
    records = load_run(run)
    assert records.run.sweep_every_s == 1.0 and records.run.max_poll == 10.0
    assert records.run.duration == 40.0 and records.run.settle == 15.0
    assert records.reference_time() == records.run.settle_ended


def test_baseline_is_re_evaluated_under_the_same_slo_file(tmp_path: Path) -> None:
    base = run_dir(tmp_path, clean_run(200), "before")
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(yaml.safe_dump({**GATE, "name": "lenient"}))
    evaluate_run(base, lenient, None)  # its result.json now holds another file's objectives
    gate = evaluate_run(run_dir(tmp_path, clean_run(200), "after"),
                        slo_file(tmp_path, **TOLERANT), base)
    assert gate.exit_code == 0, gate.problems  # same records, same objectives: no regression
    assert gate.baseline is not None and gate.baseline["_path"] == str(base)
    from_file = evaluate_run(gate.run_dir, slo_file(tmp_path, **TOLERANT), base / "result.json")
    assert from_file.exit_code == 3 and "'lenient'" in (from_file.error or "")


def test_baseline_without_a_tolerance_in_the_slo_file_is_refused(tmp_path: Path) -> None:
    base = run_dir(tmp_path, clean_run(200), "before")
    after = run_dir(tmp_path, clean_run(200), "after")
    gate = evaluate_run(after, slo_file(tmp_path), base)
    assert gate.exit_code == 3
    assert "needs a tolerance" in (gate.error or "") and "there is no default" in (gate.error or "")
    assert not (after / "result.json").exists()  # bad input to the gate changes nothing
    assert evaluate_run(after, slo_file(tmp_path, **TOLERANT), base).exit_code == 0


@pytest.mark.parametrize(("changed", "words"), [
    ({"seed": 7}, "seed 0 in the baseline, 7 in this run"),
    ({"workers": 2}, "workers 0 in the baseline, 2 in this run"),
    ({"scenario": "flash-sale"}, "scenario 'synthetic' in the baseline, 'flash-sale'"),
])
def test_baseline_of_another_scenario_seed_or_workers_is_refused_unless_forced(
        tmp_path: Path, changed: dict[str, Any], words: str) -> None:
    base = run_dir(tmp_path, clean_run(200), "before")
    records = clean_run(200)
    if "scenario" in changed:
        records.run.scenario = str(changed["scenario"])
    after = write_run(records, tmp_path / "after", seed=changed.get("seed", 0),
                      workers=changed.get("workers", 0))
    slo = slo_file(tmp_path, **TOLERANT)
    refused = evaluate_run(after, slo, base)
    assert refused.exit_code == 3 and words in (refused.error or ""), refused.error
    assert "--force-baseline" in (refused.error or "")
    forced = evaluate_run(after, slo, base, force_baseline=True)
    assert forced.exit_code == 0 and forced.baseline is not None


def test_a_baseline_with_no_recorded_identity_is_refused(tmp_path: Path) -> None:
    base = run_dir(tmp_path, clean_run(200), "before")
    (base / "run.json").write_text("{}")
    (base / "scenario.yaml").unlink()
    gate = evaluate_run(run_dir(tmp_path, clean_run(200), "after"),
                        slo_file(tmp_path, **TOLERANT), base)
    assert gate.exit_code == 3 and "not recorded for the baseline" in (gate.error or "")


def test_a_run_is_not_its_own_baseline(tmp_path: Path) -> None:
    run = run_dir(tmp_path, clean_run(200))
    gate = evaluate_run(run, slo_file(tmp_path, **TOLERANT), run)
    assert gate.exit_code == 3 and "is this run itself" in (gate.error or "")


def test_check_with_a_baseline_never_rewrites_the_baselines_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slo = slo_file(tmp_path, **TOLERANT)
    base = run_dir(tmp_path, clean_run(200), "before")
    assert evaluate_run(base, slo, None).exit_code == 0  # the baseline has all its outputs
    after = run_dir(tmp_path, clean_run(200, place_latency=0.05), "after")

    def checksums() -> dict[str, str]:
        return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(base.rglob("*")) if p.is_file()}

    before = checksums()
    assert {"result.json", "junit.xml", "report.html", "report.md"} <= set(before)
    code = cmd_check(argparse.Namespace(run_dir=str(after), slo=str(slo), baseline=str(base),
                                        force_baseline=False))
    assert code == 1 and "regressed" in capsys.readouterr().out  # the comparison happened
    assert checksums() == before
    assert json.loads((after / "result.json").read_text())["baseline"]["path"] == str(base)


def test_an_objective_of_an_absent_phase_is_skipped_in_junit_and_does_not_block(
        tmp_path: Path) -> None:
    during = {"name": "fast during faults", "sli": "latency", "op": "place_order",
              "phase": "fault", "pass": "p(95) < 1s"}
    objectives = [*GATE["objectives"], during]  # type: ignore[misc]
    calm = evaluate_run(run_dir(tmp_path, clean_run(200), "calm"),
                        slo_file(tmp_path, objectives=objectives), None)
    assert (calm.verdict, calm.exit_code) == ("pass", 0)
    root = ET.parse(calm.run_dir / "junit.xml").getroot()
    case = next(c for c in root.iter("testcase") if c.get("name") == "fast during faults")
    skipped = case.find("skipped")
    assert skipped is not None and "no fault phase" in (skipped.get("message") or "")
    assert root.get("skipped") == "1"
    entry = json.loads((calm.run_dir / "result.json").read_text())["objectives"][-1]
    assert entry["tier"] == "not_applicable" and "no fault phase" in entry["reason"]
    assert "not applicable" in (calm.run_dir / "report.md").read_text()
    stormy = evaluate_run(run_dir(tmp_path, name="stormy"),
                          slo_file(tmp_path, objectives=objectives), None)
    assert stormy.objectives[-1].tier == "pass"  # the same objective, decided with faults
