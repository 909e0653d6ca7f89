"""The report's charts: matplotlib (Agg) images on one shared time axis, with the fault lanes
drawn above them in HTML so their labels can never overlap.

Every chart has the same size, margins and x range, so one lane strip lines up with all of
them: a lane item's left edge is the fault's apply, its band runs to its heal.  Faults are packed
greedily into as few lanes as keep every label clear of the next; each label is an HTML element
whose width is reserved in its lane, so labels cannot overlap at any page width (a narrow page
shortens them with an ellipsis; the full text is in the title).  In the plots, the time any fault
was active is one grey band (overlapping faults do not blend into new colours), with a line in
the fault kind's colour at each apply (solid) and heal (dashed).

The load's own end is not a degradation: operations started in its last second are cut off when
the load generator stops its users, so the per-second series stop one second before the load
ends and that stretch is marked "load stops".
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from slos.checkers import PAID_STATES, Facts, percentile
from slos.evaluate import JOURNEY_OPS, FaultWindow, merge_intervals
from slos.records import OK, Records
from slos.report_words import fault_label, fault_name, params_words, seconds, target_name

FIG_W_IN, FIG_H_IN, DPI = 10.5, 3.0, 96
AX_LEFT, AX_RIGHT, AX_BOTTOM, AX_TOP = 0.075, 0.925, 0.16, 0.84  # figure fractions
STOP_MARGIN_S = 1.0  # the load's last second: operations cut off by the stop, not by a fault
LANE_PX = 18
LABEL_CHAR_PX, LABEL_PAD_PX, LABEL_GAP_PX = 6.6, 10.0, 4.0  # 11px sans-serif, generously
FAULT_COLOURS = ("#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
                 "#ffbb78", "#c5b0d5", "#c49c94")
STOP_COLOUR, SETTLE_COLOUR = "#9e9e9e", "#cfd8dc"


@dataclass(frozen=True, slots=True)
class Frame:
    """The shared time axis: seconds since `origin` (the load's start), from 0 to `end`."""

    origin: float
    end: float
    stop: float | None  # where the per-second series stop (load end − STOP_MARGIN_S)
    load_end: float | None

    def x(self, t: float) -> float:
        """A time (seconds since origin) as a percentage of the figure's width."""
        span = self.end if self.end > 0 else 1.0
        clipped = min(max(t, 0.0), span)
        return 100.0 * (AX_LEFT + (AX_RIGHT - AX_LEFT) * clipped / span)

    def keeps(self, second: int) -> bool:
        """Is the whole of [second, second + 1) before the load started stopping?"""
        return self.stop is None or second + 1 <= self.stop


def frame_of(records: Records, windows: Sequence[FaultWindow]) -> Frame:
    run = records.run
    origin = next((t for t in (run.load_started, run.started) if t is not None), None)
    if origin is None:
        origin = min((op.start for op in records.ops), default=0.0)
    load_end = run.load_ended - origin if run.load_ended is not None else None
    candidates = [1.0, *(w.end - origin for w in windows),
                  *((op.end or op.start) - origin for op in records.ops)]
    if load_end is not None:
        candidates.append(load_end)
    if run.settle_ended is not None:
        candidates.append(run.settle_ended - origin)
    end = max(candidates)
    stop = max(0.0, load_end - STOP_MARGIN_S) if load_end is not None else None
    return Frame(origin, end, stop, load_end)


# --- fault lanes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LaneItem:
    """One fault (or the load's stop) in a lane: its band and its label, in % of the width."""

    lane: int
    band_left: float
    band_width: float
    label_left: float
    label_width: float
    label: str
    title: str
    colour: str
    kind: str  # the fault, or "load-stop" / "settle"
    index: int | None  # the fault window's number (1-based), None for the load's own marks


def kind_colours(windows: Sequence[FaultWindow]) -> dict[str, str]:
    """One colour per fault kind, in order of first appearance."""
    kinds = list(dict.fromkeys(w.fault for w in windows))
    return {k: FAULT_COLOURS[i % len(FAULT_COLOURS)] for i, k in enumerate(kinds)}


def _label_width(label: str) -> float:
    return 100.0 * (len(label) * LABEL_CHAR_PX + LABEL_PAD_PX) / (FIG_W_IN * DPI)


def lay_out_lanes(windows: Sequence[FaultWindow], frame: Frame,
                  params: dict[int, str] | None = None) -> list[LaneItem]:
    """Every fault window in a lane, in apply order, and the load's stop and settle; an item
    goes to the first lane where its band and label start after the previous item's end."""
    colours = kind_colours(windows)
    params = params or {}
    wanted: list[tuple[float, float, str, str, str, str, int | None]] = []
    for i, w in enumerate(windows):
        start, end = w.start - frame.origin, w.end - frame.origin
        healed = "" if w.healed else ", never healed"
        extra = params.get(w.step)
        title = (f"#{i + 1} {fault_name(w.fault)} on {target_name(w.target)}"
                 + (f" ({extra})" if extra else "")
                 + f": {seconds(max(0.0, start))} → {seconds(max(0.0, end))}{healed}")
        wanted.append((start, end, fault_label(w.fault, w.target), title, colours[w.fault],
                       w.fault, i + 1))
    if frame.stop is not None and frame.load_end is not None:
        wanted.append((frame.stop, frame.load_end, "load stops", "the load generator stops "
                       "its users: operations cut off here are not a fault", STOP_COLOUR,
                       "load-stop", None))
        if frame.end > frame.load_end + 0.5:
            wanted.append((frame.load_end, frame.end, "settle, no load", "no new load: the "
                           "services finish their work before the audit", SETTLE_COLOUR,
                           "settle", None))
    gap = 100.0 * LABEL_GAP_PX / (FIG_W_IN * DPI)
    right = 100.0 * AX_RIGHT
    lane_ends: list[float] = []
    items: list[LaneItem] = []
    for start, end, label, title, colour, kind, index in sorted(wanted, key=lambda x: x[0]):
        band_left = frame.x(start)
        band_width = max(0.3, frame.x(end) - band_left)
        label_width = _label_width(label)
        label_left = min(band_left, right - label_width)  # near the right edge: end there
        occupied = (min(band_left, label_left), max(band_left + band_width,
                                                    label_left + label_width))
        lane = next((n for n, e in enumerate(lane_ends) if e + gap <= occupied[0]), None)
        if lane is None:
            lane = len(lane_ends)
            lane_ends.append(occupied[1])
        else:
            lane_ends[lane] = occupied[1]
        items.append(LaneItem(lane, band_left, band_width, label_left, label_width, label,
                              title, colour, kind, index))
    return items


def lanes_html(items: Sequence[LaneItem]) -> str:
    if not items:
        return ""
    lanes = 1 + max(i.lane for i in items)
    parts = [f'<div class="fault-lanes" data-lanes="{lanes}" style="height:{lanes * LANE_PX}px"'
             ' aria-label="fault lanes">']
    for i in items:
        top = i.lane * LANE_PX
        parts.append(
            f'<span class="lane-band" data-kind="{escape(i.kind)}" style="left:{i.band_left:.3f}%;'
            f'width:{i.band_width:.3f}%;top:{top}px;background:{i.colour}"></span>'
            f'<span class="lane-label" data-lane="{i.lane}" data-kind="{escape(i.kind)}" '
            f'title="{escape(i.title)}" style="left:{i.label_left:.3f}%;'
            f'width:{i.label_width:.3f}%;top:{top}px;border-left-color:{i.colour}">'
            f"{escape(i.label)}</span>")
    parts.append("</div>")
    return "".join(parts)


def kind_legend_html(windows: Sequence[FaultWindow]) -> str:
    colours = kind_colours(windows)
    if not colours:
        return ""
    items = "".join(f'<li><span class="swatch" style="background:{c}"></span>'
                    f"{escape(fault_name(kind))}</li>" for kind, c in colours.items())
    return f'<ul class="kind-legend">{items}</ul>'


def fault_params(records: Records) -> dict[int, str]:
    """Each fault step's settings in words, from its apply event."""
    return {e.step: params_words(e.params) for e in records.faults
            if e.event == "apply" and e.params}


# --- the charts ------------------------------------------------------------------

Draw = Callable[[Axes], bool]


def figure_html(chart_id: str, caption: str, windows: Sequence[FaultWindow], frame: Frame,
                lanes: str, draw: Draw) -> str:
    """One chart: the lane strip, then the image, with the count of fault windows it shows."""
    fig = Figure(figsize=(FIG_W_IN, FIG_H_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=AX_LEFT, right=AX_RIGHT, bottom=AX_BOTTOM, top=AX_TOP)
    ax = fig.add_subplot()
    ax.set_xlim(0, frame.end)
    has_data = draw(ax)
    if not has_data:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#888")
    _shade(ax, windows, frame)
    ax.set_xlabel("seconds since the load started")
    ax.grid(alpha=0.3)
    handles, labels = [], []
    for a in fig.axes:  # the twin axis's lines too
        h, lab = a.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:  # above the plot, in the top margin: never over the data or the lanes
        fig.legend(handles, labels, loc="lower left", bbox_to_anchor=(AX_LEFT, AX_TOP + 0.01),
                   ncol=len(handles), fontsize=8, frameon=False, borderaxespad=0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<figure id="{chart_id}" data-fault-windows="{len(windows)}">{lanes}'
            f'<img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _shade(ax: Axes, windows: Sequence[FaultWindow], frame: Frame) -> None:
    colours = kind_colours(windows)
    for start, end in merge_intervals((w.start - frame.origin, w.end - frame.origin)
                                      for w in windows):
        ax.axvspan(start, end, color="#000000", alpha=0.07, lw=0)
    for w in windows:
        ax.axvline(w.start - frame.origin, color=colours[w.fault], lw=1.2)
        if w.healed:
            ax.axvline(w.end - frame.origin, color=colours[w.fault], lw=1.2, ls="--")
    if frame.stop is not None and frame.load_end is not None:
        ax.axvspan(frame.stop, frame.load_end, facecolor="none", edgecolor=STOP_COLOUR,
                   hatch="///", lw=0)


def per_second(records: Records, frame: Frame) -> dict[int, list[tuple[float | None, bool]]]:
    """The shopper operations by the second they started in, up to the load's stop."""
    bins: dict[int, list[tuple[float | None, bool]]] = {}
    for op in records.ops:
        if op.f not in JOURNEY_OPS:
            continue
        second = int(math.floor(op.start - frame.origin))
        if second < 0 or not frame.keeps(second):
            continue
        bins.setdefault(second, []).append((op.latency, op.outcome == OK))
    return bins


def latency_draw(bins: dict[int, list[tuple[float | None, bool]]]) -> Draw:
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
        names = {50: "half took up to", 95: "95 % took up to", 99: "99 % took up to"}
        shades = {50: "#9ecae1", 95: "#4292c6", 99: "#08306b"}
        for p, values in series.items():
            ax.plot(xs, values, lw=1.2, color=shades[p], label=names[p])
        ax.set_ylabel("time taken (ms)")
        if xs:  # log: a fault's seconds and a normal step's milliseconds on one chart
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        return bool(xs)

    return draw


def throughput_draw(bins: dict[int, list[tuple[float | None, bool]]]) -> Draw:
    def draw(ax: Axes) -> bool:
        secs = sorted(bins)
        ok = [sum(1 for _, good in bins[s] if good) for s in secs]
        ratio = [100.0 * n / len(bins[s]) for n, s in zip(ok, secs, strict=True)]
        ax.plot(secs, ok, lw=1.2, color="#1f77b4", label="successful operations a second")
        ax.set_ylabel("operations a second")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(secs, ratio, lw=1.0, color="#2ca02c", label="share that succeeded (%)")
        twin.set_ylabel("succeeded (%)")
        twin.set_ylim(0, 105)
        return bool(secs)

    return draw


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


def unpaid_draw(facts: Facts, origin: float) -> Draw:
    def draw(ax: Axes) -> bool:
        xs, ys = charged_not_paid(facts, origin)
        if xs:
            ax.step(xs, ys, where="post", color="#d62728", lw=1.2,
                    label="charged, order not yet paid")
        ax.set_ylabel("orders")
        ax.set_ylim(bottom=0)
        return bool(xs)

    return draw
