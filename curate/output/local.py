"""The output directory: preparing it (fresh, resume, overwrite) and publishing the result.

Run layout inside OUT while a run is under way:
  _stages/NN-name/kept/      that stage's kept rows (the next stage's input)
  _stages/NN-name/removed/   that stage's ledger rows
  _stages/NN-name/work/      scratch (unit outputs, shuffle pieces, memory maps)
Finalizing renames the last kept dir to OUT/kept and links the ledgers, in stage order, into
OUT/removed: kept/ never holds rows of an unfinished run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from curate import __version__
from curate.errors import OutputError, UsageError
from curate.io import mirror
from curate.io.atomic import atomic_path, atomic_write_json, remove_path
from curate.io.inputs import DEFAULT_BATCH_SIZE, ROW_COLUMN, InputSet
from curate.io.parts import PartWriter, close_quietly, count_part_rows, list_parts
from curate.output.layout import INPUT_STAGE, LOCK_NAME, MANIFEST_NAME, STAGES_DIR, output_names
from curate.output.ledger import LEDGER_SCHEMA, ConservationError, count_problems
from curate.output.manifest import OVERWRITING, package_versions, read_manifest, write_manifest

_PROBE = ".curate-write-probe"


def stage_dir_name(position: int, name: str) -> str:
    return f"{position:02d}-{name}"


def new_manifest(
    config: dict, input_record: list[dict], inputs: InputSet, stages: list[tuple[str, str]], seed: int
) -> dict:
    """A fresh run's manifest; `stages` are the pipeline's (name, kind) pairs in order."""
    entries = [{"name": INPUT_STAGE, "kind": INPUT_STAGE, "status": "pending"}]
    entries += [{"name": name, "kind": kind, "status": "pending"} for name, kind in stages]
    return {
        "curate_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": {
            "files": input_record,
            "rows": inputs.num_rows,
            "synthesized_ids": inputs.synthesized_ids,
            "schema": schema_record(inputs.schema),
        },
        "config": config,
        "seed": seed,
        "packages": package_versions(),
        "stages": entries,
        "finalized": False,
    }


def schema_record(schema: pa.Schema) -> str:
    return schema.serialize().to_pybytes().hex()


def schema_from_record(record: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(record)))


def prepare_output(
    out: Path,
    config: dict,
    input_record: list[dict],
    *,
    resume: bool,
    overwrite: bool,
    side_outputs: tuple[str, ...] = (),
) -> dict | None:
    """The manifest to resume from, or None for a fresh run (curate's names then absent from OUT).
    `side_outputs`: what the registered stages may write (curate.stages.base.all_side_outputs).
    The caller holds the output's lock (curate.output.lock)."""
    existing = read_manifest(out) if out.exists() else None
    known = output_names(side_outputs)
    ours = _curate_entries(out, known)
    non_empty = bool(ours) or (out.exists() and any(not _is_lock(c) for c in out.iterdir()))
    if existing is not None and existing.get("curate_overwriting") and not overwrite:
        raise OutputError("an --overwrite of this output did not finish", path=out, fix="rerun with --overwrite")
    if resume and existing is None and non_empty and _only_start_debris(out):
        non_empty = False  # killed before the first manifest landed: nothing to keep, start fresh
    if resume and existing is not None:
        if _fingerprints(existing["input"]["files"]) != _fingerprints(input_record):
            raise UsageError(
                "--resume: the input files changed since this output was started",
                path=out,
                fix="rerun with --overwrite",
            )
        if existing["config"] != config:
            raise UsageError(
                "--resume: the pipeline config differs from the one this output was started with",
                path=out,
                fix="rerun with --overwrite, or use the original pipeline",
            )
        return existing
    if non_empty:
        if not overwrite and not resume:
            raise OutputError(
                "output directory is not empty",
                path=out,
                fix="pass --resume to continue, --overwrite to start over, or another -o",
            )
        if existing is None and overwrite:
            raise OutputError(
                "refusing to overwrite a directory that is not a curate output (no manifest.json)",
                path=out,
                fix="choose an empty or new -o",
            )
        if existing is None and resume:
            raise OutputError("--resume: no manifest.json here", path=out, fix="start without --resume")
        clear_output(out, known)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / _PROBE
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write the output directory ({exc.strerror})", path=out, fix="choose a writable -o"
        ) from None
    return None


def clear_output(out: Path, known: frozenset[str]) -> list[str]:
    """Remove what curate wrote in OUT, the manifest first (replaced by the overwrite mark, so a
    failure part way never leaves a finished manifest over missing files); files and folders
    that curate did not write stay where they are. Returns their names."""
    atomic_write_json(out / MANIFEST_NAME, OVERWRITING, fsync=True)
    for child in _curate_entries(out, known):
        if child.name != MANIFEST_NAME:
            remove_path(child)
    (out / MANIFEST_NAME).unlink()
    return sorted(c.name for c in out.iterdir() if not _is_lock(c))


def foreign_entries(out: Path, known: frozenset[str]) -> list[str]:
    """Top-level names in OUT that curate does not write (a user's notes, say)."""
    return (
        sorted(c.name for c in out.iterdir() if c.name not in known and not c.name.startswith("."))
        if out.is_dir()
        else []
    )


def _curate_entries(out: Path, known: frozenset[str]) -> list[Path]:
    """What curate wrote at the top of OUT: its names and its dot-named temp files; not the lock."""
    if not out.is_dir():
        return []
    return sorted(c for c in out.iterdir() if not _is_lock(c) and (c.name in known or c.name.startswith(".")))


def _is_lock(path: Path) -> bool:
    return path.name == LOCK_NAME


def _only_start_debris(out: Path) -> bool:
    """True when OUT holds nothing but what a run writes before its first manifest: the write
    probe, a temp manifest, an empty _stages tree (all curate names, so nothing of the user's)."""
    for child in out.iterdir():
        if (
            _is_lock(child)
            or child.name == _PROBE
            or (child.name.startswith(f".{MANIFEST_NAME}") and child.name.endswith(".tmp"))
        ):
            continue
        if child.name == STAGES_DIR and child.is_dir() and not any(p.is_file() for p in child.rglob("*")):
            continue
        return False
    return True


def _fingerprints(files: list[dict]) -> list[tuple[str, str]]:
    return [(f["path"], f["fingerprint"]) for f in files]


def finalize(
    out: Path, manifest: dict, input_rows: int, publish_kept: Callable[[Path], None], map_parts: Callable
) -> None:
    """Publish kept/ and removed/ from the stage directories; safe to redo after a kill.
    `map_parts(fn, parts)` runs the per-part rewrite on the run's executor."""
    stages_root = out / STAGES_DIR
    kept_final = out / "kept"
    if not mirror.exists(kept_final):
        publish_kept(kept_final)
    map_parts(strip_row_column, list_parts(kept_final))
    removed_final = out / "removed"
    ledger_rows: dict[str, int] | None = {}
    if mirror.exists(removed_final):
        ledger_rows = None  # gathered before a kill: the stage folders may be gone
    else:
        # Gathered under a temp name, then renamed: a kill leaves no half removed/.
        tmp = removed_final.with_name(f".{removed_final.name}.tmp")
        mirror.remove(tmp)
        index = 0
        for position, entry in enumerate(manifest["stages"]):
            rows = 0
            for part in list_parts(stages_root / stage_dir_name(position, entry["name"]) / "removed"):
                count = mirror.read_metadata(part).num_rows
                rows += count
                if count == 0:
                    continue
                mirror.copy(part, tmp / f"part-{index:05d}.parquet")
                index += 1
            ledger_rows[entry["name"]] = rows
        if index == 0:
            PartWriter(tmp, schema=LEDGER_SCHEMA).close()
        mirror.move(tmp, removed_final)
    totals = {
        "input_rows": input_rows,
        "kept_rows": count_part_rows(kept_final),
        "removed_rows": count_part_rows(removed_final),
    }
    problems = count_problems(manifest["stages"], input_rows, totals["kept_rows"], totals["removed_rows"], ledger_rows)
    if problems:  # never mark finished an output that lost or doubled rows
        raise ConservationError("the output does not add up, so it is left unfinished: " + "; ".join(problems))
    mirror.remove(stages_root)
    manifest["finalized"] = True
    manifest["totals"] = totals
    write_manifest(out, manifest)


def strip_row_column(part: Path) -> None:
    """Drop the internal ordinal from a published part (rewritten atomically)."""
    schema = mirror.read_metadata(part).schema.to_arrow_schema()
    if ROW_COLUMN not in schema.names:
        return
    source = pq.ParquetFile(mirror.ensure(part))
    with atomic_path(part) as tmp:
        writer = pq.ParquetWriter(tmp, schema.remove(schema.get_field_index(ROW_COLUMN)), compression="zstd")
        try:
            for batch in source.iter_batches(batch_size=DEFAULT_BATCH_SIZE):
                writer.write_batch(batch.drop_columns([ROW_COLUMN]))
            writer.close()
        except BaseException:
            close_quietly(writer)  # a full disk must not leave a writer that retries at exit
            raise
