"""What the load generator is told to do: the scenario's `load` section, its duration and seed,
where the stack is, and where to write the history — read once from the environment.

Environment (all optional, so plain `locust -f loadtests/locustfile.py --host URL` works):
- `CHAOSBED_LOAD`: JSON, the scenario's `load` section plus `duration_s` and `seed`.
- `CHAOSBED_STACK_JSON`: path of a stack's `stack.json` (channel URL, notify secret, target).
- `CHAOSBED_CHANNEL_URL`: the channel as the shopper sees it (overrides stack.json).  With
  neither, a Locust run refuses to start: there is no default channel address.
- `CHAOSBED_TARGET`: a target name or file (targets/NAME.yaml, loadtests/target.py) whose
  adapter the journeys use (overrides stack.json's target; default: the bundled service).
- `CHAOSBED_NOTIFY_SECRET`: lets forgers sign stale / replayed notifications with the real key.
- `CHAOSBED_HISTORY`, `CHAOSBED_PROGRESS`: files the master writes (none when unset).
- `CHAOSBED_LOAD_METRICS_PORT`: serve client-side Prometheus metrics on PORT (`off`: not at
  all; unset: 9646 in a hand run, none under `chaosbed run`), bound to
  `CHAOSBED_LOAD_METRICS_HOST` (default 127.0.0.1).
- `CHAOSBED_REQUEST_TIMEOUT_S`: per-request network timeout of the simulated clients.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from faults.scenario import LoadSpec

BUNDLED_ADAPTER = "loadtests.adapters.bundled:BundledAdapter"
DEFAULT_NOTIFY_PATH = "/notifications/payment"
DEFAULT_REQUEST_TIMEOUT_S = 5.0
DEFAULT_LOAD_METRICS_PORT = 9646  # a hand run's client metrics (`chaosbed up --observe` scrapes it)


class LoadConfigError(ValueError):
    """The load configuration (CHAOSBED_LOAD, stack.json, ...) is unusable; says which part."""


@dataclass(frozen=True)
class LoadConfig:
    """Everything a simulated user or a load shape needs; plain data so it can travel to workers."""

    load: dict[str, Any] = field(default_factory=lambda: LoadSpec().model_dump(exclude_none=True))
    duration_s: float | None = None
    seed: int = 0
    channel_url: str = ""  # unknown: a Locust run refuses to start (locustfile.py)
    notify_secret: str | None = None
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    # the target's adapter (loadtests/adapter.py): "module:Class" or "file.py:Class" under
    # adapter_base_dir, with the target file's options; where forgers post notifications
    adapter: str = BUNDLED_ADAPTER
    adapter_options: dict[str, Any] = field(default_factory=dict)
    adapter_base_dir: str | None = None
    notify_path: str = DEFAULT_NOTIFY_PATH

    @cached_property
    def spec(self) -> LoadSpec:
        """The load section, typed (validated once per configuration)."""
        return LoadSpec.model_validate(self.load)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoadConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LoadConfigError(f"load configuration is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise LoadConfigError("load configuration must be a JSON object")
        return cls(
            load=parse_load(data.get("load", {})),
            duration_s=_duration(data.get("duration_s")),
            seed=_seed(data.get("seed", 0)),
            channel_url=str(data.get("channel_url") or ""),
            notify_secret=data.get("notify_secret"),
            request_timeout_s=_timeout(data.get("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S)),
            adapter=str(data.get("adapter") or BUNDLED_ADAPTER),
            adapter_options=dict(data.get("adapter_options") or {}),
            adapter_base_dir=data.get("adapter_base_dir"),
            notify_path=str(data.get("notify_path") or DEFAULT_NOTIFY_PATH),
        )


def user_rng(seed: int, worker_index: int, user_index: int) -> random.Random:
    """The one source of a simulated user's random choices: seed / worker / user."""
    return random.Random(f"{seed}/{worker_index}/{user_index}")


def parse_load(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a scenario `load` section (durations as seconds or '10s'); return it normalised."""
    if not isinstance(raw, Mapping):
        raise LoadConfigError(f"load section must be a mapping, got {type(raw).__name__}")
    try:
        spec = LoadSpec.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"load.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise LoadConfigError(problems) from None
    return spec.model_dump(exclude_none=True)


def load_message(load: Mapping[str, Any], *, duration_s: float | None, seed: int) -> str:
    """The CHAOSBED_LOAD value for a scenario's load section."""
    return json.dumps({**parse_load(load), "duration_s": duration_s, "seed": seed})


def from_env(env: Mapping[str, str] | None = None) -> LoadConfig:
    """Build the configuration from CHAOSBED_* variables (see the module docstring)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if env.get("CHAOSBED_LOAD"):
        try:
            raw = json.loads(env["CHAOSBED_LOAD"])
        except json.JSONDecodeError as exc:
            raise LoadConfigError(f"CHAOSBED_LOAD is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise LoadConfigError("CHAOSBED_LOAD must be a JSON object (a scenario's load section)")
    duration_s = _duration(raw.pop("duration_s", None))
    seed = _seed(raw.pop("seed", 0))
    stack = _stack_info(env.get("CHAOSBED_STACK_JSON"))
    channel_url = env.get("CHAOSBED_CHANNEL_URL") or _proxy_url(stack, "client_channel")
    return LoadConfig(
        load=parse_load(raw),
        duration_s=duration_s,
        seed=seed,
        channel_url=(channel_url or "").rstrip("/"),
        notify_secret=env.get("CHAOSBED_NOTIFY_SECRET") or stack.get("notify_secret") or None,
        request_timeout_s=_timeout(
            env.get("CHAOSBED_REQUEST_TIMEOUT_S", DEFAULT_REQUEST_TIMEOUT_S)
        ),
        **_target_fields(env.get("CHAOSBED_TARGET"), stack),
    )


def _target_fields(name_or_path: str | None, stack: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter settings of the target: CHAOSBED_TARGET's file, else stack.json's target."""
    if name_or_path:
        from loadtests.target import TargetError, load_target

        try:
            target = load_target(name_or_path)
        except TargetError as exc:
            raise LoadConfigError(f"CHAOSBED_TARGET: {exc}") from None
        return {
            "adapter": target.adapter,
            "adapter_options": {"health_path": target.health, **target.options},
            "adapter_base_dir": target.base_dir,
            "notify_path": target.notify_path,
        }
    recorded = stack.get("target")
    if not isinstance(recorded, Mapping):
        return {}
    return {
        "adapter": str(recorded.get("adapter") or BUNDLED_ADAPTER),
        "adapter_options": {
            "health_path": recorded.get("health") or "/healthz",
            **(recorded.get("options") or {}),
        },
        "adapter_base_dir": recorded.get("dir"),
        "notify_path": str(recorded.get("notify_path") or DEFAULT_NOTIFY_PATH),
    }


def _stack_info(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LoadConfigError(f"CHAOSBED_STACK_JSON={path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise LoadConfigError(f"CHAOSBED_STACK_JSON={path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LoadConfigError(f"CHAOSBED_STACK_JSON={path} must hold a JSON object")
    return data


def _proxy_url(stack: Mapping[str, Any], name: str) -> str | None:
    try:
        return str(stack["proxies"][name]["url"])
    except (KeyError, TypeError):
        return None


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise LoadConfigError(f"duration_s must be a number of seconds > 0, got {value!r}")
    return float(value)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LoadConfigError(f"seed must be an integer, got {value!r}")
    return value


def _timeout(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise LoadConfigError(f"request timeout must be a number, got {value!r}") from None
    if seconds <= 0:
        raise LoadConfigError(f"request timeout must be > 0 seconds, got {value!r}")
    return seconds


def load_metrics_port(env: Mapping[str, str]) -> int | None:
    """Where the client metrics are served: CHAOSBED_LOAD_METRICS_PORT (`off`: nowhere); unset,
    9646 in a hand run and nowhere under `chaosbed run` (which sets CHAOSBED_LOAD and, when
    observing, its own port)."""
    raw = env.get("CHAOSBED_LOAD_METRICS_PORT", "").strip()
    if raw.lower() == "off":
        return None
    if not raw:
        return None if env.get("CHAOSBED_LOAD") else DEFAULT_LOAD_METRICS_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise LoadConfigError(f"CHAOSBED_LOAD_METRICS_PORT={raw!r}: expected a port 1-65535 or off")
    return int(raw)
