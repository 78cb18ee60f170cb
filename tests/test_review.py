"""`curate review` and `curate diff`: the page shows a known near-duplicate cluster with its kept
row, removed row and similarity, its search box finds a row by id (in headless chromium); diff
reports exactly the rows a second stage removed, and refuses outputs over different inputs."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from browser import rendered_dom
from conftest import cli, write_shards

from curate.commands.diff import diff_outputs
from curate.commands.review import write_review
from curate.io.parts import read_parts
from curate.pipeline import parse_pipeline, run_pipeline
from curate.report.review import build_review, pick, word_diff

WORDS = [f"word{i}" for i in range(4000)]


def _texts() -> list[str]:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=100)) for _ in range(40)]
    texts.append(texts[3].rsplit(" ", 1)[0] + " CHANGED")  # doc-000040: near copy of doc-000003
    texts.append(texts[5])  # doc-000041: exact copy of doc-000005
    texts.append(texts[7] + " APPENDED")  # doc-000042: near copy of doc-000007
    return texts


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("review")
    source = write_shards(tmp / "in", _texts(), shards=2)
    out = {}
    for name, stages in {"exact": [{"kind": "exact"}], "both": [{"kind": "exact"}, {"kind": "minhash"}]}.items():
        out[name] = tmp / name
        run_pipeline(parse_pipeline({"stage": stages}), source, out[name])
    out["source"] = source
    return out


def test_word_diff_marks_only_the_changed_words():
    kept, removed = word_diff("a b <c> d", "a b <c> e f")
    assert kept == 'a b &lt;c&gt; <mark class="del">d</mark>'
    assert removed == 'a b &lt;c&gt; <mark class="ins">e</mark> <mark class="ins">f</mark>'


def test_the_sample_is_deterministic_and_depends_on_the_seed():
    ids = [f"id{i}" for i in range(100)]
    assert pick(ids, 5, 0) == pick(list(reversed(ids)), 5, 0)
    assert pick(ids, 5, 0) != pick(ids, 5, 1)


def test_review_data_has_the_clusters_with_texts(outputs):
    data = build_review(outputs["both"], per_reason=10)
    assert {(c["stage"], c["reason"], c["rows"]) for c in data["counts"]} == {
        ("exact", "exact_duplicate", 1),
        ("minhash", "near_duplicate", 2),
    }
    near = next(s for s in data["sections"] if s.stage == "minhash")
    by_kept = {c["kept"].id: c for c in near.clusters}
    cluster = by_kept["doc-000003"]
    assert [r.id for r in cluster["removed"]] == ["doc-000040"]
    assert cluster["removed"][0].score > 0.9 and cluster["kept"].text == _texts()[3]
    assert '<mark class="ins">CHANGED</mark>' in cluster["removed"][0].html


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


PROBE = """<script>window.addEventListener('load', () => {
  const search = document.getElementById('search');
  search.value = '%s';
  search.dispatchEvent(new Event('input'));
  const visible = [...document.querySelectorAll('.item')].filter(e => e.offsetParent !== null);
  document.body.setAttribute('data-visible', visible.length);
  document.body.setAttribute('data-shown', visible.map(e => e.innerText).join(' || '));
});</script></body>"""


@pytest.mark.skipif(
    _chromium() is None,
    reason="chromium not installed (apt-get install -y chromium) -- the browser render check needs it",
)
def test_review_page_in_headless_chromium_shows_the_cluster_and_finds_a_row_by_id(outputs, tmp_path):
    page = write_review(outputs["both"], tmp_path / "review.html")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE % "doc-000040"))
    dom = rendered_dom(probe)
    visible = re.search(r'data-visible="(\d+)"', dom)
    assert visible, "the page did not load"
    assert visible.group(1) == "1"  # the search box kept only the cluster holding doc-000040
    shown = html.unescape(re.search(r'data-shown="([^"]*)"', dom).group(1))
    assert "kept doc-000003" in shown and "removed doc-000040" in shown
    assert re.search(r"Jaccard ≈ 0\.9\d*", shown), shown[:500]
    assert "CHANGED" in shown and "minhash: near_duplicate" in shown


def test_review_cli_writes_into_the_output_and_is_the_same_twice(outputs, capsys):
    code, err = cli(["review", str(outputs["both"])], capsys)
    assert code == 0, err
    first = (outputs["both"] / "review.html").read_bytes()
    cli(["review", str(outputs["both"])], capsys)
    assert (outputs["both"] / "review.html").read_bytes() == first
    assert b"doc-000041" in first and len(first) < 200_000


def test_diff_of_exact_and_exact_plus_minhash_is_exactly_what_minhash_removed(outputs, tmp_path, capsys):
    result = diff_outputs(
        outputs["exact"], outputs["both"], json_path=tmp_path / "d.json", html_path=tmp_path / "d.html"
    )
    removed = read_parts(outputs["both"] / "removed").to_pylist()
    minhash = sorted(r["id"] for r in removed if r["stage"] == "minhash")
    assert minhash == ["doc-000040", "doc-000042"]
    assert result["differing_rows"] == len(minhash)
    assert result["pairs"] == [{"a": "kept", "b": "minhash: near_duplicate", "rows": 2}]
    assert sorted(result["sample"]["kept -> minhash: near_duplicate"]) == minhash
    assert json.loads((tmp_path / "d.json").read_text())["removed_in_b"] == {"minhash: near_duplicate": 2}
    page = (tmp_path / "d.html").read_text()
    assert "doc-000040" in page and "B keeps instead" in page
    # the other way round: the same rows, sides swapped
    back = diff_outputs(outputs["both"], outputs["exact"])
    assert back["pairs"] == [{"a": "minhash: near_duplicate", "b": "kept", "rows": 2}]


def test_diff_refuses_outputs_over_different_inputs(outputs, tmp_path, capsys):
    other = write_shards(tmp_path / "other", _texts()[:-1], shards=2)
    run_pipeline(parse_pipeline({"stage": [{"kind": "exact"}]}), other, tmp_path / "other-out")
    code, err = cli(["diff", str(outputs["exact"]), str(tmp_path / "other-out")], capsys)
    assert code == 2 and "different inputs" in err and "input file 2" in err and len(err.strip().splitlines()) == 1


def test_review_of_pruning_and_pools(tmp_path):
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS[:300], size=20)) for _ in range(300)]
    source = write_shards(tmp_path / "in", texts, shards=2)
    stages = [
        {"kind": "embed", "model": "hashing"},
        {"kind": "prototypes", "clusters": 4, "keep": "hard", "fraction": 0.8},
        {"kind": "pools", "score": "proto_distance", "pools": 3},
    ]
    run_pipeline(parse_pipeline({"stage": stages}), source, tmp_path / "out")
    data = build_review(tmp_path / "out", per_reason=5)
    proto = next(s for s in data["sections"] if s.stage == "prototypes")
    assert proto.mode == "scores" and proto.histogram and "proto_distance" in proto.note
    assert [e["label"].split(",")[0] for e in proto.examples] == ["removed", "kept"]
    assert all(len(e["rows"]) == 5 and all(r.text for r in e["rows"]) for e in proto.examples)
    pools = next(s for s in data["sections"] if s.mode == "pools")
    assert [e["label"].split(":")[0] for e in pools.examples] == ["pool 0", "pool 1", "pool 2"]
    kept = pl.read_parquet(list((tmp_path / "out" / "kept").glob("*.parquet")))
    assert sum(int(e["label"].split(": ")[1].split(" ")[0].replace(",", "")) for e in pools.examples) == kept.height


def test_review_and_diff_work_on_an_object_store_output(outputs, tmp_path, capsys, s3, aws_env):
    from conftest import BUCKET

    _, fs = s3
    url = f"s3://{BUCKET}/{tmp_path.name}/out"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[[stage]]\nkind = "exact"\n[[stage]]\nkind = "minhash"\n')
    code, err = cli(["run", str(pipeline), "-i", str(outputs["source"]), "-o", url, "-q"], capsys)
    assert code == 0, err
    code, err = cli(["review", url], capsys)
    assert code == 0, err
    fs.invalidate_cache()
    page = fs.cat_file(f"{url[len('s3://') :]}/review.html").decode()
    assert "doc-000040" in page and "Jaccard" in page
    local = (outputs["both"] / "review.html").read_text() if (outputs["both"] / "review.html").exists() else None
    if local is not None:  # the same page as the local output's but for the output's name
        assert page.replace(url, "X").count("doc-0000") == local.replace(str(outputs["both"]), "X").count("doc-0000")
    code, err = cli(["diff", str(outputs["exact"]), url, "--json", str(tmp_path / "d.json")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "d.json").read_text())["differing_rows"] == 2
