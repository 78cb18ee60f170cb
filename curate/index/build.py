"""`curate index OUT`: build the indexes of a finished output after the fact, and
`curate index OUT --add NEW_OUT`: merge a later output's indexes into OUT's, so a growing corpus
keeps one index per dedup stage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from curate.atomic import replace_dir
from curate.errors import UsageError
from curate.index import exact, minhash, semantic
from curate.index.store import INDEX_DIR, META, StoredIndex, check_settings, find_index, read_index
from curate.shards import fingerprint_file

MERGERS = {exact.KIND: exact.merge, minhash.KIND: minhash.merge, semantic.KIND: semantic.merge}
_BUILD_DIR = ".index-build"


def _finished_manifest(output: Path) -> dict:
    try:
        manifest = json.loads((output / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    if not manifest.get("finalized"):
        raise UsageError("not a finished curate output", path=output, fix="pass the output directory of a finished run")
    return manifest


def build_index(output: str | Path, options=None) -> list[StoredIndex]:
    """Rerun the output's recorded pipeline over its recorded input (same config, seed and
    earlier outputs, so the same groups) with `index = true` on every exact and minhash stage,
    and move the indexes into OUT/index/. The input files must still be there, unchanged."""
    from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

    output = Path(output)
    manifest = _finished_manifest(output)
    config = manifest["config"]
    stages = [{"kind": s["kind"], **s["options"]} for s in config["stages"]]
    if not any(s["kind"] in MERGERS for s in stages):
        raise UsageError("this output ran no exact, minhash or semdedup stage: nothing to index", path=output, fix="run a pipeline with a dedup stage")
    for stage in stages:
        if stage["kind"] in MERGERS:
            stage["index"] = True
    spec = parse_pipeline({"input": config["input"], "seed": config["seed"], "stage": stages}, str(output / "manifest.json"))
    build = output / _BUILD_DIR
    shutil.rmtree(build, ignore_errors=True)
    links = build / "input"
    for position, record in enumerate(manifest["input"]["files"]):
        path = Path(record["path"])
        if not path.is_file() or path.stat().st_size != record["size"] or fingerprint_file(path) != record["fingerprint"]:
            shutil.rmtree(build, ignore_errors=True)
            raise UsageError("an input file of this output is gone or changed, so its index cannot be rebuilt", path=path, fix="rerun the pipeline with index = true on its dedup stages")
        link = links / f"{position:06d}" / path.name  # numbered dirs keep the order, names keep '<stem>:<row>' ids
        link.parent.mkdir(parents=True)
        os.symlink(path.resolve(), link)
    base = RunOptions() if options is None else options
    run_options = RunOptions(progress=base.progress, executor=base.executor, jobs=base.jobs, unit_rows=base.unit_rows, against=tuple(config.get("against", ())))
    result = run_pipeline(spec, str(links), build / "out", run_options)
    if result.kept_rows != manifest.get("totals", {}).get("kept_rows", result.kept_rows):
        shutil.rmtree(build, ignore_errors=True)
        raise UsageError("rebuilding kept a different number of rows than the recorded run", path=output, fix="rerun the pipeline with index = true on its dedup stages")
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
    _finished_manifest(output)
    _finished_manifest(later)
    metas = sorted((later / INDEX_DIR).glob(f"*/{META}"))
    if not metas:
        raise UsageError(f"no index under {INDEX_DIR}/", path=later, fix=f"run it with index = true on its dedup stages, or build it: curate index {later}")
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


def check_against(spec, against: list[str] | tuple[str, ...]) -> None:
    """Before a run starts: every earlier output has a sound index for every dedup stage, with
    this run's settings (exact, minhash; a semdedup stage's model is known only once it runs,
    so its settings are checked when it fits), so a bad index is exit 2 before any output is
    written."""
    from curate.stages.base import stage_class

    if not against:
        return
    stages = [s for s in spec.stages if s.kind in MERGERS]
    if not stages:
        raise UsageError("--against (or against in the pipeline file) needs a dedup stage (exact, minhash or semdedup) in the pipeline", path=spec.source, fix="add one, or drop the earlier outputs")
    for stage_spec in stages:
        stage = stage_class(stage_spec.kind).from_options(stage_spec.options, where=spec.source)
        if stage_spec.kind == semantic.KIND:
            wanted = {"threshold": float(stage.threshold)}
        elif stage_spec.kind == exact.KIND:
            wanted = exact.settings(stage.normalize)
        else:
            stage.bands_, stage.rows_ = stage.lsh_shape()
            wanted = minhash.settings(stage, spec.seed)
        for path in against:
            check_settings(find_index(path, stage_spec.name, stage_spec.kind), wanted)
