"""The black-box audit: which anomaly classes a run can decide when the order service under
test serves no export, and what the others answer.

The order records are then the final read through the target's adapter (slos/records.py
`_load_final_read`); the channel's ledger and notifications and the inventory's reservations
and events are chaosbed's own, as in the full audit.  So every class over the history, the
ledger, the inventory and the orders' final status is decided as usual.  What only the order
service's internals could show answers **unknown, "needs the target's export"** — a run never
passes silently on it — and the SLO file decides whether that blocks.  Two classes are split:
found evidence is still a finding, its absence is unknown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from slos.checkers import INVALID, UNKNOWN, CheckResult
from slos.facts import PAID_STATES, Facts

NEEDS_EXPORT = "needs the target's export"

# classes no black-box record can decide: why, in a few words
UNDECIDABLE: dict[str, str] = {
    "P11": "the time an order became paid is internal (its transitions)",
    "P13": "whether an acknowledged notification was kept is internal (its receipts)",
    "Q1": "the outbox is internal",
}
# classes whose evidence is partly visible: found = invalid, none found = unknown
PARTIAL: dict[str, str] = {
    "P9": "PAID transitions, applied notifications and outbox rows are internal; "
    "only the inventory's double confirms are visible",
    "P12": "which notifications the target accepted is internal; only an accepted forgery "
    "on an order paid without a charge is visible",
}
# classes that read the order records: unknown while some final reads were inconclusive
NEEDS_ORDERS = frozenset({"P1", "P4", "P5", "P6", "P7", "P10", "P14", "O1", "O2", "O3"})


def adjust(checks: dict[str, CheckResult], f: Facts) -> dict[str, CheckResult]:
    """The full audit's results made honest for a black-box run (a new dict)."""
    out = dict(checks)
    for cls, why in UNDECIDABLE.items():
        if cls in out:
            out[cls] = _unknown(out[cls], f"{NEEDS_EXPORT}: {why}")
    if "P9" in out:
        out["P9"] = _partial(out["P9"], f, double_confirms(f), PARTIAL["P9"])
    if "P12" in out:
        out["P12"] = _partial(out["P12"], f, accepted_forgeries(f), PARTIAL["P12"])
    undecided = f.records.undecided_orders
    if undecided:
        why = (f"the final read of {len(undecided)} order(s) was inconclusive "
               f"(e.g. {', '.join(sorted(undecided)[:3])})")
        for cls in NEEDS_ORDERS & out.keys():
            out[cls] = _unknown(out[cls], why)
    return out


def double_confirms(f: Facts) -> dict[str, str]:
    """Orders the inventory confirmed more than once (every confirm is an event there)."""
    counts = Counter(e.order_id for e in f.records.stock_events if e.kind == "confirm")
    return {k: f"{n} confirms at the inventory" for k, n in counts.items() if n > 1}


def accepted_forgeries(f: Facts) -> dict[str, str]:
    """Orders a forged notification was accepted for (2xx) that are paid without a charge."""
    forged_ok = {op.order_id for op in f.ops_of("forge") if op.outcome == "ok" and op.order_id}
    unfunded = {o.order_id for o in f.records.orders if o.status in PAID_STATES} - f.paid_ledger
    return {k: "forged notification accepted, order paid with no live charge"
            for k in forged_ok & unfunded}


def _unknown(check: CheckResult, why: str) -> CheckResult:
    return replace(check, verdict=UNKNOWN, count=0, examples=[],
                   stats={**check.stats, "error": why}, error=why)


def _partial(check: CheckResult, f: Facts, found: dict[str, str], why: str) -> CheckResult:
    if not found:
        return _unknown(check, f"{NEEDS_EXPORT}: {why}")
    shown = sorted(found)[: f.max_examples]
    return replace(check, verdict=INVALID, count=len(found),
                   examples=[f.example(k, found[k]) for k in shown],
                   stats={**check.stats, "blackbox": why})
