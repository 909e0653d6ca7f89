"""The gate's result: what the gate decided and where it wrote it.

Its own module so the gate (slos/gate.py) and the page renderer (slos/report_html.py) both
import it without importing each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slos.audit import AuditResult
from slos.evaluate import FaultWindow, ObjectiveResult
from slos.model import SloFile

# result.json's format (docs/result.schema.json); raised when a field changes meaning or goes
SCHEMA_VERSION = 1


@dataclass(slots=True)
class GateResult:
    verdict: str  # pass | warning | fail | unknown | error
    exit_code: int
    headline: str
    run_dir: Path
    slo: SloFile | None = None
    objectives: list[ObjectiveResult] = field(default_factory=list)
    audit: AuditResult | None = None
    windows: list[FaultWindow] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    started: float | None = None  # the run's wall-clock span (run.json), for JUnit
    ended: float | None = None
    observed_s: list[float] = field(default_factory=list)  # per objective: seconds measured

    def _head(self) -> dict[str, Any]:
        """The fields result.json and the --json summary share, in the same words."""
        return {
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "headline": self.headline,
            "problems": self.problems,
            "error": self.error,
            "run_dir": str(self.run_dir),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._head(),
            "slo": None if self.slo is None else {"name": self.slo.name, "path": self.slo.path,
                                                  "description": self.slo.description},
            "objectives": [o.to_dict() for o in self.objectives],
            "audit": None if self.audit is None else self.audit.to_dict(),
            "fault_windows": [w.to_dict() for w in self.windows],
            "baseline": None if self.baseline is None else {
                "path": self.baseline.get("_path"), "verdict": self.baseline.get("verdict")},
            "run_started": self.started,
            "run_ended": self.ended,
            "generated_at": time.time(),
        }

    def summary(self) -> dict[str, Any]:
        """What `chaosbed run --json` prints: the verdict and one line per objective and per
        anomaly class found; the same names as in result.json."""
        anomalies = {} if self.audit is None else {
            c.cls: c.count for c in self.audit.anomalies()}
        return {
            **self._head(),
            "objectives": [
                {"name": o.name, "tier": o.tier, "measured": o.measured,
                 "measured_text": o.shown, "objective": o.objective, "samples": o.samples,
                 "key": o.key}
                for o in self.objectives
            ],
            "anomalies": anomalies,
            "outputs": self.outputs,
        }
