"""SLO files (slos/*.yaml) parsed once, at the edge, into typed models.

An unknown SLI, operation, phase or anomaly class, a threshold that does not parse, and a
threshold that can never hold or always holds (`rate > 100%`, `p(95) < 0s`, `count == 1.5`,
`count >= 0`) are a `SloFileError` at load time naming the file and line
(`slos/x.yaml:12: objective 1 ('pay fast') field pass: ...`), the objective and the reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slos.checkers import CHECKERS
from slos.expr import ExpressionError, Threshold, parse, parse_regression

Sli = Literal[
    "latency", "success_rate", "throughput", "recovery_time", "payment_lag",
    "confirmation_time", "anomaly",
]
Operation = Literal["place_order", "pay", "poll", "forge", "browse", "journey"]
Phase = Literal["steady", "fault", "recovery", "all"]

TIME_SLIS = frozenset({"latency", "recovery_time", "payment_lag", "confirmation_time"})
# Which aggregations make sense for which SLI.
_DISTRIBUTION = frozenset({"p", "avg", "med", "min", "max", "count"})
ALLOWED_AGGREGATIONS: dict[str, frozenset[str]] = {
    "latency": _DISTRIBUTION,
    "payment_lag": _DISTRIBUTION,
    "recovery_time": _DISTRIBUTION,
    "confirmation_time": _DISTRIBUTION | {"rate"},  # rate = share of payers who saw PAID
    "success_rate": frozenset({"rate"}),
    "throughput": frozenset({"value", "p", "avg", "med", "min", "max"}),
    "anomaly": frozenset({"count", "value"}),
}
ZERO_TIME_IMPOSSIBLE = TIME_SLIS - {"recovery_time"}  # recovery may be immediate: 0 s
NEEDS_OP = frozenset({"latency", "success_rate", "throughput"})


class SloFileError(ValueError):
    """An SLO file that cannot be used; the message names the file, line, objective and reason."""


class FieldProblem(ValueError):
    """A problem with one field of an objective; `field` lets the error point at its line."""

    def __init__(self, field: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path: tuple[str | int, ...] = (field,) if isinstance(field, str) else field


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    sli: Sli
    op: Operation | None = None
    phase: Phase = "all"
    pass_: str = Field(alias="pass")
    warning: str | None = None
    key: bool = False
    classes: list[str] | None = Field(default=None, alias="class")
    min_samples: int | None = Field(default=None, ge=0)

    @field_validator("classes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Objective:
        for label, text in (("pass", self.pass_), ("warning", self.warning)):
            if text is None:
                continue
            try:
                threshold = parse(text)
            except ExpressionError as exc:
                raise FieldProblem(label, f"{label}: {exc}") from None
            self._check_threshold(label, threshold)
        if self.sli in NEEDS_OP and self.op is None:
            raise FieldProblem("sli", f"sli {self.sli} needs an op (one of {_ops()})")
        if self.sli == "anomaly":
            if not self.classes:
                raise FieldProblem(
                    "sli", f"sli anomaly needs class: a list of ids from {_classes()}")
            unknown = [c for c in self.classes if c not in CHECKERS]
            if unknown:
                raise FieldProblem("class", f"unknown anomaly class {', '.join(unknown)} "
                                   f"(allowed: {_classes()})")
        elif self.classes:
            raise FieldProblem("class", "class is only for sli anomaly")
        return self

    def _check_threshold(self, label: str, t: Threshold) -> None:
        allowed = ALLOWED_AGGREGATIONS[self.sli]
        if t.aggregation not in allowed:
            shown = ", ".join(sorted("p(N)" if a == "p" else a for a in allowed))
            raise FieldProblem(label, f"{label}: {t.label!r} does not apply to sli {self.sli} "
                               f"(use {shown})")
        timed = self.sli in TIME_SLIS and t.aggregation not in ("count", "rate")
        if timed and t.unit not in ("ms", "s") and t.value != 0:
            raise FieldProblem(label, f"{label}: {t.text!r} needs a time unit (ms or s)")
        if t.aggregation == "rate" and t.unit is None and not 0 <= t.value <= 1:
            raise FieldProblem(label, f"{label}: {t.text!r} is a rate: write a percentage "
                               "(99.5%) or a fraction (0.995)")
        problem = _impossible_or_vacuous(self.sli, t)
        if problem:
            raise FieldProblem(label, f"{label}: {t.text!r} {problem}")

    @property
    def threshold(self) -> Threshold:
        return parse(self.pass_)

    @property
    def warning_threshold(self) -> Threshold | None:
        return None if self.warning is None else parse(self.warning)


def _impossible_or_vacuous(sli: str, t: Threshold) -> str | None:
    """Why a threshold can never hold, or always holds, whatever the run measures; else None.

    Every SLI reads a number with a known range: a rate is in [0, 1], a time and a throughput
    are >= 0, a count is a whole number >= 0.
    """
    if t.aggregation == "rate":
        low, high, what = 0.0, 1.0, "a rate is between 0% and 100%"
    elif t.aggregation == "count" or (t.aggregation == "value" and sli == "anomaly"):
        if t.value != int(t.value):
            return "is a count: it needs a whole number"
        low, high, what = 0.0, math.inf, "a count is never negative"
    else:
        low, high = 0.0, math.inf
        what = "a time is never negative" if sli in TIME_SLIS else "it is never negative"
    never = always = False
    match t.op:
        case "<":
            never, always = t.value <= low, t.value > high
        case "<=":
            never, always = t.value < low, t.value >= high
        case ">":
            never, always = t.value >= high, t.value < low
        case ">=":
            never, always = t.value > high, t.value <= low
        case "==":
            never = not low <= t.value <= high
        case "!=":
            always = not low <= t.value <= high
    if t.op == "<=" and t.value == 0 and sli in ZERO_TIME_IMPOSSIBLE and t.aggregation != "count":
        never = True  # a request, a payment or a confirmation never takes zero time
    if never:
        return f"can never hold ({what})"
    if always:
        return f"always holds ({what}): it checks nothing"
    return None


class Baseline(BaseModel):
    """How much worse than a baseline run a measured value may get; no default on purpose."""

    model_config = ConfigDict(extra="forbid")

    max_regression: str

    @field_validator("max_regression")
    @classmethod
    def _regression(cls, value: str) -> str:
        try:
            parse_regression(value)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def max_regression_fraction(self) -> float:
        return parse_regression(self.max_regression)


class SloFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    min_samples: int = Field(default=1, ge=0)
    objectives: list[Objective] = Field(min_length=1)
    baseline: Baseline | None = None
    # black-box runs (a target without the order export): what an objective does when what it
    # needs is only in the target's export — `block` (unknown, exit 2) or `allow` (reported as
    # not applicable with the reason; the objective is decided over what the run could see)
    needs_export: Literal["block", "allow"] = "block"
    path: str | None = None  # where it was loaded from (not in the YAML)

    @model_validator(mode="after")
    def _unique_names(self) -> SloFile:
        seen: set[str] = set()
        for index, objective in enumerate(self.objectives):
            if objective.name in seen:
                raise FieldProblem(
                    ("objectives", index, "name"),
                    f"objectives[{index}] ({objective.name!r}): name is used twice; "
                    "names identify objectives in junit and baseline comparisons")
            seen.add(objective.name)
        return self


def _ops() -> str:
    return ", ".join(Operation.__args__)  # type: ignore[attr-defined]


def _classes() -> str:
    return ", ".join(CHECKERS)


def load_slo(path: Path | str) -> SloFile:
    """Read and validate an SLO file; every problem is a `SloFileError` pointing at it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SloFileError(f"{path}: SLO file does not exist") from None
    except OSError as exc:
        raise SloFileError(f"{path}: cannot read: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise SloFileError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SloFileError(f"{path}:1: must be a mapping with name, objectives, …")
    if "path" in raw:
        raise SloFileError(f"{path}:{line_of(root, ('path',))}: unknown field 'path'")
    try:
        slo = SloFile.model_validate(raw)
    except ValidationError as exc:
        raise SloFileError(_explain(path, root, raw, exc)) from None
    slo.path = str(path)
    return slo


def line_of(root: yaml.Node | None, loc: tuple[str | int, ...]) -> int:
    """1-based line of the deepest YAML node along `loc` (a mapping entry: its key's line)."""
    if root is None:
        return 1
    node, line = root, root.start_mark.line
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    child, line = value, key.start_mark.line
                    break
        elif (isinstance(node, yaml.SequenceNode) and isinstance(part, int)
              and 0 <= part < len(node.value)):
            child = node.value[part]
            line = child.start_mark.line
        if child is None:
            break
        node = child
    return line + 1


def _explain(path: Path, root: yaml.Node | None, raw: dict[str, Any],
             exc: ValidationError) -> str:
    problems = []
    listed = raw.get("objectives")
    objectives: list[Any] = listed if isinstance(listed, list) else []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        cause = (err.get("ctx") or {}).get("error")
        # a problem found across fields points at the field it is about
        full = (*loc, *cause.path) if isinstance(cause, FieldProblem) else tuple(loc)
        line = line_of(root, full)
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        where = "file"
        if len(loc) >= 2 and loc[0] == "objectives" and isinstance(loc[1], int):
            index = loc[1]
            entry = objectives[index] if index < len(objectives) else {}
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"objective {index} ({name!r})" if name else f"objective {index}"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        if err.get("type") == "literal_error" and "input" in err:
            msg = f"unknown value {err['input']!r}: {msg}"
        problems.append(f"{path}:{line}: {where}{' field ' + field if field else ''}: {msg}")
    return "; ".join(problems)
