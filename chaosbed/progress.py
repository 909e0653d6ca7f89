"""Live progress of a run: phase, elapsed/remaining, rps, failures, active faults.

On a terminal it is a rich live panel; elsewhere (CI logs) one plain line every few
seconds and at each phase change.  Load figures come from Locust's `load_progress.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

PLAIN_EVERY_S = 5.0


def read_load_progress(path: Path) -> dict[str, Any] | None:
    """The load generator's latest progress, or None while there is none (or it is mid-write)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class RunProgress:
    def __init__(self, title: str, *, console: Console | None = None) -> None:
        self.title = title
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self._phase = "starting"
        self._phase_started = time.monotonic()
        self._phase_total: float | None = None
        self._load: dict[str, Any] | None = None
        self._active: list[str] = []
        self._last_plain = 0.0

    # --- state -------------------------------------------------------------------------

    def phase(self, name: str, total_s: float | None = None) -> None:
        """Enter a phase; `total_s` (if known) gives the remaining time."""
        self._phase = name
        self._phase_started = time.monotonic()
        self._phase_total = total_s
        self._last_plain = 0.0
        self.refresh()

    def update(self, *, load: dict[str, Any] | None = None, active: Sequence[str] = ()) -> None:
        if load is not None:
            self._load = load
        self._active = list(active)
        self.refresh()

    def log(self, message: str) -> None:
        """A line printed above the live panel (fault applied, healed, ...)."""
        self.console.print(message, highlight=False, soft_wrap=True)

    # --- rendering ---------------------------------------------------------------------

    def _figures(self) -> dict[str, str]:
        elapsed = time.monotonic() - self._phase_started
        remaining = (
            _clock(self._phase_total - elapsed) if self._phase_total is not None else "-"
        )
        load = self._load or {}
        ops = load.get("ops") or {}
        fails = sum(int(v.get("fail", 0)) for v in ops.values() if isinstance(v, dict))
        unknown = sum(int(v.get("info", 0)) for v in ops.values() if isinstance(v, dict))
        done = sum(int(v.get("ok", 0)) for v in ops.values() if isinstance(v, dict))
        return {
            "phase": self._phase,
            "elapsed": _clock(elapsed),
            "remaining": remaining,
            "users": str(load.get("users", "-")),
            "rps": f"{float(load.get('rps', 0.0)):.1f}" if load else "-",
            "fail/s": f"{float(load.get('fail_per_s', 0.0)):.1f}" if load else "-",
            "ops ok/fail/unknown": f"{done}/{fails}/{unknown}" if load else "-",
            "active faults": ", ".join(self._active) or "none",
        }

    def _render(self) -> Table:
        table = Table(title=self.title, show_header=False, expand=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in self._figures().items():
            table.add_row(key, value)
        return table

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            figures = self._figures()
            self.console.print(
                " | ".join(f"{k} {v}" for k, v in figures.items()),
                highlight=False,
                soft_wrap=True,
            )

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> RunProgress:
        if self.console.is_terminal:
            self._live = Live(
                self._render(), console=self.console, auto_refresh=False, transient=False
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
