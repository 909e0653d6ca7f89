"""What makes two runs comparable: the same scenario, seed and worker count.

A baseline comparison says "this build is slower than that one" only when both runs put the
same load on the same timeline; anything else compares the load, not the build.  So
`--baseline` refuses runs that differ in any of the three, or whose identity is not recorded,
unless `--force-baseline` is given; and it needs the SLO file's own `baseline.max_regression`
(there is no default tolerance).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from slos.evaluate import BaselineError
from slos.model import SloFile

IDENTITY = ("scenario", "seed", "workers")


def run_identity(run_dir: Path) -> dict[str, Any]:
    """The run's scenario name, seed and Locust worker count; None for what is not recorded.

    run.json (written by `chaosbed run`) wins; the seed also comes from the run's copy of its
    scenario file.
    """
    run_dir = Path(run_dir)
    identity: dict[str, Any] = dict.fromkeys(IDENTITY)
    scenario = _mapping(run_dir / "scenario.yaml", yaml.safe_load)
    run = _mapping(run_dir / "run.json", json.loads)
    identity["scenario"] = run.get("scenario") or scenario.get("name")
    identity["seed"] = run["seed"] if run.get("seed") is not None else scenario.get("seed")
    identity["workers"] = run.get("workers")
    return identity


def _mapping(path: Path, parse: Any) -> dict[str, Any]:
    try:
        data = parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def differences(current: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """What differs between two identities, in words; an unrecorded field is a difference."""
    out = []
    for name in IDENTITY:
        now, before = current.get(name), baseline.get(name)
        if before is None or now is None:
            side = "baseline" if before is None else "this run"
            out.append(f"{name} not recorded for the {side}")
        elif now != before:
            out.append(f"{name} {before!r} in the baseline, {now!r} in this run")
    return out


def check_comparable(current: dict[str, Any], baseline_dir: Path, *, force: bool) -> None:
    """Raise BaselineError unless the baseline ran the same scenario, seed and worker count."""
    if force:
        return
    found = differences(current, run_identity(baseline_dir))
    if found:
        raise BaselineError(
            f"baseline {baseline_dir} is not comparable with this run: {'; '.join(found)} "
            "(a different load says nothing about the build; --force-baseline compares anyway)"
        )


def require_tolerance(slo: SloFile) -> float:
    """The SLO file's allowed regression; BaselineError when the file has none."""
    if slo.baseline is None:
        where = slo.path or slo.name
        raise BaselineError(
            f"--baseline needs a tolerance: {where} has no `baseline: {{max_regression: ...}}` "
            "section (e.g. max_regression: \"+10%\"); there is no default"
        )
    return slo.baseline.max_regression_fraction


def baseline_dir_of(path: Path) -> Path:
    """The run directory of a baseline given as a directory or as its result.json."""
    path = Path(path)
    return path if path.is_dir() else path.parent
