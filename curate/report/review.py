"""What `curate review` and `curate diff` show, gathered from a finished output.

Reads only what the page shows: the ledger (id, stage, reason, duplicate_of, score), then the
sampled rows by id: their texts in one pass over the input's id and text columns, and score or
pool columns from `kept/`. Samples are deterministic: a row (or a cluster) is picked by an
xxh64 hash of the seed and its id, so the same output and seed give the same page.
"""

from __future__ import annotations

import difflib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from curate.io.inputs import ColumnSpec, InputFile, InputSet
from curate.io.parts import list_parts
from curate.output.ledger import ids_as_strings
from curate.output.local import schema_from_record
from curate.output.read import load_finished_manifest

DEDUP_KINDS = ("exact", "minhash", "semdedup")
SCORE_COLUMNS = {"prototypes": "proto_distance", "loss_clusters": "loss"}
SIMILARITY = {"exact": "identical text", "minhash": "Jaccard estimate", "semdedup": "cosine similarity"}
SIM_LABEL = {"minhash": "Jaccard ≈", "semdedup": "cosine"}
MAX_MEMBERS = 4  # removed rows shown per cluster
MAX_CHARS = 4000  # text shown per row (the rest is cut, the length said)
_WORD = re.compile(r"\S+|\s+")


def sample_rank(ids: list[str], seed: int) -> np.ndarray:
    """A deterministic pseudo-random rank per id (lower is picked first)."""
    prefix = f"{seed}:".encode()
    return np.array([xxhash.xxh64_intdigest(prefix + i.encode()) for i in ids], dtype=np.uint64)


def pick(ids: list[str], n: int, seed: int) -> list[str]:
    """The n ids of lowest rank, in rank order."""
    if len(ids) <= n:
        order = np.argsort(sample_rank(ids, seed), kind="stable")
    else:
        order = np.argsort(sample_rank(ids, seed), kind="stable")[:n]
    return [ids[k] for k in order]


def read_ledger(out: Path) -> pl.DataFrame:
    parts = list_parts(out / "removed")
    if not parts:
        return pl.DataFrame(
            schema={
                "id": pl.String,
                "stage": pl.String,
                "reason": pl.String,
                "duplicate_of": pl.String,
                "score": pl.Float64,
            }
        )
    return pl.concat([pl.read_parquet(p) for p in parts], how="vertical_relaxed")


def read_kept_columns(out: Path, columns: list[str], id_column: str) -> pl.DataFrame | None:
    """id (as string) and `columns` of kept/, or None when kept/ lacks one of them."""
    parts = list_parts(out / "kept")
    if not parts:
        return None
    import pyarrow.parquet as pq

    names = pq.read_schema(parts[0]).names
    if id_column not in names or any(c not in names for c in columns):
        return None
    frames = [pl.read_parquet(p, columns=[id_column, *columns]) for p in parts]
    frame = pl.concat(frames, how="vertical_relaxed")
    return frame.with_columns(pl.col(id_column).cast(pl.String).alias("id"))


def input_set(manifest: dict, storage_options: tuple = ()) -> InputSet:
    config = manifest["config"]["input"]
    columns = ColumnSpec(text=config["text_column"], id=config["id_column"], storage_options=storage_options)
    files = [InputFile(**f) for f in manifest["input"]["files"]]
    return InputSet(files, schema_from_record(manifest["input"]["schema"]), columns)


def input_texts(inputs: InputSet, wanted: set[str]) -> dict[str, str | None]:
    """id -> text of the wanted ids, in one pass over the input's id and text columns."""
    found: dict[str, str | None] = {}
    if not wanted:
        return found
    value_set = pa.array(sorted(wanted), pa.string())
    import pyarrow.compute as pc

    for batch in inputs.batches(columns=[inputs.columns.id, inputs.columns.text]):
        ids = ids_as_strings(batch.column(inputs.columns.id))
        hit = pc.is_in(ids, value_set=value_set)
        if pc.any(hit).as_py():
            texts = batch.column(inputs.columns.text).filter(hit).to_pylist()
            found.update(zip(ids.filter(hit).to_pylist(), texts))
            if len(found) == len(wanted):
                break
    return found


def earlier_texts(manifest: dict, wanted: set[str]) -> dict[str, str | None]:
    """Texts of rows of earlier outputs (--against) named by duplicate_of, where those outputs
    are local directories still present; others are simply not shown."""
    found: dict[str, str | None] = {}
    for path in manifest.get("config", {}).get("against", []) or []:
        earlier = Path(str(path))
        if not wanted - set(found) or not (earlier / "manifest.json").exists():
            continue
        try:
            sub = load_finished_manifest(earlier)
            found.update(input_texts(input_set(sub), wanted - set(found)))
        except Exception:  # an earlier output that moved or broke only loses its texts here
            continue
    return found


def word_diff(kept: str, removed: str, limit: int = 2000) -> tuple[str, str]:
    """HTML of both texts with the words only one of them has marked (escaped here)."""
    a, b = _WORD.findall(kept[:MAX_CHARS]), _WORD.findall(removed[:MAX_CHARS])
    aw = [t for t in a if not t.isspace()][:limit]
    bw = [t for t in b if not t.isspace()][:limit]
    matcher = difflib.SequenceMatcher(None, aw, bw, autojunk=False)
    only_a, only_b = set(), set()
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            only_a.update(range(i1, i2))
            only_b.update(range(j1, j2))
    return _marked(a, only_a, "del"), _marked(b, only_b, "ins")


def _marked(tokens: list[str], marked: set[int], css: str) -> str:
    out, word = [], 0
    for t in tokens:
        if t.isspace():
            out.append(html.escape(t))
            continue
        out.append(f'<mark class="{css}">{html.escape(t)}</mark>' if word in marked else html.escape(t))
        word += 1
    return "".join(out)


@dataclass
class Shown:
    """One row on the page."""

    id: str
    text: str | None = None
    fate: str = "kept"  # "kept" or "STAGE: reason"
    score: float | None = None
    html: str | None = None  # the text with differences marked (near duplicates)
    other: Shown | None = None  # a row shown beside it (diff: the row it duplicates on one side)
    other_label: str = ""

    def to_json(self) -> dict:
        text = self.text
        return {
            "id": self.id,
            "text": None if text is None else text[:MAX_CHARS],
            "chars": None if text is None else len(text),
            "fate": self.fate,
            "score": self.score,
        }


@dataclass
class Section:
    """A stage's part of the page: `mode` is clusters, scores, pools or rows."""

    stage: str
    kind: str
    reason: str
    mode: str
    rows: int
    settings: dict
    note: str = ""
    clusters: list[dict] = field(default_factory=list)  # {"kept": Shown, "removed": [Shown], "more": int}
    examples: list[dict] = field(default_factory=list)  # {"label": str, "rows": [Shown]}
    histogram: dict | None = None


def stage_settings(manifest: dict) -> dict[str, dict]:
    return {s["name"]: s.get("options", {}) for s in manifest.get("config", {}).get("stages", [])}


def fates(ledger: pl.DataFrame, ids: set[str]) -> dict[str, str]:
    """id -> "STAGE: reason" for the removed ones among `ids` (kept otherwise)."""
    if not ids:
        return {}
    hit = ledger.filter(pl.col("id").is_in(sorted(ids))).select("id", "stage", "reason")
    return {i: f"{s}: {r}" for i, s, r in hit.iter_rows()}


def _histogram(removed: np.ndarray, kept: np.ndarray, bins: int = 30) -> dict | None:
    both = np.concatenate([removed, kept])
    both = both[np.isfinite(both)]
    if len(both) == 0:
        return None
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        hi = lo + 1e-9
    edges = np.linspace(lo, hi, bins + 1)
    r, _ = np.histogram(removed[np.isfinite(removed)], edges)
    k, _ = np.histogram(kept[np.isfinite(kept)], edges)
    return {"edges": edges.tolist(), "removed": r.tolist(), "kept": k.tolist()}


def spread(frame: pl.DataFrame, n: int, column: str = "score") -> pl.DataFrame:
    """n rows evenly spaced over the sorted `column` (lowest and highest included)."""
    frame = frame.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan()).sort([column, "id"])
    if frame.height <= n:
        return frame
    at = np.unique(np.linspace(0, frame.height - 1, n).round().astype(np.int64))
    return frame[at.tolist()]


def build_review(out: Path, per_reason: int = 10, seed: int = 0, storage_options: tuple = ()) -> dict[str, Any]:
    """Everything the review page shows, as plain data (texts filled in at the end)."""
    manifest = load_finished_manifest(out)
    ledger = read_ledger(out)
    settings = stage_settings(manifest)
    id_column = manifest["config"]["input"]["id_column"]
    input_rows = int(manifest["input"]["rows"])
    stages = [s for s in manifest["stages"] if s["kind"] != "input" or s.get("rows_removed")]
    counts = ledger.group_by(["stage", "reason"]).len().sort(["stage", "reason"]).rows()
    order = {s["name"]: k for k, s in enumerate(manifest["stages"])}
    counts.sort(key=lambda r: (order.get(r[0], 99), r[1]))
    sections: list[Section] = []
    for entry in stages:
        name, kind = entry["name"], entry["kind"]
        mine = ledger.filter(pl.col("stage") == name)
        for reason in sorted(mine.get_column("reason").unique().to_list()):
            rows = mine.filter(pl.col("reason") == reason)
            has_dup = rows.get_column("duplicate_of").null_count() < rows.height
            if has_dup:
                sections.append(_clusters(name, kind, reason, rows, settings.get(name, {}), per_reason, seed))
            elif kind in SCORE_COLUMNS:
                sections.append(
                    _scores(out, name, kind, reason, rows, settings.get(name, {}), entry, id_column, per_reason)
                )
            else:
                picked = rows.filter(pl.col("id").is_in(pick(rows.get_column("id").to_list(), per_reason, seed)))
                sec = Section(name, kind, reason, "rows", rows.height, settings.get(name, {}))
                sec.examples.append(
                    {"label": "removed", "rows": [Shown(i, score=s) for i, s in picked.select("id", "score").rows()]}
                )
                sections.append(sec)
        if kind == "pools":
            sec = _pools(out, name, settings.get(name, {}), id_column, per_reason, seed)
            if sec is not None:
                sections.append(sec)
    _fill_texts(manifest, ledger, sections, storage_options)
    return {
        "output": str(out),
        "input_rows": input_rows,
        "kept_rows": int(manifest.get("totals", {}).get("kept_rows", input_rows - ledger.height)),
        "removed_rows": ledger.height,
        "counts": [
            {"stage": s, "reason": r, "rows": int(n), "share": n / input_rows if input_rows else 0.0}
            for s, r, n in counts
        ],
        "stages": [
            {
                "name": s["name"],
                "kind": s["kind"],
                "rows_in": s.get("rows_in", 0),
                "rows_out": s.get("rows_out", 0),
                "settings": settings.get(s["name"], {}),
            }
            for s in manifest["stages"]
            if s["kind"] != "input"
        ],
        "sections": sections,
        "seed": seed,
        "per_reason": per_reason,
    }


def _clusters(name: str, kind: str, reason: str, rows: pl.DataFrame, settings: dict, n: int, seed: int) -> Section:
    earlier = reason.endswith("_of_earlier")
    sim = SIMILARITY.get(kind, "score")
    note = "each kept row beside the rows it replaced" + ("" if kind == "exact" else f", with the {sim}")
    if earlier:
        note = "rows matching a row of an earlier output (--against), which stays kept there; " + note
    if kind == "minhash":
        note += " of the removed row's strongest verified link in its group"
    sec = Section(name, kind, reason, "clusters", rows.height, settings, note)
    reps = rows.get_column("duplicate_of").drop_nulls().unique().sort().to_list()
    for rep in pick(reps, n, seed):
        members = rows.filter(pl.col("duplicate_of") == rep)
        ids = members.get_column("id").to_list()
        shown = members.filter(pl.col("id").is_in(pick(ids, MAX_MEMBERS, seed))).sort("id")
        sec.clusters.append(
            {
                "kept": Shown(rep, fate="earlier output" if earlier else "kept"),
                "removed": [
                    Shown(i, fate=f"{name}: {reason}", score=s) for i, s in shown.select("id", "score").rows()
                ],
                "more": len(ids) - shown.height,
                "earlier": earlier,
            }
        )
    return sec


def _scores(
    out: Path,
    name: str,
    kind: str,
    reason: str,
    rows: pl.DataFrame,
    settings: dict,
    entry: dict,
    id_column: str,
    n: int,
) -> Section:
    column = SCORE_COLUMNS[kind]
    kept = read_kept_columns(out, [column], id_column)
    removed_scores = rows.get_column("score").cast(pl.Float64).to_numpy()
    kept_frame = None if kept is None else kept.select("id", pl.col(column).cast(pl.Float64).alias("score"))
    kept_scores = np.empty(0) if kept_frame is None else kept_frame.get_column("score").to_numpy()
    sec = Section(name, kind, reason, "scores", rows.height, settings)
    finite_r = removed_scores[np.isfinite(removed_scores)]
    finite_k = kept_scores[np.isfinite(kept_scores)]
    if len(finite_r) and len(finite_k):
        low_removed = finite_r.mean() < finite_k.mean()
        edge_r = finite_r.max() if low_removed else finite_r.min()
        edge_k = finite_k.min() if low_removed else finite_k.max()
        clean = edge_r <= edge_k if low_removed else edge_r >= edge_k
        side = "below" if low_removed else "above"
        sec.note = (
            f"{column}: removed {side} the cut at {float(edge_r):.4g}"
            if clean
            else f"{column}: the cut is per group (balance = {settings.get('balance', '?')}): removed up to "
            f"{float(edge_r):.4g}, kept from {float(edge_k):.4g} ({'lower' if low_removed else 'higher'} values removed)"
        )
        sec.histogram = _histogram(finite_r, finite_k)
    sec.examples.append(
        {
            "label": "removed, across the score range",
            "rows": [
                Shown(i, fate=f"{name}: {reason}", score=s) for i, s in spread(rows, n).select("id", "score").rows()
            ],
        }
    )
    if kept_frame is not None:
        sec.examples.append(
            {
                "label": "kept, across the score range",
                "rows": [Shown(i, score=s) for i, s in spread(kept_frame, n).rows()],
            }
        )
    return sec


def _pools(out: Path, name: str, settings: dict, id_column: str, n: int, seed: int) -> Section | None:
    score = settings.get("score") or ""
    frame = read_kept_columns(out, ["pool", *([score] if score else [])], id_column)
    if frame is None:
        return None
    sec = Section(
        name, "pools", "pool", "pools", frame.height, settings, f"examples from each pool, scored by {score}"
    )
    for pool in sorted(frame.get_column("pool").unique().drop_nulls().to_list()):
        members = frame.filter(pl.col("pool") == pool)
        values = members.get_column(score).cast(pl.Float64) if score else None
        label = f"pool {pool}: {members.height:,} rows"
        if values is not None and values.drop_nulls().len():
            label += f", {score} {values.min():.4g} to {values.max():.4g}"
        chosen = pick(members.get_column("id").to_list(), n, seed)
        by_id = dict(members.select("id", score).rows()) if score else {}
        sec.examples.append({"label": label, "rows": [Shown(i, score=by_id.get(i)) for i in chosen]})
    return sec


def _fill_texts(manifest: dict, ledger: pl.DataFrame, sections: list[Section], storage_options: tuple) -> None:
    shown: list[Shown] = []
    earlier: list[Shown] = []
    for sec in sections:
        for c in sec.clusters:
            (earlier if c["earlier"] else shown).append(c["kept"])
            shown.extend(c["removed"])
        for e in sec.examples:
            shown.extend(e["rows"])
    wanted = {s.id for s in shown}
    texts = input_texts(input_set(manifest, storage_options), wanted)
    texts.update(earlier_texts(manifest, {s.id for s in earlier}))
    fate = fates(ledger, wanted)
    for s in shown + earlier:
        s.text = texts.get(s.id)
        if s.fate == "kept":
            s.fate = fate.get(s.id, "kept")
    for sec in sections:
        for c in sec.clusters:
            base = c["kept"].text
            for r in c["removed"]:
                if base is not None and r.text is not None and sec.kind != "exact":
                    kept_html, r.html = word_diff(base, r.text)
                    c.setdefault("kept_html", kept_html)  # marked against the first removed row shown
