"""Find the external binaries the stack runs, or say in one line how to get them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_BIN = Path(__file__).resolve().parent.parent / "bin"

_HOW_TO_GET = {
    "toxiproxy-server": (
        "run `make setup`, or `go install -ldflags=\"-s -w -X "
        "github.com/Shopify/toxiproxy/v2.Version=2.12.0\" "
        "github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0` and copy the binary to "
        f"{PROJECT_BIN}/toxiproxy-server"
    ),
    "jaeger": (
        "run `make setup` (builds github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0 into "
        f"{PROJECT_BIN}/jaeger), or put a jaeger v2 binary on PATH"
    ),
    "prometheus": "run `make setup`, or `sudo apt-get install prometheus`",
}


class MissingBinary(RuntimeError):
    """A required external program is not installed."""


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find(name: str, *, project_bin: Path = PROJECT_BIN) -> Path:
    """The path of `name`: the project's bin/ first (except prometheus), then PATH."""
    if name not in _HOW_TO_GET:
        raise ValueError(f"unknown binary {name!r}; known: {', '.join(sorted(_HOW_TO_GET))}")
    if name != "prometheus" and _executable(project_bin / name):
        return project_bin / name
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    where = f"{project_bin} or PATH" if name != "prometheus" else "PATH"
    raise MissingBinary(f"{name} not found in {where}: {_HOW_TO_GET[name]}")


def toxiproxy_server() -> Path:
    return find("toxiproxy-server")


def jaeger() -> Path:
    return find("jaeger")


def prometheus() -> Path:
    return find("prometheus")
