"""`curate diff A B`: the rows whose fate differs between two outputs of the same input.

A row's fate is "kept" or "STAGE: reason" (from the ledger). Only rows whose fate differs are
counted, by (fate in A, fate in B) and by (stage, reason) on each side. Outputs over different
inputs (other files, other contents, other id or text columns) are refused, naming the difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import UsageError
from curate.io.atomic import atomic_write_text
from curate.output.read import load_finished_manifest
from curate.report.review import Shown, fates, input_set, input_texts, pick, read_ledger
from curate.report.review_page import render_review

KEPT = "kept"


def check_same_input(a: dict, b: dict, names: tuple[str, str]) -> None:
    """Exit 2 naming the first difference between the two outputs' inputs."""
    fix = "diff two outputs of the same input (same files, same contents)"
    ca, cb = a["config"]["input"], b["config"]["input"]
    for key in ("id_column", "text_column"):
        if ca.get(key) != cb.get(key):
            raise UsageError(
                f"different inputs: {key} is {ca.get(key)!r} in {names[0]} and {cb.get(key)!r} in {names[1]}", fix=fix
            )
    fa, fb = a["input"]["files"], b["input"]["files"]
    if len(fa) != len(fb):
        raise UsageError(f"different inputs: {len(fa)} input files in {names[0]}, {len(fb)} in {names[1]}", fix=fix)
    for k, (x, y) in enumerate(zip(fa, fb)):
        for key in ("rows", "fingerprint"):
            if x.get(key) != y.get(key):
                raise UsageError(
                    f"different inputs: input file {k + 1} ({x['path']} in {names[0]}, {y['path']} in {names[1]}) "
                    f"has {key} {x.get(key)} vs {y.get(key)}",
                    fix=fix,
                )


def _fate_frame(ledger: pl.DataFrame) -> pl.DataFrame:
    return ledger.select(
        "id", pl.concat_str([pl.col("stage"), pl.col("reason")], separator=": ").alias("fate"), "duplicate_of"
    )


def differing(ledger_a: pl.DataFrame, ledger_b: pl.DataFrame) -> pl.DataFrame:
    """id, fate_a, fate_b, duplicate_of_a, duplicate_of_b of every row whose fate differs (a row
    in neither ledger is kept by both, so the ledgers alone decide)."""
    a = _fate_frame(ledger_a).rename({"fate": "fate_a", "duplicate_of": "duplicate_of_a"})
    b = _fate_frame(ledger_b).rename({"fate": "fate_b", "duplicate_of": "duplicate_of_b"})
    both = a.join(b, on="id", how="full", coalesce=True).with_columns(
        pl.col("fate_a").fill_null(KEPT), pl.col("fate_b").fill_null(KEPT)
    )
    return both.filter(pl.col("fate_a") != pl.col("fate_b")).sort("id")


def diff_outputs(
    a: Path,
    b: Path,
    *,
    json_path: Path | None = None,
    html_path: Path | None = None,
    per_reason: int = 10,
    seed: int = 0,
    storage_options: tuple = (),
    names: tuple[str, str] | None = None,
) -> dict[str, Any]:
    names = names or (str(a), str(b))
    manifest_a, manifest_b = load_finished_manifest(a), load_finished_manifest(b)
    check_same_input(manifest_a, manifest_b, names)
    ledger_a, ledger_b = read_ledger(a), read_ledger(b)
    rows = differing(ledger_a, ledger_b)
    pairs = (
        rows.group_by(["fate_a", "fate_b"]).len().sort(["len", "fate_a", "fate_b"], descending=[True, False, False])
    )
    side = lambda col: {f: int(n) for f, n in rows.group_by(col).len().sort(col).rows() if f != KEPT}  # noqa: E731
    result: dict[str, Any] = {
        "a": names[0],
        "b": names[1],
        "input_rows": int(manifest_a["input"]["rows"]),
        "differing_rows": rows.height,
        "pairs": [{"a": fa, "b": fb, "rows": int(n)} for fa, fb, n in pairs.rows()],
        "removed_in_a": side("fate_a"),
        "removed_in_b": side("fate_b"),
        "sample": {},
    }
    sections = []
    for pair in result["pairs"]:
        chosen = rows.filter((pl.col("fate_a") == pair["a"]) & (pl.col("fate_b") == pair["b"]))
        ids = pick(chosen.get_column("id").to_list(), per_reason, seed)
        result["sample"][f"{pair['a']} -> {pair['b']}"] = ids
        sections.append((pair, chosen.filter(pl.col("id").is_in(ids)).sort("id")))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    if html_path is not None:
        atomic_write_text(html_path, _page(result, sections, manifest_a, ledger_a, ledger_b, storage_options))
    return result


def _page(
    result: dict, sections: list, manifest: dict, ledger_a: pl.DataFrame, ledger_b: pl.DataFrame, options: tuple
) -> str:
    """The sample in the review page's format: each differing row with its fate on each side and,
    where a side removed it as a duplicate, the row it duplicates there beside it."""
    from curate.report.review import Section

    page_sections, shown = [], []
    for pair, chosen in sections:
        sec = Section(
            f"A {pair['a']}",
            "diff",
            f"B {pair['b']}",
            "rows",
            pair["rows"],
            {},
            "each row with its fate in A and in B",
        )
        rows = []
        for rid, fate_a, dup_a, fate_b, dup_b in chosen.select(
            "id", "fate_a", "duplicate_of_a", "fate_b", "duplicate_of_b"
        ).rows():
            row = Shown(rid, fate=f"A: {fate_a} · B: {fate_b}")
            dup, label = (dup_b, "B keeps instead") if dup_b is not None else (dup_a, "A keeps instead")
            if dup is not None:
                row.other, row.other_label = Shown(dup), label
                shown.append(row.other)
            rows.append(row)
            shown.append(row)
        sec.examples.append({"label": f"{pair['rows']:,} rows: {pair['a']} in A, {pair['b']} in B", "rows": rows})
        page_sections.append(sec)
    wanted = {s.id for s in shown}
    texts = input_texts(input_set(manifest, options), wanted)
    now_a, now_b = fates(ledger_a, wanted), fates(ledger_b, wanted)
    for s in shown:
        s.text = texts.get(s.id)
    for sec in page_sections:
        for ex in sec.examples:
            for r in ex["rows"]:
                if r.other is not None:
                    r.other.fate = f"A: {now_a.get(r.other.id, KEPT)} · B: {now_b.get(r.other.id, KEPT)}"
    data = {
        "output": f"{result['a']} vs {result['b']}",
        "input_rows": result["input_rows"],
        "kept_rows": 0,
        "removed_rows": 0,
        "note": f"{result['differing_rows']:,} rows have a different fate in A ({result['a']}) and B ({result['b']}).",
        "counts": [
            {
                "stage": f"A {p['a']}",
                "reason": f"B {p['b']}",
                "rows": p["rows"],
                "share": p["rows"] / max(result["input_rows"], 1),
            }
            for p in result["pairs"]
        ],
        "stages": [],
        "sections": page_sections,
        "seed": 0,
        "per_reason": 0,
    }
    return render_review(data, title="curate diff")
