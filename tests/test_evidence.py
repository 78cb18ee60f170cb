"""Evidence before compute: balanced pruning, random baselines in the plan, `curate evaluate`,
the SeTa check."""

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import rendered_dom

from curate.algorithms.prototypes import group_quotas, keep_count, select_by_difficulty
from curate.cli import main
from curate.commands.inspect import verify_output
from curate.errors import UsageError
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.report.wording import comparison_lines
from curate.scaling.baseline import compare_to_random, runs_table
from curate.scaling.law import Law, Pool
from curate.scaling.proxy_runs import ProxyRunSettings, run_proxy_trainings
from curate.training.proxy import ProxyConfig

# ---------------------------------------------------------------------------------------
# Balanced selection (pure)


def test_group_quotas_sum_to_total_and_follow_sizes():
    groups = np.repeat([0, 1, 2, 3], [50, 30, 15, 5])
    quotas = group_quotas(groups, 41)
    assert quotas.sum() == 41 and (quotas <= np.bincount(groups)).all()
    assert np.all(np.abs(quotas - 0.41 * np.bincount(groups)) < 1)


@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_balanced_selection_keeps_the_group_mix_and_the_hardest_within_groups(keep):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 5, 1000)
    distance = rng.random(1000) + 0.5 * groups  # group 4 is all "hard": unbalanced pruning drains group 0
    mask = select_by_difficulty(distance, 0.3, keep, groups)
    assert mask.sum() == keep_count(1000, 0.3)
    kept_share = np.bincount(groups[mask], minlength=5) / mask.sum()
    assert np.allclose(kept_share, np.bincount(groups) / 1000, atol=0.005)
    for g in range(5):
        inside = groups == g
        kept, dropped = distance[inside & mask], distance[inside & ~mask]
        assert (kept.min() >= dropped.max()) if keep == "hard" else (kept.max() <= dropped.min())
    unbalanced = select_by_difficulty(distance, 0.3, keep)
    assert (
        np.abs(np.bincount(groups[unbalanced], minlength=5) / unbalanced.sum() - np.bincount(groups) / 1000).max()
        > 0.1
    )


def test_balanced_selection_without_groups_is_the_plain_rule_and_ties_go_to_earlier_rows():
    distance = np.array([0.5, 0.5, 0.5, 0.1, 0.9, 0.5])
    assert select_by_difficulty(distance, 0.5, "hard").tolist() == [True, True, False, False, True, False]
    groups = np.array([0, 0, 0, 1, 1, 1])
    assert select_by_difficulty(distance, 0.5, "hard", groups).tolist() == [True, True, False, False, True, False]
    with pytest.raises(ValueError):
        select_by_difficulty(distance, 0.5, "hard", np.array([0, 0, 0, 1, 1, -1]))


# ---------------------------------------------------------------------------------------
# Balanced prototypes stage


def _labelled_corpus(path, rows=600, seed=0, score=True):
    """Three labels with their own vocabulary; `noise` words make some rows ambiguous."""
    rng = np.random.default_rng(seed)
    vocab = [["red", "apple", "cherry", "ruby"], ["blue", "sky", "sea", "navy"], ["green", "leaf", "grass", "moss"]]
    labels = rng.choice(3, rows, p=[0.6, 0.3, 0.1])
    noisy = rng.random(rows) < 0.3
    texts = []
    for i, (label, bad) in enumerate(zip(labels, noisy)):
        words = list(rng.choice(vocab[label], 3)) + ([str(rng.choice(vocab[(label + 1) % 3]))] * 2 if bad else [])
        texts.append(" ".join(words) + f" w{i}")
    columns = {"id": [f"r{i}" for i in range(rows)], "text": texts, "label": [f"c{label}" for label in labels]}
    if score:
        columns["clean_score"] = (
            np.where(noisy, 0.0, 1.0) + rng.random(rows) * 0.1
        )  # a user's own score: higher = cleaner
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("balance", ["cluster", "label"])
def test_prototypes_balance_keeps_the_mix(tmp_path, balance):
    source = _labelled_corpus(tmp_path / "in.parquet")
    stage = {
        "kind": "prototypes",
        "clusters": 6,
        "keep": "hard",
        "fraction": 0.5,
        "model": "hashing",
        "balance": balance,
    }
    if balance == "label":
        stage["label_column"] = "label"
    out = tmp_path / "out"
    run_pipeline(parse_pipeline({"stage": [stage]}), source, out, RunOptions())
    assert verify_output(out).ok
    kept = read_parts(out / "kept").to_pandas()
    full = pq.read_table(source).to_pandas()
    assert len(kept) == 300
    if balance == "label":
        groups = full["label"].astype("category").cat.codes.to_numpy()
        kept_groups = kept["label"].astype(pd_categorical(full["label"])).cat.codes.to_numpy()
    else:
        groups = _clusters(out, full["text"])
        assert np.array_equal(groups[full["id"].isin(kept["id"]).to_numpy()], kept["proto_cluster"].to_numpy())
        kept_groups = kept["proto_cluster"].to_numpy()
    assert np.array_equal(np.bincount(kept_groups, minlength=groups.max() + 1), group_quotas(groups, 300))


def pd_categorical(values):
    import pandas as pd

    return pd.CategoricalDtype(sorted(values.unique()))


def _clusters(out, texts):
    """Each row's nearest saved centroid, recomputed from the hashing embedding."""
    from curate.algorithms.prototypes import prototype_distance
    from curate.embeddings.hashing import hashing_embed

    centroids = np.load(out / "prototypes" / "centroids.npy")
    return prototype_distance(hashing_embed(pa.array(texts.tolist())), centroids)[0].astype(np.int64)


def test_balanced_pools_give_every_pool_the_same_group_mix():
    from curate.algorithms.pools import assign_pools_by_group, pool_edges_by_group

    rng = np.random.default_rng(2)
    groups = rng.integers(0, 4, 2000)
    scores = rng.random(2000) + groups  # group 3 would fill the best pool on its own
    pools = assign_pools_by_group(scores, groups, pool_edges_by_group(scores, groups, 4, True), True)
    table = np.array([np.bincount(pools[groups == g], minlength=4) for g in range(4)])
    assert np.all(table.max(axis=1) - table.min(axis=1) <= 1)  # each group split evenly over the pools
    assert (pools[groups == 3] == 0).mean() == pytest.approx(0.25, abs=0.01)


def test_pools_stage_balance_column(tmp_path):
    source = _labelled_corpus(tmp_path / "in.parquet")
    spec = parse_pipeline(
        {"stage": [{"kind": "pools", "score": "clean_score", "pools": 2, "balance_column": "label"}]}
    )
    run_pipeline(spec, source, tmp_path / "out", RunOptions())
    kept = read_parts(tmp_path / "out" / "kept").to_pandas()
    shares = kept.groupby("pool")["label"].value_counts(normalize=True).unstack()
    assert np.allclose(shares.loc[0].to_numpy(), shares.loc[1].to_numpy(), atol=0.01)  # same label mix in both pools
    with pytest.raises(UsageError):
        run_pipeline(
            parse_pipeline({"stage": [{"kind": "pools", "score": "clean_score", "balance_column": "nope"}]}),
            source,
            tmp_path / "bad",
            RunOptions(),
        )


@pytest.mark.parametrize("options", [{"balance": "labels"}, {"balance": "label"}, {"label_column": "label"}])
def test_prototypes_balance_options_are_checked_at_parse_time(options):
    with pytest.raises(UsageError):
        parse_pipeline({"stage": [{"kind": "prototypes", **options}]})


# ---------------------------------------------------------------------------------------
# Random baselines (pure): two laws, per-budget verdicts


TRUE = Law(0.9, tuple(Pool(str(i), 500.0, b, 4.0) for i, b in enumerate([-0.30, -0.22, -0.15, -0.08])))
FLAT = Law(
    0.9, tuple(Pool(str(i), 500.0, -0.1875, 4.0) for i in range(4))
)  # random pools: the size-weighted mean utility


def _rows(law: Law, seeds: int, noise: float, rng) -> list[dict]:
    rows = []
    for s in range(seeds):
        for j in range(4):
            for n in np.geomspace(100, 4000, 6):
                rows.append(
                    {
                        "pool": str(j),
                        "pool_size": 500,
                        "samples_seen": float(n),
                        "loss": float(law.loss(n, [j])[0]) * float(np.exp(rng.normal(0, noise))),
                        "seed": s,
                    }
                )
        for j in range(2, 5):
            for n in (1000.0, 2000.0):
                rows.append(
                    {
                        "pool": "+".join(str(i) for i in range(j)),
                        "pool_size": 500 * j,
                        "samples_seen": n,
                        "loss": float(law.loss(n, range(j))[0]) * float(np.exp(rng.normal(0, noise))),
                        "seed": s,
                    }
                )
    return rows


@pytest.mark.slow  # about 11 s of bootstrap runs
def test_a_better_pool_beats_random_beyond_the_uncertainty():
    rng = np.random.default_rng(3)
    comparison = compare_to_random(_rows(TRUE, 2, 0.01, rng), _rows(FLAT, 2, 0.01, rng), [300.0, 1000.0], "goyal2024")
    assert comparison["verdict"] == "beats_random"
    assert "bootstrap" in comparison["uncertainty"] and "per seed (2 seeds)" in comparison["uncertainty"]
    first = comparison["budgets"][0]
    assert first["pools"] == ["0"] and first["status"] == "beats_random"
    assert first["difference"] < -2 * first["difference_sd"] and first["predicted_loss"] < first["random_same_size"]
    lines = comparison_lines(comparison)
    assert lines[0].startswith("The chosen mix of the pools beats random data") and "train on pool 0" in lines[1]


@pytest.mark.slow  # 11 s
def test_pools_that_are_random_are_reported_no_better_than_random():
    rng = np.random.default_rng(4)
    comparison = compare_to_random(
        _rows(FLAT, 1, 0.02, rng), _rows(FLAT, 1, 0.02, rng), [300.0, 1000.0, 30000.0], "goyal2024"
    )
    assert comparison["verdict"] == "no_better_than_random"
    assert all(e["status"] != "beats_random" for e in comparison["budgets"])
    lines = comparison_lines(comparison)
    assert lines[0].startswith("No mix of the pools beats random data")
    assert all(("random" in line or "all the data" in line) for line in lines[1:])


def test_runs_table_matches_the_csv_reader(tmp_path):
    from curate.scaling.runs import read_runs, write_runs

    rows = _rows(TRUE, 1, 0.0, np.random.default_rng(0))
    write_runs(tmp_path / "runs.csv", rows)
    a, b = runs_table(rows), read_runs(tmp_path / "runs.csv")
    assert a.pool_names == b.pool_names and a.members == b.members
    assert np.allclose(a.loss, b.loss) and np.allclose(a.mix_size, b.mix_size)


def test_random_pool_runs_match_the_quality_runs_in_size_budget_and_seed():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 600)
    texts = [f"t{label} w{rng.integers(40)}" for label in labels]
    pools = np.where(rng.random(600) < 0.3, 1, 0)
    settings = ProxyRunSettings(
        epochs=(0.5, 2.0),
        mix_epochs=(1.0,),
        classes=3,
        seeds=2,
        proxy=ProxyConfig(num_buckets=1 << 12, lr=0.01, batch_size=32),
    )
    quality = run_proxy_trainings(texts, [str(v) for v in labels], pools, settings)
    random = run_proxy_trainings(texts, [str(v) for v in labels], pools, settings, random_pools=True)
    key = lambda r: (r["pool"], r["pool_size"], r["samples_seen"], r["seed"])  # noqa: E731
    assert [key(r) for r in quality] == [key(r) for r in random]
    assert [r["loss"] for r in quality] != [r["loss"] for r in random]  # other rows, so other results


# ---------------------------------------------------------------------------------------
# In the report and `curate evaluate`

REPORT = {
    "label_column": "label",
    "classes": 3,
    "epochs": [0.5, 1.0, 2.0, 4.0],
    "mix_epochs": [1.0],
    "budgets": [200.0, 2000.0],
}


@pytest.fixture(scope="module")
def baseline_out(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("baseline")
    source = _labelled_corpus(tmp_path / "in.parquet")
    spec = parse_pipeline({"stage": [{"kind": "pools", "score": "clean_score", "pools": 2}], "report": REPORT})
    run_pipeline(spec, source, tmp_path / "out", RunOptions())
    return tmp_path


def test_report_with_a_label_column_carries_the_random_baseline(baseline_out):
    tmp_path = baseline_out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    baseline = report["random_baseline"]
    assert baseline["verdict"] in ("beats_random", "no_better_than_random") and len(baseline["budgets"]) == 2
    assert report["verdict"] == baseline["verdict"]
    for entry in baseline["budgets"]:
        assert {
            "pools",
            "predicted_loss",
            "random_same_size",
            "all_data",
            "difference",
            "difference_sd",
            "status",
        } <= set(entry)
    first = report["recommendation"].splitlines()[0]
    assert (
        first.startswith("No mix")
        if baseline["verdict"] == "no_better_than_random"
        else first.startswith("The chosen mix")
    )
    assert "random_baseline" in report["plots"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Against random data" in page and "random, same size" in page
    random_runs = (tmp_path / "out" / "scaling" / "runs_random.csv").read_text().splitlines()
    assert len(random_runs) == len((tmp_path / "out" / "scaling" / "runs.csv").read_text().splitlines())


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None,
    reason="chromium not installed (apt-get install -y chromium) -- the browser render check needs it",
)
def test_random_baseline_report_renders_in_headless_chromium(baseline_out, tmp_path):
    page = (baseline_out / "out" / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.replace(
            "</body>",
            """<script>window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  const verdict = document.querySelector('ul.rec li') ? document.querySelector('ul.rec li').textContent : '';
  document.body.setAttribute('data-check', document.images.length + ':' + broken + ':' + verdict.slice(0, 12));
});</script></body>""",
        )
    )
    dom = rendered_dom(probe)
    check = re.search(r'data-check="(\d+):(\d+):([^"]*)"', dom)
    assert check, "the page did not load"
    images, broken, verdict = int(check.group(1)), int(check.group(2)), check.group(3)
    assert images >= 5 and broken == 0  # random_baseline, loss_vs_budget, mix_vs_budget, fit_per_pool, funnel, ...
    assert verdict in ("No mix of th", "The chosen m")


@pytest.mark.slow  # about 14 s: proxy runs from the CLI
def test_cli_evaluate_checks_a_user_score_against_random(tmp_path):
    source = _labelled_corpus(tmp_path / "in.parquet", rows=300)
    out = tmp_path / "out"
    small = {"classes": 3, "epochs": [0.5, 2.0], "mix_epochs": [], "budgets": [200.0, 2000.0]}
    run_pipeline(
        parse_pipeline({"stage": [{"kind": "pools", "score": "clean_score", "pools": 2}], "report": small}),
        source,
        out,
        RunOptions(),
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(out), "--label-column", "label", "--score", "nope", "-q"])
    assert exit_info.value.code == 2
    main(["evaluate", str(out), "--label-column", "label", "--score", "clean_score", "--seeds", "2", "-q"])
    report = json.loads((out / "report.json").read_text())
    (evaluation,) = report["evaluations"]
    assert evaluation["score"] == "clean_score" and evaluation["higher_is_better"] is True
    assert "one fit per seed (2 seeds)" in evaluation["comparison"]["uncertainty"]
    assert (out / "scaling" / "evaluate" / "clean_score" / "runs_random.csv").exists()
    assert report["random_baseline"]["verdict"] in (
        "beats_random",
        "no_better_than_random",
    )  # the run's own pools, too
    assert "Score clean_score against random data" in (out / "report.html").read_text()
    main(["report", str(out), "-q"])  # a rebuild keeps the evaluation
    assert json.loads((out / "report.json").read_text())["evaluations"][0]["score"] == "clean_score"


@pytest.mark.slow  # about 10 s: a loss-clusters run and its report
def test_report_after_loss_clusters_runs_the_seta_check(tmp_path):
    source = _labelled_corpus(tmp_path / "in.parquet", rows=500, score=False)
    stage = {"kind": "loss_clusters", "label_column": "label", "epochs": 4, "groups": 4, "proxy_epochs": 1, "folds": 2}
    run_pipeline(
        parse_pipeline({"stage": [stage], "report": {"seta_seeds": 2, "seta_rows": 400}}),
        source,
        tmp_path / "out",
        RunOptions(),
    )
    check = json.loads((tmp_path / "out" / "report.json").read_text())["seta_check"]
    methods = check["methods"]
    assert set(methods) == {"full", "seta", "random@seta"} and check["label_column"] == "label"
    assert methods["seta"]["visits"] == methods["random@seta"]["visits"] < methods["full"]["visits"]
    assert methods["full"]["visit_fraction"] == pytest.approx(1.0)
    assert check["verdict"] in ("beats_random", "no_better_than_random", "worse_than_random")
    assert len(check["schedule"]["plan"]) == 4
    assert "SeTa schedule against random data" in (tmp_path / "out" / "report.html").read_text()
