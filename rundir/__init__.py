"""The run-directory leaf: `runs/<UTC yyyymmddTHHMMSSZ>-<name>/` and its json/ndjson files.

Every package may import it; it imports nothing of ours.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TextIO

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# a run directory holds stack.json (admin token, notify secret): only its owner may enter
RUN_DIR_MODE = 0o700
# files holding the stack's secrets, 0600 whoever writes them (the supervisor, the run)
SECRET_FILES = frozenset({"stack.json"})
SECRET_FILE_MODE = 0o600


class Closing:
    """`with thing:` closes the thing on the way out, whatever ended the block."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class RunDirError(ValueError):
    """A run directory name or file is not usable."""


def run_dir_name(name: str, *, now: datetime | None = None) -> str:
    if not _NAME.match(name):
        raise RunDirError(
            f"run name {name!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{name}"


def create_run_dir(runs_dir: Path | str, name: str, *, now: datetime | None = None) -> Path:
    """Create and return a fresh run directory (0700); a second run in the same second gets
    `-2`, `-3`."""
    base = Path(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    stem = run_dir_name(name, now=now)
    for attempt in range(1, 1000):
        candidate = base / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            candidate.mkdir(mode=RUN_DIR_MODE)
        except FileExistsError:
            continue
        candidate.chmod(RUN_DIR_MODE)  # exactly 0700: the umask may mask the owner's bits too
        return candidate
    raise RunDirError(f"could not create a run directory for {stem} in {base}")


def create_named_run_dir(path: Path | str) -> Path:
    """Create the run directory `path` (0700) for `--out`: it may exist only as an empty
    directory, so no earlier run's files are ever mixed in or overwritten."""
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise RunDirError(f"{target} already exists and is not an empty directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.mkdir(mode=RUN_DIR_MODE, exist_ok=True)
    target.chmod(RUN_DIR_MODE)
    return target


LATEST = "latest"


def point_latest(runs_dir: Path | str, run_dir: Path | str) -> Path:
    """Make `runs_dir/latest` a symlink to `run_dir` (relative when inside runs_dir), replaced
    atomically so a reader never finds it missing."""
    base = Path(runs_dir)
    run = Path(run_dir)
    base.mkdir(parents=True, exist_ok=True)
    try:
        target = run.resolve().relative_to(base.resolve())
    except ValueError:
        target = run.resolve()
    link = base / LATEST
    tmp = base / f".{LATEST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return link


def write_json(path: Path | str, data: Any) -> Path:
    """Write `data` as indented JSON atomically (temp file + rename): readers never see half.

    A file named in SECRET_FILES is created 0600 from its first byte on.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    if target.name in SECRET_FILES:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_FILE_MODE)
        os.fchmod(fd, SECRET_FILE_MODE)  # a leftover temp file keeps its old mode otherwise
        with os.fdopen(fd, "w") as out:
            out.write(text)
    else:
        tmp.write_text(text)
    os.replace(tmp, target)
    return target


def read_json(path: Path | str) -> Any:
    target = Path(path)
    try:
        return json.loads(target.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{target} does not exist") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{target} is not valid JSON: {exc}") from None


def write_ndjson(path: Path | str, records: Iterable[Mapping[str, Any]]) -> Path:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with tmp.open("w") as out:
        for record in records:
            out.write(json.dumps(record, default=str) + "\n")
    os.replace(tmp, target)
    return target


def read_ndjson(path: Path | str) -> list[dict[str, Any]]:
    return list(iter_ndjson(path))


def iter_ndjson(path: Path | str) -> Iterator[dict[str, Any]]:
    """Records of an NDJSON file; a torn last line (writer killed mid-line) is skipped."""
    target = Path(path)
    with target.open() as src:
        lines = src.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                return
            raise RunDirError(f"{target}:{number}: not valid JSON: {exc}") from None


class NdjsonWriter(Closing):
    """Append records one line at a time, flushed, safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._out: TextIO = self.path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, default=str) + "\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()

    def close(self) -> None:
        with self._lock:
            self._out.close()
