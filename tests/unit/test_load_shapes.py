"""Load shapes at their key moments, and seeding."""

from __future__ import annotations

import pytest

from loadtests.config import parse_load, user_rng
from loadtests.shapes import Profile, profile_from_load


def flash_sale() -> Profile:
    load = parse_load(
        {"shape": "flash_sale", "users": 10, "spawn_rate": 5, "spike_at": "10s", "spike_for": "5s"}
    )
    return profile_from_load(load, duration_s=30, seed=1)


def test_flash_sale_spikes_tenfold_within_two_seconds_and_comes_back() -> None:
    shape = flash_sale()
    assert shape.level(0) == (10, 45.0)
    assert shape.level(9.9)[0] == 10  # type: ignore[index]
    users, spawn_rate = shape.level(10.0)  # type: ignore[misc]
    assert users == 100
    assert (100 - 10) / spawn_rate <= 2.0
    assert shape.level(14.9)[0] == 100  # type: ignore[index]
    assert shape.level(15.0)[0] == 10  # type: ignore[index]
    assert shape.level(29.9)[0] == 10  # type: ignore[index]


@pytest.mark.parametrize("shape", ["steady", "ramp", "flash_sale", "soak"])
def test_every_shape_stops_at_the_duration(shape: str) -> None:
    load = parse_load({"shape": shape, "spike_at": 1, "spike_for": 1})
    profile = profile_from_load(load, duration_s=20, seed=3)
    assert profile.level(19.99) is not None
    assert profile.level(20) is None
    assert profile.level(500) is None


def test_without_a_duration_the_shape_runs_until_stopped() -> None:
    assert Profile("steady", users=3, spawn_rate=1).level(10**6) == (3, 1)


def test_ramp_climbs_linearly_to_users_times_spike_factor() -> None:
    profile = profile_from_load(
        parse_load({"shape": "ramp", "users": 10, "spike_factor": 5}), duration_s=40, seed=0
    )
    assert profile.level(0)[0] == 10  # type: ignore[index]
    assert profile.level(20)[0] == 30  # type: ignore[index]
    assert profile.level(39.9)[0] == 50  # type: ignore[index]


def test_soak_wanders_a_little_reproducibly() -> None:
    load = parse_load({"shape": "soak", "users": 100})
    a = profile_from_load(load, duration_s=3600, seed=7)
    b = profile_from_load(load, duration_s=3600, seed=7)
    levels = [a.level(t)[0] for t in range(0, 3600, 30)]  # type: ignore[index]
    assert levels == [b.level(t)[0] for t in range(0, 3600, 30)]  # type: ignore[index]
    assert all(90 <= users <= 110 for users in levels)
    assert len(set(levels)) > 3


def test_user_randomness_is_reproducible_per_seed_worker_and_user() -> None:
    def draws(seed: int, worker: int, user: int) -> list[float]:
        rng = user_rng(seed, worker, user)
        return [rng.random() for _ in range(5)]

    assert draws(42, 0, 3) == draws(42, 0, 3)
    assert draws(42, 0, 3) != draws(43, 0, 3)
    assert draws(42, 0, 3) != draws(42, 1, 3)
    assert draws(42, 0, 3) != draws(42, 0, 4)
