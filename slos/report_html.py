"""report.html: one self-contained page for a product manager — verdict first, in plain words.

Top to bottom: the verdict; what it means for customers (what broke, what it costs, what to look
at next); the objectives as promises; the charts; what was tested; the comparison with the
baseline run; and, folded, the technical detail (class ids, thresholds, samples).

No network fetches: inline CSS, charts as inline base64 PNGs (see slos/report_charts.py).
Every chart is a `<figure data-fault-windows="N">` with the fault lanes above it, so a browser
test can check the faults are shown and their labels do not overlap.  Trace ids link to the
run's Jaeger when the run was observed (stack.json records its URL).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from slos.audit import AuditResult
from slos.checkers import INFO_VERDICT, INVALID, UNKNOWN, VALID, Facts
from slos.evaluate import FAIL_TIER, NOT_APPLICABLE, PASS, WARNING, ObjectiveResult
from slos.records import OK, Records
from slos.report_charts import (
    fault_params,
    figure_html,
    frame_of,
    kind_legend_html,
    lanes_html,
    latency_draw,
    lay_out_lanes,
    per_second,
    throughput_draw,
    unpaid_draw,
)
from slos.report_context import RunContext, read_context
from slos.report_impact import Exposure, exposure
from slos.report_words import (
    VERDICT_WORDS,
    anomaly_changes,
    class_words,
    classes_of,
    clean_sentence,
    comparison_line,
    fault_name,
    headline,
    impact_sentence,
    load_words,
    look_next,
    measured,
    promise,
    seconds,
    status,
    target_name,
    total_sentence,
    unchecked,
)
from slos.result import GateResult

_TIER_CLASS = {PASS: "pass", WARNING: "warning", FAIL_TIER: "fail", UNKNOWN: "unknown",
               NOT_APPLICABLE: "na", "error": "fail"}
SLOWEST_SHOWN = 3

_CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.45;padding:0 1em;overflow-wrap:anywhere}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.verdict{padding:1em 1.2em;border-radius:8px;font-size:1.15em;margin:1em 0}
.verdict.pass{background:#e6f4ea;border:2px solid #34a853}
.verdict.warning{background:#fff8e1;border:2px solid #f9a825}
.verdict.fail{background:#fde8e8;border:2px solid #d93025}
.verdict.unknown{background:#eceff1;border:2px solid #78909c}
.verdict strong{display:block;font-size:1.3em;margin-bottom:.3em}
table{border-collapse:collapse;width:100%;font-size:.92em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.tier{font-weight:600;padding:.1em .45em;border-radius:4px;white-space:nowrap}
.tier.pass{background:#e6f4ea;color:#137333}.tier.warning{background:#fff8e1;color:#8a6d00}
.tier.fail{background:#fde8e8;color:#a50e0e}.tier.unknown{background:#eceff1;color:#455a64}
.tier.na{background:#f5f5f5;color:#757575}
ul.impact>li{margin:.6em 0}.look{color:#555}.examples{font-size:.9em;color:#444}
figure{margin:1.2em 0}figure img{width:100%;display:block;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}code{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:.9em}
.fault-lanes{position:relative;width:100%;margin-bottom:2px}
.lane-band{position:absolute;height:16px;opacity:.35;border-radius:2px}
.lane-label{position:absolute;height:16px;line-height:16px;font-size:11px;padding:0 3px;
white-space:nowrap;overflow:hidden;text-overflow:ellipsis;border-left:3px solid;color:#222}
ul.kind-legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4em 1.2em;
font-size:.9em}.swatch{display:inline-block;width:12px;height:12px;margin-right:.35em;
vertical-align:-1px;border-radius:2px}
ul.fault-windows li{margin:.15em 0}.muted{color:#666;font-size:.9em}
dl.tested{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1em}
dl.tested dt{font-weight:600}dl.tested dd{margin:0}
details{margin:2em 0}summary{cursor:pointer;font-weight:600}
"""


@dataclass(slots=True)
class Told:
    """What the report says, computed once for report.md and report.html."""

    context: RunContext
    exposure: Exposure
    headline: str
    markdown: str  # the plain headline and what it means, for the PR comment


def tell(gate: GateResult, records: Records) -> Told:
    context = read_context(gate.run_dir)
    exposed = exposure(gate.audit, records) if gate.audit is not None else Exposure([])
    classes = classes_of(gate.slo.objectives) if gate.slo is not None else {}
    text = headline(gate.verdict, gate.objectives, gate.audit, exposed, classes)
    lines = [f"**{VERDICT_WORDS.get(gate.verdict, gate.verdict)}.** {text}"]  # the page's words
    if exposed.impacts:
        lines.append("")
        lines += [f"- {impact_sentence(i)} {look_next(i.cls)}" for i in exposed.impacts]
        lines.append(f"- {total_sentence(exposed)}")
    return Told(context, exposed, text, "\n".join(lines))


def render_html(gate: GateResult, records: Records, told: Told | None = None) -> str:
    told = told or tell(gate, records)
    context = told.context
    windows = gate.windows
    frame = frame_of(records, windows)
    lanes = lanes_html(lay_out_lanes(windows, frame, fault_params(records)))
    bins = per_second(records, frame)
    facts = Facts(records)
    started = records.run.started or records.run.load_started
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>chaosbed report — {escape(gate.run_dir.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Release check: {escape(records.run.scenario)}</h1>",
        f'<p class="muted">{escape(context.started_text(started))} · run '
        f"<code>{escape(gate.run_dir.name)}</code> · build "
        f"<code>{escape(context.git_revision[:12])}</code></p>",
        _verdict(gate, told),
        _meaning(gate, records, told),
        _promises(gate),
        "<h2>Over time</h2>",
        '<p>Above each chart, one lane per fault shows when it was active; in the charts, grey '
        "marks the time any fault was active, a solid line each fault's start and a dashed "
        "line its end. The hatched stretch is the load stopping, not a fault.</p>",
        kind_legend_html(windows),
        figure_html("chart-latency", "How long successful shopper steps (place order, pay, "
                    "check status) took, second by second", windows, frame, lanes,
                    latency_draw(bins)),
        figure_html("chart-throughput", "Successful shopper steps a second, and the share "
                    "that succeeded", windows, frame, lanes, throughput_draw(bins)),
        figure_html("chart-unpaid", "Orders charged by the payment channel but not yet "
                    "marked paid (money taken, shopper still waiting)", windows, frame, lanes,
                    unpaid_draw(facts, frame.origin)),
        _tested(gate, records, context),
        _comparison(gate),
        _technical(gate, context),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


# --- the product manager's sections ---------------------------------------------


def _trace(context: RunContext, trace_id: str | None) -> str:
    if not trace_id:
        return ""
    url = context.trace_url(trace_id)
    if url is None:
        return f"trace <code>{escape(trace_id)}</code>"
    return f'<a class="trace" href="{escape(url)}">trace {escape(trace_id[:8])}…</a>'


def _example(context: RunContext, e: dict[str, object]) -> str:
    order = e.get("order_id")
    what = f"order <code>{escape(str(order))}</code>" if order else \
        f"product <code>{escape(str(e.get('sku')))}</code>"
    trace = _trace(context, str(e["trace_id"]) if e.get("trace_id") else None)
    return what + (f" ({trace})" if trace else "")


def _verdict(gate: GateResult, told: Told) -> str:
    cls = _TIER_CLASS.get(gate.verdict, "unknown")
    return (f'<section id="verdict" class="verdict {cls}" data-verdict="{escape(gate.verdict)}">'
            f"<strong>{escape(VERDICT_WORDS.get(gate.verdict, gate.verdict))}</strong>"
            f"<p>{escape(told.headline)}</p></section>")


def _meaning(gate: GateResult, records: Records, told: Told) -> str:
    audit = gate.audit
    if audit is None:
        return ""
    items = []
    for impact in told.exposure.impacts:
        examples = ", ".join(_example(told.context, e) for e in impact.examples[:3])
        items.append(
            f'<li data-class="{escape(impact.cls)}">{escape(impact_sentence(impact))}'
            f'<br><span class="look">{escape(look_next(impact.cls))}</span>'
            + (f'<br><span class="examples">For example: {examples}</span>' if examples else "")
            + "</li>")
    for result in gate.objectives:
        if result.tier == FAIL_TIER and result.sli == "latency":
            slowest = _slowest(records, result.op)
            if slowest:
                links = ", ".join(_example(told.context, e) for e in slowest)
                items.append(f"<li>{escape(result.name)} was missed: {escape(measured(result))}"
                             f'.<br><span class="examples">Slowest: {links}</span></li>')
    notes = [escape(s) for s in unchecked(audit)]
    clean = clean_sentence(audit) if not told.exposure.impacts else ""
    total = total_sentence(told.exposure)
    waits = _waiting(audit)
    body = "".join(f"<li>{n}</li>" for n in notes)
    return ('<section id="meaning"><h2>What it means for customers</h2>'
            + (f"<p>{escape(clean)}</p>" if clean else "")
            + (f'<ul class="impact">{"".join(items)}{body}</ul>' if items or body else "")
            + (f"<p><b>{escape(total)}</b></p>" if total else "")
            + (f"<p>{escape(waits)}</p>" if waits else "")
            + "</section>")


def _waiting(audit: AuditResult) -> str:
    """How long paying shoppers waited to see their order paid (P11'), in words."""
    wait = audit.checks.get("P11'")
    if wait is None or wait.stats.get("p95") is None:
        return ""
    gave_up = int(wait.stats.get("gave_up") or 0)
    text = (f"Shoppers who paid saw their order confirmed within "
            f"{seconds(float(wait.stats['p50']))} (half of them) and "
            f"{seconds(float(wait.stats['p95']))} (95 % of them)")
    if gave_up:
        text += f"; {gave_up:,} never saw it confirmed"
    return text + "."


def _slowest(records: Records, op: str | None) -> list[dict[str, object]]:
    kinds = {op} if op and op != "journey" else {"place_order", "pay", "poll"}
    timed = [o for o in records.ops
             if o.f in kinds and o.outcome == OK and o.latency is not None]
    timed.sort(key=lambda o: o.latency or 0.0, reverse=True)
    return [{"order_id": o.order_id or o.key, "trace_id": o.trace_id}
            for o in timed[:SLOWEST_SHOWN]]


def _promises(gate: GateResult) -> str:
    if not gate.objectives:
        return ""
    classes = classes_of(gate.slo.objectives) if gate.slo is not None else {}
    rows = []
    for r in gate.objectives:
        tier = _TIER_CLASS.get(r.tier, "unknown")
        must = " <b>(must hold)</b>" if r.key else ""
        rows.append(f'<tr data-objective="{escape(r.name)}"><td>'
                    f"{escape(promise(r, classes.get(r.name, ())))}{must}</td>"
                    f"<td>{escape(_result_text(r))}</td>"
                    f'<td><span class="tier {tier}">{escape(status(r))}</span></td></tr>')
    return ('<section id="promises"><h2>What we promised, and what we measured</h2>'
            "<table><tr><th>promise</th><th>measured</th><th>result</th></tr>"
            + "".join(rows) + "</table></section>")


def _result_text(r: ObjectiveResult) -> str:
    text = measured(r)
    return text[:1].upper() + text[1:]


def _tested(gate: GateResult, records: Records, context: RunContext) -> str:
    run = records.run
    rows: list[tuple[str, str]] = []
    scenario = escape(run.scenario)
    if context.description:
        scenario += f" — {escape(context.description)}"
    rows.append(("Scenario", scenario))
    started = run.started or run.load_started
    rows.append(("When", escape(context.started_text(started))))
    if run.load_started is not None and run.load_ended is not None:
        length = f"{seconds(run.load_ended - run.load_started)} of load"
        if run.settle_ended is not None:
            length += (f", then {seconds(run.settle_ended - run.load_ended)} to settle before "
                       "the audit")
        rows.append(("Duration", escape(length)))
    load = load_words(context.load, context.workers)
    if load:
        rows.append(("Load", escape(load)))
    rows.append(("Faults", _fault_list(gate, records)))
    build = f"<code>{escape(context.git_revision)}</code>"
    if context.git_dirty:
        build += " with uncommitted changes"
    rows.append(("Build", build))
    if run.bugs:
        rows.append(("Planted bugs", escape(", ".join(run.bugs))))
    if gate.slo is not None:
        rows.append(("Objectives file", f"<code>{escape(gate.slo.name)}</code>"))
    if context.jaeger_url:
        rows.append(("Traces", f'<a href="{escape(context.jaeger_url)}">Jaeger</a> (the links '
                     "work while the Jaeger of this run is still running)"))
    else:
        rows.append(("Traces", "not recorded (run with <code>--observe</code> to link each "
                     "example to its trace)"))
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<section id="tested"><h2>What was tested</h2><dl class="tested">{body}</dl></section>'


def _fault_list(gate: GateResult, records: Records) -> str:
    windows = gate.windows
    if not windows:
        return '<ul class="fault-windows" data-count="0"><li>No faults were injected.</li></ul>'
    origin = frame_of(records, windows).origin
    params = fault_params(records)
    items = []
    for i, w in enumerate(windows):
        healed = "" if w.healed else " (never healed)"
        extra = params.get(w.step)
        items.append(
            f'<li data-fault="{escape(w.fault)}" data-target="{escape(w.target)}">'
            f"#{i + 1} {escape(fault_name(w.fault))} on {escape(target_name(w.target))}"
            + (f" ({escape(extra)})" if extra else "")
            + f", from {seconds(max(0.0, w.start - origin))} to "
            f"{seconds(max(0.0, w.end - origin))}{healed}</li>")
    return (f'<ul class="fault-windows" data-count="{len(windows)}">' + "".join(items)
            + "</ul>")


def _comparison(gate: GateResult) -> str:
    if gate.baseline is None:
        return ""
    before = gate.baseline.get("verdict")
    lines = [f"This run: {VERDICT_WORDS.get(gate.verdict, gate.verdict)}; the baseline run: "
             f"{VERDICT_WORDS.get(str(before), str(before)) if before else 'unknown'}."]
    compared = [r for r in gate.objectives if r.baseline is not None]
    changes = anomaly_changes(gate.audit, gate.baseline.get("audit"))
    items = [comparison_line(r) for r in compared] + changes
    worse = [r for r in compared if r.baseline and r.baseline.get("regressed")]
    if not items:
        items = ["Nothing could be compared: the baseline measured none of these objectives."]
    path = escape(str(gate.baseline.get("_path")))
    return ('<section id="comparison"><h2>Compared with the baseline run</h2>'
            f"<p>{escape(lines[0])}"
            + (f" {len(worse)} of {len(compared)} objectives got worse by more than allowed."
               if compared else "")
            + "</p><ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"
            f'<p class="muted">baseline: {path}</p></section>')


# --- technical detail, folded ----------------------------------------------------


def _technical(gate: GateResult, context: RunContext) -> str:
    problems = "".join(f"<li>{escape(p)}</li>" for p in gate.problems[:20])
    return ('<details id="technical"><summary>Technical details (class ids, thresholds, '
            "samples)</summary>"
            f"<p>Gate: <code>{escape(gate.verdict)}</code>, exit code {gate.exit_code}. "
            f"{escape(gate.headline)}</p>"
            + (f"<ul>{problems}</ul>" if problems else "")
            + _objectives_table(gate) + _anomalies_table(gate, context) + _baseline_table(gate)
            + "</details>")


def _objectives_table(gate: GateResult) -> str:
    if not gate.objectives:
        return ""
    rows = []
    for o in gate.objectives:
        budget = "" if o.error_budget_used is None else f"{o.error_budget_used:.0%}"
        key = ' <b title="key objective">(key)</b>' if o.key else ""
        tier = _TIER_CLASS.get(o.tier, "unknown")
        rows.append(
            "<tr>"
            f"<td>{escape(o.name)}{key}"
            f"</td><td>{escape(o.sli)}{' · ' + escape(o.op) if o.op else ''}"
            f" · {escape(o.phase)}</td>"
            f'<td class="num">{escape(o.shown)}</td><td><code>{escape(o.objective)}</code>'
            + (f"<br><span class=muted>warning <code>{escape(o.warning)}</code></span>"
               if o.warning else "")
            + f'</td><td><span class="tier {tier}">{escape(o.tier)}</span></td>'
            f'<td class="num">{budget}</td><td class="num">{o.samples}</td>'
            f"<td>{escape(o.reason)}</td></tr>"
        )
    return ("<h3>Service level objectives</h3><table id=objectives><tr><th>objective</th>"
            "<th>what</th><th>measured</th><th>objective</th><th>result</th>"
            "<th>error budget used</th><th>samples</th><th>notes</th></tr>"
            + "".join(rows) + "</table>")


def _anomalies_table(gate: GateResult, context: RunContext) -> str:
    if gate.audit is None:
        return ""
    rows = []
    for c in gate.audit.checks.values():
        if c.verdict == INFO_VERDICT and not c.count:
            continue
        if c.verdict not in (INVALID, UNKNOWN, INFO_VERDICT):
            continue
        tier = {INVALID: "fail", UNKNOWN: "unknown"}.get(c.verdict, "pass")
        examples = "".join(
            f"<li>{_example(context, e)} — {escape(str(e.get('detail', '')))}</li>"
            for e in c.examples)
        detail = escape(c.error) if c.error else ""
        rows.append(
            f'<tr data-class="{escape(c.cls)}"><td>{escape(c.cls)}</td><td>{escape(c.name)}'
            f"<br><span class=muted>{escape(class_words(c.cls).noun.format(name=c.name))}"
            f'</span></td><td><span class="tier {tier}">{escape(c.verdict)}</span></td>'
            f'<td class="num">{c.count}</td><td>{detail}<ul>{examples}</ul></td></tr>')
    checkable = [c for c in gate.audit.checks.values() if c.verdict != INFO_VERDICT]
    clean = sum(1 for c in checkable if c.verdict == VALID)
    lag = gate.audit.checks.get("P11")
    lag_text = ""
    if lag is not None and lag.stats.get("p99") is not None:
        lag_text = (f" Payment lag (charge → order paid): p50 {lag.stats['p50']:.2f}s, "
                    f"p99 {lag.stats['p99']:.2f}s, max {lag.stats['max']:.2f}s.")
    head = (f"<h3>Audit: money, stock and orders</h3><p>{clean} of {len(checkable)} "
            f"invariant checks found nothing wrong over {gate.audit.completed_ops} completed "
            f"operations and {gate.audit.orders} orders.{lag_text}</p>")
    if not rows:
        return head
    return (head + "<table id=anomalies><tr><th>id</th><th>anomaly</th><th>verdict</th>"
            "<th>count</th><th>examples (order id, trace id)</th></tr>" + "".join(rows)
            + "</table>")


def _baseline_table(gate: GateResult) -> str:
    if gate.baseline is None:
        return ""
    rows = []
    for o in gate.objectives:
        b = o.baseline
        if b is None:
            continue
        change = "from 0" if b.get("change") is None else f"{b['change']:+.1%}"
        flag = '<span class="tier fail">regressed</span>' if b.get("regressed") else "ok"
        rows.append(f"<tr><td>{escape(o.name)}</td><td class=num>{escape(b['measured_text'])}"
                    f"</td><td class=num>{escape(o.shown)}</td><td class=num>{change}</td>"
                    f"<td>{flag}</td></tr>")
    return ("<h3>Baseline, measured values</h3><table id=baseline><tr><th>objective</th>"
            "<th>baseline</th><th>this run</th><th>change</th><th></th></tr>" + "".join(rows)
            + "</table>")
