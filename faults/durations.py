"""Durations as scenarios write them: "500ms", "5s", "2m", "1h" or a number of seconds.

A leaf (standard library only): the scenario loader and the SLO side (slos/records.py reads
the scenario a run recorded) parse durations with this one function.
"""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from "500ms" / "5s" / "2m" / "1h" / a number of seconds; never negative."""
    if isinstance(value, bool):
        raise ValueError(f"duration {value!r} must be a number of seconds or like '500ms', '5s'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration {value!r} must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"duration {value!r} must not be negative")
        match = _DURATION.match(text)
        if match:
            return float(match.group(1)) * _UNIT_S[match.group(2)]
    raise ValueError(
        f"duration {value!r} must be a number of seconds or a string like '500ms', '5s', '2m'"
    )
