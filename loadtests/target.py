"""Target files (`targets/NAME.yaml`): the order service under test, how to start or reach it,
the environment it needs to reach chaosbed's channel and inventory, and its adapter.

Validated once at load (pydantic, unknown keys refused); every error names the file and line,
e.g. `targets/x.yaml:7: start.env.PAYMENT_API_URL: unknown placeholder {chanel}; known: ...`.
docs/own-service.md describes the fields; `chaosbed targets` lists them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from faults.catalog import Duration
from faults.scenario import _line_of

REPO = Path(__file__).resolve().parent.parent
TARGET_DIR = REPO / "targets"
DEFAULT_TARGET = "bundled"

# what chaosbed fills into a target's command, cwd and environment (docs/own-service.md)
PLACEHOLDERS: dict[str, str] = {
    "channel": "chaosbed's channel as the target reaches it (proxy order_channel)",
    "inventory": "chaosbed's inventory as the target reaches it (proxy order_inventory)",
    "notify_secret": "the HMAC key of the channel's payment notifications",
    "admin_token": "the bearer token chaosbed sends to /audit/export (export: true)",
    "port": "the loopback port the target must listen on",
    "db_dir": "a directory of the run for the target's data (kept across restarts)",
    "run_dir": "the run directory",
    "python": "the Python interpreter chaosbed runs under",
    "repo": "the chaosbed checkout",
    "target_dir": "the folder holding the target file",
    "bugs": "planted bugs switched on (--bugs), comma separated",
}

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ADAPTER = re.compile(r"^[^:\s]+:[A-Za-z_][A-Za-z0-9_]*$")
_PATH = re.compile(r"^/[^\s?#]*$")


class TargetError(ValueError):
    """A target file is unusable; the message starts with file:line."""


def placeholders_in(text: str) -> list[str]:
    """The {names} a template uses ({{ and }} are literal braces)."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc} (write {{{{ and }}}} for literal braces)") from None


def _check_template(text: str) -> str:
    for name in placeholders_in(text):
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{name}}}; known: "
                + ", ".join(f"{{{known}}}" for known in PLACEHOLDERS)
            )
    return text


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill a checked template."""
    return string.Formatter().vformat(text, (), dict(values))


class Start(BaseModel):
    """How chaosbed starts the target: it owns the process (own process group, logs in the run
    directory, stopped on every exit path) and kill / pause / restart faults reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] = Field(min_length=1)
    cwd: str = "{target_dir}"
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _command(cls, command: list[str]) -> list[str]:
        return [_check_template(part) for part in command]

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, cwd: str) -> str:
        return _check_template(cwd)

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            try:
                _check_template(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return env


class Target(BaseModel):
    """One order service under test (docs/own-service.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    start: Start | None = None
    url: str | None = None
    health: str = "/healthz"
    startup_timeout: Duration = 30.0
    notify_path: str = "/notifications/payment"
    adapter: str
    options: dict[str, Any] = Field(default_factory=dict)
    export: bool = False
    # set by load_target: where the file is (relative adapters, {target_dir})
    source: str = Field(default="<target>", exclude=True)
    base_dir: str = Field(default=".", exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
        return name

    @field_validator("description")
    @classmethod
    def _one_line(cls, text: str) -> str:
        text = text.strip()
        if not text or "\n" in text:
            raise ValueError("must be one non-empty line")
        return text

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+:\d+/?$", url):
            raise ValueError(f"{url!r} must look like http://HOST:PORT (no path)")
        return url.rstrip("/") if url else url

    @field_validator("health", "notify_path")
    @classmethod
    def _path(cls, path: str) -> str:
        if not _PATH.match(path):
            raise ValueError(f"{path!r} must be a path starting with '/'")
        return path

    @field_validator("startup_timeout")
    @classmethod
    def _timeout(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("must be > 0")
        return seconds

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, spec: str) -> str:
        if not _ADAPTER.match(spec):
            raise ValueError(f"{spec!r} must be 'package.module:Class' or 'file.py:Class'")
        return spec

    @model_validator(mode="after")
    def _start_or_url(self) -> Target:
        if (self.start is None) == (self.url is None):
            raise ValueError("give exactly one of `start` (chaosbed starts it) or `url`")
        return self

    @property
    def started(self) -> bool:
        """True when chaosbed starts (and owns) the process."""
        return self.start is not None


def parse_target(text: str, source: str = "<target>", base_dir: Path | None = None) -> Target:
    """Validate target YAML text; raise TargetError with file:line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise TargetError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise TargetError(f"{source}:1: a target must be a YAML mapping")
    for key in ("source", "base_dir"):
        if key in data:
            raise TargetError(f"{source}:{_line_of(root, (key,))}: {key}: unknown key")
    try:
        return Target.model_validate(
            {**data, "source": source, "base_dir": str(base_dir or Path.cwd())}
        )
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            field = ".".join(str(p) for p in loc)
            line = _line_of(root, loc)
            problems.append(f"{source}:{line}: " + (f"{field}: {msg}" if field else msg))
        raise TargetError("\n".join(problems)) from None


def target_path(name_or_path: str | Path) -> Path:
    """A shipped target's file by name (targets/NAME.yaml), or the given path."""
    text = str(name_or_path)
    if "/" in text or text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return Path(text)
    return TARGET_DIR / f"{text}.yaml"


def load_target(name_or_path: str | Path) -> Target:
    """Load and validate a target by name or path."""
    path = target_path(name_or_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        shipped = ", ".join(sorted(p.stem for p in TARGET_DIR.glob("*.yaml")))
        raise TargetError(f"{path}: no such target file (shipped targets: {shipped})") from None
    except OSError as exc:
        raise TargetError(f"{path}: cannot read: {exc}") from None
    return parse_target(text, source=str(path), base_dir=path.resolve().parent)


def list_targets(extra: tuple[str | Path, ...] = ()) -> list[Target]:
    """Every shipped target (targets/*.yaml, then the examples' examples/*/target*.yaml) and any
    given paths; an invalid one raises."""
    shipped = sorted(TARGET_DIR.glob("*.yaml"), key=lambda p: p.stem)
    examples = sorted((REPO / "examples").glob("*/target*.yaml"))
    paths = [*shipped, *examples, *(target_path(p) for p in extra)]
    return [load_target(p) for p in dict.fromkeys(paths)]
