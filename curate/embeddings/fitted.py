"""`minilm-fitted`: the static model (`minilm-static`) fitted to MiniLM's own vectors on a sample
of the corpus being embedded, so its duplicate pairs are MiniLM's.

`minilm-static` is a distillation from token vectors alone: every vocabulary token goes through
MiniLM on its own, out of context. It ranks rows roughly like MiniLM but finds about half of
MiniLM's duplicate pairs at semdedup's threshold. The fit closes most of that gap on the corpus
at hand:

1. a seeded sample of `fit_rows` rows (a hash of each row's ordinal, so the sample does not
   depend on how the input is cut into units) is embedded by MiniLM, one task per chunk;
2. the static table is fitted to those vectors (curate.algorithms.token_fit: a linear map of
   the whole distilled table, then ridge least squares per token toward it). The text model
   mimics MiniLM's pooling: one learned vector stands for [CLS] and [SEP], and a text's words
   after MiniLM's 254th token are dropped, as MiniLM truncates at 256 tokens.
3. the table is cached under the cache directory, keyed by a fingerprint of the sampled texts
   and the settings; a later run over the same corpus (or any run whose sample is the same)
   loads it and embeds nothing with MiniLM.

Encoding is then the static model's: a sparse sum of table rows per text, no transformer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy import sparse

from curate.algorithms.token_fit import fit_token_table
from curate.embeddings.minilm import minilm_package_version
from curate.errors import UsageError
from curate.io.atomic import atomic_path
from curate.io.cache import cache_dir

FITTED_MODEL = "minilm-fitted"
FITTED_FORMAT = 1  # bump when the fit or the text model changes
DEFAULT_FIT_ROWS = 10_000
# MiniLM reads at most 256 tokens, two of them [CLS] and [SEP]
MAX_TOKENS = 254
RIDGE = 0.01
MAP_RIDGE = 1e-3
STEPS = 80
SAMPLE_SEED = 0x5EED
TABLE_FILE = "table.npy"
META_FILE = "fitted.json"
# Rows of MiniLM work per task while embedding the sample.
ENCODE_CHUNK = 1024


def fitted_prefix() -> str:
    """The model version without the fit's fingerprint (what every fitted table shares)."""
    return f"{FITTED_MODEL}-v{FITTED_FORMAT}-{minilm_package_version()}"


def fitted_version(fingerprint: str) -> str:
    """What must match for a stored vector to be reused: the same table, so the same sample."""
    return f"{fitted_prefix()}-{fingerprint}"


def settings(fit_rows: int) -> dict:
    return {
        "format": FITTED_FORMAT,
        "minilm": minilm_package_version(),
        "fit_rows": int(fit_rows),
        "ridge": RIDGE,
        "map_ridge": MAP_RIDGE,
        "steps": STEPS,
        "max_tokens": MAX_TOKENS,
        "seed": SAMPLE_SEED,
    }


def sample_fingerprint(texts: pa.Array, fit_rows: int) -> str:
    """blake2b of the settings and the sampled texts in input order (length-prefixed)."""
    digest = hashlib.blake2b(json.dumps(settings(fit_rows), sort_keys=True).encode(), digest_size=12)
    for text in texts.fill_null("").to_pylist():
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def fitted_dir(fingerprint: str) -> Path:
    return cache_dir() / f"{fitted_prefix()}-{fingerprint}"


def sampled(ordinals: np.ndarray, total_rows: int, fit_rows: int) -> np.ndarray:
    """Which of these row ordinals are in the fitting sample: a seeded 64-bit mix of the ordinal
    below fit_rows / total_rows of the range, so about fit_rows rows are drawn whatever the cut."""
    x = np.asarray(ordinals, dtype=np.uint64) + np.uint64(SAMPLE_SEED)
    with np.errstate(over="ignore"):  # splitmix64's finalizer, wrapping by design
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    rate = min(1.0, fit_rows / max(1, total_rows))
    return x < np.uint64(min(2**64 - 1, int(rate * 2**64)))


# --- the text model ------------------------------------------------------------------------


def token_counts(texts: pa.Array, tokenizer, unk_token_id: int | None, vocabulary: int) -> sparse.csr_matrix:
    """(rows x vocabulary + 1) token counts as MiniLM pools them: its first MAX_TOKENS tokens
    and, in the last column, 2 for [CLS] and [SEP]."""
    from curate.embeddings.static import word_token_rows

    per_text, word_tokens = word_token_rows(texts, tokenizer, unk_token_id, vocabulary, MAX_TOKENS)
    counts = sparse.csr_matrix(per_text @ word_tokens)
    n = len(texts)
    specials = sparse.csr_matrix(
        (np.full(n, 2.0, np.float32), (np.arange(n), np.full(n, vocabulary))), shape=(n, vocabulary + 1)
    )
    counts.resize((n, vocabulary + 1))
    return sparse.csr_matrix(counts + specials)


def fit_table(texts: pa.Array, targets: np.ndarray, static) -> np.ndarray:
    """The fitted (vocabulary + 1) x dim table for MiniLM vectors `targets` of `texts`, starting
    from the distilled StaticEmbedder `static` (its special row starts at zero)."""
    vocabulary = static.table.shape[0]
    counts = token_counts(texts, static.model.tokenizer, static.model.unk_token_id, vocabulary)
    prior = np.vstack([static.table, np.zeros((1, static.table.shape[1]), np.float32)])
    return fit_token_table(counts, targets, prior, ridge=RIDGE, map_ridge=MAP_RIDGE, steps=STEPS)


def save_fitted(target: Path, table: np.ndarray, meta: dict) -> None:
    np.save(target / TABLE_FILE, np.ascontiguousarray(table, dtype=np.float32))
    (target / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")


def publish_fitted(fingerprint: str, table: np.ndarray, meta: dict) -> Path:
    """Write the fitted model into the cache (a temp directory renamed; if another process got
    there first, its copy is kept: same fingerprint, same table)."""
    target = fitted_dir(fingerprint)
    if (target / META_FILE).is_file():
        return target
    try:
        with atomic_path(target, unique=True) as tmp:
            tmp.mkdir(parents=True)
            save_fitted(tmp, table, meta)
    except OSError as exc:
        if (target / META_FILE).is_file():
            return target
        raise UsageError(
            f"cannot write the fitted model to {target.parent} ({exc.strerror or exc})",
            fix="set CURATE_CACHE_DIR to a writable directory",
        ) from None
    return target


class FittedEmbedder:
    """The fitted table over the distilled model's tokenizer: the sum of a text's token rows
    (MiniLM's first 254 tokens) plus the [CLS]/[SEP] row, L2-normalized."""

    name = FITTED_MODEL

    def __init__(self, directory: str | Path, threads: int = 1):
        from curate.embeddings.static import StaticEmbedder

        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            self.table = np.load(directory / TABLE_FILE)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot read the fitted model in {directory} ({exc})",
                fix="delete that directory; the next run fits it again",
            ) from None
        static = StaticEmbedder(threads=threads)
        self.tokenizer = static.model.tokenizer
        self.unk_token_id = static.model.unk_token_id
        self.vocabulary = static.table.shape[0]
        if self.table.shape[0] != self.vocabulary + 1:
            raise UsageError(
                f"the fitted model in {directory} does not match the distilled model",
                fix="delete that directory; the next run fits it again",
            )
        self.dim = int(self.table.shape[1])
        self.table64 = self.table.astype(np.float64)
        self.threads = threads
        self.version = fitted_version(meta["fingerprint"])

    def encode(self, texts: pa.Array) -> np.ndarray:
        """= normalize(token_counts(texts) @ table), computed through the distinct words (each
        word's vector once, then a sparse sum per text), as fast as minilm-static."""
        from curate.embeddings.static import word_token_rows

        per_text, word_tokens = word_token_rows(texts, self.tokenizer, self.unk_token_id, self.vocabulary, MAX_TOKENS)
        # float64 sums, rounded once: the sum order inside a text follows the call's distinct
        # words, which change with the window, and float32 sums would differ in the last bit
        words = word_tokens.astype(np.float64) @ self.table64[: self.vocabulary]
        out = per_text.astype(np.float64) @ words if words.size else np.zeros((len(texts), self.dim))
        out += 2.0 * self.table64[self.vocabulary]
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-300)
        return out.astype(np.float32)


# --- the fit as tasks ------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleUnit:
    """The texts of one unit's sampled rows, with their ordinals."""

    text_column: str
    total_rows: int
    fit_rows: int

    def __call__(self, unit) -> tuple[np.ndarray, pa.Array]:
        from curate.io.inputs import ROW_COLUMN

        ordinals, texts = [], []
        for batch in unit.batches(columns=[self.text_column]):
            rows = batch.column(ROW_COLUMN).to_numpy()
            chosen = np.flatnonzero(sampled(rows, self.total_rows, self.fit_rows))
            if len(chosen):
                ordinals.append(rows[chosen])
                texts.append(batch.column(self.text_column).take(pa.array(chosen)).cast(pa.large_string()))
        if not ordinals:
            return np.empty(0, np.int64), pa.array([], pa.large_string())
        return np.concatenate(ordinals), pa.concat_arrays(texts)


def ensure_fitted(units: list, ctx, fit_rows: int, encode_task, backend: str) -> tuple[Path, dict]:
    """The fitted model for this source (fitting it first if the cache lacks it) and what the
    manifest says about the fit. `encode_task(texts) -> MiniLM vectors` runs per chunk of the
    sample on the executor (curate.embeddings.store.EncodeTexts)."""
    total = sum(u.rows for u in units)
    found = ctx.map(SampleUnit(ctx.text_column, total, fit_rows), units, label=f"{ctx.name}: sampling")
    texts = pa.concat_arrays([t for _, t in found]) if found else pa.array([], pa.large_string())
    if len(texts) < 2:
        raise UsageError(
            f"model {FITTED_MODEL!r} needs at least 2 rows to fit on, the sample has {len(texts)}",
            fix="use minilm-static or hashing on so small an input, or raise fit_rows",
        )
    fingerprint = sample_fingerprint(texts, fit_rows)
    directory = fitted_dir(fingerprint)
    info = {"fit_rows": len(texts), "fingerprint": fingerprint, "cached": (directory / META_FILE).is_file()}
    if info["cached"]:
        return directory, info
    chunks = [texts.slice(s, ENCODE_CHUNK) for s in range(0, len(texts), ENCODE_CHUNK)]
    targets = np.concatenate(ctx.map(encode_task, chunks, label=f"{ctx.name}: minilm on the fitting sample"))
    from curate.embeddings.static import StaticEmbedder

    table = fit_table(texts, targets, StaticEmbedder())
    meta = {"fingerprint": fingerprint, "rows": len(texts), "settings": settings(fit_rows), "backend": backend}
    return publish_fitted(fingerprint, table, meta), info
