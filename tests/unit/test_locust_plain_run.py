"""A plain `locust -f loadtests/locustfile.py -u -r -t` run, as a user types it by hand:
the shape honours -u/-r/-t without Locust's "will be ignored" warning, request names carry
the method once, and the client-metrics port follows CHAOSBED_LOAD_METRICS_PORT."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.config import DEFAULT_LOAD_METRICS_PORT, LoadConfigError, load_metrics_port

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def plain_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("locust")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOSBED_")}
    port = _closed_port()  # nothing listens: every request is refused, the names still count
    env.update(
        PYTHONPATH=str(ROOT),
        CHAOSBED_CHANNEL_URL=f"http://127.0.0.1:{port}",
        CHAOSBED_LOAD_METRICS_PORT="off",  # the default 9646 may be taken on a shared machine
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "3s",
            "--host",
            f"http://127.0.0.1:{port}",
            "--csv",
            str(out / "plain"),
            "--only-summary",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, out


def test_common_options_are_read_without_a_false_warning(
    plain_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, _ = plain_run
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: the refused requests failed
    assert "will be ignored" not in done.stderr
    assert "have no impact on LoadShapes" not in done.stderr


def test_request_names_do_not_repeat_the_method(
    plain_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = plain_run
    with (out / "plain_stats.csv").open() as stats:
        rows = [(r["Type"], r["Name"]) for r in csv.DictReader(stats) if r["Name"] != "Aggregated"]
    assert ("POST", "/orders") in rows, rows
    for method, name in rows:
        assert not name.startswith(("GET ", "POST ", "PUT ", "DELETE ")), (method, name)


def test_load_metrics_port_from_the_environment() -> None:
    assert load_metrics_port({}) == DEFAULT_LOAD_METRICS_PORT == 9646  # a hand run
    assert load_metrics_port({"CHAOSBED_LOAD": "{}"}) is None  # chaosbed run, not observing
    assert load_metrics_port({"CHAOSBED_LOAD": "{}", "CHAOSBED_LOAD_METRICS_PORT": "9700"}) == 9700
    assert load_metrics_port({"CHAOSBED_LOAD_METRICS_PORT": "OFF"}) is None
    for bad in ("http", "0", "70000", "-1"):
        with pytest.raises(LoadConfigError, match=f"CHAOSBED_LOAD_METRICS_PORT='{bad}'"):
            load_metrics_port({"CHAOSBED_LOAD_METRICS_PORT": bad})


def _locust(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    port = _closed_port()
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
         "--headless", "-u", "1", "-r", "1", "-t", "2s", "--host", f"http://127.0.0.1:{port}",
         "--only-summary", *extra],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CHAOSBED_")},
             "PYTHONPATH": str(ROOT), "CHAOSBED_LOAD_METRICS_PORT": "off", **env},
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_without_a_channel_url_it_refuses_to_start_with_one_line() -> None:
    done = _locust({})
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("chaosbed load: where is the channel?"), done.stderr[-2000:]
    assert "CHAOSBED_STACK_JSON" in lines[-1] and "Traceback" not in done.stderr
    assert "ConnectionRefused" not in done.stderr  # nothing was sent


def test_a_bad_target_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    target = tmp_path / "t.yaml"
    target.write_text("name: t\ndescription: d\nurl: http://127.0.0.1:1\nadapter: a.py:A\nx: 1\n")
    done = _locust({"CHAOSBED_CHANNEL_URL": "http://127.0.0.1:1", "CHAOSBED_TARGET": str(target)})
    assert done.returncode != 0
    assert f"CHAOSBED_TARGET: {target}:5: x: unknown key" in done.stderr, done.stderr[-2000:]
