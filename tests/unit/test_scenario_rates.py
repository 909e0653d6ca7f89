"""Shipped scenarios state their load as paced arrival rates, and the flash sale is a real peak."""

from __future__ import annotations

import re

import pytest

from faults.scenario import SCENARIO_DIR, load_scenario

SHOPPING = ("shopper", "impatient", "late_payer")  # the classes paced together toward `rate`
SHIPPED = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def _shoppers(name: str) -> float:
    load = load_scenario(name).load
    return load.users * sum(load.mix.get(c, 0) for c in SHOPPING) / sum(load.mix.values())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_scenario_paces_a_rate_and_says_it_in_journeys_per_s(name: str) -> None:
    load = load_scenario(name).load
    assert load.rate is not None, f"{name}: no `rate` (journeys/s) to pace the shoppers toward"
    text = (SCENARIO_DIR / f"{name}.yaml").read_text()
    comment = re.search(r"^# load: ([\d.]+) journeys/s paced by (\d+) users", text, re.M)
    assert comment, f"{name}: no '# load: N journeys/s paced by U users' line"
    assert float(comment.group(1)) == load.rate and int(comment.group(2)) == load.users


def test_flash_sale_spikes_at_least_fivefold_with_users_to_spare_at_the_peak() -> None:
    sale = load_scenario("flash-sale")
    load = sale.load
    assert load.shape == "flash_sale" and load.spike_factor >= 5
    assert load.rate is not None
    pace_s = _shoppers("flash-sale") / load.rate  # each shopper starts a journey this often
    # a journey may slow to this before the user count, not the stack, would cap the rate
    assert pace_s >= 1.5
    assert load.rate * load.spike_factor >= 150  # beyond what the stack sustains today
