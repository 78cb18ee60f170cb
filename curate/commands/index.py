"""`curate index OUT`: build the indexes of a finished output after the fact, and
`curate index OUT --add NEW_OUT`: merge a later output's indexes into OUT's, so a growing corpus
keeps one index per dedup stage."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from curate.errors import UsageError
from curate.index import exact, minhash, semantic
from curate.index.check import INDEXED_KINDS
from curate.index.store import INDEX_DIR, META, StoredIndex, check_settings, find_index, read_index
from curate.io.inputs import fingerprint_file
from curate.io.mirror import replace_dir
from curate.output.read import load_finished_manifest
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

MERGERS = {exact.KIND: exact.merge, minhash.KIND: minhash.merge, semantic.KIND: semantic.merge}
assert set(MERGERS) == set(INDEXED_KINDS)
_BUILD_DIR = ".index-build"


def build_index(output: str | Path, options=None) -> list[StoredIndex]:
    """Rerun the output's recorded pipeline over its recorded input (same config, seed and
    earlier outputs, so the same groups) with `index = true` on every exact and minhash stage,
    and move the indexes into OUT/index/. The input files must still be there, unchanged."""
    output = Path(output)
    manifest = load_finished_manifest(output)
    config = manifest["config"]
    stages = [{"kind": s["kind"], **s["options"]} for s in config["stages"]]
    if not any(s["kind"] in MERGERS for s in stages):
        raise UsageError(
            "this output ran no exact, minhash or semdedup stage: nothing to index",
            path=output,
            fix="run a pipeline with a dedup stage",
        )
    for stage in stages:
        if stage["kind"] in MERGERS:
            stage["index"] = True
    spec = parse_pipeline(
        {"input": config["input"], "seed": config["seed"], "stage": stages}, str(output / "manifest.json")
    )
    build = output / _BUILD_DIR
    shutil.rmtree(build, ignore_errors=True)
    links = build / "input"
    for position, record in enumerate(manifest["input"]["files"]):
        path = Path(record["path"])
        if (
            not path.is_file()
            or path.stat().st_size != record["size"]
            or fingerprint_file(path) != record["fingerprint"]
        ):
            shutil.rmtree(build, ignore_errors=True)
            raise UsageError(
                "an input file of this output is gone or changed, so its index cannot be rebuilt",
                path=path,
                fix="rerun the pipeline with index = true on its dedup stages",
            )
        link = links / f"{position:06d}" / path.name  # numbered dirs keep the order, names keep '<stem>:<row>' ids
        link.parent.mkdir(parents=True)
        os.symlink(path.resolve(), link)
    base = RunOptions() if options is None else options
    run_options = RunOptions(
        progress=base.progress,
        executor=base.executor,
        jobs=base.jobs,
        unit_rows=base.unit_rows,
        against=tuple(config.get("against", ())),
    )
    result = run_pipeline(spec, str(links), build / "out", run_options)
    if result.kept_rows != manifest.get("totals", {}).get("kept_rows", result.kept_rows):
        shutil.rmtree(build, ignore_errors=True)
        raise UsageError(
            "rebuilding kept a different number of rows than the recorded run",
            path=output,
            fix="rerun the pipeline with index = true on its dedup stages",
        )
    built = []
    (output / INDEX_DIR).mkdir(exist_ok=True)
    for directory in sorted((build / "out" / INDEX_DIR).iterdir()):
        replace_dir(directory, output / INDEX_DIR / directory.name)
        built.append(read_index(output / INDEX_DIR / directory.name))
    shutil.rmtree(build, ignore_errors=True)
    return built


def add_index(output: str | Path, later: str | Path) -> list[StoredIndex]:
    """Merge every index of the later output into the matching index of `output` (same stage
    name, else the only one of that kind), the earlier rows first."""
    output, later = Path(output), Path(later)
    load_finished_manifest(output)
    load_finished_manifest(later)
    metas = sorted((later / INDEX_DIR).glob(f"*/{META}"))
    if not metas:
        raise UsageError(
            f"no index under {INDEX_DIR}/",
            path=later,
            fix=f"run it with index = true on its dedup stages, or build it: curate index {later}",
        )
    pairs = []
    for meta in metas:  # every pair checked before any index changes: no half-merged output
        new = read_index(meta.parent)
        base = find_index(output, new.stage, new.kind)
        check_settings(new, base.settings, here=f"in the index of {output}")
        check_settings(base, new.settings, here=f"in the index of {later}")
        pairs.append((base, new))
    merged = []
    for base, new in pairs:
        tmp = Path(base.directory).with_name(f".{Path(base.directory).name}.merge")
        shutil.rmtree(tmp, ignore_errors=True)
        MERGERS[new.kind](base, new, tmp)
        replace_dir(tmp, base.directory)
        merged.append(read_index(base.directory))
    return merged
