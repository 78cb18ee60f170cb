"""A corpus of about a million real short texts from what this machine has, in Parquet shards.

Sources (all real text, read in a fixed order): Debian package descriptions
(`shared/data/debian_descriptions.parquet`, see bench.corpora, else `apt-cache dumpavail`), English man
page paragraphs (/usr/share/man/man*), documentation paragraphs (/usr/share/doc), and
source lines from the Python installs (stdlib and the venv's site-packages). Natural
redundancy is kept (the same licence paragraph or `import os` line in many files is what
dedup is for). If the sources fall short of the target, rows are replicated with small
seeded edits (a dropped word, a swapped pair, a changed case), which makes near duplicates.

The result is cached under a directory keyed by (rows, shards, seed), so benchmarks reuse it
(`$CURATE_BENCH_CACHE`, default a folder in the temp directory).

    python -m bench.corpus_short --rows 500000 --shards 8    # prints the corpus directory
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.corpora import DEBIAN_DESCRIPTIONS as DEBIAN_PARQUET

MAN_ROOT = Path("/usr/share/man")
DOC_ROOT = Path("/usr/share/doc")
MIN_CHARS = 12
MAX_CHARS = 600
_TROFF_LINE = re.compile(r"^\.(?:\\\"|[A-Za-z]{1,3}\b)\s?")
_TROFF_ESCAPE = re.compile(r"\\(?:f[BIRPH1-4]|f\(..|\(..|\*.|s[-+]?\d|&|-|e|\^|\||0|c|%)")
_SPACES = re.compile(r"\s+")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CURATE_BENCH_CACHE", Path(tempfile.gettempdir()) / "curate-bench-cache"))


def _clip(text: str) -> str | None:
    text = _SPACES.sub(" ", text).strip()
    if len(text) < MIN_CHARS:
        return None
    return text[:MAX_CHARS]


def debian_descriptions() -> Iterator[str]:
    """Short package descriptions: the bundled snapshot if present, else the live apt index."""
    if DEBIAN_PARQUET.exists():
        for text in pq.read_table(DEBIAN_PARQUET, columns=["text"]).column("text").to_pylist():
            if text and (clipped := _clip(text)):
                yield clipped
        return
    try:
        dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return
    for line in dump.splitlines():
        if line.startswith("Description: ") and (clipped := _clip(line[13:])):
            yield clipped


def _paragraphs(lines: Iterator[str]) -> Iterator[str]:
    buffer: list[str] = []
    for line in lines:
        if line.strip():
            buffer.append(line.strip())
            continue
        if buffer and (clipped := _clip(" ".join(buffer))):
            yield clipped
        buffer = []
    if buffer and (clipped := _clip(" ".join(buffer))):
        yield clipped


def _man_lines(raw: str) -> Iterator[str]:
    """troff source to plain lines: macro lines that start a section or paragraph break paragraphs."""
    for line in raw.splitlines():
        if line.startswith((".PP", ".SH", ".SS", ".TP", ".IP", ".LP", ".P ", ".sp", ".br")) or line.strip() == ".P":
            yield ""
            continue
        if line.startswith(('.\\"', "'\\\"", ".TH", ".de", ".if", ".ie", ".el", ".ds", ".nr", ".so")):
            continue
        line = _TROFF_LINE.sub("", line)
        yield _TROFF_ESCAPE.sub("", line).replace("\\", "")


def man_paragraphs() -> Iterator[str]:
    for section in sorted(MAN_ROOT.glob("man*")):
        for path in sorted(section.iterdir()):
            try:
                raw = (
                    gzip.open(path, "rt", errors="replace").read()
                    if path.suffix == ".gz"
                    else path.read_text(errors="replace")
                )
            except (OSError, EOFError):
                continue
            for paragraph in _paragraphs(_man_lines(raw)):
                if not paragraph.startswith((".", "'")) and " . ds " not in paragraph and " . if " not in paragraph:
                    yield paragraph


def doc_paragraphs() -> Iterator[str]:
    for path in sorted(p for p in DOC_ROOT.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.suffix not in ("", ".gz", ".txt", ".md", ".rst") or path.stat().st_size > 2_000_000:
            continue
        try:
            raw = (
                gzip.open(path, "rt", errors="replace").read()
                if path.suffix == ".gz"
                else path.read_text(errors="replace")
            )
        except (OSError, EOFError, UnicodeError):
            continue
        if "\x00" in raw:
            continue
        yield from _paragraphs(iter(raw.splitlines()))


def python_source_lines() -> Iterator[str]:
    roots = sorted({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]})
    for root in roots:
        # Every 4th file (sorted) is plenty and keeps the one-time build near a minute.
        for path in sorted(Path(root).rglob("*.py"))[::4]:
            try:
                raw = path.read_text(errors="replace")
            except OSError:
                continue
            for line in raw.splitlines():
                if clipped := _clip(line):
                    yield clipped


SOURCES = {"debian": debian_descriptions, "man": man_paragraphs, "doc": doc_paragraphs, "python": python_source_lines}


def _edit(text: str, rng: np.random.Generator) -> str:
    """One small edit: drop a word, swap two neighbours, change a word's case, or add a word."""
    words = text.split(" ")
    kind = int(rng.integers(4))
    i = int(rng.integers(len(words)))
    if kind == 0 and len(words) > 3:
        del words[i]
    elif kind == 1 and len(words) > 1:
        j = min(i + 1, len(words) - 1)
        words[i], words[j] = words[j], words[i]
    elif kind == 2:
        words[i] = words[i].upper() if not words[i].isupper() else words[i].lower()
    else:
        words.insert(i, ("the", "a", "new", "also", "now")[int(rng.integers(5))])
    return " ".join(words)


def collect_texts(rows: int, seed: int) -> tuple[list[str], list[str]]:
    """(texts, source names): real texts up to `rows`, balanced across sources, then edited copies."""
    per_source = {name: list(make()) for name, make in SOURCES.items()}
    rng = np.random.default_rng(seed)
    # Take from the smaller sources whole and fill with the rest, so code lines do not swamp prose.
    budget = rows
    chosen: dict[str, list[str]] = {}
    for index, name in enumerate(sorted(per_source, key=lambda n: len(per_source[n]))):
        share = budget // (len(per_source) - index)
        items = per_source[name]
        if len(items) > share:
            pick = np.sort(rng.choice(len(items), size=share, replace=False))
            items = [items[i] for i in pick]
        chosen[name] = items
        budget -= len(items)
    texts = [t for name in SOURCES for t in chosen[name]]
    sources = [name for name in SOURCES for _ in chosen[name]]
    base = len(texts)
    while len(texts) < rows:
        i = int(rng.integers(base))
        texts.append(_edit(texts[i], rng))
        sources.append(sources[i] + "+edit")
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], [sources[i] for i in order]


def build_corpus(out_dir: Path, rows: int = 1_000_000, shards: int = 16, seed: int = 0) -> Path:
    """Write `shards` Parquet files with id, text, source; returns the directory (cached)."""
    out_dir = Path(out_dir)
    done = out_dir / ".complete"
    if done.exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    texts, sources = collect_texts(rows, seed)
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for shard in range(shards):
        lo, hi = int(bounds[shard]), int(bounds[shard + 1])
        table = pa.table(
            {
                "id": pa.array([f"doc-{i:07d}" for i in range(lo, hi)], pa.string()),
                "text": pa.array(texts[lo:hi], pa.string()),
                "source": pa.array(sources[lo:hi], pa.string()),
            }
        )
        tmp = out_dir / f".shard-{shard:05d}.parquet.tmp"
        pq.write_table(table, tmp, compression="zstd", row_group_size=65_536)
        os.replace(tmp, out_dir / f"shard-{shard:05d}.parquet")
    done.write_text(f"{rows} rows, {shards} shards, seed {seed}\n")
    return out_dir


def cached_corpus(rows: int, shards: int = 16, seed: int = 0, cache_dir: Path | None = None) -> Path:
    root = cache_dir or default_cache_dir()
    return build_corpus(root / f"short-{rows}-{shards}-{seed}", rows, shards, seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    path = cached_corpus(args.rows, args.shards, args.seed, args.cache_dir)
    print(f"corpus: {path} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    print(path)


if __name__ == "__main__":
    main()
