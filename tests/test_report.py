"""The report: files, embedded images that decode, the pipeline hook, and a real browser render."""

import base64
import io
import json
import re
import shutil
import subprocess

import matplotlib.image as mpimg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import headless_flags, rendered_dom

from curate.cli import main
from curate.errors import UsageError
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.report import build_law_report
from curate.scaling.allocate import allocate
from curate.scaling.law import Law, Pool, log_loss_mix
from curate.scaling.proxy_runs import ProxyRunSettings, run_proxy_trainings
from curate.scaling.runs import write_runs
from curate.training.proxy import ProxyConfig

LAW = Law(
    3.0,
    (
        Pool("0", 1000, -0.2, 2.0),
        Pool("1", 1000, -0.18, 3.0),
        Pool("2", 2000, -0.16, 4.0),
        Pool("3", 4000, -0.14, 5.0),
    ),
)


def embedded_images(html_text):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html_text)]


@pytest.fixture(scope="module")
def law_report(tmp_path_factory):
    """One plan-only report, shared: building plots is the slow part."""
    directory = tmp_path_factory.mktemp("law_report")
    return build_law_report(LAW, [1e3, 1e4, 1e5], directory)


def test_law_report_files_and_images_decode(law_report):
    tmp_path = law_report.parent
    report = json.loads((tmp_path / "report.json").read_text())
    images = embedded_images(law_report.read_text())
    assert len(images) == 2 and set(report["plots"]) == {"loss_vs_budget", "mix_vs_budget"}
    for data in images:
        assert mpimg.imread(io.BytesIO(data), format="png").shape[0] > 100
    for rel in report["plots"].values():
        assert (tmp_path / rel).stat().st_size > 1000


def test_recommendation_states_the_chosen_mix(law_report):
    report = json.loads((law_report.parent / "report.json").read_text())
    chosen = allocate(LAW, [1e5])[0]
    expected = f"for budget 1e+05 samples, train on pools 0-{chosen.pools[-1]}"
    assert expected in report["recommendation"].lower()
    assert f"{chosen.epochs:.3g} epochs" in report["recommendation"]


def _corpus(path, rows=400, with_pool=True):
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "eps", "zeta"])
    texts = [" ".join(rng.choice(words, 4)) + f" n{i}" for i in range(rows)]
    texts[5] = texts[4]  # one exact duplicate
    columns = {"id": [f"r{i}" for i in range(rows)], "text": texts, "label": [t.split()[0] for t in texts]}
    if with_pool:
        columns["pool"] = list(rng.integers(0, 3, rows))
    pq.write_table(pa.table(columns), path)
    return path


def _runs_csv(path):
    rows = []
    for i, pool in enumerate(LAW.pools[:3]):
        for n in np.geomspace(0.1 * pool.size, 20 * pool.size, 8):
            rows.append(
                {
                    "pool": str(i),
                    "pool_size": int(pool.size),
                    "samples_seen": n,
                    "loss": float(np.exp(log_loss_mix(n, [pool.size], [pool.b], [pool.tau], LAW.a))[0]),
                }
            )
    write_runs(path, rows)
    return path


def test_pipeline_run_ends_with_report(tmp_path):
    source = _corpus(tmp_path / "in.parquet")
    spec = parse_pipeline(
        {
            "stage": [{"kind": "exact"}],
            "report": {"runs": str(_runs_csv(tmp_path / "runs.csv")), "budgets": [1e3, 1e5]},
        }
    )
    run_pipeline(spec, source, tmp_path / "out", RunOptions())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["name"] for s in report["pipeline"]["stages"]] == ["input", "exact"]
    assert report["pipeline"]["stages"][1]["rows_removed"] == 1
    assert sum(report["pipeline"]["pools"]["counts"].values()) == 399
    assert {"funnel", "loss_vs_budget", "mix_vs_budget", "fit_per_pool"} <= set(report["plots"])
    assert len(report["plan"]["mixes"]) == 2
    assert (tmp_path / "out" / "scaling" / "law.json").exists()


def test_report_without_pools_or_law_says_what_to_add(tmp_path):
    source = _corpus(tmp_path / "in.parquet", with_pool=False)
    run_pipeline(parse_pipeline({"stage": [{"kind": "exact"}], "report": {}}), source, tmp_path / "out", RunOptions())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["law"] is None and report["pipeline"]["pools"] is None
    assert any("label_column" in n for n in report["notes"])


def test_cli_report_rebuilds_with_another_law(tmp_path):
    source = _corpus(tmp_path / "in.parquet")
    run_pipeline(parse_pipeline({"stage": [{"kind": "exact"}]}), source, tmp_path / "out", RunOptions())
    from curate.scaling import save_law

    save_law(tmp_path / "law.json", LAW)
    main(["report", str(tmp_path / "out"), "--law", str(tmp_path / "law.json"), "--budgets", "1e3:1e6:4", "-q"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["plan"]["mixes"]) == 4


@pytest.mark.parametrize("table", [{"budget": [1e5]}, {"budgets": [-1]}, {"metric": "f1"}, {"pools": "four"}])
def test_bad_report_table_fails_at_parse_time(table):
    with pytest.raises(UsageError):
        parse_pipeline({"stage": [{"kind": "exact"}], "report": table})


def test_proxy_runs_rows_per_pool_and_prefix():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 600)
    vocab = [["red", "apple", "cherry"], ["blue", "sky", "sea"], ["green", "leaf", "grass"]]
    texts = [" ".join(rng.choice(vocab[label], 3)) + f" w{rng.integers(50)}" for label in labels]
    pools = rng.integers(0, 2, 600)
    rows = run_proxy_trainings(
        texts,
        [str(label) for label in labels],
        pools,
        ProxyRunSettings(
            epochs=(0.5, 2.0),
            mix_epochs=(1.0,),
            classes=3,
            metric="loss",
            proxy=ProxyConfig(num_buckets=1 << 12, lr=0.01, batch_size=32),
        ),
    )
    assert [r["pool"] for r in rows] == ["0", "0", "1", "1", "0+1"]
    assert all(r["samples_seen"] == round(r["epochs"] * r["pool_size"]) for r in rows)
    assert rows[1]["loss"] < rows[0]["loss"] < np.log(3) + 0.1  # it learns


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECK_SCRIPT = """<script>window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.setAttribute('data-images', document.images.length + ':' + broken);
});</script></body>"""


@pytest.mark.skipif(
    _chromium() is None,
    reason="chromium not installed (apt-get install -y chromium) -- the browser render check needs it",
)
def test_report_renders_in_headless_chromium(law_report, tmp_path):
    html_path = law_report
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", CHECK_SCRIPT))
    dom = rendered_dom(probe)
    counts = re.search(r'data-images="(\d+):(\d+)"', dom)
    assert counts, "the page did not load"
    assert int(counts.group(1)) == 2 and int(counts.group(2)) == 0
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), *headless_flags(), f"--screenshot={shot}", "--window-size=1280,2000", html_path.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert mpimg.imread(str(shot)).shape[:2] == (2000, 1280)


@pytest.mark.slow
def test_demo_ends_with_a_budget_plan(tmp_path):
    """`curate demo`: exact dedup, fallback pools from proxy loss, proxy runs, fit, plan (~1 min)."""
    main(["demo", "-o", str(tmp_path / "demo"), "-q"])
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["law"]["model"] == "goyal2024" and len(report["law"]["pools"]) == 4
    assert len(report["plan"]["mixes"]) == 6 and report["recommendation"].startswith(
        ("No mix of the pools beats random", "The chosen mix of the pools beats random")
    )
    assert len(report["random_baseline"]["budgets"]) == 6  # the random baseline, per planned budget
    assert {"funnel", "pool_scores", "fit_per_pool", "loss_vs_budget", "mix_vs_budget", "random_baseline"} <= set(
        report["plots"]
    )
    runs = (tmp_path / "demo" / "scaling" / "runs.csv").read_text().splitlines()
    assert runs[0].startswith("pool,pool_size,samples_seen,loss") and len(runs) == 1 + 4 * 7 + 3 * 3
    assert len((tmp_path / "demo" / "scaling" / "runs_random.csv").read_text().splitlines()) == len(runs)
