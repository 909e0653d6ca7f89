"""The gate: audit a finished run, evaluate an SLO file on it, write the verdict everywhere.

Outputs in the run directory: audit.json, result.json, junit.xml, report.md, report.html.
Exit codes: 0 pass (or warning) · 1 fail · 2 unknown · 3 harness error (bad SLO file, run
directory unreadable).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rundir import RunDirError, read_json, write_json
from slos.audit import AuditResult, audit, write_audit
from slos.baseline import baseline_dir_of, check_comparable, require_tolerance, run_identity
from slos.blackbox import NEEDS_EXPORT
from slos.checkers import INFO_VERDICT, INVALID, PLAIN, UNKNOWN, VALID
from slos.evaluate import (
    FAIL_TIER,
    NOT_APPLICABLE,
    PASS,
    WARNING,
    BaselineError,
    Evaluator,
    ObjectiveResult,
    load_baseline,
)
from slos.model import SloFile, SloFileError, load_slo
from slos.records import Records, RecordsError, load_run
from slos.report_html import render_html, tell
from slos.result import GateResult

EXIT_PASS, EXIT_FAIL, EXIT_UNKNOWN, EXIT_HARNESS = 0, 1, 2, 3
ERROR = "error"
EXIT_CODES = {PASS: EXIT_PASS, WARNING: EXIT_PASS, FAIL_TIER: EXIT_FAIL, UNKNOWN: EXIT_UNKNOWN,
              ERROR: EXIT_HARNESS}

class GateError(Exception):
    """The harness could not evaluate the run (exit 3)."""


# --- verdict -----------------------------------------------------------------


def decide(objectives: list[ObjectiveResult], result: AuditResult,
           slo: SloFile | None = None) -> tuple[str, list[str]]:
    """The gate's verdict and what went wrong, in plain words, worst first.

    A check the audit could not decide leaves the verdict unknown, unless it is a black-box
    unknown ("needs the target's export") and `slo` says `needs_export: allow`.
    """
    problems: list[str] = []
    for check in result.anomalies():
        problems.append(PLAIN.get(check.cls, "{n} " + check.name).format(n=check.count))
    failed = [o for o in objectives if o.tier == FAIL_TIER]
    failed.sort(key=lambda o: not o.key)
    for o in failed:
        blocking = " (key objective)" if o.key else ""
        problems.append(f"{o.name}{blocking}: {o.reason or f'measured {o.shown} vs {o.objective}'}")
    if problems:
        return FAIL_TIER, problems
    undecided = [f"{o.name}: {o.reason}" for o in objectives if o.tier == UNKNOWN]
    if result.verdict == UNKNOWN:
        allow = slo is not None and slo.needs_export == "allow"
        undecided += [f"audit: {reason}" for reason in result.reasons
                      if not (allow and NEEDS_EXPORT in reason)]
    if undecided:
        return UNKNOWN, undecided
    warnings = [f"{o.name}: {o.reason}" for o in objectives if o.tier == WARNING]
    if warnings:
        return WARNING, warnings
    return PASS, []


def headline(verdict: str, problems: list[str], result: AuditResult | None) -> str:
    safe_money = result is not None and result.verdict == VALID
    if verdict == PASS:
        return ("Release looks safe: no money or stock was lost, no order was lost or "
                "duplicated, and every objective was met.")
    if verdict == WARNING:
        return ("Release looks safe, with warnings: no money or stock was lost, but "
                f"{len(problems)} objective(s) only reached their warning level.")
    if verdict == FAIL_TIER:
        lead = ("Release is NOT safe: " if result is not None and result.verdict == INVALID
                else "Release does not meet its objectives" +
                (" (no money or stock was lost): " if safe_money else ": "))
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return lead + "; ".join(problems[:3]) + more + "."
    if verdict == UNKNOWN:
        return ("Cannot tell whether the release is safe: there was not enough evidence ("
                + "; ".join(problems[:2]) + ").")
    return "No verdict on the release: the harness failed or could not evaluate the run: " + (
        "; ".join(problems))


# --- the gate ----------------------------------------------------------------


def evaluate_run(run_dir: Path, slo_path: Path, baseline: Path | None, *,
                 force_baseline: bool = False) -> GateResult:
    """Audit the run, evaluate `slo_path` on it, write every output; never raises on bad input:
    a harness problem is a result with verdict `error` and exit code 3.

    A baseline is only read (its files are never written), must be another run of the same
    scenario, seed and worker count (unless `force_baseline`), and needs the SLO file's
    `baseline.max_regression`."""
    run_dir = Path(run_dir)
    try:
        slo = load_slo(slo_path)
        previous = None
        if baseline is not None:
            previous = checked_baseline(run_dir, Path(baseline), slo, force=force_baseline)
    except (SloFileError, BaselineError, RecordsError, OSError) as exc:
        # bad input to the gate itself: say so and leave the run's outputs as they are
        return GateResult(ERROR, EXIT_HARNESS, headline(ERROR, [str(exc)], None), run_dir,
                          problems=[str(exc)], error=str(exc))
    try:
        records = load_run(run_dir)
    except (RecordsError, OSError) as exc:
        return harness_error(run_dir, str(exc))
    return gate_records(run_dir, records, slo, previous)


def checked_baseline(run_dir: Path, baseline: Path, slo: SloFile, *,
                     force: bool) -> dict[str, Any]:
    """The baseline's values, after checking the comparison means something (BaselineError)."""
    require_tolerance(slo)
    if not baseline.exists():
        raise BaselineError(f"baseline {baseline}: no such run directory or result.json")
    if baseline_dir_of(baseline).resolve() == run_dir.resolve():
        raise BaselineError(f"baseline {baseline} is this run itself: pass an earlier run")
    check_comparable(run_identity(run_dir), baseline_dir_of(baseline), force=force)
    return baseline_values(baseline, slo)


def baseline_values(path: Path, slo: SloFile) -> dict[str, Any]:
    """The baseline's measured values under *this* SLO file, so like is compared with like.

    A run directory with its records is re-evaluated with `slo`; a bare result.json is used
    as is, only if it was evaluated against an SLO file of the same name.
    """
    if path.is_dir() and (path / "history.ndjson").exists():
        records = load_run(path)
        result = audit(records)
        objectives = Evaluator(records, result, slo).run(None)
        return {
            "_path": str(path),
            "verdict": decide(objectives, result, slo)[0],
            "objectives": [o.to_dict() for o in objectives],
            "audit": result.to_dict(),
        }
    previous = load_baseline(path)
    used = (previous.get("slo") or {}).get("name")
    if used is not None and used != slo.name:
        raise BaselineError(
            f"baseline {previous['_path']} was evaluated against SLO {used!r}, not {slo.name!r};"
            " pass its run directory so it is re-evaluated"
        )
    return previous


def gate_records(run_dir: Path, records: Records, slo: SloFile,
                 previous: dict[str, Any] | None = None) -> GateResult:
    """The gate over records already loaded; writes the outputs into `run_dir`."""
    result = audit(records)
    evaluator = Evaluator(records, result, slo)
    objectives = evaluator.run(previous)
    verdict, problems = decide(objectives, result, slo)
    started, ended = run_span(records)
    load_start, load_end = evaluator.load_span()
    observed = [evaluator.timeline(o.op).duration(o.phase, load_start, load_end)
                for o in slo.objectives]
    gate = GateResult(
        verdict=verdict,
        exit_code=EXIT_CODES[verdict],
        headline=headline(verdict, problems, result),
        run_dir=run_dir,
        slo=slo,
        objectives=objectives,
        audit=result,
        windows=evaluator.windows,
        baseline=previous,
        problems=problems,
        started=started,
        ended=ended,
        observed_s=observed,
    )
    write_outputs(gate, records)
    return gate


def run_span(records: Records) -> tuple[float | None, float | None]:
    """Wall-clock start and end of the run: run.json's times, else the history's."""
    run = records.run
    starts = [o.start for o in records.ops]
    ends = [o.end or o.start for o in records.ops]
    started = run.started or run.load_started or (min(starts) if starts else None)
    ended = run.settle_ended or run.load_ended or (max(ends) if ends else None)
    return started, ended


def harness_error(run_dir: Path, message: str, *, exit_code: int = EXIT_HARNESS) -> GateResult:
    """A result for a run the harness could not finish or the gate could not evaluate:
    result.json (verdict `error`) and junit.xml (one `<error>` test case), if it can.
    `exit_code` is 3, or 130 for a run interrupted by SIGINT/SIGTERM before the gate."""
    gate = GateResult(ERROR, exit_code, headline(ERROR, [message], None), run_dir,
                      problems=[message], error=message)
    try:
        run = read_json(run_dir / "run.json")
    except RunDirError:
        run = {}
    if isinstance(run, dict):
        gate.started = _number(run.get("started"))
        gate.ended = _number(run.get("ended")) or time.time()
    if run_dir.is_dir():
        junit = run_dir / "junit.xml"
        junit.write_text(render_junit(gate))
        gate.outputs["junit"] = str(junit)
        gate.outputs["result"] = str(run_dir / "result.json")
        write_json(run_dir / "result.json", {**gate.to_dict(), "outputs": gate.outputs})
    return gate


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def recorded_slo(run_dir: Path) -> str:
    """The SLO file `chaosbed run` recorded in the run's run.json; GateError when there is none."""
    try:
        run = read_json(run_dir / "run.json")
    except RunDirError as exc:
        raise GateError(str(exc)) from None
    slo = run.get("slo") if isinstance(run, dict) else None
    if not slo:
        raise GateError(f"{run_dir / 'run.json'} records no SLO file")
    return str(slo)


def write_outputs(gate: GateResult, records: Records) -> None:
    run_dir = gate.run_dir
    assert gate.audit is not None
    gate.outputs["audit"] = str(write_audit(gate.audit, run_dir))
    junit = run_dir / "junit.xml"
    junit.write_text(render_junit(gate))
    md = run_dir / "report.md"
    told = tell(gate, records)
    md.write_text(render_markdown(gate, told.markdown))
    html = run_dir / "report.html"
    html.write_text(render_html(gate, records, told))
    gate.outputs.update(junit=str(junit), markdown=str(md), html=str(html))
    gate.outputs["result"] = str(run_dir / "result.json")
    write_json(run_dir / "result.json", {**gate.to_dict(), "outputs": gate.outputs})


# --- junit.xml ---------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return f"{max(0.0, value or 0.0):.3f}"


def render_junit(gate: GateResult) -> str:
    """One testsuite for the objectives and one for the anomaly classes; a harness error is
    one testsuite with one `<error>` test case.

    Times are real: a suite's `time` is the run's duration and its `timestamp` the run's
    start (UTC); an objective's `time` is the seconds of load its phase covered, an anomaly
    class's the whole run its audit covered.
    """
    started = gate.started if gate.started is not None else time.time()
    span = (gate.ended - started) if gate.ended is not None else 0.0
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    root = ET.Element("testsuites", name=f"chaosbed {gate.run_dir.name}")
    if gate.verdict == ERROR and gate.audit is None:
        suite = ET.SubElement(root, "testsuite", name="chaosbed harness")
        case = ET.SubElement(suite, "testcase", classname="chaosbed.harness", name="harness",
                             time=_seconds(span))
        error = ET.SubElement(case, "error", type="harness", message=gate.error or gate.headline)
        error.text = gate.headline
        return _finish_junit(root, span, stamp)
    slo_name = gate.slo.name if gate.slo is not None else "slo"
    suite = ET.SubElement(root, "testsuite", name=f"slo {slo_name}")
    observed = gate.observed_s or [0.0] * len(gate.objectives)
    for o, seconds in zip(gate.objectives, observed, strict=False):
        case = ET.SubElement(suite, "testcase", classname=f"chaosbed.slo.{slo_name}",
                             name=o.name, time=_seconds(seconds))
        message = f"measured {o.shown} vs objective {o.objective}"
        if o.tier == FAIL_TIER:
            failure = ET.SubElement(case, "failure", message=message, type="slo")
            failure.text = o.reason
        elif o.tier == UNKNOWN:
            error = ET.SubElement(case, "error", message=f"unknown: {o.reason}", type="unknown")
            error.text = f"{message} ({o.samples} samples, {o.min_samples} needed)"
        elif o.tier == NOT_APPLICABLE:
            ET.SubElement(case, "skipped", message=f"not applicable: {o.reason}")
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{o.tier}: {message} ({o.samples} samples) {o.reason}".strip()
    if gate.audit is not None:
        audit_suite = ET.SubElement(root, "testsuite", name="audit")
        for check in gate.audit.checks.values():
            case = ET.SubElement(audit_suite, "testcase", classname="chaosbed.audit",
                                 name=f"{check.cls} {check.name}", time=_seconds(span))
            examples = "\n".join(f"order {e.get('order_id') or e.get('sku')} "
                                 f"trace {e.get('trace_id')}: {e['detail']}"
                                 for e in check.examples)
            if check.verdict == INVALID:
                failure = ET.SubElement(case, "failure", type="anomaly",
                                        message=f"measured {check.count} vs objective count == 0")
                failure.text = examples
            elif check.verdict == UNKNOWN:
                ET.SubElement(case, "error", type="unknown", message=f"unknown: {check.error}")
            elif check.verdict == INFO_VERDICT:
                out = ET.SubElement(case, "system-out")
                out.text = f"info: {check.count} {check.stats}"
    return _finish_junit(root, span, stamp)


def _finish_junit(root: ET.Element, span: float, stamp: str) -> str:
    for s in root.iter("testsuite"):
        cases = list(s.iter("testcase"))
        s.set("tests", str(len(cases)))
        s.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
        s.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
        s.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
        s.set("time", _seconds(span))
        s.set("timestamp", stamp)
    for name in ("tests", "failures", "errors", "skipped"):
        root.set(name, str(sum(int(s.get(name, "0")) for s in root.iter("testsuite"))))
    root.set("time", _seconds(span))
    root.set("timestamp", stamp)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --- report.md ---------------------------------------------------------------

_MARK = {PASS: "✅ pass", WARNING: "⚠️ warning", FAIL_TIER: "❌ fail", UNKNOWN: "❔ unknown",
         NOT_APPLICABLE: "➖ not applicable"}


def render_markdown(gate: GateResult, plain: str | None = None) -> str:
    lines = [f"### chaosbed: {gate.verdict.upper()} — {gate.run_dir.name}", "",
             plain or gate.headline, ""]
    if gate.objectives:
        lines += ["| objective | measured | objective | tier | samples |",
                  "|---|---|---|---|---|"]
        for o in gate.objectives:
            key = " 🔑" if o.key else ""
            lines.append(f"| {o.name}{key} | {o.shown} | `{o.objective}` | "
                         f"{_MARK.get(o.tier, o.tier)} | {o.samples} |")
        lines.append("")
    if gate.audit is not None:
        found = gate.audit.anomalies()
        if found:
            lines.append("**Anomalies**")
            for c in found:
                ids = ", ".join(str(e.get("order_id") or e.get("sku")) for e in c.examples[:3])
                lines.append(f"- {c.cls} {c.name}: {c.count} (e.g. {ids})")
        else:
            lines.append(f"Audit: {gate.audit.verdict} ({gate.audit.completed_ops} completed "
                         f"operations, {gate.audit.orders} orders).")
        lines.append("")
    if gate.windows:
        lines.append(f"Faults: {len(gate.windows)} window(s) — "
                     + ", ".join(f"{w.fault}@{w.target}" for w in gate.windows))
        lines.append("")
    lines.append(f"Full report: `{gate.run_dir / 'report.html'}`")
    return "\n".join(lines) + "\n"


# --- text (the command line) ---------------------------------------------------


def render_text(gate: GateResult) -> str:
    """The verdict, what went wrong (first ten), and where the report is."""
    lines = [f"verdict: {gate.verdict.upper()} (exit {gate.exit_code})", gate.headline]
    lines += [f"  - {problem}" for problem in gate.problems[:10]]
    if "html" in gate.outputs:
        lines.append(f"report: {gate.outputs['html']}")
    elif "result" in gate.outputs:
        lines.append(f"result: {gate.outputs['result']}")
    return "\n".join(lines)
