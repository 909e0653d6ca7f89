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


_LOOPBACK_ADDRESS = re.compile(r"^127\.0\.0\.1:(\d{1,5})$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Peers(BaseModel):
    """Where a `url` target (already running, so configured before chaosbed starts) calls
    chaosbed's inventory and channel: chaosbed's Toxiproxy listens at these addresses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inventory: str
    channel: str

    @field_validator("inventory", "channel")
    @classmethod
    def _address(cls, address: str) -> str:
        match = _LOOPBACK_ADDRESS.match(address)
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise ValueError(f"{address!r} must be 127.0.0.1:PORT (a port 1-65535 on loopback)")
        return address

    @model_validator(mode="after")
    def _distinct(self) -> Peers:
        if self.inventory == self.channel:
            raise ValueError(f"inventory and channel are both {self.inventory}: give two ports")
        return self

    def port(self, service: str) -> int:
        return int(getattr(self, service).rsplit(":", 1)[1])


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
    # a `url` target only: what a started target gets from {inventory}, {channel},
    # {notify_secret} and {admin_token}, fixed in advance
    peers: Peers | None = None
    notify_secret_env: str | None = None
    admin_token_env: str | None = None
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

    @field_validator("notify_secret_env", "admin_token_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        return name

    @model_validator(mode="after")
    def _start_or_url(self) -> Target:
        if (self.start is None) == (self.url is None):
            raise ValueError("give exactly one of `start` (chaosbed starts it) or `url`")
        if self.url is None:
            given = [
                key
                for key in ("peers", "notify_secret_env", "admin_token_env")
                if getattr(self, key) is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: only for a `url` target (a started target gets "
                    "{inventory}, {channel}, {notify_secret} and {admin_token})"
                )
            return self
        if self.peers is None:
            raise ValueError(
                "a `url` target needs `peers`: the 127.0.0.1:PORT addresses it calls for "
                "`inventory` and `channel` (chaosbed's proxies listen there)"
            )
        if self.notify_secret_env is None:
            raise ValueError(
                "a `url` target needs `notify_secret_env`: the variable holding the secret it "
                "checks payment notifications with (the channel signs with it)"
            )
        if self.export and self.admin_token_env is None:
            raise ValueError(
                "a `url` target with `export: true` needs `admin_token_env`: the variable "
                "holding the bearer token it expects on /audit/export"
            )
        own_port = self.url.rsplit(":", 1)[1].rstrip("/")
        for service in ("inventory", "channel"):
            if str(self.peers.port(service)) == own_port:
                raise ValueError(f"peers.{service}: {self.url} itself listens on port {own_port}")
        return self

    def secrets_from(self, environ: Mapping[str, str]) -> dict[str, str]:
        """A `url` target's notify secret and admin token, read from `environ` by the names
        the file gives ({} for a started target); TargetError naming an unset variable."""
        found: dict[str, str] = {}
        for key, variable in (
            ("notify_secret", self.notify_secret_env),
            ("admin_token", self.admin_token_env),
        ):
            if variable is None:
                continue
            value = environ.get(variable, "")
            if not value:
                raise TargetError(
                    f"{self.source}: {key}_env: {variable} is not set in chaosbed's environment "
                    f"(it must hold the {key.replace('_', ' ')} {self.url} was started with)"
                )
            found[key] = value
        return found

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
