"""Service settings: CHAOSBED_* variables over defaults that are written once, in the dataclass."""

from __future__ import annotations

import os

import pytest

from services.common.settings import Settings, SettingsError


@pytest.fixture(autouse=True)
def no_chaosbed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CHAOSBED_")]:
        monkeypatch.delenv(name)


def test_an_empty_environment_gives_the_dataclass_defaults() -> None:
    assert Settings.from_env("order") == Settings(service="order")


def test_a_variable_overrides_its_default_and_leaves_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHAOSBED_CLOSE_AFTER_S", "7.5")
    monkeypatch.setenv("CHAOSBED_BUGS", "no-active-query")
    settings = Settings.from_env("order")
    assert settings.close_after_s == 7.5
    assert settings.bugs == frozenset({"no-active-query"})
    assert settings.query_after_s == Settings(service="order").query_after_s


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("CHAOSBED_PORT", "eighty", "is not an integer"),
        ("CHAOSBED_WORKER_TICK_S", "0", "must be >= 0.01"),
        ("CHAOSBED_MAX_BODY_BYTES", "10", "must be >= 256"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f"{name}='{value}' {problem}"):
        Settings.from_env("inventory")
