"""The example target (examples/shop) under `chaosbed run`: real Toxiproxy, chaosbed's channel and
inventory, the shop started from its target file, killed and restarted.

With its export (target.yaml, the full audit) `smoke` and `callback-storm` pass with the smoke
SLO, and its planted bug (`SHOP_BUG=no-query-on-timeout`, inherited from chaosbed's environment)
fails `smoke` on P6 (orphan charge).  Audited black-box (target-blackbox.yaml) the bug fails on P6
all the same, and the correct shop shows no anomaly and passes (the classes that need the export
are unknown, and smoke.yaml's `needs_export: allow` decides on the rest).
Each run is a minute or two, hence `slow`; the gate matrix runs the example in the shorter
gate-selftest (tests/integration/test_gate_matrix.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "examples" / "shop" / "target.yaml"
BLACKBOX = REPO / "examples" / "shop" / "target-blackbox.yaml"
SLO = REPO / "slos" / "smoke.yaml"
BUG = "no-query-on-timeout"


@dataclass(frozen=True)
class Run:
    exit_code: int
    run_dir: Path
    output: str

    def audit(self) -> dict[str, Any]:
        return dict(json.loads((self.run_dir / "audit.json").read_text()))

    def invalid(self) -> dict[str, int]:
        result = json.loads((self.run_dir / "result.json").read_text())
        checks = result.get("audit", {}).get("checks", {})
        rows = checks.values() if isinstance(checks, dict) else checks
        return {r["class"]: int(r["count"]) for r in rows if r["verdict"] == "invalid"}

    def evidence(self) -> str:
        tail = "\n".join(self.output.splitlines()[-20:])
        return f"run {self.run_dir}: exit {self.exit_code}\n{tail}"


def run_example(scenario: str, runs_dir: Path, *, bug: str = "", target: Path = TARGET) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "SHOP_BUG"}
    if bug:
        env["SHOP_BUG"] = bug
    command = [sys.executable, "-m", "chaosbed", "run", scenario, "--target", str(target),
               "--slo", str(SLO), "--runs-dir", str(runs_dir)]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=420, check=False
    )
    created = sorted(p for p in runs_dir.iterdir() if p.is_dir())
    assert created, done.stdout + done.stderr
    return Run(done.returncode, created[-1], done.stdout + done.stderr)


def sqlite(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def shop_rows(run: Run, sql: str) -> list[tuple[Any, ...]]:
    return sqlite(run.run_dir / "order" / "shop.db", sql)


def test_the_example_passes_smoke(tmp_path: Path) -> None:
    run = run_example("smoke", tmp_path)
    assert run.exit_code == 0, run.evidence()
    assert run.invalid() == {}, run.evidence()
    assert run.audit()["mode"] == "full"
    # it really was the shop, killed and restarted, and it recovered notifications it never got
    assert (run.run_dir / "order.log").read_text().count("shop: serving on") == 2
    learnt = dict(shop_rows(run, "SELECT learnt_from, count(*) FROM charges GROUP BY 1"))
    assert learnt.get("query", 0) >= 1, learnt


@pytest.mark.parametrize("target", [TARGET, BLACKBOX], ids=["full", "blackbox"])
def test_the_examples_bug_fails_smoke_on_orphan_charges(tmp_path: Path, target: Path) -> None:
    run = run_example("smoke", tmp_path, bug=BUG, target=target)
    assert "bug no-query-on-timeout" in (run.run_dir / "order.log").read_text()
    assert run.exit_code == 1, run.evidence()
    assert run.invalid().get("P6", 0) >= 1, run.evidence()
    assert run.audit()["mode"] == ("full" if target == TARGET else "blackbox")


def test_the_correct_example_shows_no_anomaly_black_box(tmp_path: Path) -> None:
    run = run_example("smoke", tmp_path, target=BLACKBOX)
    assert run.audit()["mode"] == "blackbox"
    assert run.invalid() == {}, run.evidence()
    # smoke.yaml allows what only the export decides (needs_export: allow) and names it
    assert run.exit_code == 0, run.evidence()
    assert "needs the target's export" in json.dumps(run.audit())
    result = json.loads((run.run_dir / "result.json").read_text())
    assert any(o["tier"] == "not_applicable" and "needs the target's export" in o["reason"]
               for o in result["objectives"]), result["objectives"]


def test_the_example_passes_callback_storm(tmp_path: Path) -> None:
    run = run_example("callback-storm", tmp_path)
    assert run.exit_code == 0, run.evidence()
    assert run.invalid() == {}, run.evidence()
    # the storm's duplicate notifications reached the shop, and no order was confirmed twice
    duplicates = sqlite(
        run.run_dir / "channel.db", "SELECT count(*) FROM notify_log WHERE duplicate"
    )
    assert duplicates[0][0] >= 1
    confirms = sqlite(
        run.run_dir / "inventory.db",
        "SELECT count(*), count(DISTINCT order_id) FROM events WHERE kind = 'confirm'",
    )
    assert confirms[0][0] == confirms[0][1] >= 1
