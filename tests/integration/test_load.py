"""The load generator against a real stack: headless runs as `chaosbed run` starts them."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaosbed.proc import free_port
from chaosbed.stack import Stack
from loadtests.runner import check_pairing, locust_command, read_history, worker_counts

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LOAD = {"users": 6, "spawn_rate": 20, "mix": {"shopper": 4, "browser": 1, "forger": 1}}


def run_load(stack: Stack, *, duration_s: float, workers: int) -> tuple[Path, dict[str, Any]]:
    run_dir = Path(stack.info["run_dir"])
    argv, env = locust_command(
        stack_info=stack.info, load=LOAD, duration_s=duration_s, seed=7, run_dir=run_dir,
        workers=workers, master_port=free_port() if workers else None,
    )
    done = subprocess.run(
        argv, env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, json.loads((run_dir / "load_progress.json").read_text())


def test_headless_run_records_every_operation_once(start_stack: Any) -> None:
    stack = start_stack()
    run_dir, progress = run_load(stack, duration_s=10, workers=0)
    history = read_history(run_dir / "history.ndjson")
    assert check_pairing(history) == []
    completions = Counter((r["f"], r["type"]) for r in history if r["type"] != "invoke")
    for f in ("place_order", "pay", "poll", "browse"):
        assert completions[(f, "ok")] > 0, completions
    # Forged notifications are refused by a correct order service.
    assert completions[("forge", "ok")] == 0 and completions[("forge", "fail")] > 0
    # One logical order per idempotency key (a shopper on the retry path places it twice and
    # is shown the same order); the orders the history calls placed exist.
    placed = [r for r in history if r["f"] == "place_order" and r["type"] == "ok"]
    orders_of_key: dict[str, set[str]] = {}
    for r in placed:
        orders_of_key.setdefault(r["key"], set()).add(r["order_id"])
    assert all(len(ids) == 1 for ids in orders_of_key.values()), orders_of_key
    order_url = stack.info["proxies"]["client_order"]["url"]
    for record in placed[:5]:
        answer = httpx.get(f"{order_url}/orders/{record['order_id']}", timeout=5)
        assert answer.json()["idempotency_key"] == record["key"]
    assert progress["done"] and progress["history"]["complete"]
    assert progress["ops"]["place_order"]["ok"] == len(placed)
    assert (run_dir / "locust_stats.csv").exists()


def test_distributed_run_merges_one_history_with_nothing_lost_or_doubled(
    start_stack: Any,
) -> None:
    stack = start_stack()
    run_dir, progress = run_load(stack, duration_s=8, workers=2)
    history = read_history(run_dir / "history.ndjson")
    assert check_pairing(history) == []
    nodes = worker_counts(progress)
    assert sorted(nodes) == ["w0", "w1"]
    per_node = Counter(str(r["op_id"]).split(".")[0] for r in history)
    for node, report in nodes.items():
        assert report["final"], report
        assert report["produced"] > 0
        # What each worker says it produced is exactly what the master wrote for it.
        assert per_node[node] == report["produced"] == report["written"], (node, report)
    assert len({(r["op_id"], r["type"]) for r in history}) == len(history)
    assert progress["history"]["complete"]
