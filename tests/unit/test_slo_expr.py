"""The k6 threshold grammar: parsing, units, operators and precise errors."""

from __future__ import annotations

import pytest

from slos.expr import ExpressionError, parse, parse_regression


@pytest.mark.parametrize(
    ("text", "aggregation", "percentile", "op", "value"),
    [
        ("p(99) < 300ms", "p", 99.0, "<", 0.3),
        ("p(95)<=1s", "p", 95.0, "<=", 1.0),
        ("p(99.9) > 2s", "p", 99.9, ">", 2.0),
        ("avg >= 10ms", "avg", None, ">=", 0.01),
        ("med == 5", "med", None, "==", 5.0),
        ("min != 0", "min", None, "!=", 0.0),
        ("max < 10s", "max", None, "<", 10.0),
        ("rate >= 99.5%", "rate", None, ">=", 0.995),
        ("rate>0.9", "rate", None, ">", 0.9),
        ("count == 0", "count", None, "==", 0.0),
        ("value < 5", "value", None, "<", 5.0),
        ("  value  <  .5  ", "value", None, "<", 0.5),
    ],
)
def test_parse(text: str, aggregation: str, percentile: float | None, op: str,
               value: float) -> None:
    t = parse(text)
    assert (t.aggregation, t.percentile, t.op) == (aggregation, percentile, op)
    assert t.value == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "holds", "fails"),
    [
        ("p(99) < 300ms", 0.299, 0.3),
        ("p(95) <= 1s", 1.0, 1.001),
        ("rate > 99%", 0.995, 0.99),
        ("rate >= 99.5%", 0.995, 0.9949),
        ("count == 0", 0.0, 1.0),
        ("value != 3", 2.0, 3.0),
    ],
)
def test_operators(text: str, holds: float, fails: float) -> None:
    t = parse(text)
    assert t.holds(holds)
    assert not t.holds(fails)


def test_show_uses_the_threshold_unit() -> None:
    assert parse("p(99) < 300ms").show(0.412) == "412ms"
    assert parse("rate >= 99.5%").show(0.991) == "99.1%"
    assert parse("max < 10s").show(3.5) == "3.5s"
    assert parse("count == 0").show(2.0) == "2"
    assert parse("count == 0").show(None) == "n/a"


@pytest.mark.parametrize(
    ("text", "offending", "reason"),
    [
        ("p99 < 300ms", "p99", "unknown aggregation"),
        ("p(abc) < 1s", "abc", "p(N) needs a number"),
        ("p(0) < 1s", "0", "between 0 and 100"),
        ("avg 300ms", "300ms", "expected an operator"),
        ("avg =< 3", "=< 3", "expected an operator"),
        ("avg < fast", "fast", "expected a number"),
        ("avg < 3 parsecs", "parsecs", "unknown unit"),
        ("avg < 3ms extra", "extra", "unexpected text after the threshold"),
        ("< 3", "< 3", "expected an aggregation"),
        ("", "", "empty threshold"),
    ],
)
def test_parse_errors_quote_the_offending_text(text: str, offending: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse(text)
    message = str(info.value)
    assert reason in message
    assert offending in message


def test_regression_limit() -> None:
    assert parse_regression("+10%") == pytest.approx(0.10)
    assert parse_regression("5%") == pytest.approx(0.05)
    with pytest.raises(ExpressionError, match="'ten percent'"):
        parse_regression("ten percent")
