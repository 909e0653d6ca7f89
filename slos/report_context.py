"""What the report says about the run itself, read from the run directory: when it ran, which
build, what load and which faults, and where its traces can be opened (Jaeger, if observed).

Every file here is optional for the report: a missing or unreadable one leaves its facts unknown
(the audit has already read the files it needs, and failed loudly if they were bad).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

UNKNOWN_BUILD = "unknown"


@dataclass(slots=True)
class RunContext:
    run_dir: Path
    scenario: dict[str, Any] = field(default_factory=dict)  # scenario.yaml as written
    meta: dict[str, Any] = field(default_factory=dict)  # run.json
    jaeger_url: str | None = None  # stack.json observe.jaeger, when the run was observed

    @property
    def description(self) -> str:
        return str(self.scenario.get("description") or "").strip()

    @property
    def load(self) -> dict[str, Any]:
        load = self.scenario.get("load")
        return load if isinstance(load, dict) else {}

    @property
    def git_revision(self) -> str:
        return str(self.meta.get("git_revision") or UNKNOWN_BUILD)

    @property
    def git_dirty(self) -> bool | None:
        dirty = self.meta.get("git_dirty")
        return dirty if isinstance(dirty, bool) else None

    @property
    def workers(self) -> int | None:
        workers = self.meta.get("workers")
        return workers if isinstance(workers, int) and workers > 0 else None

    def started_text(self, started: float | None) -> str:
        """`2023-11-14 22:13 UTC`, or "unknown"."""
        if started is None:
            return "unknown"
        return datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC")

    def trace_url(self, trace_id: str | None) -> str | None:
        """A link to one trace in the Jaeger that recorded it; None when the run was not
        observed or the trace id is not a hex trace id."""
        if not self.jaeger_url or not trace_id or not _is_trace_id(trace_id):
            return None
        return f"{self.jaeger_url.rstrip('/')}/trace/{trace_id}"


def _is_trace_id(text: str) -> bool:
    return 1 <= len(text) <= 32 and all(c in "0123456789abcdefABCDEF" for c in text)


def _mapping(path: Path, parse: Any) -> dict[str, Any]:
    try:
        value = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def read_context(run_dir: Path) -> RunContext:
    run_dir = Path(run_dir)
    context = RunContext(run_dir)
    context.scenario = _mapping(run_dir / "scenario.yaml", yaml.safe_load)
    context.meta = _mapping(run_dir / "run.json", json.loads)
    stack = _mapping(run_dir / "stack.json", json.loads)
    observe = stack.get("observe")
    if isinstance(observe, dict) and isinstance(observe.get("jaeger"), str):
        url = observe["jaeger"].strip()
        context.jaeger_url = url if url.startswith(("http://", "https://")) else None
    return context
