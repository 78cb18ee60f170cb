"""Fitting recovers known parameters; bad RUNS.csv is exit 2 naming the row."""

import json

import numpy as np
import pytest

from curate.cli import main
from curate.scaling.fit import fit_law
from curate.scaling.law import GOYAL, MUENNIGHOFF, log_loss_mix
from curate.scaling.runs import read_runs, write_runs

SIZES = [2000, 5000, 10000, 20000]
B = [-0.16, -0.125, -0.10, -0.085]
TAU = [6.7, 8.6, 5.3, 2.3]
A = 3.0


def synthetic_runs(path, model=GOYAL, tau=TAU, noise=0.002, seed=0, max_epochs=40.0, skip_repeats_for=()):
    rng = np.random.default_rng(seed)
    rows = []
    for i, (size, b, t) in enumerate(zip(SIZES, B, tau)):
        top = 0.9 if i in skip_repeats_for else max_epochs
        n = np.geomspace(0.05 * size, top * size, 14)
        y = np.exp(log_loss_mix(n, [size], [b], [t], A, model)) * (1 + noise * rng.standard_normal(len(n)))
        rows += [{"pool": str(i), "pool_size": size, "samples_seen": float(x), "loss": float(v)} for x, v in zip(n, y)]
    write_runs(path, rows)
    return path


def test_recovers_known_parameters(tmp_path):
    law = fit_law(read_runs(synthetic_runs(tmp_path / "runs.csv"))).law
    assert law.a == pytest.approx(A, rel=0.10)
    for pool, b, tau in zip(law.pools, B, TAU):
        assert pool.b == pytest.approx(b, rel=0.05)
        assert pool.tau == pytest.approx(tau, rel=0.20)
        assert pool.tau_identified


def test_recovers_muennighoff_parameters(tmp_path):
    r_star = [5.0, 15.0, 30.0, 3.0]
    law = fit_law(read_runs(synthetic_runs(tmp_path / "runs.csv", MUENNIGHOFF, r_star)), MUENNIGHOFF).law
    assert law.a == pytest.approx(A, rel=0.10)
    for pool, b, r in zip(law.pools, B, r_star):
        assert pool.b == pytest.approx(b, rel=0.05) and pool.tau == pytest.approx(r, rel=0.20)


def test_pool_without_repeats_gets_flagged_default(tmp_path):
    result = fit_law(read_runs(synthetic_runs(tmp_path / "runs.csv", skip_repeats_for=(3,))))
    pool = result.law.pools[3]
    assert not pool.tau_identified
    assert pool.tau == pytest.approx(np.median([p.tau for p in result.law.pools[:3]]))
    assert any("pool 3" in w and "unidentified" in w for w in result.warnings)


def test_cli_fit_writes_law_json_and_warns(tmp_path, capsys):
    runs = synthetic_runs(tmp_path / "runs.csv", skip_repeats_for=(2,))
    main(["fit", str(runs), "-o", str(tmp_path / "law.json")])  # success returns; failures exit
    data = json.loads((tmp_path / "law.json").read_text())
    assert data["model"] == "goyal2024" and len(data["pools"]) == 4 and data["fit"]["runs"] == 56
    assert data["pools"][2]["tau_identified"] is False
    assert "unidentified" in capsys.readouterr().err


def _run_cli(args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


GOOD = "pool,pool_size,samples_seen,loss\n0,100,50,2.0\n0,100,400,1.5\n1,200,100,2.2\n"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("pool,pool_size,loss\n0,100,2.0\n", "samples_seen"),
        (GOOD + "1,200,300,0\n", "row 4"),
        (GOOD + "1,200,300,-1.5\n", "row 4"),
        (GOOD + "0+7,300,300,1.5\n", "row 4"),
        (GOOD + "1,200,abc,1.5\n", "row 4"),
        (GOOD + "1,250,300,1.5\n", "row 4"),
        ("pool,pool_size,samples_seen,loss\n", "no runs"),
    ],
)
def test_bad_runs_csv_exits_2_naming_the_row(tmp_path, capsys, text, needle):
    path = tmp_path / "runs.csv"
    path.write_text(text)
    assert _run_cli(["fit", str(path), "-o", str(tmp_path / "law.json")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "law.json").exists()


def test_mix_rows_are_used_as_evidence(tmp_path):
    path = synthetic_runs(tmp_path / "runs.csv")
    n = np.array([3000.0, 14000.0, 60000.0])
    y = np.exp(log_loss_mix(n, SIZES[:2], B[:2], TAU[:2], A))
    with open(path, "a") as handle:
        for x, v in zip(n, y):
            handle.write(f"0+1,7000,{x},{v}\n")
    table = read_runs(path)
    assert table.members[-1] == (0, 1)
    law = fit_law(table).law
    assert law.fit["rmse_log_per_pool"]["0+1"] < 0.01


def test_recovers_parameters_above_a_fixed_irreducible_loss(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for i, (size, b, t) in enumerate(zip(SIZES, B, TAU)):
        n = np.geomspace(0.05 * size, 40 * size, 14)
        y = np.exp(log_loss_mix(n, [size], [b], [t], A, GOYAL, irreducible=0.5)) * (
            1 + 0.002 * rng.standard_normal(len(n))
        )
        rows += [{"pool": str(i), "pool_size": size, "samples_seen": float(x), "loss": float(v)} for x, v in zip(n, y)]
    write_runs(tmp_path / "runs.csv", rows)
    law = fit_law(read_runs(tmp_path / "runs.csv"), irreducible=0.5).law
    assert law.irreducible == 0.5 and law.a == pytest.approx(A, rel=0.10)
    for pool, b in zip(law.pools, B):
        assert pool.b == pytest.approx(b, rel=0.05)
