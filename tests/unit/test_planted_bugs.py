"""The planted-bug table: every bug has the anomaly class the gate must catch it by."""

from __future__ import annotations

from services.common.bugs import EXPECTED_CLASSES, PLANTED_BUGS
from slos.checkers import CHECKERS


def test_every_planted_bug_has_its_expected_class() -> None:
    assert set(EXPECTED_CLASSES) == set(PLANTED_BUGS)


def test_every_expected_class_is_one_the_audit_checks() -> None:
    unknown = {bug: cls for bug, cls in EXPECTED_CLASSES.items() if cls not in CHECKERS}
    assert unknown == {}
