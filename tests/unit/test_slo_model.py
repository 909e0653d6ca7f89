"""SLO files: the shipped ones load; every bad file is a precise SloFileError at load time."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slos.model import SloFileError, load_slo

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["release", "smoke"])
def test_shipped_files_load(name: str) -> None:
    slo = load_slo(ROOT / "slos" / f"{name}.yaml")
    assert slo.name == name
    assert any(o.key and o.sli == "anomaly" for o in slo.objectives)


def test_smoke_file_is_lenient_on_samples_and_strict_on_money() -> None:
    slo = load_slo(ROOT / "slos" / "smoke.yaml")
    assert slo.min_samples <= 50
    money = next(o for o in slo.objectives if "P1" in (o.classes or []))
    assert money.key and {"P6", "P8"} <= set(money.classes or [])


def write(tmp_path: Path, objectives: list[dict[str, object]], **extra: object) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "objectives": objectives, **extra}))
    return path


GOOD = {"name": "pay fast", "sli": "latency", "op": "pay", "pass": "p(99) < 300ms"}


@pytest.mark.parametrize(
    ("objective", "reason"),
    [
        ({**GOOD, "sli": "latencyy"}, "'latencyy'"),
        ({**GOOD, "op": "refund"}, "'refund'"),
        ({**GOOD, "phase": "night"}, "'night'"),
        ({**GOOD, "pass": "p(99) <<< 3"}, "expected a number"),
        ({**GOOD, "warning": "p99 < 1s"}, "warning: unknown aggregation 'p99'"),
        ({**GOOD, "pass": "p(99) < 300"}, "needs a time unit"),
        ({**GOOD, "pass": "rate >= 99%"}, "does not apply to sli latency"),
        ({"name": "pay fast", "sli": "latency", "pass": "p(99) < 1s"}, "needs an op"),
        ({"name": "pay fast", "sli": "anomaly", "class": ["P1", "P42"], "pass": "count == 0"},
         "unknown anomaly class P42"),
        ({"name": "pay fast", "sli": "anomaly", "pass": "count == 0"}, "needs class"),
        ({"name": "pay fast", "sli": "success_rate", "op": "pay", "pass": "rate >= 995"},
         "write a percentage"),
        ({**GOOD, "colour": "red"}, "colour"),
    ],
)
def test_bad_objective_names_file_objective_and_reason(
    tmp_path: Path, objective: dict[str, object], reason: str
) -> None:
    path = write(tmp_path, [GOOD | {"name": "first"}, objective])
    with pytest.raises(SloFileError) as info:
        load_slo(path)
    message = str(info.value)
    assert str(path) in message
    assert "objective 1 ('pay fast')" in message
    assert reason in message


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(SloFileError, match="does not exist"):
        load_slo(tmp_path / "missing.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed")
    with pytest.raises(SloFileError, match="not valid YAML"):
        load_slo(bad_yaml)
    with pytest.raises(SloFileError, match="objectives"):
        load_slo(write(tmp_path, []))
    with pytest.raises(SloFileError, match="name is used twice"):
        load_slo(write(tmp_path, [GOOD, GOOD]))
    with pytest.raises(SloFileError, match="must look like"):
        load_slo(write(tmp_path, [GOOD], baseline={"max_regression": "lots"}))


def test_class_may_be_a_single_id(tmp_path: Path) -> None:
    slo = load_slo(write(tmp_path, [{"name": "n", "sli": "anomaly", "class": "P1",
                                     "pass": "count == 0", "key": True}]))
    assert slo.objectives[0].classes == ["P1"]
    assert slo.objectives[0].key
