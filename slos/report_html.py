"""report.html: one self-contained page for a product manager — verdict first, in plain words.

No network fetches: inline CSS, charts as inline base64 PNGs drawn with matplotlib's Agg canvas.
Every chart is a `<figure data-fault-windows="N">` with one shaded band per fault window and a
line at each apply and heal, so a browser test can check the faults are shown.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from slos.checkers import INFO_VERDICT, INVALID, PAID_STATES, UNKNOWN, Facts, percentile
from slos.evaluate import FAIL_TIER, JOURNEY_OPS, PASS, WARNING, FaultWindow
from slos.records import OK, Records
from slos.result import GateResult

_COLOURS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_TIER_CLASS = {PASS: "pass", WARNING: "warning", FAIL_TIER: "fail", UNKNOWN: "unknown",
               "error": "fail"}
_VERDICT_WORDS = {PASS: "PASS", WARNING: "PASS WITH WARNINGS", FAIL_TIER: "FAIL",
                  UNKNOWN: "UNKNOWN", "error": "ERROR"}

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 1em}
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
.tier{font-weight:600;padding:.1em .45em;border-radius:4px}
.tier.pass{background:#e6f4ea;color:#137333}.tier.warning{background:#fff8e1;color:#8a6d00}
.tier.fail{background:#fde8e8;color:#a50e0e}.tier.unknown{background:#eceff1;color:#455a64}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}code{font-size:.9em}
ul.fault-windows li{margin:.15em 0}.muted{color:#666;font-size:.9em}
"""


def render_html(gate: GateResult, records: Records) -> str:
    facts = Facts(records)
    origin = _origin(records)
    windows = gate.windows
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>chaosbed report — {escape(gate.run_dir.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>chaosbed report: {escape(records.run.scenario)}</h1>",
        f'<p class="muted">run <code>{escape(gate.run_dir.name)}</code>'
        + (f" · SLO file <code>{escape(gate.slo.name)}</code>" if gate.slo else "")
        + (f" · planted bugs: {escape(', '.join(records.run.bugs))}" if records.run.bugs else "")
        + "</p>",
        _verdict(gate),
        _objectives(gate),
        "<h2>Over time</h2>",
        _fault_legend(windows, origin),
        _latency_chart(records, windows, origin),
        _throughput_chart(records, windows, origin),
        _unpaid_chart(facts, windows, origin),
        _anomalies(gate),
        _baseline(gate),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


# --- sections ----------------------------------------------------------------


def _verdict(gate: GateResult) -> str:
    cls = _TIER_CLASS.get(gate.verdict, "unknown")
    items = "".join(f"<li>{escape(p)}</li>" for p in gate.problems[:12])
    return (f'<section id="verdict" class="verdict {cls}" data-verdict="{escape(gate.verdict)}">'
            f"<strong>{_VERDICT_WORDS.get(gate.verdict, gate.verdict)}</strong>"
            f"<p>{escape(gate.headline)}</p>" + (f"<ul>{items}</ul>" if items else "")
            + "</section>")


def _objectives(gate: GateResult) -> str:
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
    return ("<h2>Service level objectives</h2><table id=objectives><tr><th>objective</th>"
            "<th>what</th><th>measured</th><th>objective</th><th>result</th>"
            "<th>error budget used</th><th>samples</th><th>notes</th></tr>"
            + "".join(rows) + "</table>")


def _fault_legend(windows: list[FaultWindow], origin: float) -> str:
    if not windows:
        return '<ul class="fault-windows" data-count="0"><li>No faults were injected.</li></ul>'
    items = []
    for i, w in enumerate(windows):
        healed = "" if w.healed else " (never healed in the record)"
        items.append(
            f'<li data-fault="{escape(w.fault)}" data-target="{escape(w.target)}" '
            f'style="border-left:12px solid {_COLOURS[i % len(_COLOURS)]};padding-left:.5em">'
            f"#{i + 1} <b>{escape(w.fault)}</b> on <code>{escape(w.target)}</code>: "
            f"{w.start - origin:.1f}s → {w.end - origin:.1f}s{healed}</li>"
        )
    return (f'<p>Shaded bands are fault windows; a solid line marks each apply, a dashed line '
            f'each heal.</p><ul class="fault-windows" data-count="{len(windows)}">'
            + "".join(items) + "</ul>")


def _anomalies(gate: GateResult) -> str:
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
            f"<li>order <code>{escape(str(e.get('order_id') or e.get('sku')))}</code>"
            + (f" · trace <code>{escape(str(e['trace_id']))}</code>" if e.get("trace_id") else "")
            + f" — {escape(str(e.get('detail', '')))}</li>"
            for e in c.examples
        )
        detail = escape(c.error) if c.error else ""
        rows.append(
            f'<tr data-class="{escape(c.cls)}"><td>{escape(c.cls)}</td><td>{escape(c.name)}</td>'
            f'<td><span class="tier {tier}">{escape(c.verdict)}</span></td>'
            f'<td class="num">{c.count}</td><td>{detail}<ul>{examples}</ul></td></tr>'
        )
    checkable = [c for c in gate.audit.checks.values() if c.verdict != INFO_VERDICT]
    clean = sum(1 for c in checkable if c.verdict == "valid")
    lag = gate.audit.checks.get("P11")
    lag_text = ""
    if lag is not None and lag.stats.get("p99") is not None:
        lag_text = (f" Payment lag (charge → order paid): p50 {lag.stats['p50']:.2f}s, "
                    f"p99 {lag.stats['p99']:.2f}s, max {lag.stats['max']:.2f}s.")
    head = (f"<h2>Audit: money, stock and orders</h2><p>{clean} of {len(checkable)} "
            f"invariant checks found nothing wrong over {gate.audit.completed_ops} completed "
            f"operations and {gate.audit.orders} orders.{lag_text}</p>")
    if not rows:
        return head
    return (head + "<table id=anomalies><tr><th>id</th><th>anomaly</th><th>verdict</th>"
            "<th>count</th><th>examples (order id, trace id)</th></tr>" + "".join(rows)
            + "</table>")


def _baseline(gate: GateResult) -> str:
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
    path = escape(str(gate.baseline.get("_path")))
    return (f"<h2>Compared with the baseline run</h2><p class=muted>{path}</p>"
            "<table id=baseline><tr><th>objective</th><th>baseline</th><th>this run</th>"
            "<th>change</th><th></th></tr>" + "".join(rows) + "</table>")


# --- charts ------------------------------------------------------------------


def _origin(records: Records) -> float:
    run = records.run
    for t in (run.load_started, run.started):
        if t is not None:
            return t
    starts = [op.start for op in records.ops]
    return min(starts) if starts else 0.0


def _figure(caption: str, windows: list[FaultWindow], origin: float,
            draw: Any, *, chart_id: str) -> str:
    fig = Figure(figsize=(10.5, 3.2), dpi=96)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    has_data = draw(ax)
    if not has_data:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#888")
    _shade(ax, windows, origin)
    ax.set_xlabel("seconds since the load started")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<figure id="{chart_id}" data-fault-windows="{len(windows)}">'
            f'<img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _shade(ax: Axes, windows: list[FaultWindow], origin: float) -> None:
    for i, w in enumerate(windows):
        colour = _COLOURS[i % len(_COLOURS)]
        start, end = w.start - origin, w.end - origin
        ax.axvspan(start, end, color=colour, alpha=0.12, lw=0)
        ax.axvline(start, color=colour, lw=1)
        if w.healed:
            ax.axvline(end, color=colour, lw=1, ls="--")
        ax.annotate(f"#{i + 1} {w.fault}@{w.target}", xy=(start, 1.0),
                    xycoords=("data", "axes fraction"), xytext=(2, -10 - 9 * (i % 3)),
                    textcoords="offset points", fontsize=7, color=colour)


def _per_second(records: Records, origin: float) -> dict[int, list[tuple[float | None, bool]]]:
    bins: dict[int, list[tuple[float | None, bool]]] = {}
    for op in records.ops:
        if op.f not in JOURNEY_OPS:
            continue
        second = int(math.floor(op.start - origin))
        bins.setdefault(second, []).append((op.latency, op.outcome == OK))
    return bins


def _latency_chart(records: Records, windows: list[FaultWindow], origin: float) -> str:
    bins = _per_second(records, origin)

    def draw(ax: Axes) -> bool:
        xs: list[int] = []
        series: dict[int, list[float]] = {50: [], 95: [], 99: []}
        for second in sorted(bins):
            ok = sorted(lat * 1000 for lat, good in bins[second] if good and lat is not None)
            if not ok:
                continue
            xs.append(second)
            for p, values in series.items():
                values.append(percentile(ok, p))
        for p, values in series.items():
            ax.plot(xs, values, lw=1.2, label=f"p{p}")
        ax.set_ylabel("latency (ms)")
        if xs:
            ax.set_yscale("log")
        return bool(xs)

    return _figure("Latency of successful shopper operations (place order, pay, poll), per second:"
                   " p50, p95 and p99", windows, origin, draw, chart_id="chart-latency")


def _throughput_chart(records: Records, windows: list[FaultWindow], origin: float) -> str:
    bins = _per_second(records, origin)

    def draw(ax: Axes) -> bool:
        seconds = sorted(bins)
        ok = [sum(1 for _, good in bins[s] if good) for s in seconds]
        ratio = [100.0 * n / len(bins[s]) for n, s in zip(ok, seconds, strict=True)]
        ax.plot(seconds, ok, lw=1.2, color="#1f77b4", label="successful operations / s")
        ax.set_ylabel("operations / s")
        twin = ax.twinx()
        twin.plot(seconds, ratio, lw=1.0, color="#2ca02c", label="success ratio (%)")
        twin.set_ylabel("success ratio (%)")
        twin.set_ylim(0, 105)
        twin.legend(loc="upper right", fontsize=8, framealpha=0.8)
        return bool(seconds)

    return _figure("Throughput (successful operations per second) and success ratio",
                   windows, origin, draw, chart_id="chart-throughput")


def charged_not_paid(facts: Facts, origin: float) -> tuple[list[float], list[int]]:
    """Step series: how many orders were charged at the channel but not yet paid in the order
    service, from each charge until the order's t_paid (or forever)."""
    deltas: list[tuple[float, int]] = []
    for order_id, live in facts.charges.items():
        t_charge = live[0].t - origin
        deltas.append((t_charge, 1))
        order = facts.orders.get(order_id)
        if order is not None and order.t_paid is not None and order.status in PAID_STATES:
            deltas.append((max(order.t_paid - origin, t_charge), -1))
    deltas.sort()
    xs: list[float] = []
    ys: list[int] = []
    level = 0
    for t, step in deltas:
        level += step
        xs.append(t)
        ys.append(level)
    return xs, ys


def _unpaid_chart(facts: Facts, windows: list[FaultWindow], origin: float) -> str:
    def draw(ax: Axes) -> bool:
        xs, ys = charged_not_paid(facts, origin)
        if xs:
            ax.step(xs, ys, where="post", color="#d62728", lw=1.2,
                    label="charged but not yet paid")
        ax.set_ylabel("orders")
        return bool(xs)

    return _figure("Orders charged by the payment channel but not yet marked paid (money taken, "
                   "shopper still waiting)", windows, origin, draw, chart_id="chart-unpaid")

