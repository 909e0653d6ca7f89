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

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "headline": self.headline,
            "problems": self.problems,
            "error": self.error,
            "run_dir": str(self.run_dir),
            "slo": None if self.slo is None else {"name": self.slo.name, "path": self.slo.path,
                                                  "description": self.slo.description},
            "objectives": [o.to_dict() for o in self.objectives],
            "audit": None if self.audit is None else self.audit.to_dict(),
            "fault_windows": [w.to_dict() for w in self.windows],
            "baseline": None if self.baseline is None else {
                "path": self.baseline.get("_path"), "verdict": self.baseline.get("verdict")},
            "generated_at": time.time(),
        }
