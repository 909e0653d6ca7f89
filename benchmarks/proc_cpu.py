"""CPU time of running processes from /proc/<pid>/stat (utime + stime, all threads).

CPU seconds are steadier than wall time on a shared machine: another tenant's load slows
a journey down but does not make our processes burn more cycles for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class ProcCpuError(RuntimeError):
    """A process's CPU time could not be read; the message names the pid and why."""


def parse_stat_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of a /proc/<pid>/stat file.

    The second field (the command name, in parentheses) may itself hold spaces and
    parentheses, so the fields are counted from the last ')'.
    """
    close = stat.rfind(")")
    if close < 0:
        raise ProcCpuError(f"not a /proc/<pid>/stat line (no ')'): {stat[:80]!r}")
    fields = stat[close + 1 :].split()
    # after the name: state(3) ... utime(14) stime(15), i.e. indexes 11 and 12 here
    if len(fields) < 13:
        raise ProcCpuError(f"/proc/<pid>/stat line too short ({len(fields) + 2} fields)")
    try:
        return int(fields[11]) + int(fields[12])
    except ValueError:
        raise ProcCpuError(f"utime/stime are not integers: {fields[11:13]!r}") from None


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used so far."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise ProcCpuError(f"cannot read CPU time of pid {pid}: {exc}") from None
    return parse_stat_ticks(text) / CLOCK_TICKS_PER_S


def snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds of each named process, read now."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def per_unit_ms(
    before: Mapping[str, float], after: Mapping[str, float], units: int
) -> dict[str, float]:
    """CPU milliseconds per unit of work (journey, request) of each process between two reads."""
    if units <= 0:
        raise ValueError(f"units must be > 0 to divide CPU time by, got {units}")
    missing = set(before) ^ set(after)
    if missing:
        raise ValueError(f"before and after name different processes: {sorted(missing)}")
    return {name: 1000.0 * (after[name] - before[name]) / units for name in before}
