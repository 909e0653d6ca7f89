"""The report in plain words: what each anomaly means for shoppers and what it costs, each
objective as a promise ("99 % of orders are placed in under 300 ms"), the faults and the load as
a product manager would describe them, and one headline for the page and the PR comment.

Pure functions of the gate's results; no class id, threshold syntax or checker name reaches
these sentences (those stay in the report's technical details).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slos.audit import AuditResult
from slos.checkers import INVALID, UNKNOWN, VALID
from slos.evaluate import FAIL_TIER, NOT_APPLICABLE, PASS, WARNING, ObjectiveResult
from slos.expr import ExpressionError, Threshold, parse
from slos.model import Objective
from slos.report_impact import Exposure, Impact

CURRENCY = "¥"  # amounts are integer minor units (docs/contracts.md); shown in major units

VERDICT_WORDS = {PASS: "PASS — safe to release", WARNING: "PASS WITH WARNINGS — safe to release",
                 FAIL_TIER: "FAIL — do not release", UNKNOWN: "UNKNOWN — not enough evidence",
                 "error": "ERROR — the check itself failed"}
STATUS_WORDS = {PASS: "met", WARNING: "nearly met", FAIL_TIER: "missed",
                UNKNOWN: "not enough evidence", NOT_APPLICABLE: "not applicable"}


@dataclass(frozen=True, slots=True)
class ClassWords:
    thing: str  # what is counted, singular
    what: str  # "{n} {thing} {were} …": what happened, for the "what it means" list
    noun: str  # the problem as a plural noun phrase: "no lost payments"
    cost: str  # the money at risk: "{money} to refund"
    look: str  # what to look at next


CLASS_WORDS: dict[str, ClassWords] = {
    "P1": ClassWords("shopper", "{n} {thing} {were} told the payment succeeded, but the shop "
                     "never recorded it", "lost payments", "{money} of orders left unpaid",
                     "the payment notifications and the payment query of these orders in the "
                     "order service"),
    "P2": ClassWords("shopper", "{n} {thing} {were} told the payment succeeded, but no money "
                     "was taken", "payments reported as taken but never collected",
                     "{money} never collected", "what the payment channel answered to these "
                     "payments"),
    "P3": ClassWords("shopper", "{n} {thing} {were} told the payment failed, but {were} charged "
                     "anyway", "charges for payments reported as failed", "{money} to refund",
                     "how a payment that timed out is reported to the shopper"),
    "P4": ClassWords("payment", "{n} {thing} appeared without the shopper paying",
                     "payments nobody made", "{money} charged without a shopper paying",
                     "where these charges came from in the payment channel's ledger"),
    "P6": ClassWords("shopper", "{n} {thing} {were} charged, but the order was never marked "
                     "paid", "charges for orders never marked paid",
                     "{money} taken for orders that will not ship",
                     "the payment notification from the channel to the order service, and "
                     "the reconciliation that should have repaired it"),
    "P7": ClassWords("order", "{n} {thing} {were} marked paid without any money received",
                     "orders marked paid without money", "{money} of goods given away",
                     "which notification or query marked these orders paid"),
    "P8": ClassWords("shopper", "{n} {thing} {were} charged twice", "double charges",
                     "{money} charged too much", "the retries of the pay request: each must "
                     "reuse the same payment"),
    "P9": ClassWords("order", "{n} {thing} {were} confirmed or shipped more than once",
                     "orders confirmed or shipped twice", "about {money} of goods",
                     "how the order service ignores a repeated payment notification"),
    "P10": ClassWords("charge", "{n} {thing} did not match the order amount",
                      "wrong charge amounts", "{money} charged wrongly",
                      "how the order amount is passed to the payment channel"),
    "P12": ClassWords("forged payment notification", "{n} {thing} {were} accepted",
                      "accepted forged notifications", "{money} of orders marked paid by a "
                      "forger", "the signature and replay checks on payment notifications"),
    "P13": ClassWords("payment notification", "{n} {thing} {were} confirmed to the payment "
                      "channel but not recorded", "notifications confirmed but not recorded",
                      "{money} at risk if the order service restarts",
                      "whether the order service saves a notification before it answers"),
    "O1": ClassWords("order", "{n} {thing} the shoppers were told exist {are} missing",
                     "lost orders", "{money}", "whether order creation answers before the "
                     "order is stored"),
    "O2": ClassWords("order", "{n} {thing} {were} created twice", "duplicate orders",
                     "{money} of duplicate orders", "how order creation honours the "
                     "idempotency key of a retried request"),
    "O3": ClassWords("order", "{n} {thing} {are} stuck, neither paid nor closed",
                     "stuck orders", "{money} of orders waiting", "the jobs that close unpaid "
                     "orders and reconcile payments"),
    "I1": ClassWords("product", "{n} {thing} {were} oversold", "overselling", "{money}",
                     "how the inventory service reserves stock when many shoppers buy at once"),
    "I2": ClassWords("product", "stock does not add up for {n} {thing}",
                     "stock that does not add up", "{money}",
                     "every change of stock: reservations, confirmations, cancellations"),
    "I3": ClassWords("stock reservation", "{n} {thing} {were} never released",
                     "stock held by forgotten reservations", "{money}",
                     "the sweeper that releases expired reservations"),
    "I4": ClassWords("reservation", "{n} {thing} took stock after the order was cancelled",
                     "stock taken for cancelled orders", "{money}",
                     "what happens when a cancel overtakes its reservation"),
    "I5": ClassWords("order", "{n} {thing} had stock sold unpaid, or released while paid",
                     "stock sold unpaid or released while paid", "{money} of orders",
                     "how stock is confirmed or released when a payment is late or refunded"),
    "I6": ClassWords("order", "{n} paid {thing} still had their stock only reserved, never "
                     "confirmed", "paid orders whose stock was never confirmed",
                     "{money} of paid orders that may not ship",
                     "the confirm the order service sends the inventory once an order is paid"),
    "Q1": ClassWords("internal message", "{n} {thing} (order confirmations or refunds) {were} "
                     "never delivered", "undelivered confirmations and refunds",
                     "{money} of orders whose confirmation or refund never went out",
                     "the outbox relay that delivers confirmations and refunds"),
}
_OTHER = ClassWords("problem", "{n} {thing} of the kind “{name}” {were} found",
                    "problems of the kind “{name}”", "{money}",
                    "the example orders in the technical details")
_PLURALS = {"stock reservation": "stock reservations"}

# --- small pieces --------------------------------------------------------------


def money(minor: int) -> str:
    """Minor units as money: `¥1,234.50`; from ¥10,000 on, without the cents."""
    major = minor / 100
    if abs(minor) >= 1_000_000:
        return f"{CURRENCY}{major:,.0f}"
    return f"{CURRENCY}{major:,.2f}"


def count(n: int, thing: str) -> str:
    """`1 order`, `358 orders`."""
    return f"{n:,} {thing if n == 1 else _PLURALS.get(thing, thing + 's')}"


def seconds(s: float) -> str:
    """`300 ms`, `4.2 s`, `1 min 53 s`."""
    if s < 1:
        ms = s * 1000
        return f"{ms:.1f} ms" if 0 < ms < 10 and ms != int(ms) else f"{ms:.0f} ms"
    if s < 60:
        return f"{s:.1f} s".replace(".0 s", " s")
    minutes, rest = divmod(round(s), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def percent(fraction: float) -> str:
    """`99 %`, `99.5 %`, `97.32 %`."""
    value = round(fraction * 100, 2)
    return f"{value:g} %"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def class_words(cls: str) -> ClassWords:
    return CLASS_WORDS.get(cls, _OTHER)


# --- anomalies ---------------------------------------------------------------


def happened(cls: str, n: int, name: str = "") -> str:
    """What happened, without its cost: `358 orders were confirmed or shipped more than once`."""
    words = class_words(cls)
    return _capital(words.what.format(
        n=f"{n:,}", thing=count(n, words.thing).split(" ", 1)[1], name=name,
        were="was" if n == 1 else "were", are="is" if n == 1 else "are"))


def cost(impact: Impact) -> str:
    """What it puts at risk: `about ¥12,345 of goods, 358 units of stock`; "" when nothing
    can be priced (an order the databases do not have)."""
    parts = []
    at_least = "" if impact.complete else "at least "
    if impact.money is not None and impact.money_by_order:
        template = class_words(impact.cls).cost
        parts.append(template.format(money=at_least + money(impact.money)))
    if impact.units is not None and (impact.units_by_order or impact.units_by_sku):
        parts.append(at_least + count(impact.units, "unit") + " of stock")
    return ", ".join(parts)


def impact_sentence(impact: Impact) -> str:
    """`358 orders were confirmed or shipped more than once — about ¥1,234 of goods.`"""
    what = happened(impact.cls, impact.count, impact.name)
    price = cost(impact)
    return f"{what} — {price}." if price else f"{what}."


def look_next(cls: str) -> str:
    return f"Look at {class_words(cls).look}."


def total_sentence(exposure: Exposure) -> str:
    """The whole exposure in one line, each order counted once."""
    if not exposure.impacts:
        return ""
    at_least = "" if exposure.complete else "at least "
    parts = [f"{at_least}{money(exposure.money)}"]
    if exposure.orders:
        parts.append(count(exposure.orders, "order"))
    if exposure.units:
        parts.append(count(exposure.units, "unit") + " of stock")
    return "In all, " + ", ".join(parts) + " at risk (an order with several problems is " \
        "counted once)."


def clean_sentence(audit: AuditResult) -> str:
    if audit.verdict == VALID:
        return (f"No shopper lost money, no order was lost or duplicated, and stock adds up "
                f"(checked over {count(audit.orders, 'order')}).")
    if audit.verdict == UNKNOWN:
        return "Some checks on money and stock could not be made: see below."
    return ""


def unchecked(audit: AuditResult) -> list[str]:
    """The checks that could not decide, in words."""
    out = [f"Could not check for {class_words(c.cls).noun.format(name=c.name)}."
           for c in audit.checks.values() if c.verdict == UNKNOWN]
    if audit.completed_ops == 0:
        out.append("No shopper operation completed, so nothing was tested.")
    return out


# --- objectives --------------------------------------------------------------

_DONE = {"place_order": "orders are placed", "pay": "payments are answered",
         "poll": "order status checks are answered", "browse": "catalogue pages load",
         "forge": "forged notifications are answered", "journey": "shopper steps complete"}
_ATTEMPTS = {"place_order": "attempts to place an order", "pay": "payment attempts",
             "poll": "order status checks", "browse": "catalogue page views",
             "forge": "forged notification attempts", "journey": "shopper steps"}
_PER_SECOND = {"place_order": "orders placed", "pay": "payments", "poll": "order status checks",
               "browse": "catalogue page views", "forge": "forged notifications",
               "journey": "shopper steps"}
_BOUND = {"<": "under", "<=": "at most", ">": "over", ">=": "at least", "==": "exactly",
          "!=": "other than"}
_PHASE = {"steady": " in normal operation", "fault": " while a fault is active",
          "recovery": " while recovering from a fault", "all": ""}
_TIME_SLIS = frozenset({"latency", "recovery_time", "payment_lag", "confirmation_time"})


def _threshold(text: str) -> Threshold | None:
    try:
        return parse(text)
    except ExpressionError:
        return None


def _amount(t: Threshold, value: float, sli: str) -> str:
    if t.aggregation == "rate":
        return percent(value)
    if sli in _TIME_SLIS and t.aggregation != "count":
        return seconds(value)
    return f"{value:g}"


def promise(result: ObjectiveResult, classes: Sequence[str] = ()) -> str:
    """The objective as a sentence: `99 % of orders are placed in under 300 ms.`"""
    t = _threshold(result.objective)
    op = result.op or "journey"
    if t is None:
        return f"{result.name}: {result.objective}."
    bound = _BOUND[t.op]
    limit = _amount(t, t.value, result.sli)
    share = f"{t.percentile:g} % of " if t.aggregation == "p" else ""
    whole = {"p": share, "avg": "on average, ", "med": "half of ", "max": "all "}.get(
        t.aggregation)
    text: str | None = None
    if result.sli == "latency" and whole is not None:
        text = f"{whole}{_DONE.get(op, op)} in {bound} {limit}"
    elif result.sli == "success_rate" and t.aggregation == "rate":
        text = f"{bound} {limit} of {_ATTEMPTS.get(op, op)} succeed"
    elif result.sli == "throughput" and t.aggregation in ("value", "avg", "med"):
        text = f"{bound} {limit} {_PER_SECOND.get(op, op)} per second"
    elif result.sli == "recovery_time" and whole is not None:
        after = f"after {share}faults end" if share else "after each fault ends"
        text = f"{after}, the shop is back to normal in {bound} {limit}"
    elif result.sli == "payment_lag" and whole is not None:
        subject = "all payments reach their order" if t.aggregation == "max" else \
            f"{whole}payments reach their order"
        text = f"{subject} in {bound} {limit} after the charge"
    elif result.sli == "confirmation_time" and t.aggregation == "rate":
        text = f"{bound} {limit} of paying shoppers see their order paid"
    elif result.sli == "confirmation_time" and whole is not None:
        text = f"{whole}paying shoppers see their order paid in {bound} {limit}"
    elif result.sli == "anomaly":
        nouns = [class_words(c).noun.format(name=c) for c in classes] or ["problems"]
        if t.op == "==" and t.value == 0:
            text = "no " + ", no ".join(nouns)
        else:
            text = f"{bound} {t.value:g} of: " + ", ".join(nouns)
    if text is None:  # a combination without words yet: the file's own text
        return f"{_capital(result.name)}: {result.objective}{_PHASE.get(result.phase, '')}."
    return _capital(text) + _PHASE.get(result.phase, "") + "."


def measured(result: ObjectiveResult, value: float | None = None) -> str:
    """What was measured, in the promise's terms: `99 % within 412 ms`, `97.3 % succeeded`."""
    value = result.measured if value is None else value
    t = _threshold(result.objective)
    if value is None or t is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    shown = _amount(t, value, result.sli)
    if result.sli == "anomaly":
        return "none found" if value == 0 else f"{value:g} found"
    if t.aggregation == "rate":
        return f"{shown} {'saw it' if result.sli == 'confirmation_time' else 'succeeded'}"
    if result.sli == "throughput":
        return f"{value:.1f} per second"
    if result.sli == "recovery_time":
        if value == 0:
            return "back to normal at once"
        if t.aggregation == "max":
            return f"the slowest recovery took {shown}"
    if t.aggregation == "p":
        return f"{t.percentile or 0:g} % within {shown}"
    return {"avg": f"{shown} on average", "med": f"half within {shown}",
            "max": f"the slowest took {shown}", "min": f"the fastest took {shown}"}.get(
        t.aggregation, shown)


def status(result: ObjectiveResult) -> str:
    """`met`, `missed`, or why there is no answer: `not enough evidence: 10 measurements of 20
    needed`."""
    words = STATUS_WORDS.get(result.tier, result.tier)
    if result.tier == UNKNOWN and result.samples < result.min_samples:
        return f"{words}: {result.samples:,} measurements, {result.min_samples:,} needed"
    if result.tier == UNKNOWN:
        return f"{words}: could not be measured"
    if result.tier == NOT_APPLICABLE:
        return f"{words}: {result.reason}"
    return words


def objective_line(result: ObjectiveResult, classes: Sequence[str] = ()) -> str:
    """One objective for the headline: `place order latency: 99 % of orders are placed in
    under 300 ms — measured 99 % within 412 ms`."""
    return f"{result.name}: {promise(result, classes)[:-1]} — measured {measured(result)}"


# --- the headline ------------------------------------------------------------


def classes_of(objectives: Iterable[Objective]) -> dict[str, list[str]]:
    """Objective name → its anomaly classes (the result does not carry them)."""
    return {o.name: list(o.classes or []) for o in objectives}


def headline(verdict: str, results: Sequence[ObjectiveResult], audit: AuditResult | None,
             exposure: Exposure, classes: Mapping[str, Sequence[str]] | None = None) -> str:
    """The verdict in one or two plain sentences, for the page and the PR comment."""
    classes = classes or {}
    missed = [r for r in results if r.tier == FAIL_TIER]
    missed.sort(key=lambda r: not r.key)
    if verdict == PASS:
        decided = [r for r in results if r.tier != NOT_APPLICABLE]
        skipped = len(results) - len(decided)
        aside = f" ({skipped} not applicable to this run)" if skipped else ""
        return ("No money or stock was lost, no order was lost or duplicated, and "
                f"{'the' if len(decided) == 1 else 'all'} {count(len(decided), 'objective')} "
                f"{'was' if len(decided) == 1 else 'were'} met{aside}.")
    if verdict == WARNING:
        near = [r.name for r in results if r.tier == WARNING]
        return (f"No money or stock was lost, but {count(len(near), 'objective')} "
                f"{'was' if len(near) == 1 else 'were'} only nearly met ({', '.join(near)}).")
    if verdict == FAIL_TIER:
        if exposure.impacts:
            first = impact_sentence(exposure.impacts[0])[:-1]
            more = len(exposure.impacts) - 1
            also = f"; and {count(more, 'other problem')} with money, orders or stock" \
                if more else ""
            other = [r.name for r in missed if r.sli != "anomaly"]  # anomalies: said above
            slow = f"; also missed: {', '.join(other)}" if other else ""
            return f"{first}{also}{slow}."
        lines = "; ".join(objective_line(r, classes.get(r.name, ())) for r in missed[:2])
        more_missed = f" (and {len(missed) - 2} more)" if len(missed) > 2 else ""
        safe = ("No money or stock was lost, but " if audit is not None
                and audit.verdict == VALID else "")
        missed_text = f"{count(len(missed), 'objective')} {'was' if len(missed) == 1 else 'were'}"
        return _capital(f"{safe}{missed_text} missed — {lines}{more_missed}.")
    if verdict == UNKNOWN:
        reasons = [f"{r.name} ({status(r)})" for r in results if r.tier == UNKNOWN]
        if audit is not None:
            reasons += [s[:-1] for s in unchecked(audit)]
        return ("Not enough evidence to tell whether it is safe to release: "
                + "; ".join(reasons[:3]) + ("; …" if len(reasons) > 3 else "") + ".")
    return "The check itself failed, so nothing can be said about the release."


# --- what was tested ---------------------------------------------------------

FAULT_WORDS = {
    "latency": "slow network", "timeout": "connections hang", "reset_peer": "connections reset",
    "limit_data": "connections cut short", "bandwidth": "narrow network",
    "slow_close": "slow connection closing", "slicer": "data in small pieces",
    "down": "link down", "kill": "crash", "pause": "freeze", "restart": "restart",
    "notify_duplicate": "duplicate payment notifications",
    "notify_drop": "lost payment notifications", "notify_delay": "late payment notifications",
    "notify_reorder": "payment notifications out of order",
    "forged_notify": "forged payment notifications", "pay_failure": "declined payments",
    "pay_after_close": "payments after the order closed",
    "retry_schedule": "another notification retry schedule",
    "time_scale": "faster notification retries",
}
TARGET_WORDS = {
    "client_order": ("shoppers → order service", "shoppers→order"),
    "client_channel": ("shoppers → payment channel", "shoppers→channel"),
    "order_inventory": ("order service → inventory", "order→inventory"),
    "order_channel": ("order service → payment channel", "order→channel"),
    "channel_notify": ("payment channel → order service (notifications)", "channel→order"),
    "order": ("order service", "order"),
    "inventory": ("inventory service", "inventory"),
    "channel": ("payment channel", "channel"),
}


def fault_name(fault: str) -> str:
    return FAULT_WORDS.get(fault, fault.replace("_", " "))


def target_name(target: str, *, short: bool = False) -> str:
    words = TARGET_WORDS.get(target)
    return target if words is None else words[1 if short else 0]


def fault_label(fault: str, target: str) -> str:
    """The short label of a fault lane: `slow network · order→channel`."""
    return f"{fault_name(fault)} · {target_name(target, short=True)}"


def params_words(params: Mapping[str, Any]) -> str:
    """A fault's settings in words: `+300ms ± 100ms, on 50 % of connections`."""
    parts = []
    for name, value in params.items():
        if name == "latency":
            parts.append(f"+{value}")
        elif name == "jitter":
            parts.append(f"± {value}")
        elif name == "toxicity" and isinstance(value, int | float) and value < 1:
            parts.append(f"on {percent(float(value))} of connections")
        elif name == "rate" and isinstance(value, int | float) and value <= 1:
            parts.append(f"{percent(float(value))} of the time")
        elif name == "bytes":
            parts.append(f"after {value} bytes")
        elif name == "timeout":
            parts.append(f"closed after {value}" if value not in (0, "0") else "held open")
        elif name not in ("stream", "toxicity"):
            parts.append(f"{name.replace('_', ' ')} {value}")
    return ", ".join(parts)


_SHAPES = {"steady": "steady load", "ramp": "load ramping up", "soak": "a long steady load",
           "flash_sale": "a flash sale"}


def load_words(load: Mapping[str, Any], workers: int | None = None) -> str:
    """`12 simulated users, steady load, about 15 shopping journeys a second (9 shoppers : 1
    browser)`; "" when the scenario does not say."""
    if not load:
        return ""
    parts = []
    if isinstance(load.get("users"), int):
        parts.append(count(load["users"], "simulated user"))
    shape = str(load.get("shape") or "steady")
    shape_text = _SHAPES.get(shape, shape)
    if shape == "flash_sale" and load.get("spike_factor"):
        shape_text += f" (a spike to {load['spike_factor']:g}× the users)"
    parts.append(shape_text)
    if isinstance(load.get("rate"), int | float):
        parts.append(f"about {load['rate']:g} shopping journeys a second")
    mix = load.get("mix")
    text = ", ".join(parts)
    if isinstance(mix, dict):
        kinds = [count(int(w), str(k).replace("_", " ")) for k, w in mix.items()
                 if isinstance(w, int) and w > 0]
        if kinds:
            text += f" (mix {' : '.join(kinds)})"
    if workers and workers > 1:
        text += f", from {workers} load generators"
    return text


# --- comparison with the baseline ----------------------------------------------


def change_words(result: ObjectiveResult) -> str:
    """`better`, `worse (+87 %)`, `unchanged`, for an objective compared with the baseline."""
    b = result.baseline
    t = _threshold(result.objective)
    if b is None or t is None or result.measured is None:
        return "not compared"
    old = b.get("measured")
    if not isinstance(old, int | float) or old == result.measured:
        return "unchanged"
    lower_is_better = t.lower_is_better
    worse = (result.measured > old) if lower_is_better else (result.measured < old)
    change = b.get("change")
    by = f" ({change:+.0%})" if isinstance(change, int | float) else " (from zero)"
    verdict = "worse" if worse else "better"
    if b.get("regressed"):
        verdict = "worse, by more than allowed"
    return verdict + by


def comparison_line(result: ObjectiveResult) -> str:
    b = result.baseline or {}
    old = b.get("measured")
    before = measured(result, float(old)) if isinstance(old, int | float) else "not measured"
    return (f"{result.name}: {measured(result)} now, {before} in the baseline run — "
            f"{change_words(result)}.")


def anomaly_changes(now: AuditResult | None, before: Mapping[str, Any] | None) -> list[str]:
    """Problems that appeared, went away or stayed since the baseline's audit (its audit.json
    shape: {"checks": {cls: {"verdict", "count", "name"}}})."""
    if now is None or not isinstance(before, Mapping):
        return []
    old_checks = before.get("checks")
    if not isinstance(old_checks, Mapping):
        return []
    lines = []
    for cls in list(dict.fromkeys([*now.checks, *old_checks])):
        new = now.checks.get(cls)
        old = old_checks.get(cls) if isinstance(old_checks.get(cls), Mapping) else None
        new_n = new.count if new is not None and new.verdict == INVALID else 0
        old_n = int(old.get("count") or 0) if old and old.get("verdict") == INVALID else 0
        name = new.name if new is not None else str((old or {}).get("name", cls))
        if new_n and not old_n:
            lines.append(f"New: {happened(cls, new_n, name)} (the baseline run had none).")
        elif old_n and not new_n:
            lines.append(f"Fixed: no {class_words(cls).noun.format(name=name)} now "
                         f"(the baseline run had {old_n:,}).")
        elif new_n and old_n:
            trend = "worse" if new_n > old_n else "better" if new_n < old_n else "unchanged"
            lines.append(f"Still there: {happened(cls, new_n, name)} (the baseline run had "
                         f"{old_n:,}: {trend}).")
    return lines
