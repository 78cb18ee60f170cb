"""Decontamination: recall and precision on planted evaluation items, whole-run throughput vs a plain-Python n-gram set.

    python -m bench.decontaminate [--replicate 64] [--long-docs 3000] [--items 2000] [--ngram 13]

Evaluation items are passages (25-80 words, punctuation as written) cut from real documents
held out of the corpus (man pages, /usr/share/doc files, Python sources). They are planted in
1% of the rows of two real corpora: short (the Debian package descriptions, replicated) and
long (documents of 2-64 KB). A planted row is the item verbatim, the item inside the row's own
text, or a span of 20-30 consecutive words of the item inside the row's text (a third of the
spans upper-cased). Precision counts a flagged row as correct when it shares at least `ngram`
consecutive words with an item (so natural overlaps, such as licence text, are correct);
the plain-Python reference (`re.findall(r"\\w+", text.lower())` windows in a set of tuples)
says which rows do. Throughput is the whole run (read, input check, match, write kept/ and
removed/) over the corpus text bytes; the reference reads the text column and loops in Python.
The run also times reading every shard and writing it back (zstd Parquet, as kept/ is written)
with nothing else: no whole run that writes kept/ can be faster, so the reference's CPU time
over that floor is the most any implementation could reach against it on this machine.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._harness import ProcessTree, add_result_argument, gib, start_run, usable_cores
from bench.corpora import build_long_corpus, debian_descriptions

WORD = re.compile(r"\w+")


def word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in WORD.finditer(text)]


def passage(text: str, spans: list[tuple[int, int]], first: int, count: int) -> str:
    """The text from word `first` to word `first + count - 1`, punctuation as written."""
    return text[spans[first][0] : spans[first + count - 1][1]]


def cut_items(texts: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct passages of 25-80 words from the held-out documents."""
    items: list[str] = []
    seen: set[str] = set()
    spans_of = {}
    while len(items) < count:
        doc = int(rng.integers(len(texts)))
        spans = spans_of.setdefault(doc, word_spans(texts[doc]))
        length = int(rng.integers(25, 81))
        if len(spans) < length:
            continue
        first = int(rng.integers(len(spans) - length + 1))
        item = passage(texts[doc], spans, first, length)
        key = " ".join(WORD.findall(item.lower()))
        if key not in seen:
            seen.add(key)
            items.append(item)
    return items


def plant(texts: list[str], items: list[str], share: float, rng: np.random.Generator) -> dict[int, str]:
    """Rewrite a `share` of the rows in place; {row: how} of the planted rows."""
    rows = rng.choice(len(texts), size=max(30, int(share * len(texts))), replace=False)
    how: dict[int, str] = {}
    for k, row in enumerate(sorted(rows.tolist())):
        item = items[int(rng.integers(len(items)))]
        mode = ("verbatim", "inside", "span")[k % 3]
        own = texts[row]
        cut = int(rng.integers(len(own) + 1))
        while cut < len(own) and own[cut - 1 : cut].isalnum() and own[cut : cut + 1].isalnum():
            cut += 1  # never glue the planted words to a word of the row
        if mode == "verbatim":
            texts[row] = item
        elif mode == "inside":
            texts[row] = f"{own[:cut]} {item} {own[cut:]}"
        else:
            spans = word_spans(item)
            length = int(rng.integers(20, min(30, len(spans)) + 1))
            first = int(rng.integers(len(spans) - length + 1))
            span = passage(item, spans, first, length)
            texts[row] = f"{own[:cut]} {span.upper() if k % 9 == 2 else span} {own[cut:]}"
        how[row] = mode
    return how


# ---------------------------------------------------------------------------------------
# The plain-Python reference: n-gram tuples in a set.


def reference_flagged(corpus: Path, items_path: Path, ngram: int) -> tuple[set[str], float, float]:
    """(ids of rows sharing at least `ngram` consecutive words with an item, wall and CPU seconds), the
    whole run: read the items, build the set, read the corpus, scan every row."""
    started, cpu = time.perf_counter(), time.process_time()
    grams: set[tuple[str, ...]] = set()
    with open(items_path) as handle:
        for line in handle:
            words = WORD.findall(json.loads(line)["text"].lower())
            grams.update(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))
    flagged: set[str] = set()
    for path in sorted(corpus.glob("*.parquet")):
        table = pq.read_table(path, columns=["id", "text"])
        for row_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
            words = WORD.findall(text.lower())
            if any(tuple(words[i : i + ngram]) in grams for i in range(len(words) - ngram + 1)):
                flagged.add(row_id)
    return flagged, time.perf_counter() - started, time.process_time() - cpu


def ours(corpus: Path, items_path: Path, ngram: int, out: Path, jobs: int) -> tuple[set[str], float, float, int, dict]:
    """(removed ids, wall seconds, CPU seconds and peak RSS of the process tree, the stage's manifest info)."""
    from curate.io.parts import read_parts
    from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

    stage = {"kind": "decontaminate", "ngram": ngram, "eval_sets": [{"name": "bench", "path": str(items_path)}]}
    spec = parse_pipeline({"stage": [stage]}, "bench")
    with ProcessTree() as tree:
        started = time.perf_counter()
        run_pipeline(spec, corpus, out, RunOptions(jobs=jobs))
        seconds = time.perf_counter() - started
    removed = set(read_parts(out / "removed", columns=["id"]).column("id").to_pylist())
    info = json.loads((out / "manifest.json").read_text())["stages"][-1]["info"]
    return removed, seconds, tree.cpu_seconds, tree.peak_rss, info


def match_only(corpus: Path, items_path: Path, ngram: int) -> tuple[float, float]:
    """Seconds of the n-gram match alone (index build + `match_texts` over the text column, read
    beforehand), one core: where the stage's time goes, apart from reading, checking and writing."""
    from curate.algorithms.ngrams import build_index, match_texts

    texts = [pq.read_table(p, columns=["text"]).column("text") for p in sorted(corpus.glob("*.parquet"))]
    items = pa.array([json.loads(line)["text"] for line in open(items_path)])
    started, cpu = time.perf_counter(), time.process_time()
    index = build_index(items, ngram)
    for column in texts:
        chunk = column.combine_chunks()
        for start in range(0, len(chunk), 65_536):  # the stage's batch size
            match_texts(chunk.slice(start, 65_536), index)
    return time.perf_counter() - started, time.process_time() - cpu


def io_floor(corpus: Path, out: Path) -> tuple[float, float]:
    """Seconds (wall, CPU) to read every shard and write it back as curate writes kept/ (zstd
    Parquet, text and ids without a dictionary), with no check and no matching: no whole run
    over these files can beat it, so it bounds the whole-run ratio to the plain-Python reference."""
    from curate.io.parts import dictionary_columns

    out.mkdir()
    started, cpu = time.perf_counter(), time.process_time()
    for k, path in enumerate(sorted(corpus.glob("*.parquet"))):
        table = pq.read_table(path, use_threads=False)
        pq.write_table(
            table,
            out / f"part-{k:05d}.parquet",
            compression="zstd",
            use_dictionary=dictionary_columns(table.schema, ("text", "id")),
        )
    return time.perf_counter() - started, time.process_time() - cpu


def write_shards(texts: list[str], ids: list[str], directory: Path, shards: int) -> int:
    """The corpus as `shards` Parquet files; its UTF-8 text bytes."""
    directory.mkdir(parents=True)
    bounds = np.linspace(0, len(texts), shards + 1).astype(int)
    for s in range(shards):
        lo, hi = bounds[s], bounds[s + 1]
        pq.write_table(
            pa.table({"id": ids[lo:hi], "text": texts[lo:hi]}),
            directory / f"part-{s:03d}.parquet",
            row_group_size=8192,
        )
    return sum(len(t.encode("utf-8")) for t in texts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicate", type=int, default=64, help="copies of the Debian descriptions (short corpus)")
    parser.add_argument("--long-docs", type=int, default=3000, help="documents in the long corpus")
    parser.add_argument("--items", type=int, default=2000, help="evaluation items")
    parser.add_argument("--ngram", type=int, default=13)
    parser.add_argument("--share", type=float, default=0.01, help="share of corpus rows planted")
    parser.add_argument("--seed", type=int, default=0)
    add_result_argument(parser, "decontaminate")
    args = parser.parse_args(argv)
    run = start_run("decontaminate", argv, args.result, __doc__.splitlines()[0], vars(args))
    rng = np.random.default_rng(args.seed)
    cores = usable_cores()
    rows_out = []
    quality = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs = pq.read_table(build_long_corpus(tmp / "long", max_docs=2 * args.long_docs).path)
        doc_texts, doc_ids = docs.column("text").to_pylist(), docs.column("id").to_pylist()
        corpus_docs = list(range(0, len(doc_texts), 2))  # every other document; the rest are held out
        items = cut_items([doc_texts[i] for i in range(1, len(doc_texts), 2)], args.items, rng)
        items_path = tmp / "eval.jsonl"
        with open(items_path, "w") as handle:
            for k, item in enumerate(items):
                handle.write(json.dumps({"id": f"item-{k}", "text": item}) + "\n")
        debian = pq.read_table(debian_descriptions().path, columns=["id", "text"])
        short_ids = [f"{i}#{c}" for c in range(args.replicate) for i in debian.column("id").to_pylist()]
        corpora = {
            "short": (debian.column("text").to_pylist() * args.replicate, short_ids),
            "long": ([doc_texts[i] for i in corpus_docs], [doc_ids[i] for i in corpus_docs]),
        }
        run.params["items_words"] = sum(len(WORD.findall(t)) for t in items)
        for name, (texts, ids) in corpora.items():
            texts = list(texts)
            how = plant(texts, items, args.share, rng)
            planted = {ids[r] for r in how}
            nbytes = write_shards(texts, ids, tmp / f"corpus-{name}", shards=2 * cores)
            mb = nbytes / 1e6
            ref, ref_s, ref_cpu = reference_flagged(tmp / f"corpus-{name}", items_path, args.ngram)
            one, one_s, one_cpu, one_rss, info = ours(
                tmp / f"corpus-{name}", items_path, args.ngram, tmp / f"{name}-out1", jobs=1
            )
            every, every_s, every_cpu, every_rss, _ = ours(
                tmp / f"corpus-{name}", items_path, args.ngram, tmp / f"{name}-out", jobs=cores
            )
            bare_s, bare_cpu = match_only(tmp / f"corpus-{name}", items_path, args.ngram)
            floor_s, floor_cpu = io_floor(tmp / f"corpus-{name}", tmp / f"{name}-floor")
            recall = len(planted & one) / len(planted)
            precision = len(one & ref) / max(len(one), 1)
            by_mode = {
                m: sum(1 for r, h in how.items() if h == m and ids[r] in one) for m in ("verbatim", "inside", "span")
            }
            quality.append(
                [
                    name,
                    len(texts),
                    round(mb, 1),
                    len(planted),
                    by_mode["verbatim"],
                    by_mode["inside"],
                    by_mode["span"],
                    len(one),
                    len(ref),
                    round(recall, 4),
                    round(precision, 4),
                    one == every == ref,
                ]
            )
            rows_out += [
                [name, "plain-Python n-gram set", 1, ref_s, ref_cpu, mb / ref_s, mb / ref_cpu, "", ""],
                [
                    name,
                    "curate --jobs 1",
                    1,
                    one_s,
                    one_cpu,
                    mb / one_s,
                    mb / one_cpu,
                    gib(one_rss),
                    info["index_bytes"],
                ],
                [
                    name,
                    f"curate --jobs {cores}",
                    cores,
                    every_s,
                    every_cpu,
                    mb / every_s / cores,
                    mb / every_cpu,
                    gib(every_rss),
                    info["index_bytes"],
                ],
                [name, "n-gram match alone (text in memory)", 1, bare_s, bare_cpu, mb / bare_s, mb / bare_cpu, "", ""],
                [
                    name,
                    "Parquet read + write alone (no check, no match)",
                    1,
                    floor_s,
                    floor_cpu,
                    mb / floor_s,
                    mb / floor_cpu,
                    "",
                    "",
                ],
            ]
            rows_out = [[round(v, 2) if isinstance(v, float) else v for v in r] for r in rows_out]
            run.compare(f"{name}: recall of planted rows", recall, "", ">= 0.99")
            run.compare(
                f"{name}: precision (flagged rows sharing >= ngram words with an item)", precision, "", ">= 0.99"
            )
            run.compare(f"{name}: MB per CPU second, curate --jobs 1, whole run", mb / one_cpu, " MB/s", ">= 20")
            run.compare(
                f"{name}: MB per CPU second, curate --jobs {cores}, whole run", mb / every_cpu, " MB/s", ">= 20"
            )
            run.compare(f"{name}: MB/s wall per core, curate --jobs 1", mb / one_s, " MB/s", ">= 20")
            run.compare(
                f"{name}: curate --jobs 1 / plain Python, CPU seconds, whole run", ref_cpu / one_cpu, "x", ">= 10"
            )
            run.compare(f"{name}: curate --jobs 1 / plain Python, wall, whole run", ref_s / one_s, "x", ">= 10")
            run.compare(f"{name}: MB per CPU second, n-gram match alone", mb / bare_cpu, " MB/s")
            run.compare(
                f"{name}: ceiling of the whole-run ratio (plain Python / Parquet read + write alone, CPU)",
                ref_cpu / floor_cpu,
                "x",
            )
            run.check(f"{name}: recall and precision >= 0.99", recall >= 0.99 and precision >= 0.99)
            run.check(f"{name}: flagged rows equal the plain-Python reference's, on every --jobs", one == every == ref)
            run.data[f"{name}_index"] = {
                "ngrams": info["index_ngrams"],
                "bytes": info["index_bytes"],
                "bytes_per_ngram": round(info["index_bytes"] / max(info["index_ngrams"], 1), 1),
            }
    run.table(
        f"planted rows found (ngram {args.ngram}, {args.items} items)",
        [
            "corpus",
            "rows",
            "MB text",
            "planted",
            "verbatim",
            "inside",
            "span",
            "flagged",
            "reference",
            "recall",
            "precision",
            "same flagged rows",
        ],
        quality,
    )
    run.table(
        "whole run",
        [
            "corpus",
            "method",
            "cores",
            "wall s",
            "CPU s",
            "MB/s wall per core",
            "MB per CPU s",
            "peak RSS",
            "index bytes",
        ],
        rows_out,
    )
    for name in corpora:
        index = run.data[f"{name}_index"]
        run.note(
            f"{name}: index of {index['ngrams']:,} n-grams in {index['bytes']:,} bytes ({index['bytes_per_ngram']} per n-gram)"
        )
    run.write()


if __name__ == "__main__":
    main()
