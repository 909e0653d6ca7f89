"""The run-directory writer and the binary finder (pure, in-process)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

import rundir
from chaosbed import binaries


def test_run_dir_is_named_by_utc_time_and_never_reused(tmp_path: Path) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = rundir.create_run_dir(tmp_path / "runs", "smoke", now=at)
    second = rundir.create_run_dir(tmp_path / "runs", "smoke", now=at)
    assert first.name == "20260102T030405Z-smoke"
    assert second.name == "20260102T030405Z-smoke-2"
    assert first.is_dir() and second.is_dir()


@pytest.mark.parametrize("name", ["", "../escape", "a b", "x" * 65])
def test_bad_run_name_is_refused_before_anything_is_created(tmp_path: Path, name: str) -> None:
    with pytest.raises(rundir.RunDirError, match="run name"):
        rundir.create_run_dir(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_json_and_ndjson_round_trip(tmp_path: Path) -> None:
    rundir.write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert rundir.read_json(tmp_path / "a.json") == {"x": [1, 2]}
    rundir.write_ndjson(tmp_path / "h.ndjson", [{"i": 1}, {"i": 2}])
    with rundir.NdjsonWriter(tmp_path / "h.ndjson") as out:
        out.write({"i": 3})
    assert [r["i"] for r in rundir.read_ndjson(tmp_path / "h.ndjson")] == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_torn_last_line_is_skipped_but_a_bad_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "h.ndjson"
    path.write_text('{"i": 1}\n{"i": 2')
    assert rundir.read_ndjson(path) == [{"i": 1}]
    path.write_text('{"i": 1}\nnot json\n{"i": 3}\n')
    with pytest.raises(rundir.RunDirError, match="h.ndjson:2"):
        rundir.read_ndjson(path)


def test_read_json_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(rundir.RunDirError, match="missing.json does not exist"):
        rundir.read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(rundir.RunDirError, match="bad.json is not valid JSON"):
        rundir.read_json(tmp_path / "bad.json")


def test_binary_found_in_project_bin_first(tmp_path: Path) -> None:
    fake = tmp_path / "toxiproxy-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert binaries.find("toxiproxy-server", project_bin=tmp_path) == fake


def test_missing_binary_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(binaries.MissingBinary) as missing:
        binaries.find("toxiproxy-server", project_bin=tmp_path)
    message = str(missing.value)
    assert "\n" not in message
    assert "make setup" in message and "go install" in message and "@v2.12.0" in message
    with pytest.raises(binaries.MissingBinary, match="apt-get install prometheus"):
        binaries.find("prometheus", project_bin=tmp_path)
    assert os.environ["PATH"] == str(tmp_path)


def test_run_dir_is_private_and_stack_json_readable_by_its_owner_only(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: nothing is masked
    try:
        run_dir = rundir.create_run_dir(tmp_path / "runs", "smoke")
        assert run_dir.stat().st_mode & 0o777 == 0o700
        # a temp file left by a killed writer keeps no wider mode
        leftover = run_dir / f".stack.json.{os.getpid()}.tmp"
        leftover.write_text("{}")
        leftover.chmod(0o644)
        for _ in range(2):  # created, then replaced
            rundir.write_json(run_dir / "stack.json", {"admin_token": "t"})
            assert (run_dir / "stack.json").stat().st_mode & 0o777 == 0o600
        assert rundir.read_json(run_dir / "stack.json") == {"admin_token": "t"}
        # files without secrets follow the umask as before
        rundir.write_json(run_dir / "run.json", {})
        assert (run_dir / "run.json").stat().st_mode & 0o777 == 0o666
    finally:
        os.umask(old)
