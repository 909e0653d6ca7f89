"""Scenario files (`faults/scenarios/<name>.yaml`): a load, service timings and a fault timeline.

Parsed once, at the edge, into typed models; every problem is a `ScenarioError` naming the
file, the line and (for the timeline) the step index, e.g.
`faults/scenarios/x.yaml:14: timeline step 2 (latency on order): ...`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from faults.catalog import (
    FAULTS,
    RETRY_SCHEDULES,
    TARGETS,
    Duration,
    FaultParams,
    FaultType,
    Kind,
)
from faults.durations import parse_duration
from services.common.settings import Settings

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Timing settings a scenario may override: the services' *_s settings plus the retry knobs.
SERVICE_OVERRIDES: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(Settings)
    if f.name.endswith("_s") or f.name in ("time_scale", "retry_schedule")
)

Loc = tuple[str | int, ...]


class ScenarioError(ValueError):
    """A scenario file is unusable.  `problems` lists every (line, step, reason) found."""

    def __init__(self, source: str, problems: Sequence[tuple[int | None, int | None, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        self.line, self.step, self.reason = self.problems[0]
        super().__init__("\n".join(self._format(p) for p in self.problems))

    def _format(self, problem: tuple[int | None, int | None, str]) -> str:
        line, _, reason = problem
        where = f"{self.source}:{line}" if line is not None else self.source
        return f"{where}: {reason}"


class StepFieldError(ValueError):
    """A step's field is wrong; `path` (below the step) lets the error point at its line."""

    def __init__(self, path: Loc, message: str) -> None:
        super().__init__(message)
        self.path = path


def _model_config() -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# impatient: re-submits its order after paying and pays what it is shown (a page refresh);
# late_payer: pays only once its order has been closed for want of payment.
UserClass = Literal["shopper", "browser", "forger", "impatient", "late_payer"]


def _default_mix() -> dict[UserClass, int]:
    return {"shopper": 8, "browser": 1, "forger": 1}


# The paths of the flow a shopper's journey takes besides the paid one, each at a small fixed
# share of the Shopper class's journeys (drawn from its seeded RNG); the rest pay and wait:
#   abandon      places the order, never pays: it closes for want of payment, stock released
#   declined     pays with a card the channel declines (history op `declined_pay`)
#   late_pay     leaves the wallet open until the order closed, then pays: refused
#   refund       the same with an offline card the channel charges anyway: must be refunded
#   retry        re-submits the order with the same idempotency key and pays what it is shown
#   slow_notify  a card whose notification the channel holds past the active-query time
# They apply to every scenario; `load.paths` overrides any of them (0 turns one off).
JourneyPath = Literal["abandon", "declined", "late_pay", "refund", "retry", "slow_notify"]
JOURNEY_PATHS: tuple[JourneyPath, ...] = get_args(JourneyPath)
DEFAULT_PATH_SHARE = 0.03
PathShare = Annotated[float, Field(ge=0.0, le=1.0)]


def _default_paths() -> dict[JourneyPath, float]:
    return dict.fromkeys(JOURNEY_PATHS, DEFAULT_PATH_SHARE)


class LoadSpec(BaseModel):
    model_config = _model_config()

    shape: Literal["steady", "ramp", "flash_sale", "soak"] = "steady"
    users: int = Field(default=10, ge=1, le=10_000)
    spawn_rate: float = Field(default=10.0, gt=0)
    rate: float | None = Field(default=None, gt=0)
    spike_factor: float = Field(default=10.0, ge=1)
    spike_at: Duration | None = None
    spike_for: Duration | None = None
    mix: dict[UserClass, int] = Field(default_factory=_default_mix)
    skus: dict[str, int] = Field(default_factory=lambda: {"sku-1": 100_000, "sku-2": 100_000})
    max_poll: Duration = 10.0
    late_pay_wait: Duration = 30.0  # a late payer gives up if its order is not closed by then
    paths: dict[JourneyPath, PathShare] = Field(default_factory=_default_paths)

    @field_validator("paths")
    @classmethod
    def _path_shares(cls, paths: dict[JourneyPath, float]) -> dict[JourneyPath, float]:
        merged = {**_default_paths(), **paths}  # the paths not named keep their default share
        total = sum(merged.values())
        if total > 1.0:
            shares = ", ".join(f"{name} {share:g}" for name, share in merged.items())
            raise ValueError(f"path shares add up to {total:g} > 1 ({shares})")
        return merged

    def journey_path(self, draw: float) -> JourneyPath | None:
        """The path a shopper's journey takes for a uniform `draw` in [0, 1): each path over
        its share of the unit interval, in JOURNEY_PATHS order; None (buy and pay) for the rest.
        The journey count is the same whatever the shares: they change what a journey does,
        never how many start."""
        edge = 0.0
        for path in JOURNEY_PATHS:
            edge += self.paths.get(path, 0.0)
            if draw < edge:
                return path
        return None

    @field_validator("mix")
    @classmethod
    def _mix_weights(cls, mix: dict[str, int]) -> dict[str, int]:
        if any(weight < 0 for weight in mix.values()):
            raise ValueError("user class weights must be >= 0")
        if not any(mix.values()):
            raise ValueError("at least one user class needs a weight > 0")
        return mix

    @field_validator("skus")
    @classmethod
    def _sku_stock(cls, skus: dict[str, int]) -> dict[str, int]:
        if not skus:
            raise ValueError("at least one sku is needed")
        for sku, qty in skus.items():
            if not re.match(r"^[A-Za-z0-9_.:-]{1,128}$", sku):
                raise ValueError(f"sku {sku!r} must be 1-128 characters of [A-Za-z0-9_.:-]")
            if qty < 0:
                raise ValueError(f"stock of {sku} must be >= 0, got {qty}")
        return skus


class Step(BaseModel):
    """One timeline step: `fault` on `target` from `at` for `for` seconds (after load start)."""

    model_config = _model_config()

    at: Duration
    for_: Duration = Field(default=0.0, alias="for")
    target: str
    fault: str
    params: dict[str, Any] = Field(default_factory=dict)
    _spec: FaultParams = PrivateAttr()

    @model_validator(mode="after")
    def _resolve(self) -> Step:
        if self.fault not in FAULTS:
            raise StepFieldError(
                ("fault",), f"unknown fault {self.fault!r}; known: {', '.join(FAULTS)}"
            )
        if self.target not in TARGETS:
            raise StepFieldError(
                ("target",), f"unknown target {self.target!r}; known: {', '.join(TARGETS)}"
            )
        ftype = FAULTS[self.fault]
        if self.target not in ftype.targets:
            raise StepFieldError(
                ("target",),
                f"fault {self.fault!r} ({ftype.kind} fault) cannot target {self.target!r}; "
                f"it applies to: {', '.join(ftype.targets)}",
            )
        if ftype.windowed and self.for_ <= 0:
            raise StepFieldError(("for",), f"fault {self.fault!r} needs a window: `for` > 0")
        if not ftype.windowed and self.for_ != 0:
            raise StepFieldError(("for",), f"fault {self.fault!r} is instantaneous: remove `for`")
        try:
            self._spec = ftype.params.model_validate(self.params)
        except ValidationError as exc:
            first = exc.errors()[0]["loc"]
            raise StepFieldError(
                ("params", *first), f"bad params for {self.fault}: {_pydantic_reasons(exc)}"
            ) from None
        return self

    @property
    def end(self) -> float:
        return self.at + self.for_

    @property
    def spec(self) -> FaultParams:
        """The parameters, validated against the fault's schema."""
        return self._spec

    @property
    def type(self) -> FaultType:
        return FAULTS[self.fault]

    def label(self) -> str:
        return f"{self.fault} on {self.target}"


class Scenario(BaseModel):
    model_config = _model_config()

    name: str
    description: str
    duration: Duration
    seed: int = 0
    settle: Duration = 15.0
    load: LoadSpec = Field(default_factory=LoadSpec)
    services: dict[str, float | str] = Field(default_factory=dict)
    timeline: list[Step] = Field(default_factory=list)

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

    @field_validator("duration")
    @classmethod
    def _positive(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("load duration must be > 0")
        return seconds

    @field_validator("services", mode="before")
    @classmethod
    def _services(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        out: dict[str, float | str] = {}
        for name, value in raw.items():
            if name not in SERVICE_OVERRIDES:
                raise ValueError(
                    f"unknown service setting {name!r}; known: {', '.join(SERVICE_OVERRIDES)}"
                )
            if name == "retry_schedule":
                if value not in RETRY_SCHEDULES:
                    raise ValueError(
                        f"retry_schedule {value!r} must be one of {', '.join(RETRY_SCHEDULES)}"
                    )
                out[name] = value
            elif name == "time_scale":
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ValueError(f"time_scale {value!r} must be a number > 0")
                out[name] = float(value)
            else:
                try:
                    out[name] = parse_duration(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return out

    def service_env(self) -> dict[str, str]:
        """The services' overrides as CHAOSBED_* environment variables."""
        return {f"CHAOSBED_{name.upper()}": str(value) for name, value in self.services.items()}

    def load_dict(self) -> dict[str, Any]:
        """The load section for `loadtests.runner.locust_command` (durations in seconds)."""
        return self.load.model_dump(exclude_none=True)

    def fault_targets(self) -> list[tuple[str, str]]:
        """Distinct (fault, target) pairs of the timeline, in order of first use."""
        return list(dict.fromkeys((s.fault, s.target) for s in self.timeline))


# --- checks across fields and steps ----------------------------------------------------


def _conflict_group(step: Step) -> tuple[str, str]:
    """Steps in the same group on the same target must not overlap: they could not heal apart."""
    if step.type.kind is Kind.PROCESS:
        return (step.target, "process")
    return (step.target, step.fault)


def _overlaps(a: Step, b: Step) -> bool:
    if a.for_ == 0 and b.for_ == 0:
        return a.at == b.at
    if a.for_ == 0:
        return b.at <= a.at < b.end
    if b.for_ == 0:
        return a.at <= b.at < a.end
    return a.at < b.end and b.at < a.end


def cross_check(scenario: Scenario) -> list[tuple[Loc, str]]:
    """Problems pydantic cannot see field by field: windows vs duration, overlapping steps."""
    problems: list[tuple[Loc, str]] = []
    load = scenario.load
    if load.shape == "flash_sale":
        if load.spike_at is None or load.spike_for is None:
            problems.append((("load",), "flash_sale needs spike_at and spike_for"))
        elif load.spike_at + load.spike_for > scenario.duration:
            problems.append(
                (
                    ("load", "spike_at"),
                    f"the spike ({load.spike_at:g}s + {load.spike_for:g}s) ends after the load "
                    f"duration ({scenario.duration:g}s)",
                )
            )
    for index, step in enumerate(scenario.timeline):
        where = f"timeline step {index} ({step.label()})"
        if step.end > scenario.duration or step.at >= scenario.duration:
            problems.append(
                (
                    ("timeline", index),
                    f"{where}: ends at {step.end:g}s, after the load duration "
                    f"({scenario.duration:g}s)",
                )
            )
        for other_index in range(index):
            other = scenario.timeline[other_index]
            if _conflict_group(other) == _conflict_group(step) and _overlaps(other, step):
                problems.append(
                    (
                        ("timeline", index),
                        f"{where}: overlaps step {other_index} ({other.label()}, "
                        f"{other.at:g}s-{other.end:g}s) on the same target; "
                        "they could not be healed independently",
                    )
                )
    return problems


# --- loading ---------------------------------------------------------------------------


def _pydantic_reasons(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest YAML node along `loc` (a mapping entry: its key's line)."""
    if root is None:
        return None
    node: yaml.Node = root
    line = root.start_mark.line
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    child = value
                    line = key.start_mark.line
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line
        if child is None:
            break
        node = child
    return line + 1


def _step_reason(loc: Loc, msg: str, data: Any) -> str:
    """Prefix errors inside the timeline with the step index and what it is."""
    if len(loc) >= 2 and loc[0] == "timeline" and isinstance(loc[1], int):
        index = loc[1]
        label = ""
        try:
            raw = data["timeline"][index]
            label = f" ({raw.get('fault', '?')} on {raw.get('target', '?')})"
        except (KeyError, IndexError, TypeError, AttributeError):
            pass
        rest = ".".join(str(p) for p in loc[2:])
        return f"timeline step {index}{label}: " + (f"{rest}: {msg}" if rest else msg)
    field = ".".join(str(p) for p in loc)
    return f"{field}: {msg}" if field else msg


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Validate scenario YAML text; raise ScenarioError with file:line and the step index."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(source, [(line, None, f"not valid YAML: {problem}")]) from None
    if not isinstance(data, dict):
        raise ScenarioError(source, [(1, None, "a scenario must be a YAML mapping")])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc: Loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            step = loc[1] if len(loc) >= 2 and loc[0] == "timeline" else None
            cause = (err.get("ctx") or {}).get("error")
            where = (*loc, *cause.path) if isinstance(cause, StepFieldError) else loc
            problems.append(
                (
                    _line_of(root, where),
                    step if isinstance(step, int) else None,
                    _step_reason(loc, msg, data),
                )
            )
        raise ScenarioError(source, problems) from None
    cross = cross_check(scenario)
    if cross:
        raise ScenarioError(
            source,
            [
                (
                    _line_of(root, loc),
                    loc[1] if len(loc) >= 2 and isinstance(loc[1], int) else None,
                    reason,
                )
                for loc, reason in cross
            ],
        )
    return scenario


def scenario_path(name_or_path: str | Path) -> Path:
    """A shipped scenario's file by name, or the given path."""
    text = str(name_or_path)
    looks_like_path = "/" in text or text.endswith((".yaml", ".yml"))
    if looks_like_path or Path(text).is_file():
        return Path(text)
    return SCENARIO_DIR / f"{text}.yaml"


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load and validate a scenario by name (faults/scenarios/NAME.yaml) or path."""
    path = scenario_path(name_or_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        shipped = ", ".join(name for name, _ in _shipped_names())
        raise ScenarioError(
            str(path), [(None, None, f"no such scenario file (shipped scenarios: {shipped})")]
        ) from None
    except OSError as exc:
        raise ScenarioError(str(path), [(None, None, f"cannot read: {exc}")]) from None
    return parse_scenario(text, source=_display(path))


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _shipped_names() -> list[tuple[str, Path]]:
    return [(p.stem, p) for p in sorted(SCENARIO_DIR.glob("*.yaml"))]


def list_scenarios() -> list[tuple[str, str]]:
    """(name, description) of every shipped scenario; an invalid one raises ScenarioError."""
    return [(name, load_scenario(path).description) for name, path in _shipped_names()]
