"""How `chaosbed run` starts the load: one headless Locust process (plus local workers).

    argv, env = locust_command(stack_info=..., load=..., duration_s=40, seed=42,
                               run_dir=run_dir, workers=2, master_port=free_port())
    subprocess.run(argv, env={**os.environ, **env}, cwd=REPO_ROOT)

The process runs the scenario's shape for `duration_s`, writes `history.ndjson` (merged from all
workers), `locust_stats*.csv` and `load_progress.json`, and exits 0 (3 if the history is
incomplete, other non-zero codes if Locust itself failed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from loadtests.config import LoadConfigError, load_message
from loadtests.history import check_pairing, read_history, summarize

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
HISTORY_FILE = "history.ndjson"
PROGRESS_FILE = "load_progress.json"
STATS_PREFIX = "locust"

__all__ = [
    "LOCUSTFILE",
    "check_pairing",
    "locust_command",
    "read_history",
    "summarize",
    "worker_counts",
]


def locust_command(
    *,
    stack_info: dict[str, Any],
    load: dict[str, Any],
    duration_s: float,
    seed: int,
    run_dir: Path,
    workers: int,
    master_port: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment for a headless Locust run of `load` against the stack.

    `workers` > 0 forks that many local worker processes under a master (`--processes`)
    that listens on loopback `master_port` (the caller picks a free one); 0 runs the users
    in the single Locust process.  Raises LoadConfigError on bad input.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise LoadConfigError(f"workers must be an integer >= 0, got {workers!r}")
    if workers > 0 and (
        isinstance(master_port, bool)
        or not isinstance(master_port, int)
        or not 0 < master_port < 65536
    ):
        raise LoadConfigError(
            f"workers={workers} needs master_port, a free TCP port 1-65535, got {master_port!r}"
        )
    if isinstance(duration_s, bool) or not isinstance(duration_s, int | float) or duration_s <= 0:
        raise LoadConfigError(f"duration_s must be a number of seconds > 0, got {duration_s!r}")
    load_json = load_message(load, duration_s=float(duration_s), seed=seed)
    order_url = _proxy_url(stack_info, "client_order")
    channel_url = _proxy_url(stack_info, "client_channel")
    run_dir = Path(run_dir).resolve()
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        order_url,
        "--csv",
        str(run_dir / STATS_PREFIX),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    if workers > 0:
        port = master_port
        argv += [
            "--processes",
            str(workers),
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(port),
        ]
    env = {
        "CHAOSBED_LOAD": load_json,
        "CHAOSBED_CHANNEL_URL": channel_url,
        "CHAOSBED_HISTORY": str(run_dir / HISTORY_FILE),
        "CHAOSBED_PROGRESS": str(run_dir / PROGRESS_FILE),
    }
    if stack_info.get("notify_secret"):
        env["CHAOSBED_NOTIFY_SECRET"] = str(stack_info["notify_secret"])
    for candidate in (run_dir, Path(str(stack_info.get("run_dir") or run_dir))):
        if (candidate / "stack.json").exists():
            env["CHAOSBED_STACK_JSON"] = str(candidate / "stack.json")
            break
    return argv, env


def worker_counts(progress: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-node {produced, written, duplicates, final} from a finished `load_progress.json`."""
    history = progress.get("history") or {}
    nodes = history.get("nodes") or {}
    return {str(node): dict(report) for node, report in nodes.items()}


def completions(history: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many ok / fail / info records a history holds."""
    counts = {"ok": 0, "fail": 0, "info": 0}
    for record in history:
        if record["type"] in counts:
            counts[str(record["type"])] += 1
    return counts


def _proxy_url(stack_info: Mapping[str, Any], name: str) -> str:
    try:
        return str(stack_info["proxies"][name]["url"]).rstrip("/")
    except (KeyError, TypeError):
        raise LoadConfigError(f"stack_info has no proxies.{name}.url (not a stack.json?)") from None
