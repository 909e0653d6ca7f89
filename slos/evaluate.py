"""Measure each objective of an SLO file on one run and give it a tier.

SLIs come from the history (latency of ok ops, invoke → completion; success = ok / (ok + fail +
info); throughput = ok ops per second), from the audit (anomaly counts, P11 payment lag, P11'
confirmation time) and from faults.ndjson (phases, recovery time).  Tiers as in Keptn: pass,
warning, fail; too few samples is unknown, never a pass.  An objective about a phase the run
does not have (`fault`, `recovery` or recovery time in a run whose timeline has no fault) is
`not_applicable`, with the reason: it neither passes nor blocks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.history import LOAD_STOPPED
from rundir import RunDirError, read_json
from slos.audit import AuditResult
from slos.blackbox import NEEDS_EXPORT
from slos.checkers import (
    UNKNOWN,
    Facts,
    confirmation_samples,
    payment_lag_samples,
    percentile,
)
from slos.expr import Threshold
from slos.model import Objective, SloFile
from slos.paths import never_walked
from slos.records import FAIL, INFO, OK, Op, Records

PASS, WARNING, FAIL_TIER = "pass", "warning", "fail"
NOT_APPLICABLE = "not_applicable"  # the objective's phase does not exist in this run
JOURNEY_OPS = frozenset({"place_order", "pay", "poll"})
RECOVERY_WINDOW_S = 5.0  # the rolling window of "success is back"
RECOVERY_STEP_S = 1.0
RECOVERY_CAP_S = 120.0
DEFAULT_RECOVERY_TARGET = 0.95


class BaselineError(ValueError):
    """A baseline run that cannot be compared against (no result.json, bad JSON)."""


@dataclass(slots=True)
class FaultWindow:
    step: int
    fault: str
    target: str
    start: float
    end: float
    healed: bool  # False: never healed in the record, closed at the end of the load

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "fault": self.fault, "target": self.target,
                "start": self.start, "end": self.end, "healed": self.healed}


@dataclass(slots=True)
class Recovery:
    heal: float
    end: float
    recovered: bool

    @property
    def seconds(self) -> float:
        return self.end - self.heal


@dataclass(slots=True)
class ObjectiveResult:
    name: str
    sli: str
    op: str | None
    phase: str
    key: bool
    objective: str
    warning: str | None
    measured: float | None
    shown: str
    samples: int
    min_samples: int
    tier: str  # pass | warning | fail | unknown | not_applicable
    reason: str = ""
    error_budget_used: float | None = None
    baseline: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "sli": self.sli, "op": self.op, "phase": self.phase,
            "key": self.key, "objective": self.objective, "warning": self.warning,
            "measured": self.measured, "measured_text": self.shown, "samples": self.samples,
            "min_samples": self.min_samples, "tier": self.tier, "reason": self.reason,
            "error_budget_used": self.error_budget_used, "baseline": self.baseline,
        }


@dataclass(slots=True)
class Measurement:
    values: list[float] = field(default_factory=list)  # the distribution, if any
    scalar: float | None = None  # rate / value, when the SLI is one number
    count: float | None = None  # what `count` reads, when it is not the number of values
    samples: int = 0
    unknown: str | None = None  # why it cannot be measured
    note: str = ""


# --- phases ------------------------------------------------------------------


def fault_windows(records: Records) -> list[FaultWindow]:
    """One window per applied fault step, from its apply to its heal (or the end of the load)."""
    open_steps: dict[tuple[int, str, str], float] = {}
    windows: list[FaultWindow] = []
    for event in sorted(records.faults, key=lambda e: e.t):
        ident = (event.step, event.fault, event.target)
        if event.event == "apply" and event.ok:
            open_steps.setdefault(ident, event.t)
        elif event.event == "heal" and ident in open_steps:
            windows.append(FaultWindow(*ident, open_steps.pop(ident), event.t, True))
    end = records.run.load_ended or records.reference_time()
    for ident, start in open_steps.items():
        windows.append(FaultWindow(*ident, start, max(start, end), False))
    windows.sort(key=lambda w: (w.start, w.step))
    return windows


def merge_intervals(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _inside(intervals: Sequence[tuple[float, float]], starts: Sequence[float], t: float) -> bool:
    i = bisect.bisect_right(starts, t) - 1
    return i >= 0 and t < intervals[i][1]


class Timeline:
    """Which phase a moment of the run was in, for one operation set and success target."""

    def __init__(self, faults: list[tuple[float, float]], recovery: list[tuple[float, float]]):
        self.faults = merge_intervals(faults)
        self.recovery = merge_intervals(recovery)
        self._fault_starts = [s for s, _ in self.faults]
        self._recovery_starts = [s for s, _ in self.recovery]

    def phase(self, t: float) -> str:
        if _inside(self.faults, self._fault_starts, t):
            return "fault"
        if _inside(self.recovery, self._recovery_starts, t):
            return "recovery"
        return "steady"

    def keeps(self, phase: str, t: float) -> bool:
        return phase == "all" or self.phase(t) == phase

    def duration(self, phase: str, start: float, end: float) -> float:
        """Seconds of [start, end) spent in `phase`."""
        total = max(0.0, end - start)
        if phase == "all":
            return total
        fault = _overlap(self.faults, start, end)
        recovery = _overlap(self.recovery, start, end) - _overlap_pairs(
            self.recovery, self.faults, start, end)
        if phase == "fault":
            return fault
        if phase == "recovery":
            return max(0.0, recovery)
        return max(0.0, total - fault - recovery)


def _overlap(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(e, end) - max(s, start)) for s, e in intervals)


def _overlap_pairs(a: list[tuple[float, float]], b: list[tuple[float, float]],
                   start: float, end: float) -> float:
    return sum(
        max(0.0, min(ae, be, end) - max(as_, bs, start)) for as_, ae in a for bs, be in b
    )


def recoveries(ops: Sequence[tuple[float, bool]], windows: list[FaultWindow], target: float,
               horizon: float) -> list[Recovery]:
    """From each heal, the first moment the rolling success rate is back at `target`.

    `ops` are (start, ok) sorted by start.  Capped at RECOVERY_CAP_S, the next fault and the
    end of the load; a heal that never recovers ends at the cap with `recovered=False`.
    """
    starts = [t for t, _ in ops]
    ok_prefix = [0]
    for _, ok in ops:
        ok_prefix.append(ok_prefix[-1] + (1 if ok else 0))
    applies = sorted(w.start for w in windows)
    out: list[Recovery] = []
    for w in windows:
        if not w.healed:
            continue
        heal = w.end
        later = [a for a in applies if a > heal]
        cap = min(heal + RECOVERY_CAP_S, later[0] if later else math.inf, max(horizon, heal))
        t = heal
        end: float | None = None
        while t < cap:
            lo = bisect.bisect_left(starts, t)
            hi = bisect.bisect_left(starts, t + RECOVERY_WINDOW_S)
            if hi > lo and (ok_prefix[hi] - ok_prefix[lo]) / (hi - lo) >= target:
                end = t
                break
            t += RECOVERY_STEP_S
        out.append(Recovery(heal, end if end is not None else cap, end is not None))
    return out


# --- the evaluator -------------------------------------------------------------


class Evaluator:
    """Measures objectives of one SLO file on one run's records and audit."""

    def __init__(self, records: Records, audit: AuditResult, slo: SloFile) -> None:
        self.records = records
        self.audit = audit
        self.slo = slo
        self.facts = Facts(records)
        self.windows = fault_windows(records)
        self._by_ops: dict[frozenset[str], list[Op]] = {}
        self._timelines: dict[tuple[frozenset[str], float], Timeline] = {}
        self._recoveries: dict[tuple[frozenset[str], float], list[Recovery]] = {}

    # operations and phases

    def ops_of(self, op: str | None) -> frozenset[str]:
        return JOURNEY_OPS if op in (None, "journey") else frozenset({op})

    def ops(self, names: frozenset[str]) -> list[Op]:
        if names not in self._by_ops:
            chosen = [o for o in self.records.ops if o.f in names]
            chosen.sort(key=lambda o: o.start)
            self._by_ops[names] = chosen
        return self._by_ops[names]

    def target(self, op: str | None) -> float:
        """The success rate that counts as recovered: the file's success objective for op."""
        for objective in self.slo.objectives:
            if objective.sli == "success_rate" and objective.op == op:
                t = objective.threshold
                if t.aggregation == "rate" and t.op in (">", ">="):
                    return t.value
        return DEFAULT_RECOVERY_TARGET

    def recoveries(self, names: frozenset[str], target: float) -> list[Recovery]:
        key = (names, target)
        if key not in self._recoveries:
            ops = [(o.start, o.outcome == OK) for o in self.ops(names)]
            horizon = self.records.run.load_ended or (ops[-1][0] if ops else 0.0)
            self._recoveries[key] = recoveries(ops, self.windows, target, horizon)
        return self._recoveries[key]

    def timeline(self, op: str | None) -> Timeline:
        names = self.ops_of(op)
        target = self.target(op)
        key = (names, target)
        if key not in self._timelines:
            recovery = [(r.heal, r.end) for r in self.recoveries(names, target)]
            faults = [(w.start, w.end) for w in self.windows]
            self._timelines[key] = Timeline(faults, recovery)
        return self._timelines[key]

    def load_span(self) -> tuple[float, float]:
        run = self.records.run
        ops = self.records.ops
        start = run.load_started or (min(o.start for o in ops) if ops else 0.0)
        end = run.load_ended or (max((o.end or o.start) for o in ops) if ops else start)
        return start, max(start, end)

    # SLIs

    def measure(self, o: Objective) -> Measurement:
        sli = o.sli
        if sli == "anomaly":
            return self._anomaly(o)
        if sli == "recovery_time":
            heals = self.recoveries(self.ops_of(o.op), self.target(o.op))
            unrecovered = sum(1 for r in heals if not r.recovered)
            note = f"{unrecovered} heal(s) never recovered within the cap" if unrecovered else ""
            return Measurement([r.seconds for r in heals], samples=len(heals), note=note)
        timeline = self.timeline(o.op)
        if sli == "payment_lag":
            if self.audit.mode == "blackbox":
                return Measurement(unknown=f"{NEEDS_EXPORT}: when an order became paid is "
                                   "internal (its transitions)")
            lags = [lag for t, lag in payment_lag_samples(self.facts) if timeline.keeps(o.phase, t)]
            return Measurement(lags, samples=len(lags))
        if sli == "confirmation_time":
            c = confirmation_samples(self.facts)
            times = [s for t, s in c.samples if timeline.keeps(o.phase, t)]
            waited = [t for t, _ in c.gave_up if timeline.keeps(o.phase, t)]
            # a shopper still watching when the load stopped did not give up: the run ended
            cut = self.cut_short(waited)
            gave_up = len(waited) - cut
            total = len(times) + gave_up
            note = f"{gave_up} shopper(s) never saw PAID"
            if cut:
                note += f"; {cut} still waiting when the load ended (not counted)"
            return Measurement(times, scalar=len(times) / total if total else None,
                               samples=total, note=note)
        ops = [op for op in self.ops(self.ops_of(o.op)) if timeline.keeps(o.phase, op.start)]
        if sli == "latency":
            values = [op.latency for op in ops if op.outcome == OK and op.latency is not None]
            return Measurement(values, samples=len(values))
        if sli == "success_rate":
            # cut short by the load generator's own stop: no answer was awaited, none is missing
            stopped = sum(1 for op in ops if op.outcome == INFO and op.error == LOAD_STOPPED)
            ok = sum(1 for op in ops if op.outcome == OK)
            counted = sum(1 for op in ops if op.outcome in (OK, FAIL, INFO)) - stopped
            note = f"{ok} ok of {counted}"
            if stopped:
                note += f"; {stopped} cut short when the load stopped (not counted)"
            return Measurement(scalar=ok / counted if counted else None, samples=counted,
                               note=note)
        return self._throughput(o, ops, timeline)

    def cut_short(self, paid_at: list[float]) -> int:
        """How many of these payers paid less than max_poll before the load ended."""
        run = self.records.run
        if run.max_poll is None or run.load_ended is None:
            return 0
        return sum(1 for t in paid_at if t + run.max_poll > run.load_ended)

    def _throughput(self, o: Objective, ops: list[Op], timeline: Timeline) -> Measurement:
        start, end = self.load_span()
        seconds = timeline.duration(o.phase, start, end)
        ok = [op for op in ops if op.outcome == OK]
        if seconds <= 0:
            return Measurement(samples=len(ok), unknown=f"no time spent in phase {o.phase}")
        per_second: dict[int, int] = {}
        for op in ok:
            second = int(op.start - start)
            per_second[second] = per_second.get(second, 0) + 1
        series = [
            float(per_second.get(s, 0)) for s in range(int(math.ceil(end - start)))
            if timeline.keeps(o.phase, start + s + 0.5)
        ]
        return Measurement(series, scalar=len(ok) / seconds, samples=len(ok))

    def _anomaly(self, o: Objective) -> Measurement:
        checks = [self.audit.checks[c] for c in o.classes or []]
        decided = [c for c in checks if c.verdict != UNKNOWN]
        undecided = [c for c in checks if c.verdict == UNKNOWN]
        allowed = [c.cls for c in undecided if self.allows_missing_export(c.error)]
        blocking = [c.cls for c in undecided if c.cls not in allowed]
        total = sum(c.count for c in decided)
        m = Measurement(scalar=float(total), count=float(total), samples=self.audit.completed_ops,
                        note=", ".join(f"{c.cls}={c.count}" for c in decided))
        value = aggregate(o.threshold, m)
        passes = value is not None and o.threshold.holds(value)
        if decided and not passes:
            return m  # anomalies found are a finding, whatever else stayed undecided
        if blocking:
            m.unknown = f"checker(s) {', '.join(blocking)} could not decide"
            return m
        if allowed:
            if not decided:
                m.unknown = f"{NEEDS_EXPORT} for {', '.join(allowed)}"
                return m
            m.note += (f"; {', '.join(allowed)} not decided ({NEEDS_EXPORT}; "
                       "this SLO file allows it: needs_export: allow)")
        unwalked = never_walked([c.cls for c in decided], self.audit.paths)
        if unwalked and passes:  # nothing found where nothing was tried is no evidence
            m.unknown = "; ".join(f"path {path} never walked" for path in unwalked)
        return m

    def allows_missing_export(self, why: str | None) -> bool:
        """A black-box unknown the SLO file does not block on (`needs_export: allow`)."""
        return self.slo.needs_export == "allow" and bool(why) and NEEDS_EXPORT in str(why)

    # tiers

    def absent_phase(self, o: Objective) -> str | None:
        """Why `o` does not apply to this run (its phase is not in the timeline), or None.

        Only a timeline with no fault at all lacks phases: a fault that failed to apply is
        still a fault event (unknown, not a pass), and a run without faults.ndjson cannot tell.
        """
        unknown = "faults.ndjson" in self.records.missing
        return phase_absent(o, has_faults=bool(self.records.faults) or unknown)

    def evaluate(self, o: Objective) -> ObjectiveResult:
        need = required_samples(o, self.slo)
        threshold = o.threshold
        base = ObjectiveResult(
            name=o.name, sli=o.sli, op=o.op, phase=o.phase, key=o.key, objective=o.pass_,
            warning=o.warning, measured=None, shown="n/a", samples=0, min_samples=need,
            tier=UNKNOWN,
        )
        absent = self.absent_phase(o)
        if absent is not None:
            base.tier, base.reason = NOT_APPLICABLE, absent
            return base
        try:
            m = self.measure(o)
        except Exception as exc:  # a broken SLI is unknown, not a crash of the gate
            base.reason = f"could not measure: {type(exc).__name__}: {exc}"
            return base
        base.samples = m.samples
        if m.unknown and self.allows_missing_export(m.unknown):
            base.tier = NOT_APPLICABLE
            base.reason = f"{m.unknown} (black-box audit; this SLO file has needs_export: allow)"
            return base
        measured = aggregate(threshold, m)
        base.measured = measured
        base.shown = threshold.show(measured)
        notes = [m.note] if m.note else []
        if m.unknown:
            base.reason = m.unknown
        elif m.samples < need:
            base.reason = f"only {m.samples} sample(s), the file needs {need}"
        elif m.samples == 0 and need == 0:
            base.tier = PASS
            notes.insert(0, "no samples, and the objective allows none (min_samples: 0)")
        elif measured is None:
            base.reason = "nothing to measure"
        elif threshold.holds(measured):
            base.tier = PASS
        else:
            warning = o.warning_threshold
            w = aggregate(warning, m) if warning is not None else None
            if warning is not None and w is not None and warning.holds(w):
                base.tier = WARNING
                notes.insert(0, f"measured {base.shown} misses {o.pass_}, within {o.warning}")
            else:
                base.tier = FAIL_TIER
                notes.insert(0, f"measured {base.shown} vs objective {o.pass_}")
        if base.tier != UNKNOWN:
            base.reason = "; ".join(notes)
        base.error_budget_used = error_budget(threshold, measured)
        return base

    def run(self, baseline: dict[str, Any] | None = None) -> list[ObjectiveResult]:
        results = [self.evaluate(o) for o in self.slo.objectives]
        if baseline is not None:
            if self.slo.baseline is None:  # no hidden default tolerance
                raise BaselineError(f"SLO file {self.slo.name!r} has no baseline.max_regression")
            compare_baseline(results, self.slo.objectives, baseline,
                             self.slo.baseline.max_regression_fraction)
        return results


def required_samples(o: Objective, slo: SloFile) -> int:
    """The objective's own min_samples, else the file's; one heal is enough for recovery."""
    if o.min_samples is not None:
        return o.min_samples
    return 1 if o.sli == "recovery_time" else slo.min_samples


def phase_absent(o: Objective, has_faults: bool) -> str | None:
    """Why `o` does not apply to a run whose timeline has (no) faults; None if it applies."""
    if has_faults:
        return None
    if o.sli == "recovery_time":
        return "this run's timeline has no fault: nothing to recover from"
    if o.phase in ("fault", "recovery"):
        return f"this run's timeline has no fault, so it has no {o.phase} phase"
    return None


def aggregate(t: Threshold, m: Measurement) -> float | None:
    """The number a threshold's aggregation reads from a measurement."""
    if t.aggregation in ("rate", "value"):
        return m.scalar
    if t.aggregation == "count":
        return m.count if m.count is not None else float(len(m.values))
    if not m.values:
        return None
    values = m.values
    if t.aggregation == "avg":
        return sum(values) / len(values)
    if t.aggregation == "min":
        return min(values)
    if t.aggregation == "max":
        return max(values)
    ordered = sorted(values)
    if t.aggregation == "med":
        return percentile(ordered, 50)
    return percentile(ordered, t.percentile or 50)


def error_budget(t: Threshold, measured: float | None) -> float | None:
    """(1 − success) / (1 − target) for rate objectives with a lower bound; else None."""
    if t.aggregation != "rate" or t.op not in (">", ">=") or measured is None:
        return None
    if t.value >= 1:
        return 0.0 if measured >= 1 else None
    return (1 - measured) / (1 - t.value)


def load_baseline(path: Path) -> dict[str, Any]:
    """A previous run's result.json (given the run directory or the file itself)."""
    target = path / "result.json" if path.is_dir() else path
    try:
        data = read_json(target)
    except RunDirError as exc:
        raise BaselineError(f"baseline: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("objectives"), list):
        raise BaselineError(f"baseline: {target} has no objectives list (not a result.json?)")
    data["_path"] = str(target)
    return data


def compare_baseline(results: list[ObjectiveResult], objectives: list[Objective],
                     baseline: dict[str, Any], max_regression: float) -> None:
    """Fail every objective whose measured value got worse than the baseline's by more than
    `max_regression` (relative); equality thresholds (count == 0) are not compared."""
    before = {entry.get("name"): entry for entry in baseline["objectives"]
              if isinstance(entry, dict)}
    for result, objective in zip(results, objectives, strict=True):
        old_entry = before.get(result.name)
        threshold = objective.threshold
        if old_entry is None or threshold.op in ("==", "!="):
            continue
        old, new = old_entry.get("measured"), result.measured
        if not isinstance(old, int | float) or new is None:
            continue
        # from 0 any worsening is infinitely relative: report it as "from 0"
        change = (new - old) / abs(old) if old != 0 else (0.0 if new == old else math.inf)
        regression = change if threshold.lower_is_better else -change
        regressed = regression > max_regression and new != old
        result.baseline = {
            "measured": old,
            "measured_text": threshold.show(float(old)),
            "change": None if math.isinf(change) else round(change, 4),
            "regressed": regressed,
        }
        if regressed and result.tier != UNKNOWN:
            shown = "from 0" if math.isinf(change) else f"{regression:+.1%}"
            result.tier = FAIL_TIER
            note = (f"regressed {shown} vs baseline ({threshold.show(float(old))} → "
                    f"{result.shown}), more than the allowed +{max_regression:.0%}")
            result.reason = f"{note}; {result.reason}" if result.reason else note


def evaluate(records: Records, audit: AuditResult, slo: SloFile,
             baseline: dict[str, Any] | None = None) -> list[ObjectiveResult]:
    return Evaluator(records, audit, slo).run(baseline)

