"""Real corpora for benchmarks, assembled from files already on this machine.

`build_long_corpus(dir)` writes a Parquet shard of longer real documents (several KB each):
Python sources (the standard library and the project venv, where the same module is often
vendored by several packages: pip/_vendor, setuptools/_vendor, ...), /usr/share/doc files
(licence texts repeated per package, changelogs) and man pages. Near duplicates there are
natural: vendored copies at other versions, licence boilerplate, man pages of tool families.

`debian_descriptions()` is the shared short-text corpus (63,666 package descriptions), found
in `shared/data/` beside the checkout (or in `$CURATE_SHARED_DATA`) unless a path is given.

    python -m bench.corpora [OUT_DIR] [--max-docs 8000]    # writes OUT_DIR/long.parquet
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def shared_data(name: str) -> Path:
    """`$CURATE_SHARED_DATA/NAME` when that variable is set; else `shared/data/NAME` beside the
    checkout, or beside any folder above it (a worktree nests deeper); else the plain
    beside-the-checkout path, which does not exist yet."""
    if os.environ.get("CURATE_SHARED_DATA"):
        return Path(os.environ["CURATE_SHARED_DATA"]) / name
    here = Path(__file__).resolve().parents[1]
    for folder in (here, *here.parents):
        if (folder / "shared" / "data" / name).exists():
            return folder / "shared" / "data" / name
    return here.parent / "shared" / "data" / name


DEBIAN_DESCRIPTIONS = shared_data("debian_descriptions.parquet")
# The running interpreter's standard library and site-packages, wherever they are installed.
STDLIB = Path(sysconfig.get_paths()["stdlib"])
VENV_SITE = Path(sysconfig.get_paths()["purelib"])

# (label, root, glob pattern, gzip-compressed)
LONG_SOURCES: list[tuple[str, Path, str, bool]] = [
    ("python-stdlib", STDLIB, "*.py", False),
    ("python-site", VENV_SITE, "*.py", False),
    ("doc", Path("/usr/share/doc"), "*", False),
    ("doc-gz", Path("/usr/share/doc"), "*.gz", True),
    ("man", Path("/usr/share/man"), "*.gz", True),
]


@dataclass(frozen=True)
class Corpus:
    path: Path
    rows: int
    bytes: int


def debian_descriptions(path: str | os.PathLike | None = None) -> Corpus:
    """The Debian descriptions at `path`, or next to the repository."""
    found = Path(path) if path is not None else DEBIAN_DESCRIPTIONS.resolve()
    if not found.is_file():
        raise SystemExit(
            f"no Debian descriptions at {found}: pass their Parquet file's path or set CURATE_SHARED_DATA"
        )
    meta = pq.read_metadata(found)
    return Corpus(found, meta.num_rows, found.stat().st_size)


def _keep_name(name: str, fraction: float, seed: int) -> bool:
    """Sample by file *name*, so every vendored copy of a module is kept or dropped together."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def _read_text(path: Path, compressed: bool, max_bytes: int) -> str | None:
    try:
        if compressed:
            with gzip.open(path, "rb") as handle:
                raw = handle.read(max_bytes + 1)
        else:
            if path.stat().st_size > max_bytes:
                return None
            raw = path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None


def build_long_corpus(
    out_dir: str | os.PathLike,
    *,
    max_docs: int = 8000,
    min_bytes: int = 2048,
    max_bytes: int = 65536,
    fraction: float = 0.75,
    seed: int = 0,
) -> Corpus:
    """Write `out_dir/long.parquet` (columns id, source, text) of up to `max_docs` real documents
    of `min_bytes`..`max_bytes` UTF-8 bytes; deterministic for a given machine and arguments."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    labels: list[str] = []
    texts: list[str] = []
    per_source = max_docs // len(LONG_SOURCES)
    total = 0
    for index, (label, root, pattern, compressed) in enumerate(LONG_SOURCES):
        # Leftover quota from earlier, smaller sources goes to the later ones.
        quota = (
            max_docs - len(ids)
            if index == len(LONG_SOURCES) - 1
            else per_source + max(0, per_source * index - len(ids))
        )
        taken = 0
        for path in sorted(root.rglob(pattern)):
            if taken >= quota:
                break
            if not path.is_file() or path.is_symlink():
                continue
            if label == "doc" and path.suffix == ".gz":
                continue
            if not _keep_name(path.name, fraction, seed):
                continue
            text = _read_text(path, compressed, max_bytes)
            if text is None:
                continue
            size = len(text.encode("utf-8"))
            if not (min_bytes <= size <= max_bytes):
                continue
            ids.append(str(path))
            labels.append(label)
            texts.append(text)
            total += size
            taken += 1
    table = pa.table({"id": ids, "source": labels, "text": texts})
    target = out / "long.parquet"
    pq.write_table(table, target, row_group_size=4096, compression="zstd")
    return Corpus(target, len(ids), total)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the long-document corpus (OUT_DIR/long.parquet).")
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path("curate-long-corpus"))
    parser.add_argument("--max-docs", type=int, default=8000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    corpus = build_long_corpus(args.out_dir, max_docs=args.max_docs)
    print(
        f"{corpus.rows} documents, {corpus.bytes / 1e6:.1f} MB of text -> {corpus.path} ({time.perf_counter() - started:.1f}s)"
    )


if __name__ == "__main__":
    main()
