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


SLO_HEAD = """name: t
min_samples: 20
objectives:
  - name: fine
    sli: latency
    op: pay
    pass: "p(99) < 300ms"
  - name: bad
"""  # the bad objective's fields start on line 9


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ('sli: success_rate\n    op: pay\n    pass: "rate >= 180%"', "can never hold"),
        ('sli: success_rate\n    op: pay\n    pass: "rate > 100%"', "can never hold"),
        ('sli: success_rate\n    op: pay\n    pass: "rate < 0%"', "can never hold"),
        ('sli: success_rate\n    op: pay\n    pass: "rate >= 0%"', "always holds"),
        ('sli: success_rate\n    op: pay\n    pass: "rate <= 100%"', "always holds"),
        ('sli: success_rate\n    op: pay\n    pass: "rate >= 1.5"', "write a percentage"),
        ('sli: latency\n    op: pay\n    pass: "p(95) < -2s"', "can never hold"),
        ('sli: latency\n    op: pay\n    pass: "p(95) < 0s"', "can never hold"),
        ('sli: latency\n    op: pay\n    pass: "p(95) <= 0ms"', "can never hold"),
        ('sli: latency\n    op: pay\n    pass: "max > -1s"', "always holds"),
        ('sli: payment_lag\n    pass: "avg < 0s"', "can never hold"),
        ('sli: anomaly\n    class: [P1]\n    pass: "count == -1"', "can never hold"),
        ('sli: anomaly\n    class: [P1]\n    pass: "count == 1.5"', "needs a whole number"),
        ('sli: anomaly\n    class: [P1]\n    pass: "count < 0"', "can never hold"),
        ('sli: anomaly\n    class: [P1]\n    pass: "count >= 0"', "always holds"),
        ('sli: throughput\n    op: pay\n    pass: "value >= 0"', "always holds"),
    ],
)
def test_impossible_and_vacuous_thresholds_are_refused_at_their_line(
    tmp_path: Path, fields: str, reason: str
) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text(SLO_HEAD + "    " + fields + "\n")
    pass_line = 9 + fields.count("\n")
    with pytest.raises(SloFileError) as info:
        load_slo(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{pass_line}: objective 1 ('bad')"), message
    assert reason in message


def test_a_bad_warning_points_at_the_warning_line(tmp_path: Path) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text(SLO_HEAD + '    sli: latency\n    op: pay\n    pass: "p(99) < 1s"\n'
                    '    warning: "p(99) < 0s"\n')
    with pytest.raises(SloFileError, match=rf"^{path}:12: .*warning: 'p\(99\) < 0s' can never"):
        load_slo(path)


def test_negative_or_fractional_min_samples_are_refused_at_their_line(tmp_path: Path) -> None:
    path = tmp_path / "gate.yaml"
    for value in ("-1", "2.5"):
        path.write_text(SLO_HEAD + f'    sli: latency\n    op: pay\n    pass: "p(99) < 1s"\n'
                        f"    min_samples: {value}\n")
        with pytest.raises(SloFileError, match=rf"^{path}:12: objective 1 \('bad'\) field "
                                               "min_samples"):
            load_slo(path)


def test_meaningful_edges_are_accepted(tmp_path: Path) -> None:
    """The refusals stop at the edge: these can both pass and fail."""
    path = tmp_path / "gate.yaml"
    for fields in ('sli: success_rate\n    op: pay\n    pass: "rate >= 100%"',
                   'sli: success_rate\n    op: pay\n    pass: "rate > 0%"',
                   'sli: recovery_time\n    pass: "max <= 0s"',
                   'sli: anomaly\n    class: [P1]\n    pass: "count <= 3"',
                   'sli: latency\n    op: pay\n    pass: "p(99) < 1ms"'):
        path.write_text(SLO_HEAD + "    " + fields + "\n")
        assert load_slo(path).objectives[1].name == "bad"


def test_duplicate_names_point_at_the_second_name(tmp_path: Path) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text(SLO_HEAD.replace("name: bad", "name: fine")
                    + '    sli: latency\n    op: pay\n    pass: "p(99) < 1s"\n')
    with pytest.raises(SloFileError, match=rf"^{path}:8: .*name is used twice"):
        load_slo(path)


def test_a_baseline_section_needs_its_tolerance(tmp_path: Path) -> None:
    with pytest.raises(SloFileError, match="max_regression"):
        load_slo(write(tmp_path, [GOOD], baseline={}))
