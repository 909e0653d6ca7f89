"""What each anomaly the audit found costs: money, orders and units of stock at risk.

The audit keeps a count and a few example ids per class; the report needs every affected order
to add up their amounts, so the anomalous classes' own checkers are run again over the same
records with no cap on examples (the clean classes are not re-run: a clean run costs nothing).
Amounts are the run's exports' (integer minor units): the order's amount, or the channel's live
charges where the money actually moved.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from slos.audit import AuditResult, run_checker
from slos.checkers import CheckResult, Facts
from slos.records import Records

# How a class's money at risk is counted, per affected order.
ORDER_AMOUNT, CHARGED, EXTRA_CHARGE, MISMATCH = "order", "charged", "extra_charge", "mismatch"
MONEY_BASIS: dict[str, str] = {
    "P1": ORDER_AMOUNT, "P2": ORDER_AMOUNT, "P3": CHARGED, "P4": CHARGED, "P6": CHARGED,
    "P7": ORDER_AMOUNT, "P8": EXTRA_CHARGE, "P9": ORDER_AMOUNT, "P10": MISMATCH,
    "P12": ORDER_AMOUNT, "P13": ORDER_AMOUNT, "O2": ORDER_AMOUNT, "O3": ORDER_AMOUNT,
    "I5": ORDER_AMOUNT, "I6": ORDER_AMOUNT, "Q1": ORDER_AMOUNT,
}
# How a class's units of stock at risk are counted: per order (its quantity, or what its
# reservation holds) or per product (how far its stock is off).
ORDER_QTY, RESERVED, OVERSOLD, UNBALANCED = "qty", "reserved", "oversold", "unbalanced"
UNIT_BASIS: dict[str, str] = {
    "P7": ORDER_QTY, "P9": ORDER_QTY, "O2": ORDER_QTY, "I5": ORDER_QTY,
    "I3": RESERVED, "I6": RESERVED, "I4": RESERVED, "I1": OVERSOLD, "I2": UNBALANCED,
}
EVERY_EXAMPLE = sys.maxsize


@dataclass(slots=True)
class Impact:
    """One anomalous class and what it puts at risk."""

    cls: str
    name: str
    count: int
    examples: list[dict[str, Any]]  # the audit's examples: order id or sku, trace id, detail
    money_by_order: dict[str, int] = field(default_factory=dict)  # minor units
    units_by_order: dict[str, int] = field(default_factory=dict)
    units_by_sku: dict[str, int] = field(default_factory=dict)
    complete: bool = True  # every affected order or product was found and priced

    @property
    def money(self) -> int | None:
        return sum(self.money_by_order.values()) if self.cls in MONEY_BASIS else None

    @property
    def units(self) -> int | None:
        if self.cls not in UNIT_BASIS:
            return None
        return sum(self.units_by_order.values()) + sum(self.units_by_sku.values())


@dataclass(slots=True)
class Exposure:
    """Every anomaly's impact, and the totals over distinct orders (an order that shows up
    under two classes, say P1 and P6, is counted once, at its largest amount)."""

    impacts: list[Impact]  # worst first: most money at risk, then most affected

    @property
    def orders(self) -> int:
        return len({k for i in self.impacts for k in i.money_by_order | i.units_by_order})

    @property
    def money(self) -> int:
        return sum(_largest(i.money_by_order for i in self.impacts).values())

    @property
    def units(self) -> int:
        per_order = sum(_largest(i.units_by_order for i in self.impacts).values())
        return per_order + sum(_largest(i.units_by_sku for i in self.impacts).values())

    @property
    def complete(self) -> bool:
        return all(i.complete for i in self.impacts)


def _largest(maps: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in maps:
        for k, v in m.items():
            out[k] = max(out.get(k, 0), v)
    return out


def exposure(audit: AuditResult, records: Records) -> Exposure:
    """The impact of every invalid class of `audit`, over the records it audited."""
    found = audit.anomalies()
    if not found:
        return Exposure([])
    facts = Facts(records, max_examples=EVERY_EXAMPLE)
    impacts = [_impact(check, facts) for check in found]
    impacts.sort(key=lambda i: (-(i.money or 0), -i.count))  # stable: catalog order on ties
    return Exposure(impacts)


def _every_example(check: CheckResult, facts: Facts) -> tuple[CheckResult, bool]:
    if check.count <= len(check.examples):
        return check, True
    again = run_checker(check.cls, facts)
    if again.count != check.count or len(again.examples) < again.count:
        return check, False  # not the same answer: price what the audit showed, say "at least"
    return again, True


def _impact(check: CheckResult, facts: Facts) -> Impact:
    full, complete = _every_example(check, facts)
    impact = Impact(check.cls, check.name, check.count, check.examples, complete=complete)
    order_ids = [str(e["order_id"]) for e in full.examples if e.get("order_id")]
    skus = [str(e["sku"]) for e in full.examples if e.get("sku") and not e.get("order_id")]
    money = MONEY_BASIS.get(check.cls)
    if money is not None:
        impact.money_by_order = _money(check.cls, money, order_ids, facts)
    units = UNIT_BASIS.get(check.cls)
    if units in (ORDER_QTY, RESERVED):
        impact.units_by_order = _order_units(check.cls, units, order_ids, facts)
    elif units is not None:
        impact.units_by_sku = _sku_units(units, skus, facts)
    priced = set(impact.money_by_order) | set(impact.units_by_order) | set(impact.units_by_sku)
    wanted = set(order_ids) | set(skus)
    if (money is not None or units is not None) and not wanted <= priced:
        impact.complete = False  # e.g. an order the databases do not have: no amount to add
    return impact


def _duplicates(facts: Facts, order_ids: list[str]) -> dict[str, list[str]]:
    """For each order of `order_ids` (O2's first orders), the other orders created under the
    same idempotency key; one pass over the orders, however many are duplicated."""
    keys = {facts.orders[k].idempotency_key: k for k in order_ids if k in facts.orders}
    others: dict[str, list[str]] = {k: [] for k in keys.values()}
    for o in facts.records.orders:
        first = keys.get(o.idempotency_key)
        if first is not None and o.order_id != first:
            others[first].append(o.order_id)
    return others


def _money(cls: str, basis: str, order_ids: list[str], facts: Facts) -> dict[str, int]:
    orders, charges = facts.orders, facts.charges
    duplicates = _duplicates(facts, order_ids) if cls == "O2" else {}
    out: dict[str, int] = {}
    for k in order_ids:
        order = orders.get(k)
        charged = [c.amount for c in charges.get(k, ())]
        if cls == "O2" and order is not None:
            out[k] = sum(orders[d].amount for d in duplicates.get(k, []) if d in orders)
        elif basis == ORDER_AMOUNT and order is not None:
            out[k] = order.amount
        elif basis == CHARGED and (charged or order is not None):
            out[k] = sum(charged) if charged else order.amount  # type: ignore[union-attr]
        elif basis == EXTRA_CHARGE and charged:
            out[k] = sum(charged) - charged[0]
        elif basis == MISMATCH and order is not None:
            out[k] = abs(sum(charged) - order.amount)
    return out


def _order_units(cls: str, basis: str, order_ids: list[str], facts: Facts) -> dict[str, int]:
    orders = facts.orders
    if basis == ORDER_QTY:
        if cls == "O2":
            duplicates = _duplicates(facts, order_ids)
            return {k: sum(orders[d].qty for d in others if d in orders)
                    for k, others in duplicates.items()}
        return {k: orders[k].qty for k in order_ids if k in orders}
    wanted = set(order_ids)
    held: Counter[str] = Counter()
    for r in facts.records.reservations:
        if r.order_id in wanted:
            held[r.order_id] += r.qty
    return dict(held)


def _sku_units(basis: str, skus: list[str], facts: Facts) -> dict[str, int]:
    confirmed = facts.reserved.get("CONFIRMED", Counter())
    trying = facts.reserved.get("TRY", Counter())
    wanted = set(skus)
    out: dict[str, int] = {}
    for s in facts.records.stock:
        if s.sku not in wanted:
            continue
        if basis == OVERSOLD:
            out[s.sku] = max(-s.available, confirmed[s.sku] - s.initial, 0)
        else:
            out[s.sku] = abs((s.initial - s.available) - (confirmed[s.sku] + trying[s.sku]))
    return out
