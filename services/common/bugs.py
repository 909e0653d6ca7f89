"""Planted bugs: known-wrong behaviours the gate must catch (CHAOSBED_BUGS=a,b)."""

from __future__ import annotations

# name -> the anomaly the audit must report when it is on
PLANTED_BUGS: dict[str, str] = {
    "notify-not-idempotent": "no inbox dedupe: duplicate effect (P9)",
    "no-active-query": "missed notifications never recovered, no reconciliation (P6/P1)",
    "stock-check-then-act": "stock read then written, not atomic: oversell (I1)",
    "new-payment-on-retry": "order retry creates a second channel payment: duplicate charge (P8)",
    "skip-signature-check": "forged notifications accepted (P12/P7)",
    "no-refund-on-late-pay": "paid after close is ignored: orphan charge (P6)",
    "ack-before-commit": "notify answered before the commit: lost payment after a crash (P1/P6)",
}

# The anomaly class each bug must be caught by in the gate-selftest run (the planted-bug matrix:
# benchmarks/bench_gate.py, tests/integration/test_gate_matrix.py).
EXPECTED_CLASSES: dict[str, str] = {
    "notify-not-idempotent": "P9",  # duplicate effect
    "no-active-query": "P6",  # orphan charge (also P1, O3)
    "stock-check-then-act": "I1",  # oversell (also I2)
    "new-payment-on-retry": "P8",  # duplicate charge
    "skip-signature-check": "P12",  # forged accepted (also P7)
    "no-refund-on-late-pay": "P6",  # orphan charge
    "ack-before-commit": "P13",  # acknowledged notification never recorded
}


class UnknownBugError(ValueError):
    """CHAOSBED_BUGS names a bug that does not exist."""


def parse_bugs(raw: str) -> frozenset[str]:
    names = frozenset(part.strip() for part in raw.split(",") if part.strip())
    unknown = sorted(names - PLANTED_BUGS.keys())
    if unknown:
        raise UnknownBugError(
            f"CHAOSBED_BUGS: unknown bug(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(PLANTED_BUGS))}"
        )
    return names
