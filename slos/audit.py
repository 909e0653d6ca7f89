"""The audit: run every checker over one run's records and merge the verdicts as Jepsen does.

Any invalid → invalid; else any unknown → unknown; else valid.  A checker that raises is
unknown with its error, and a run with no completed operation is unknown: nothing was tested.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rundir import write_json
from slos import blackbox
from slos.checkers import CHECKERS, INFO_VERDICT, INVALID, UNKNOWN, VALID, CheckResult
from slos.facts import MAX_EXAMPLES, Facts
from slos.records import Records


@dataclass(slots=True)
class AuditResult:
    verdict: str  # valid | invalid | unknown
    checks: dict[str, CheckResult]
    mode: str = "full"  # full: the order service's export; blackbox: its final read
    reasons: list[str] = field(default_factory=list)
    completed_ops: int = 0
    orders: int = 0
    reference_time: float | None = None
    elapsed_s: float = 0.0

    def anomalies(self) -> list[CheckResult]:
        """Invalid classes, in catalog order."""
        return [c for c in self.checks.values() if c.verdict == INVALID]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "mode": self.mode,
            "reasons": self.reasons,
            "completed_ops": self.completed_ops,
            "orders": self.orders,
            "reference_time": self.reference_time,
            "elapsed_s": round(self.elapsed_s, 3),
            "checks": {cls: check.to_dict() for cls, check in self.checks.items()},
        }


def run_checker(cls: str, facts: Facts) -> CheckResult:
    """One checker; an exception becomes an unknown verdict carrying the error."""
    check = CHECKERS[cls]
    try:
        return check(facts)
    except Exception as exc:  # a broken checker must not hide the other classes
        return CheckResult(cls, check.name, UNKNOWN, error=f"{type(exc).__name__}: {exc}")


def merge(verdicts: list[str]) -> str:
    if INVALID in verdicts:
        return INVALID
    if UNKNOWN in verdicts:
        return UNKNOWN
    return VALID


def audit(records: Records, *, max_examples: int = MAX_EXAMPLES) -> AuditResult:
    started = time.perf_counter()
    facts = Facts(records, max_examples=max_examples)  # the derived facts, once for all checkers
    # Millions of long-lived records make the cyclic GC rescan them over and over; the
    # checkers create no cycles, so pausing it is safe and several times faster.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        checks = {cls: run_checker(cls, facts) for cls in CHECKERS}
    finally:
        if was_enabled:
            gc.enable()
    if records.mode == "blackbox":
        checks = blackbox.adjust(checks, facts)
    reasons = [f"{c.cls} {c.name}: {c.count} found"
               for c in checks.values() if c.verdict == INVALID]
    reasons += [f"{c.cls} {c.name}: could not decide ({c.error})"
                for c in checks.values() if c.verdict == UNKNOWN]
    verdicts = [c.verdict for c in checks.values() if c.verdict != INFO_VERDICT]
    completed = facts.completed_ops
    if completed == 0:
        verdicts.append(UNKNOWN)
        reasons.append("no operation completed: nothing was tested")
    return AuditResult(
        verdict=merge(verdicts),
        checks=checks,
        mode=records.mode,
        reasons=reasons,
        completed_ops=completed,
        orders=len(records.orders),
        reference_time=records.reference_time(),
        elapsed_s=time.perf_counter() - started,
    )


def write_audit(result: AuditResult, run_dir: Path) -> Path:
    return write_json(Path(run_dir) / "audit.json", result.to_dict())
