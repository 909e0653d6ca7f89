"""Property-based API tests: schemathesis `--checks all` against each service's OpenAPI document.

A dedicated stack (fuzzing changes knobs and stock), fuzzed with the admin token so admin
routes are exercised, and their bearer scheme checked (`ignored_auth`: each admin route
refuses a missing or wrong token).  The CLI runs its examples, coverage, fuzzing and
stateful phases with bounded examples and a fixed seed; tests/integration/fuzz_hooks.py
signs notifications and gives each new order its own key, and schemathesis.toml states
the one rule JSON Schema cannot.  Every check must pass: no 5xx, no response outside its
documented status, content type, headers and schema, schema-valid data accepted,
schema-invalid data refused, auth enforced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaosbed.stack import SERVICES, Stack

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 10  # per operation and phase: ~1,100 cases for the three services in ~25 s
SEED = 20260101
HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _schemathesis(stack: Stack, service: str, report_dir: Path) -> dict[str, Any]:
    """Run the schemathesis CLI against one service; its JSON run report."""
    argv = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{stack.url(service)}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: {stack.admin_headers()['Authorization']}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--no-shrink",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report",
        "json",
        "--report-dir",
        str(report_dir),
        "--no-color",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "SCHEMATHESIS_HOOKS": "tests.integration.fuzz_hooks",
        "CHAOSBED_NOTIFY_SECRET": stack.info["notify_secret"],
    }
    done = subprocess.run(
        argv, cwd=report_dir, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    reports = sorted(report_dir.glob("*.json"))
    assert reports, f"schemathesis wrote no report (exit {done.returncode}):\n{done.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(reports[-1].read_text())
    report["output"] = done.stdout
    return report


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with Stack.start(tmp_path_factory.mktemp("fuzz")) as stack:
        yield stack


@pytest.mark.parametrize("service", SERVICES)
def test_api_passes_every_schemathesis_check(
    service: str, fuzz_stack: Stack, tmp_path: Path
) -> None:
    report = _schemathesis(fuzz_stack, service, tmp_path)
    cases = report["test_cases"]
    print(f"{service}: {cases['generated']} schemathesis cases")  # the count for the record
    detail = report["output"][-6000:]
    assert report["complete"], detail
    assert report["errors"] == [], detail
    assert report["failures"] == [], detail
    assert cases["with_failures"] == 0, detail
    # every phase ran: examples may be skipped (no examples in the documents)
    ran = {name for name, phase in report["phases"].items() if phase["status"] == "success"}
    assert {"coverage", "fuzzing", "stateful"} <= ran, report["phases"]
    # the fuzzer reached the rules with accepted and refused requests, not just the door
    rates = report["valid_rates"]
    assert sum(r["fuzzing"]["accepted"] for r in rates.values()) >= len(rates), rates
    assert cases["generated"] >= 100, cases
