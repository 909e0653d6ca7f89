"""k6's threshold grammar: `p(99) < 300ms`, `rate >= 99.5%`, `count == 0`.

    threshold   := aggregation operator number [unit]
    aggregation := p(N) | avg | med | min | max | rate | count | value
    operator    := < | <= | > | >= | == | !=
    unit        := ms | s | %      (times are held in seconds, percentages as fractions)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

AGGREGATIONS = ("p(N)", "avg", "med", "min", "max", "rate", "count", "value")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
UNITS = {"ms": 0.001, "s": 1.0, "%": 0.01}

_AGG = re.compile(r"\s*(p\(\s*(?P<p>[^)]*)\)|(?P<name>[A-Za-z_]\w*))")
_OP = re.compile(r"\s*(<=|>=|==|!=|<|>)")
_NUMBER = re.compile(r"\s*(?P<num>[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)")
_UNIT = re.compile(r"\s*(?P<unit>[A-Za-z%]+)?")


class ExpressionError(ValueError):
    """A threshold that does not parse; the message quotes the offending text."""


@dataclass(frozen=True, slots=True)
class Threshold:
    text: str
    aggregation: str  # p | avg | med | min | max | rate | count | value
    percentile: float | None
    op: str
    value: float  # seconds for times, a fraction for %
    unit: str | None

    @property
    def lower_is_better(self) -> bool:
        return self.op in ("<", "<=")

    def holds(self, measured: float) -> bool:
        return OPERATORS[self.op](measured, self.value)

    @property
    def label(self) -> str:
        """The aggregation as written: `p(99)`, `rate`…"""
        if self.aggregation == "p":
            return f"p({_number(self.percentile or 0.0)})"
        return self.aggregation

    def show(self, measured: float | None) -> str:
        """A measured value in this threshold's unit: `412ms`, `99.1%`, `3`."""
        if measured is None:
            return "n/a"
        if self.unit is None:
            return _number(measured)
        if self.unit == "%":
            return f"{_number(round(measured * 100, 2))}%"
        if measured != 0 and abs(measured) < 1:  # times: sub-second in ms, the rest in s
            return f"{_number(round(measured * 1000, 1))}ms"
        return f"{_number(round(measured, 2))}s"


def _number(x: float) -> str:
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:.0f}"


def parse(text: str) -> Threshold:
    """Parse one threshold; raise `ExpressionError` saying where and what went wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"empty threshold {text!r}: expected e.g. 'p(99) < 300ms'")
    pos = 0
    m = _AGG.match(text, pos)
    if m is None:
        raise _error(text, pos, f"expected an aggregation ({', '.join(AGGREGATIONS)})")
    percentile: float | None = None
    if m.group("p") is not None:
        aggregation = "p"
        try:
            percentile = float(m.group("p"))
        except ValueError:
            raise _error(text, m.start("p"), "p(N) needs a number N between 0 and 100") from None
        if not 0 < percentile <= 100:
            raise _error(text, m.start("p"), "p(N) needs a number N between 0 and 100")
    else:
        aggregation = m.group("name")
        if aggregation not in AGGREGATIONS:
            raise _error(
                text, m.start("name"),
                f"unknown aggregation {aggregation!r} (allowed: {', '.join(AGGREGATIONS)})",
            )
    pos = m.end()
    m_op = _OP.match(text, pos)
    if m_op is None:
        raise _error(text, pos, f"expected an operator ({' '.join(sorted(OPERATORS))})")
    op = m_op.group(1)
    pos = m_op.end()
    m_num = _NUMBER.match(text, pos)
    if m_num is None:
        raise _error(text, pos, "expected a number")
    value = float(m_num.group("num"))
    pos = m_num.end()
    m_unit = _UNIT.match(text, pos)
    assert m_unit is not None  # everything in it is optional
    if text[m_unit.end():].strip():
        raise _error(text, m_unit.end(), "unexpected text after the threshold")
    unit = m_unit.group("unit")
    if unit is not None:
        if unit not in UNITS:
            raise _error(text, m_unit.start("unit"),
                         f"unknown unit {unit!r} (allowed: ms, s, %)")
        value *= UNITS[unit]
    return Threshold(text.strip(), aggregation, percentile, op, value, unit)


def _error(text: str, pos: int, reason: str) -> ExpressionError:
    rest = text[pos:].strip() or "<end>"
    return ExpressionError(f"{reason} at {rest!r} in {text.strip()!r} (column {pos + 1})")


def parse_regression(text: str) -> float:
    """`+10%` → 0.10: how much worse than the baseline a measured value may get."""
    m = re.fullmatch(r"\s*\+?\s*(\d+(\.\d*)?|\.\d+)\s*%\s*", str(text))
    if m is None:
        raise ExpressionError(f"max_regression {text!r} must look like '+10%'")
    return float(m.group(1)) / 100.0
