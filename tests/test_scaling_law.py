"""The law is exactly scaling-laws.md's formula: checked against a literal pass-by-pass loop."""

import math

import numpy as np
import pytest

from curate.scaling.law import (
    GOYAL,
    MUENNIGHOFF,
    R_STAR,
    Law,
    Pool,
    law_from_json,
    law_to_json,
    log_loss_mix,
    mix_utility,
)


def literal_goyal(n, sizes, b, tau, a, d=0.0):
    """scaling-laws.md written out with a Python loop over passes."""
    total = sum(sizes)
    value = math.log(a) + mix_utility(sizes, b, tau, 1) * math.log(min(n, total))
    k = 2
    while (k - 1) * total < n:
        value += mix_utility(sizes, b, tau, k) * math.log(min(n, k * total) / ((k - 1) * total))
        k += 1
    return math.log(d + math.exp(value))


@pytest.mark.parametrize("n", [3.0, 99.0, 400.0, 401.0, 800.0, 1234.5, 40_000.0, 400 * 2500 + 7.0])
def test_goyal_matches_literal_formula(n):
    sizes, b, tau = [100, 300], [-0.2, -0.1], [3.0, 50.0]
    assert log_loss_mix(n, sizes, b, tau, 2.0)[0] == pytest.approx(literal_goyal(n, sizes, b, tau, 2.0), abs=1e-12)


def test_first_pass_is_a_power_law_with_size_weighted_utility():
    n = np.array([10.0, 100.0, 1000.0])
    expected = np.log(3.0) + (0.25 * -0.2 + 0.75 * -0.1) * np.log(n)
    np.testing.assert_allclose(log_loss_mix(n, [1000, 3000], [-0.2, -0.1], [2.0, 2.0], 3.0), expected, rtol=1e-12)


def test_irreducible_loss_is_a_floor():
    n = np.array([1e2, 1e4, 1e8])
    with_floor = np.exp(log_loss_mix(n, [100], [-0.3], [4.0], 2.0, irreducible=0.5))
    without = np.exp(log_loss_mix(n, [100], [-0.3], [4.0], 2.0))
    np.testing.assert_allclose(with_floor, without + 0.5, rtol=1e-12)
    assert literal_goyal(1e4, [100], [-0.3], [4.0], 2.0, 0.5) == pytest.approx(np.log(with_floor[1]), abs=1e-12)


def test_tail_beyond_exact_passes_agrees_with_exact_sum():
    n = np.array([100 * 3000.0, 100 * 20_000.0 + 50])
    exact = log_loss_mix(n, [100], [-0.2], [40.0], 1.0, exact_passes=1 << 16)
    tailed = log_loss_mix(n, [100], [-0.2], [40.0], 1.0, exact_passes=500)
    np.testing.assert_allclose(tailed, exact, atol=1e-7)


def test_repetition_is_worth_less_than_fresh_data():
    fresh = log_loss_mix(4000.0, [4000], [-0.2], [2.0], 1.0)[0]
    repeated = log_loss_mix(4000.0, [1000], [-0.2], [2.0], 1.0)[0]
    assert repeated > fresh


def test_muennighoff_effective_data():
    u, epochs = 1000.0, 5.0
    r = epochs - 1
    effective = u + u * R_STAR * (1 - math.exp(-r / R_STAR))
    got = log_loss_mix(u * epochs, [u], [-0.3], [R_STAR], 2.0, MUENNIGHOFF)[0]
    assert got == pytest.approx(math.log(2.0) - 0.3 * math.log(effective), abs=1e-12)
    assert log_loss_mix(500.0, [u], [-0.3], [R_STAR], 2.0, MUENNIGHOFF)[0] == pytest.approx(
        math.log(2.0) - 0.3 * math.log(500.0)
    )


def test_law_json_round_trip_and_contract_keys():
    law = Law(
        2.5, (Pool("0", 100, -0.2, 3.0), Pool("1", 300, -0.1, 5.0, False)), GOYAL, 0.1, {"rmse_log": 0.01, "runs": 7}
    )
    data = law_to_json(law)
    assert set(data) >= {"model", "a", "pools", "fit"} and data["model"] == "goyal2024"
    assert set(data["pools"][0]) >= {"name", "size", "b", "tau"}
    back = law_from_json(data)
    assert back.pools == law.pools and back.a == law.a and back.irreducible == 0.1


def test_law_json_rejects_positive_utility():
    with pytest.raises(ValueError):
        law_from_json({"model": GOYAL, "a": 1.0, "pools": [{"name": "0", "size": 10, "b": 0.1, "tau": 2.0}]})
