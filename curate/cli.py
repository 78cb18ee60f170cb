"""The `curate` command line: parses, calls, prints. Exit codes: 0 ok, 1 internal error, 2 bad input or usage."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from curate.errors import CurateError, UsageError, as_write_error
from curate.runtime import tune_allocator

# Exit codes: 0 ok, 1 internal error (a bug), 2 bad input or usage, 3 `verify` found a broken output.
VERIFY_FAILED = 3

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Streaming data curation: dedup, pruning scores, quality pools, compute-aware mixes.",
)
out_console = Console()
err_console = Console(stderr=True)

InputOpt = typer.Option(
    ...,
    "-i",
    "--input",
    help="Directory, file or glob of Parquet shards, JSON Lines files (.jsonl, .json, .jsonl.gz, .jsonl.zst) or a saved Hugging Face dataset.",
)
InputFormatOpt = typer.Option(None, "--input-format", help="parquet | jsonl | hf (default: from the file names).")
StorageOpt = typer.Option(
    None,
    "--storage-option",
    help="fsspec option KEY=VALUE for URL inputs and outputs such as s3://bucket/in/ (repeatable), e.g. endpoint_url=http://127.0.0.1:9000.",
)
OutputOpt = typer.Option(
    ..., "-o", "--output", help="Output directory, or an object-store URL such as s3://bucket/out/."
)
TextColumnOpt = typer.Option(None, "--text-column", help="Text column (default: text).")
IdColumnOpt = typer.Option(None, "--id-column", help="Id column (default: id; absent -> '<file stem>:<row>').")
DropNullOpt = typer.Option(False, "--drop-null-text", help="Send null texts to the ledger instead of failing.")
SeedOpt = typer.Option(None, "--seed", help="Seed for everything random (default 0).")
BatchOpt = typer.Option(None, "--batch-size", help="Rows per record batch.")
ResumeOpt = typer.Option(False, "--resume", help="Continue an interrupted run in OUT.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an earlier curate output in OUT.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars.")
SetOpt = typer.Option(None, "--set", help="Extra stage option KEY=VALUE (repeatable).")
JobsOpt = typer.Option(
    None, "--jobs", "-j", help="Worker processes on this machine (default: every core; 1 = serial in this process)."
)
WorkersOpt = typer.Option(None, "--workers", help="Run on a local Dask cluster of N worker processes.")
SchedulerOpt = typer.Option(
    None, "--scheduler", help="Run on a running Dask cluster: tcp://HOST:PORT of its scheduler."
)
AgainstOpt = typer.Option(
    None,
    "--against",
    help="Earlier output (repeatable, oldest first; after any in the pipeline file's against): rows duplicating its rows are removed, using only its index.",
)


def _progress(quiet: bool):
    from curate.engine.progress import Progress

    return Progress(enabled=False if quiet else None)


def _parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    import tomllib

    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair!r} is not KEY=VALUE", fix="e.g. --set num_perm=64")
        try:
            options[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = raw
    return options


def _run_spec(
    spec,
    input_path: str,
    output: str,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    *,
    jobs=None,
    workers=None,
    scheduler=None,
    against=None,
) -> None:
    from curate.engine.executors import make_executor
    from curate.io.storage import worker_modules

    with make_executor(jobs=jobs, workers=workers, scheduler=scheduler) as executor:
        executor.start_early(worker_modules([input_path, output, *(against or ())]))  # overlaps the imports below
        from curate.pipeline import RunOptions, run_pipeline

        for note in getattr(executor, "notes", []):
            err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
        if not quiet and (workers is not None or scheduler is not None):
            for line in executor.describe():
                err_console.print(line, markup=False, highlight=False)
        result = run_pipeline(
            spec,
            input_path,
            output,
            RunOptions(
                resume=resume,
                overwrite=overwrite,
                progress=_progress(quiet),
                executor=executor,
                against=tuple(against or ()),
            ),
        )
    for note in result.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    _print_run_summary(str(result.output), quiet, spec.output_options)


def _print_run_summary(out: str, quiet: bool, options=()) -> None:
    from curate.output.manifest import read_manifest
    from curate.output.read import stage_summaries
    from curate.output.store import local_output

    if quiet:
        return
    with local_output(out, options, wanted=lambda name: name.startswith("removed/")) as local:
        _stage_table(stage_summaries(local))
        # A URL output's view holds the ledger only; the config says whether a report was built.
        has_report = (local / "report.html").exists() or bool(
            (read_manifest(local) or {}).get("config", {}).get("report")
        )
    out_console.print(f"output: {out}  (kept/, removed/, manifest.json)")
    if has_report:
        out_console.print(f"report: {out.rstrip('/')}/report.html")


def _where(path: Path, local: Path, output: str) -> str:
    """A file written in `local` as the user knows it: the path, or under the output's URL."""
    return str(path) if local == Path(output) else f"{output.rstrip('/')}/{path.relative_to(local).as_posix()}"


def _stage_table(summaries) -> None:
    table = Table(title="rows per stage")
    for column in ("stage", "in", "out", "removed", "why", "seconds"):
        table.add_column(column, justify="right" if column in ("in", "out", "removed", "seconds") else "left")
    for s in summaries:
        why = ", ".join(f"{k}: {v}" for k, v in s.reasons.items())
        table.add_row(s.name, f"{s.rows_in:,}", f"{s.rows_out:,}", f"{s.rows_removed:,}", why, f"{s.seconds:.2f}")
    out_console.print(table)


def _storage_options(pairs: list[str] | None) -> tuple[tuple[str, Any], ...]:
    """--storage-option KEY=VALUE pairs; values read as TOML literals (true, 3) or else strings."""
    import tomllib

    options = []
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"--storage-option {pair!r} is not KEY=VALUE",
                fix="e.g. --storage-option endpoint_url=http://127.0.0.1:9000",
            )
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        options.append((key.strip(), value))
    return tuple(options)


def _single_stage(
    kind: str,
    options: dict[str, Any],
    text_column,
    id_column,
    drop_null_text,
    seed,
    batch_size,
    input_format=None,
    storage=None,
):
    from dataclasses import replace

    from curate.io.formats import check_format
    from curate.pipeline import parse_pipeline

    data: dict[str, Any] = {"stage": [{"kind": kind, **{k: v for k, v in options.items() if v is not None}}]}
    data["input"] = {k: v for k, v in {"text_column": text_column, "id_column": id_column}.items() if v is not None}
    if drop_null_text:
        data["input"]["drop_null_text"] = True
    if seed is not None:
        data["seed"] = seed
    if batch_size is not None:
        data["batch_size"] = batch_size
    spec = parse_pipeline(data, f"curate {kind}")
    given = _storage_options(storage)
    return replace(
        spec,
        columns=replace(spec.columns, format=check_format(input_format), storage_options=given),
        output_options=given,
    )


@app.command()
def run(
    pipeline: Path = typer.Argument(..., help="Pipeline TOML file."),
    input: str = InputOpt,
    output: str = OutputOpt,
    input_format: str | None = InputFormatOpt,
    storage: list[str] | None = StorageOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    text_column: str | None = TextColumnOpt,
    id_column: str | None = IdColumnOpt,
    drop_null_text: bool = DropNullOpt,
    seed: int | None = SeedOpt,
    quiet: bool = QuietOpt,
    jobs: int | None = JobsOpt,
    workers: int | None = WorkersOpt,
    scheduler: str | None = SchedulerOpt,
    against: list[str] | None = AgainstOpt,
) -> None:
    """Run a pipeline file over the input shards: on every core here (--jobs), or on Dask (--workers, --scheduler)."""
    from dataclasses import replace

    from curate.engine.spec import merge_options
    from curate.io.formats import check_format
    from curate.io.inputs import ColumnSpec
    from curate.pipeline import load_pipeline

    spec = load_pipeline(pipeline)
    input_format = check_format(input_format) or spec.columns.format
    given = _storage_options(storage)  # --storage-option: for the input and the output, over the file's tables
    columns = ColumnSpec(
        text=text_column or spec.columns.text,
        id=id_column or spec.columns.id,
        format=input_format,
        storage_options=merge_options(spec.columns.storage_options, given),
    )
    spec = replace(
        spec,
        columns=columns,
        drop_null_text=drop_null_text or spec.drop_null_text,
        seed=spec.seed if seed is None else seed,
        output_options=merge_options(spec.output_options, given),
    )
    _run_spec(
        spec, input, output, resume, overwrite, quiet, jobs=jobs, workers=workers, scheduler=scheduler, against=against
    )


@app.command()
def dedup(
    input: str = InputOpt,
    output: str = OutputOpt,
    input_format: str | None = InputFormatOpt,
    storage: list[str] | None = StorageOpt,
    method: str = typer.Option("exact", "--method", help="exact | minhash | semantic"),
    threshold: float | None = typer.Option(None, "--threshold", help="minhash: Jaccard; semantic: cosine similarity."),
    ngram: int | None = typer.Option(None, "--ngram", help="minhash shingle size."),
    num_perm: int | None = typer.Option(None, "--num-perm", help="minhash permutations."),
    normalize: bool | None = typer.Option(
        None, "--normalize/--no-normalize", help="exact: NFKC, lowercase, collapse whitespace."
    ),
    sets: list[str] | None = SetOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    text_column: str | None = TextColumnOpt,
    id_column: str | None = IdColumnOpt,
    drop_null_text: bool = DropNullOpt,
    seed: int | None = SeedOpt,
    batch_size: int | None = BatchOpt,
    quiet: bool = QuietOpt,
    jobs: int | None = JobsOpt,
    workers: int | None = WorkersOpt,
    scheduler: str | None = SchedulerOpt,
    against: list[str] | None = AgainstOpt,
    index: bool = typer.Option(
        False, "--index", help="Keep OUT/index/ so later runs can dedup --against this output."
    ),
) -> None:
    """Drop exact, near (MinHash LSH) or semantic (embedding) duplicates."""
    kinds = {"exact": "exact", "minhash": "minhash", "semantic": "semdedup", "semdedup": "semdedup"}
    if method not in kinds:
        raise UsageError(f"unknown --method {method!r}", fix="use exact, minhash or semantic")
    options = {
        "threshold": threshold,
        "ngram": ngram,
        "num_perm": num_perm,
        "normalize": normalize,
        "index": index or None,
        **_parse_sets(sets),
    }
    spec = _single_stage(
        kinds[method], options, text_column, id_column, drop_null_text, seed, batch_size, input_format, storage
    )
    _run_spec(
        spec, input, output, resume, overwrite, quiet, jobs=jobs, workers=workers, scheduler=scheduler, against=against
    )


@app.command("index")
def index_command(
    output: str = typer.Argument(..., help="Output directory (or URL) of a finished run."),
    add: str | None = typer.Option(
        None, "--add", help="A later output (run --against OUTPUT) whose index is merged into OUTPUT's."
    ),
    storage: list[str] | None = StorageOpt,
    quiet: bool = QuietOpt,
    jobs: int | None = JobsOpt,
) -> None:
    """Build OUTPUT/index/ (reruns the recorded pipeline over its recorded input), or merge a later output's index into it."""
    from curate.commands.index import add_index, build_index
    from curate.index.store import INDEX_DIR
    from curate.output.store import local_output, local_outputs
    from curate.pipeline import RunOptions

    options = _storage_options(storage)
    with (
        local_output(output, options, writes=True) as local,
        local_outputs([add] if add else [], options, wanted=lambda name: name.startswith(f"{INDEX_DIR}/")) as later,
    ):
        built = (
            add_index(local, later[0])
            if add is not None
            else build_index(local, RunOptions(progress=_progress(quiet), jobs=jobs))
        )
    if not quiet:
        for stored in built:
            out_console.print(
                f"{stored.directory}: {stored.kind}, {stored.rows:,} rows, {stored.nbytes:,} bytes ({stored.nbytes / max(stored.rows, 1):.0f} per row)"
            )


@app.command()
def decontaminate(
    input: str = InputOpt,
    output: str = OutputOpt,
    input_format: str | None = InputFormatOpt,
    storage: list[str] | None = StorageOpt,
    eval_sets: list[str] = typer.Option(
        ...,
        "--eval",
        help="Evaluation set NAME=PATH (repeatable): a Parquet, JSON Lines or saved-dataset file, folder or URL.",
    ),
    eval_text_columns: list[str] | None = typer.Option(
        None,
        "--eval-text-column",
        help="Column of the evaluation sets making an item (repeatable: joined; default text).",
    ),
    eval_id_column: str | None = typer.Option(
        None, "--eval-id-column", help="Item id column of the evaluation sets (default: the row number)."
    ),
    ngram: int | None = typer.Option(None, "--ngram", help="Words per n-gram (default 13)."),
    min_matches: int | None = typer.Option(
        None, "--min-matches", help="Shared n-grams with one item that make a row contaminated (default 1; 0: off)."
    ),
    min_coverage: float | None = typer.Option(
        None, "--min-coverage", help="Or this fraction of one item's n-grams (default 0: off)."
    ),
    sets: list[str] | None = SetOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    text_column: str | None = TextColumnOpt,
    id_column: str | None = IdColumnOpt,
    drop_null_text: bool = DropNullOpt,
    batch_size: int | None = BatchOpt,
    quiet: bool = QuietOpt,
    jobs: int | None = JobsOpt,
    workers: int | None = WorkersOpt,
    scheduler: str | None = SchedulerOpt,
) -> None:
    """Remove rows that share word n-grams with evaluation sets (OUT/decontamination/ says what leaked)."""
    from curate.commands.decontaminate import eval_set_tables

    options = {
        "eval_sets": eval_set_tables(eval_sets, eval_text_columns, eval_id_column),
        "ngram": ngram,
        "min_matches": min_matches,
        "min_coverage": min_coverage,
        **_parse_sets(sets),
    }
    spec = _single_stage(
        "decontaminate", options, text_column, id_column, drop_null_text, None, batch_size, input_format, storage
    )
    _run_spec(spec, input, output, resume, overwrite, quiet, jobs=jobs, workers=workers, scheduler=scheduler)


@app.command()
def embed(
    input: str = InputOpt,
    output: str = OutputOpt,
    input_format: str | None = InputFormatOpt,
    storage: list[str] | None = StorageOpt,
    model: str | None = typer.Option(
        None,
        "--model",
        help="minilm | minilm-static | minilm-fitted | hashing | column:NAME. minilm-static (distilled from minilm, no "
        "transformer: over 100x faster on a CPU) is too weak for semantic dedup (it finds about half of minilm's "
        "duplicate pairs); use it for prototypes and pools. minilm-fitted is minilm-static fitted to minilm's vectors "
        "on a sample of this corpus (cached): as fast, about two thirds of minilm's pairs.",
    ),
    device: str | None = typer.Option(
        None, "--device", help="minilm: auto (CUDA when torch sees a GPU) | cpu | cuda | cuda:N."
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="minilm: torch | onnx (ONNX Runtime on the CPU, faster)."
    ),
    sets: list[str] | None = SetOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    text_column: str | None = TextColumnOpt,
    id_column: str | None = IdColumnOpt,
    drop_null_text: bool = DropNullOpt,
    seed: int | None = SeedOpt,
    batch_size: int | None = BatchOpt,
    quiet: bool = QuietOpt,
    jobs: int | None = JobsOpt,
    workers: int | None = WorkersOpt,
    scheduler: str | None = SchedulerOpt,
) -> None:
    """Embed every text into OUT/embeddings (L2-normalized float32)."""
    options = {"model": model, "device": device, "backend": backend, **_parse_sets(sets)}
    spec = _single_stage(
        "embed", options, text_column, id_column, drop_null_text, seed, batch_size, input_format, storage
    )
    _run_spec(spec, input, output, resume, overwrite, quiet, jobs=jobs, workers=workers, scheduler=scheduler)


@app.command()
def score(
    input: str = InputOpt,
    output: str = OutputOpt,
    input_format: str | None = InputFormatOpt,
    storage: list[str] | None = StorageOpt,
    metric: str = typer.Option("prototypes", "--metric", help="prototypes | loss"),
    keep: str | None = typer.Option(None, "--keep", help="hard | easy | auto"),
    fraction: float | None = typer.Option(None, "--fraction", help="Fraction of rows to keep."),
    clusters: int | None = typer.Option(
        None, "--clusters", help="k-means clusters (prototypes) or loss clusters (loss)."
    ),
    sets: list[str] | None = SetOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    text_column: str | None = TextColumnOpt,
    id_column: str | None = IdColumnOpt,
    drop_null_text: bool = DropNullOpt,
    seed: int | None = SeedOpt,
    batch_size: int | None = BatchOpt,
    quiet: bool = QuietOpt,
    jobs: int | None = JobsOpt,
    workers: int | None = WorkersOpt,
    scheduler: str | None = SchedulerOpt,
) -> None:
    """Score difficulty (prototype distance or loss clusters) and optionally prune by it."""
    kinds = {"prototypes": "prototypes", "loss": "loss_clusters"}
    if metric not in kinds:
        raise UsageError(f"unknown --metric {metric!r}", fix="use prototypes or loss")
    cluster_option = "clusters" if metric == "prototypes" else "groups"  # SeTa calls its loss clusters groups
    options = {"keep": keep, "fraction": fraction, cluster_option: clusters, **_parse_sets(sets)}
    spec = _single_stage(
        kinds[metric], options, text_column, id_column, drop_null_text, seed, batch_size, input_format, storage
    )
    _run_spec(spec, input, output, resume, overwrite, quiet, jobs=jobs, workers=workers, scheduler=scheduler)


@app.command()
def pools(
    input: str = InputOpt,
    output: str = OutputOpt,
    input_format: str | None = InputFormatOpt,
    storage: list[str] | None = StorageOpt,
    score_column: str = typer.Option(..., "--score", help="Score column to bucket."),
    pools: int = typer.Option(4, "--pools", help="Number of quality pools."),
    sets: list[str] | None = SetOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    text_column: str | None = TextColumnOpt,
    id_column: str | None = IdColumnOpt,
    quiet: bool = QuietOpt,
    jobs: int | None = JobsOpt,
    workers: int | None = WorkersOpt,
    scheduler: str | None = SchedulerOpt,
) -> None:
    """Split rows into K quantile pools of a score column (pool 0 best)."""
    spec = _single_stage(
        "pools",
        {"score": score_column, "pools": pools, **_parse_sets(sets)},
        text_column,
        id_column,
        False,
        None,
        None,
        input_format,
        storage,
    )
    _run_spec(spec, input, output, resume, overwrite, quiet, jobs=jobs, workers=workers, scheduler=scheduler)


@app.command()
def demo(
    output: Path = typer.Option(
        Path("curate-demo-out"),
        "-o",
        "--output",
        help="Output directory (replaced if it is an earlier curate output).",
    ),
    quiet: bool = QuietOpt,
) -> None:
    """Run the quickstart pipeline on the bundled demo corpus."""
    from curate.commands.demo import run_demo

    result = run_demo(output, progress=_progress(quiet))
    _print_run_summary(str(result.output), quiet)
    out_console.print(
        f"demo corpus: {result.manifest['input']['rows']:,} rows -> kept {result.kept_rows:,}, removed {result.removed_rows:,}"
    )


@app.command()
def fit(
    runs: Path = typer.Argument(
        ..., help="RUNS.csv: pool, pool_size, samples_seen (or tokens_seen), loss (one row per run)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="LAW.json to write."),
    irreducible: float = typer.Option(0.0, "--irreducible", help="Fixed irreducible loss d >= 0 (not fitted)."),
    repetition: str = typer.Option(
        "goyal", "--repetition", help="goyal (half-life per pool) | muennighoff (effective data)."
    ),
    default_tau: float | None = typer.Option(
        None,
        "--default-tau",
        help="Repetition parameter for pools never run past one pass (default: median of the others).",
    ),
    holdout_budgets: int | None = typer.Option(
        None,
        "--holdout-budgets",
        help="Hold out the K largest budgets to measure decision accuracy (default: 1 with 3+ budgets; 0: skip).",
    ),
) -> None:
    """Fit per-pool scaling-law parameters (utility b, repetition half-life tau, shared a) and measure decision accuracy."""
    from curate.commands.scaling import fit_table, run_fit

    law, warnings = run_fit(runs, output, irreducible, repetition, default_tau, holdout_budgets)
    out_console.print(fit_table(law))
    for warning in warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False)
    out_console.print(f"law: {output}")


@app.command()
def allocate(
    law_path: Path = typer.Argument(..., metavar="LAW.json", help="A fitted law (curate fit)."),
    output: Path = typer.Option(..., "-o", "--output", help="MIX.json to write."),
    budget: float | None = typer.Option(None, "--budget", help="Training budget (samples seen, or tokens)."),
    budgets: str | None = typer.Option(None, "--budgets", help="C1,C2,... or START:STOP:COUNT (log range)."),
    pool_sizes: str | None = typer.Option(
        None, "--pool-sizes", help="Unique samples per pool, best first (plan for the full corpus)."
    ),
    mix: str = typer.Option("prefix", "--mix", help="prefix (pools 0..j-1) | weighted (a share per pool)."),
    max_epochs: str | None = typer.Option(
        None, "--max-epochs", help="Repetition cap: E for every pool, or POOL=E,... (e.g. 0=4,1=8)."
    ),
    budget_unit: str = typer.Option("samples", "--budget-unit", help="samples | tokens (needs --pool-tokens)."),
    pool_tokens: str | None = typer.Option(
        None, "--pool-tokens", help="Tokens per pool, best first (the pools stage records them)."
    ),
    report: Path | None = typer.Option(None, "--report", help="Also write report.html, report.json and plots/ here."),
) -> None:
    """Choose the mix (a quality prefix, or shares per pool) and epochs with the lowest predicted loss per budget."""
    from curate.commands.scaling import plan_lines, run_allocate

    if (budget is None) == (budgets is None):
        raise UsageError(
            "give exactly one of --budget C or --budgets LIST|RANGE", fix="e.g. --budget 1e7 or --budgets 1e4:1e9:20"
        )
    law, chosen, result, options = run_allocate(
        law_path,
        output,
        str(budget) if budget is not None else budgets,
        _positive_list(pool_sizes, "--pool-sizes") if pool_sizes is not None else None,
        mix,
        max_epochs,
        budget_unit,
        _positive_list(pool_tokens, "--pool-tokens") if pool_tokens is not None else None,
    )
    for line in plan_lines(result):
        out_console.print(line, markup=False, highlight=False)
    out_console.print(f"mix: {output}")
    if report is not None:
        from curate.report import build_law_report

        out_console.print(f"report: {build_law_report(law, chosen, report, options)}")


def _positive_list(text: str, option: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(v > 0 for v in values):
        raise UsageError(
            f"{option} {text!r} is not a comma-separated list of positive numbers",
            fix=f"e.g. {option} 1000000,2000000",
        )
    return values


@app.command("report")
def report_command(
    output: str = typer.Argument(..., help="Output directory (or URL) of a finished run."),
    law_path: Path | None = typer.Option(
        None, "--law", help="Use this fitted law instead of the run's [report] settings."
    ),
    budgets: str | None = typer.Option(None, "--budgets", help="C1,C2,... or START:STOP:COUNT (log range)."),
    rerun: bool = typer.Option(False, "--rerun", help="Redo the proxy trainings even if scaling/runs.csv exists."),
    storage: list[str] | None = StorageOpt,
    quiet: bool = QuietOpt,
) -> None:
    """(Re)build report.html, report.json and plots/ from an output directory."""
    from curate.output.store import local_output
    from curate.report import build_pipeline_report

    overrides = {}
    if law_path is not None:
        overrides["law"] = str(law_path)
    if budgets is not None:
        from curate.scaling.allocate import parse_budgets

        overrides["budgets"] = parse_budgets(budgets)
    with local_output(output, _storage_options(storage), writes=True) as local:
        path = build_pipeline_report(local, overrides=overrides, rerun=rerun, progress=_progress(quiet))
        shown = _where(path, local, output)
    out_console.print(f"report: {shown}", soft_wrap=True)


@app.command()
def verify(
    output: str = typer.Argument(..., help="Output directory (or URL) of a finished run."),
    storage: list[str] | None = StorageOpt,
) -> None:
    """Check that every input id is exactly once in kept/ or removed/."""
    from curate.commands.inspect import verify_output
    from curate.output.store import local_output

    options = _storage_options(storage)
    with local_output(output, options) as local:
        report = verify_output(local, options)
    if report.ok:
        out_console.print(
            f"ok: {report.input_rows:,} input rows = {report.kept_rows:,} kept + {report.removed_rows:,} removed"
        )
        return
    for label, ids in (
        ("missing", report.missing),
        ("in kept and removed, or twice", report.duplicated),
        ("not in the input", report.unknown),
    ):
        if ids:
            err_console.print(f"{label}: {', '.join(ids)}")
    for problem in report.problems:
        err_console.print(problem)
    raise typer.Exit(VERIFY_FAILED)


@app.command()
def inspect(
    output: str = typer.Argument(..., help="Output directory (or URL) of a finished run."),
    storage: list[str] | None = StorageOpt,
) -> None:
    """Rows in and out per stage, removal reasons, pools and sizes."""
    from curate.output.read import (
        decontamination_summaries,
        directory_bytes,
        load_finished_manifest,
        pool_counts,
        stage_summaries,
    )
    from curate.output.store import local_output

    with local_output(output, _storage_options(storage)) as local:
        _stage_table(stage_summaries(local))
        for name in ("kept", "removed", "embeddings"):
            size = directory_bytes(local / name)
            if size:
                out_console.print(f"{name}/: {size / 1e6:.1f} MB")
        counts = pool_counts(local)
        leaks = decontamination_summaries(load_finished_manifest(local))
    if counts:
        out_console.print("pools: " + ", ".join(f"{k}: {v:,}" for k, v in counts.items()))
    if leaks:
        _eval_set_table(leaks)


def _eval_set_table(leaks) -> None:
    table = Table(title="evaluation sets (decontaminate)")
    for column in ("set", "items", "items found", "rows removed", "stage"):
        table.add_column(column, justify="left" if column in ("set", "stage") else "right")
    for s in leaks:
        table.add_row(s.name, f"{s.items:,}", f"{s.items_found:,}", f"{s.rows_removed:,}", s.stage)
    out_console.print(table)


@app.command()
def review(
    output: str = typer.Argument(..., help="Output directory (or URL) of a finished run."),
    target: Path | None = typer.Option(None, "-o", "--output", help="HTML file to write (default OUT/review.html)."),
    per_reason: int = typer.Option(10, "--per-reason", help="Clusters or examples shown per stage and reason."),
    seed: int = typer.Option(0, "--seed", help="Seed of the deterministic sample."),
    storage: list[str] | None = StorageOpt,
) -> None:
    """One HTML page of what each stage removed: duplicate clusters beside their kept row, pruning scores, pools."""
    from curate.commands.review import write_review
    from curate.output.store import local_output

    options = _storage_options(storage)
    wanted = lambda name: not name.startswith(("embeddings/", "index/", "prototypes/"))  # noqa: E731
    with local_output(output, options, writes=target is None, wanted=wanted) as local:
        path = write_review(local, target, per_reason=per_reason, seed=seed, storage_options=options)
        shown = _where(path, local, output) if target is None else str(path)
    out_console.print(f"wrote {shown}", soft_wrap=True)


@app.command()
def diff(
    output_a: str = typer.Argument(..., help="First output directory (or URL)."),
    output_b: str = typer.Argument(..., help="Second output directory (or URL), over the same input."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the counts and sampled ids as JSON here."),
    html_path: Path | None = typer.Option(
        None, "--html", help="Write a sample of the differing rows as an HTML page."
    ),
    per_reason: int = typer.Option(10, "--per-reason", help="Rows shown per (fate in A, fate in B) pair in --html."),
    seed: int = typer.Option(0, "--seed", help="Seed of the deterministic sample."),
    storage: list[str] | None = StorageOpt,
) -> None:
    """Rows whose fate differs between two outputs of the same input, counted by stage and reason."""
    from curate.commands.diff import diff_outputs
    from curate.output.store import local_outputs

    options = _storage_options(storage)
    wanted = lambda name: not name.startswith(("embeddings/", "index/", "prototypes/"))  # noqa: E731
    with local_outputs((output_a, output_b), options, wanted=wanted) as (a, b):
        result = diff_outputs(
            Path(a),
            Path(b),
            json_path=json_path,
            html_path=html_path,
            per_reason=per_reason,
            seed=seed,
            storage_options=options,
            names=(output_a, output_b),
        )
    table = Table(title=f"{result['differing_rows']:,} of {result['input_rows']:,} rows differ")
    for column in ("in A", "in B", "rows"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for pair in result["pairs"]:
        table.add_row(pair["a"], pair["b"], f"{pair['rows']:,}")
    out_console.print(table)
    for path in (json_path, html_path):
        if path is not None:
            out_console.print(f"wrote {path}", soft_wrap=True)


@app.command("export")
def export_command(
    output: str = typer.Argument(..., help="Output directory (or URL) of a finished run."),
    format: str = typer.Option("jsonl", "--format", help="jsonl (kept/ itself is Parquet)."),
    target: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="A directory (one file per kept part; default OUT/kept-jsonl) or a file ending in .jsonl, .jsonl.gz or .jsonl.zst (all rows).",
    ),
    compression: str | None = typer.Option(
        None, "--compression", help="gzip | zstd | none (default: from a file name, else none)."
    ),
    storage: list[str] | None = StorageOpt,
) -> None:
    """Write the kept rows of a finished output as JSON Lines."""
    from curate.commands.export import export_jsonl
    from curate.output.store import local_output

    if format != "jsonl":
        raise UsageError(f"unknown --format {format!r}", fix="use --format jsonl; kept/ already is Parquet")
    # A URL output with no -o gets OUT/kept-jsonl/ committed back to the store.
    with local_output(
        output, _storage_options(storage), writes=target is None, wanted=lambda name: name.startswith("kept/")
    ) as local:
        result = export_jsonl(local, target, compression)
        shown = _where(Path(result.target), local, output) if target is None else result.target
    out_console.print(
        f"exported {result.rows:,} kept rows to {shown} ({len(result.files)} file{'s' if len(result.files) != 1 else ''})",
        soft_wrap=True,
    )


# ---------------------------------------------------------------------------------------
# `curate evaluate`: evidence before compute (logic in curate/evaluate.py).


@app.command()
def evaluate(
    output: str = typer.Argument(..., help="Output directory (or URL) of a finished run."),
    label_column: str = typer.Option(
        ..., "--label-column", help="Label column the proxy classifier learns (e.g. section)."
    ),
    score: list[str] | None = typer.Option(
        None, "--score", help="Numeric score column to check against random (repeatable); pools are its quantiles."
    ),
    direction: str = typer.Option("auto", "--direction", help="auto | higher | lower: which score values are better."),
    budgets: str | None = typer.Option(
        None, "--budgets", help="Budgets (samples seen): C1,C2,... or START:STOP:COUNT."
    ),
    seeds: int | None = typer.Option(
        None, "--seeds", help="Proxy seeds per run (2+: the uncertainty is the spread across seeds)."
    ),
    rerun: bool = typer.Option(False, "--rerun", help="Retrain the proxy runs instead of reusing cached ones."),
    storage: list[str] | None = StorageOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Check the run's pools and any score column against random data of the same size (proxy trainings); writes the report."""
    from curate.commands.evaluate import evaluate_output

    if direction not in ("auto", "higher", "lower"):
        raise UsageError(f"--direction {direction!r}", fix="use auto, higher or lower")
    if seeds is not None and seeds < 1:
        raise UsageError(f"--seeds {seeds}", fix="use 1 or more")
    parsed = None
    if budgets is not None:
        from curate.scaling.allocate import parse_budgets

        parsed = parse_budgets(budgets)
    from curate.output.store import local_output

    with local_output(output, _storage_options(storage), writes=True) as local:
        path = evaluate_output(
            local,
            label_column,
            score or [],
            direction=direction,
            budgets=parsed,
            seeds=seeds,
            rerun=rerun,
            progress=_progress(quiet),
        )
        shown = _where(path, local, output)
    out_console.print(f"report: {shown}", soft_wrap=True)


_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT


def _is_click_error(exc: BaseException) -> bool:
    """click's ClickException, whether from click or from the copy that typer vendors."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and exit 2; bugs exit 1."""
    tune_allocator()  # every command's array work (index, evaluate, report) gains from it
    try:
        result = app(args=argv, standalone_mode=False)
        if result == _INTERRUPTED:  # typer turns Ctrl-C into Exit(130), returned here
            raise KeyboardInterrupt
        if isinstance(result, int) and result:
            sys.exit(result)  # typer.Exit(n) is returned, not raised, outside standalone mode
    except CurateError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print(
            f"interrupted; continue with: {_resume_command(argv)}", markup=False, highlight=False, soft_wrap=True
        )
        sys.exit(_INTERRUPTED)
    except OSError as exc:
        error = as_write_error(exc)
        if error is None:
            _internal_error(exc)
        err_console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except Exception as exc:  # click's usage errors are handled here; everything else is a bug
        if _is_click_error(exc):
            exc.show()  # type: ignore[attr-defined]  (click's message, with its "Did you mean" hint)
            sys.exit(getattr(exc, "exit_code", 2) or 2)
        _internal_error(exc)


def _internal_error(exc: BaseException) -> None:
    err_console.print(f"internal error: {type(exc).__name__}: {exc}", markup=False, highlight=False)
    if os.environ.get("CURATE_DEBUG"):
        traceback.print_exc()
    else:
        err_console.print("(set CURATE_DEBUG=1 for the traceback)")
    sys.exit(1)


def _resume_command(argv: list[str] | None) -> str:
    """The interrupted command again with --resume (and without --overwrite, which would start over)."""
    import shlex

    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] not in _RESUMABLE:
        return "the same command with --resume"
    words = [w for w in words if w != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(["curate", *words])


_RESUMABLE = {"run", "dedup", "embed", "score", "pools", "demo"}


if __name__ == "__main__":
    main()
