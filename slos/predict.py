"""Before a run: how many samples will each objective of an SLO file get from a scenario?

`chaosbed run SCENARIO --slo FILE --dry-run` asks this, so a gate that can only answer UNKNOWN
is caught before minutes of load.  The prediction is arithmetic on the load spec, not a
simulation: journeys per second of each user class (the locustfile's pacing toward `rate`,
never faster than a journey takes on a healthy stack) × the seconds of the objective's phase
(the timeline's fault windows, plus an assumed recovery after each heal, less the time a
fault stops the operation outright or the stock is sold out) × the operations of that kind a
journey makes.  A flash sale's extra users are not counted (the stack, not the
user count, limits the peak), so the figures lean low: a run on a healthy stack gets at least
about this many.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from faults.scenario import Scenario, UserClass
from services.common.settings import Settings
from slos.evaluate import JOURNEY_OPS, Timeline, phase_absent, required_samples
from slos.model import Objective, SloFile

# What one journey of each class takes on a healthy stack (loadtests/locustfile.py):
JOURNEY_S = {"shopper": 0.65, "impatient": 0.9}  # place, pay, poll until PAID (measured)
LATE_PAYER_EXTRA_S = 1.0  # a late payer waits for CLOSED (close_after_s), polls, then pays
UNPACED_S = 0.6  # a shopper's think time without `rate`
BROWSER_PACE_S = 1.0  # Browser.pace_s
FORGER_PACE_S = 5.0  # Forger.pace_s
POLLS_PER_PAYER = 1.1  # the first poll (0.2 s after paying) usually sees PAID
SHOPPING: tuple[UserClass, ...] = ("shopper", "impatient", "late_payer")
# operations per journey of each shopping class
PER_JOURNEY: dict[str, dict[str, float]] = {
    "shopper": {"place_order": 1, "pay": 1, "poll": POLLS_PER_PAYER, "paid": 1},
    "impatient": {"place_order": 2, "pay": 1, "poll": POLLS_PER_PAYER, "paid": 1},
    "late_payer": {"place_order": 1, "poll": 3},
}
# Faults that stop an operation outright (no ok sample while they last), and what each
# operation goes through: a shopper who cannot place an order does not pay either.
STOPPING = frozenset({"down", "kill", "pause"})
_PLACE = frozenset({"client_order", "order", "order_inventory", "inventory", "order_channel",
                    "channel"})
DEPENDS: dict[str, frozenset[str]] = {
    "place_order": _PLACE, "pay": _PLACE | {"client_channel"}, "poll": _PLACE,
    "paid": _PLACE | {"client_channel"},
}
MEAN_QTY = 2.0  # a shopper orders randint(1, 3) units
NEEDS_STOCK = frozenset({"pay", "paid"})  # nothing left to sell: orders are refused, not paid
ASSUMED_RECOVERY_S = 2.0  # after each heal, until success is back (measured: 0-4 s)
TIGHT_MARGIN = 1.3  # fewer than 1.3 x the needed samples: a slower machine may fall short


@dataclass(frozen=True, slots=True)
class Prediction:
    name: str
    sli: str
    op: str | None
    phase: str
    samples: int  # predicted
    need: int
    basis: str  # how the figure was reached, in words
    not_applicable: str | None = None
    exact: bool = False  # a count known in advance (heals), not an estimate

    @property
    def would_be_unknown(self) -> bool:
        return self.not_applicable is None and self.samples < self.need

    @property
    def tight(self) -> bool:
        return (self.not_applicable is None and not self.would_be_unknown and not self.exact
                and self.samples < self.need * TIGHT_MARGIN)

    @property
    def status(self) -> str:
        if self.not_applicable is not None:
            return "not applicable"
        if self.would_be_unknown:
            return "UNKNOWN"
        return "tight" if self.tight else "ok"


def users_per_class(mix: Mapping[Any, int], users: int) -> dict[str, int]:
    """Users of each class: Locust splits the users by weight (largest remainder)."""
    total = sum(mix.values())
    if total <= 0:
        return {}
    exact = {str(name): users * weight / total for name, weight in mix.items()}
    counts = {name: int(share) for name, share in exact.items()}
    left = users - sum(counts.values())
    for name in sorted(exact, key=lambda n: exact[n] - counts[n], reverse=True)[:left]:
        counts[name] += 1
    return counts


class LoadModel:
    """Operations per second of each kind, and seconds of each phase, for one scenario."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        load = scenario.load
        self.users = users_per_class(load.mix, load.users)
        share = sum(load.mix.get(c, 0) for c in SHOPPING) / max(1, sum(load.mix.values()))
        self.pace = (max(1.0, load.users * share) / load.rate) if load.rate else UNPACED_S
        self.rates = self._rates()
        windows = [(s.at, s.end) for s in scenario.timeline]
        self.timeline = Timeline(windows, self._recovery(windows))
        self.ramp_s = load.users / load.spawn_rate / 2 + self.pace / 2  # users start late
        # shoppers pick a sku at random: each sells out on its own, then its orders are refused
        share = self.rates.get("paid", 0.0) / len(load.skus)
        self.sold_out = [self._sold_out_at(units / MEAN_QTY, share) for units in load.skus.values()]

    def _sold_out_at(self, orders: float, paid: float) -> float:
        """When `orders` paid orders at `paid`/s (a spike's users counted) empty a sku."""
        load, end = self.scenario.load, self.scenario.duration
        if paid <= 0:
            return end
        spike_at = load.spike_at if load.shape == "flash_sale" and load.spike_at else end
        spike_end = min(end, spike_at + (load.spike_for or 0.0))
        before = paid * spike_at
        if orders <= before:
            return orders / paid
        during = paid * load.spike_factor * (spike_end - spike_at)
        if orders <= before + during:
            return spike_at + (orders - before) / (paid * load.spike_factor)
        return min(end, spike_end + (orders - before - during) / paid)

    def journey_s(self, cls: str) -> float:
        if cls == "late_payer":
            close = float(self.scenario.services.get("close_after_s", _default_close_after_s()))
            return min(close, self.scenario.load.late_pay_wait) + LATE_PAYER_EXTRA_S
        return JOURNEY_S.get(cls, JOURNEY_S["shopper"])

    def _rates(self) -> dict[str, float]:
        """Operations per second on a healthy stack, by history `f` (plus `paid` orders)."""
        rates: dict[str, float] = {}
        for cls in SHOPPING:
            journeys = self.users.get(cls, 0) / max(self.pace, self.journey_s(cls))
            for f, per in PER_JOURNEY[cls].items():
                rates[f] = rates.get(f, 0.0) + journeys * per
        rates["browse"] = self.users.get("browser", 0) / BROWSER_PACE_S
        rates["forge"] = self.users.get("forger", 0) / FORGER_PACE_S
        return rates

    def _recovery(self, windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
        applies = sorted(start for start, _ in windows)
        out = []
        for _, heal in windows:
            later = [a for a in applies if a > heal]
            end = min(heal + ASSUMED_RECOVERY_S, later[0] if later else heal + ASSUMED_RECOVERY_S,
                      self.scenario.duration)
            if end > heal:
                out.append((heal, end))
        return out

    def seconds(self, phase: str) -> float:
        return self.timeline.duration(phase, 0.0, self.scenario.duration)

    def live_seconds(self, phase: str, ops: frozenset[str], *, ok_only: bool) -> float:
        """Seconds of `phase` in which the operations `ops` happen (after the ramp; for a
        payment, averaged over the skus while each is in stock) and, if `ok_only`, can
        succeed."""
        needs = frozenset().union(*(DEPENDS.get(f, frozenset()) for f in ops)) if ok_only \
            else frozenset()
        dead = Timeline([(s.at, s.end) for s in self.scenario.timeline
                         if s.fault in STOPPING and s.target in needs], [])
        ends = self.sold_out if ops & NEEDS_STOCK else [self.scenario.duration]
        total = 0.0
        for end in ends:
            seconds = self.timeline.duration(phase, 0.0, end)
            if phase in ("fault", "all"):
                seconds -= sum(max(0.0, min(e, end) - s) for s, e in dead.faults)
            if phase in ("steady", "all"):
                seconds -= self.ramp_s
            total += max(0.0, seconds)
        return total / len(ends)

    def stragglers(self, phase: str, ops: frozenset[str]) -> float:
        """Orders caught by a fault that stops them and placed once it heals (the client
        retries): about one per shopping user per such window."""
        if phase not in ("fault", "all") or "place_order" not in ops:
            return 0.0
        windows = sum(1 for s in self.scenario.timeline
                      if s.fault in STOPPING and s.target in DEPENDS["place_order"] and s.for_)
        return windows * sum(self.users.get(c, 0) for c in SHOPPING)

    def sold_out_before_the_end(self) -> bool:
        return min(self.sold_out) < self.scenario.duration

    def rate(self, names: frozenset[str] | set[str]) -> float:
        return sum(self.rates.get(f, 0.0) for f in names)


def _default_close_after_s() -> float:
    return float(Settings.close_after_s)  # the dataclass field's default


def predict(scenario: Scenario, slo: SloFile) -> list[Prediction]:
    """One prediction per objective of `slo`, in the file's order."""
    model = LoadModel(scenario)
    return [_predict(model, slo, o) for o in slo.objectives]


def _predict(model: LoadModel, slo: SloFile, o: Objective) -> Prediction:
    need = required_samples(o, slo)
    absent = phase_absent(o, has_faults=bool(model.scenario.timeline))

    def made(samples: float, basis: str, exact: bool = False) -> Prediction:
        return Prediction(o.name, o.sli, o.op, o.phase, int(samples), need, basis, absent, exact)

    if absent is not None:
        return made(0, absent)
    names = JOURNEY_OPS if o.op in (None, "journey") else frozenset({o.op})
    if o.sli in ("payment_lag", "confirmation_time"):
        names = frozenset({"paid"})
    # only ok operations are samples of a time; success rates count the failures too
    ok_only = o.sli != "success_rate"
    seconds = model.live_seconds(o.phase, names, ok_only=ok_only)
    during = f"{seconds:.0f} s {o.phase}" if o.phase != "all" else f"{seconds:.0f} s"
    if model.seconds(o.phase) - seconds > model.ramp_s + 0.5:
        during += " it can succeed in" if ok_only else " it happens in"
        if names & NEEDS_STOCK and model.sold_out_before_the_end():
            during += " (some stock sells out)"
    if o.sli == "recovery_time":
        return made(len(model.scenario.timeline), "one per heal of the timeline", exact=True)
    if o.sli == "anomaly":
        every = model.rate(set(model.rates) - {"paid"})
        loaded = model.scenario.duration - model.ramp_s
        return made(every * loaded, f"{every:.1f} operations/s × {loaded:.0f} s")
    if o.sli in ("payment_lag", "confirmation_time"):
        paid = model.rates.get("paid", 0.0)
        return made(paid * seconds, f"{paid:.1f} paid orders/s × {during}")
    per_second = model.rate(names)
    what = "journey operations" if o.op in (None, "journey") else f"{o.op}"
    late = model.stragglers(o.phase, names) if ok_only else 0.0
    caught = f" + {late:.0f} caught by a stopping fault" if late else ""
    return made(per_second * seconds + late, f"{per_second:.1f} {what}/s × {during}{caught}")


def render_predictions(scenario: Scenario, slo: SloFile, predictions: list[Prediction]) -> str:
    """The dry run's table and its one-line conclusion."""
    model = LoadModel(scenario)
    phases = ", ".join(f"{p} {model.seconds(p):.0f} s" for p in ("steady", "fault", "recovery"))
    lines = [
        f"dry run: scenario {scenario.name} ({scenario.duration:g} s load, "
        f"{len(scenario.timeline)} fault step(s)) with SLO file {slo.path or slo.name}: "
        "both valid; nothing started",
        f"phases (assuming {ASSUMED_RECOVERY_S:g} s recovery per heal): {phases}",
    ]
    width = max(len(p.name) for p in predictions)
    lines.append(f"  {'objective':<{width}}  {'predicted':>9}  {'needed':>6}  status")
    for p in predictions:
        shown = "-" if p.not_applicable else str(p.samples)
        lines.append(f"  {p.name:<{width}}  {shown:>9}  {p.need:>6}  {p.status}  ({p.basis})")
    unknown = [p.name for p in predictions if p.would_be_unknown]
    tight = [p.name for p in predictions if p.tight]
    if unknown:
        lines.append(f"would be UNKNOWN (exit 2): {', '.join(unknown)}")
    else:
        lines.append("every objective would have its samples (exit 0)")
    if tight:
        lines.append(f"tight (under {TIGHT_MARGIN:g}x the samples needed): {', '.join(tight)}")
    return "\n".join(lines)
