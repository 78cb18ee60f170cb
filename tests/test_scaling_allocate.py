"""Allocation is the brute-force best prefix, including right around every crossover."""

import json

import numpy as np
import pytest
from test_scaling_law import literal_goyal

from curate.cli import main
from curate.scaling import save_law
from curate.scaling.allocate import allocate, crossovers, parse_budgets, plan, switches
from curate.scaling.law import Law, Pool

LAW = Law(
    3.0,
    (
        Pool("0", 1000, -0.2, 2.0),
        Pool("1", 1000, -0.18, 3.0),
        Pool("2", 2000, -0.16, 4.0),
        Pool("3", 4000, -0.14, 5.0),
    ),
)


def brute_force(law, budget):
    """Every prefix through the literal loop formula; the lowest wins (ties: fewer pools)."""
    losses = []
    for j in range(1, len(law.pools) + 1):
        chosen = law.pools[:j]
        losses.append(
            literal_goyal(budget, [p.size for p in chosen], [p.b for p in chosen], [p.tau for p in chosen], law.a)
        )
    return int(np.argmin(losses)) + 1


def test_allocation_equals_brute_force_around_crossovers():
    found = switches(LAW, 10.0, 1e7)
    assert len(found) >= 2, "the test law should switch mixes inside the range"
    budgets = [10.0, 1e3, 1e5, 1e6]
    for s in found:
        budgets += [s["budget"] * 0.97, s["budget"] * 1.03]
    for allocation in allocate(LAW, budgets):
        assert allocation.prefix == brute_force(LAW, allocation.budget), allocation.budget


def test_allocation_fields_are_consistent():
    (a,) = allocate(LAW, [5e4])
    assert a.pools == LAW.names[: a.prefix]
    assert a.unique == sum(p.size for p in LAW.pools[: a.prefix])
    assert a.epochs == pytest.approx(5e4 / a.unique)
    assert a.predicted_loss == pytest.approx(min(loss for _, loss in a.candidates))


def test_crossover_is_where_next_pool_starts_to_pay():
    for c in crossovers(LAW, 10.0, 1e7):
        if c["budget"] is None or c.get("pays_from_start"):
            continue
        j = len(c["from"])
        before, after = c["budget"] * 0.99, c["budget"] * 1.01
        assert LAW.log_loss(before, range(j + 1))[0] > LAW.log_loss(before, range(j))[0]
        assert LAW.log_loss(after, range(j + 1))[0] < LAW.log_loss(after, range(j))[0]


def test_bigger_pools_move_the_crossovers_later():
    grown = LAW.with_sizes([10 * p.size for p in LAW.pools])
    assert switches(grown, 10.0, 1e9)[0]["budget"] > switches(LAW, 10.0, 1e9)[0]["budget"]


def test_plan_single_budget_has_contract_keys():
    mix = plan(LAW, [1e5])
    assert {"budget", "pools", "unique", "epochs", "predicted_loss", "candidates", "crossovers"} <= set(mix)
    assert len(mix["candidates"]) == 4


def test_parse_budgets_range_and_list():
    assert parse_budgets("1e4:1e6:3") == pytest.approx([1e4, 1e5, 1e6])
    assert parse_budgets("3e5,1e4") == [1e4, 3e5]


def test_cli_allocate_budgets_and_pool_sizes(tmp_path):
    save_law(tmp_path / "law.json", LAW)
    main(
        [
            "allocate",
            str(tmp_path / "law.json"),
            "--budgets",
            "1e3:1e7:9",
            "--pool-sizes",
            "2000,4000,8000,16000",
            "-o",
            str(tmp_path / "mix.json"),
        ]
    )
    mix = json.loads((tmp_path / "mix.json").read_text())
    assert len(mix["mixes"]) == 9 and mix["pool_sizes"]["0"] == 2000
    grown = LAW.with_sizes([2000, 4000, 8000, 16000])
    assert [m["pools"] for m in mix["mixes"]] == [a.pools for a in allocate(grown, parse_budgets("1e3:1e7:9"))]


@pytest.mark.parametrize(
    "args", [["--budget", "-5"], ["--budgets", "1e3:1e2:4"], ["--budget", "1e5", "--pool-sizes", "1,2"], []]
)
def test_cli_allocate_usage_errors_exit_2(tmp_path, args):
    save_law(tmp_path / "law.json", LAW)
    with pytest.raises(SystemExit) as exit_info:
        main(["allocate", str(tmp_path / "law.json"), "-o", str(tmp_path / "mix.json"), *args])
    assert exit_info.value.code == 2
