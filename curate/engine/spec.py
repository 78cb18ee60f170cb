"""The pipeline file: TOML -> an ordered list of stage specs, validated before anything runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from curate.errors import UsageError
from curate.io.inputs import DEFAULT_BATCH_SIZE, ColumnSpec
from curate.stages.base import stage_class


@dataclass
class StageSpec:
    kind: str
    options: dict[str, Any]
    name: str


@dataclass
class PipelineSpec:
    stages: list[StageSpec]
    columns: ColumnSpec = field(default_factory=ColumnSpec)
    seed: int = 0
    drop_null_text: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    report: dict[str, Any] | None = None
    source: str = "pipeline"
    # fsspec options for a URL output ([output] storage_options); never written to the manifest.
    output_options: tuple[tuple[str, Any], ...] = ()
    # Earlier outputs whose indexes the dedup stages match against (`against = [...]`, oldest
    # first); the CLI's --against and RunOptions.against add theirs after these.
    against: tuple[str, ...] = ()

    def resolved(self) -> dict[str, Any]:
        """The config as it will run: every stage option with its default filled in."""
        stages = []
        for spec in self.stages:
            cls = stage_class(spec.kind, self.source)
            options = {**cls.option_defaults(), **spec.options}
            stages.append({"name": spec.name, "kind": spec.kind, "options": options})
        return {
            "input": {
                "text_column": self.columns.text,
                "id_column": self.columns.id,
                "drop_null_text": self.drop_null_text,
                **(
                    {"format": self.columns.format} if self.columns.format else {}
                ),  # absent: outputs made before formats still resume
            },
            "seed": self.seed,
            "stages": stages,
            "report": self.report,
            # absent when empty: outputs made before the key existed still resume
            **({"against": [earlier_output(p) for p in self.against]} if self.against else {}),
        }


_TOP_KEYS = {"input", "output", "stage", "report", "seed", "batch_size", "against"}
_INPUT_KEYS = {"text_column", "id_column", "drop_null_text", "format", "storage_options"}
_OUTPUT_KEYS = {"storage_options"}


def bundled_pipeline(name: str) -> Path | None:
    """A ready pipeline shipped inside the package (`quickstart`, `web-text`, `scale`), so an
    installed curate runs them without a checkout: `curate run quickstart -i IN -o OUT`."""
    from importlib import resources

    found = resources.files("curate.pipelines") / f"{name.removesuffix('.toml')}.toml"
    return Path(str(found)) if found.is_file() else None


def load_pipeline(path: str | os.PathLike) -> PipelineSpec:
    path = Path(path)
    if not path.exists() and path.parent == Path("."):
        path = bundled_pipeline(path.name) or path
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(
            "pipeline file does not exist",
            path=path,
            fix="pass a TOML pipeline file, or a bundled one by name: quickstart, web-text, scale",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"malformed TOML ({exc})", path=path, fix="fix the TOML syntax") from None
    return parse_pipeline(data, str(path), base=path.parent)


def parse_pipeline(
    data: dict[str, Any], source: str = "pipeline", base: str | os.PathLike | None = None
) -> PipelineSpec:
    """The spec of a parsed pipeline table; relative `against` paths are taken from `base` (a
    pipeline file's directory) when given, else from the working directory."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UsageError(f"unknown top-level key(s) {unknown}", path=source, fix=f"valid keys: {sorted(_TOP_KEYS)}")
    input_table = data.get("input", {})
    if not isinstance(input_table, dict):
        raise UsageError("[input] must be a table", path=source, fix="write [input] with text_column / id_column")
    bad = sorted(set(input_table) - _INPUT_KEYS)
    if bad:
        raise UsageError(f"unknown [input] key(s) {bad}", path=source, fix=f"valid keys: {sorted(_INPUT_KEYS)}")
    output_table = data.get("output", {})
    if not isinstance(output_table, dict) or sorted(set(output_table) - _OUTPUT_KEYS):
        raise UsageError(
            "[output] takes only storage_options",
            path=source,
            fix='e.g. [output] storage_options = { endpoint_url = "http://127.0.0.1:9000" }',
        )
    raw_stages = data.get("stage", [])
    if not isinstance(raw_stages, list) or not all(isinstance(s, dict) for s in raw_stages):
        raise UsageError(
            "stages must be [[stage]] tables", path=source, fix="write each stage as a [[stage]] table with a kind"
        )
    stages: list[StageSpec] = []
    seen: dict[str, int] = {}
    for position, raw in enumerate(raw_stages, start=1):
        options = dict(raw)
        kind = options.pop("kind", None)
        if not isinstance(kind, str):
            raise UsageError(
                f"stage {position} has no kind", path=source, fix='add kind = "exact" (or another stage kind)'
            )
        stage_class(kind, source).from_options(options, where=f"{source} (stage {position}, {kind})")
        seen[kind] = seen.get(kind, 0) + 1
        name = kind if seen[kind] == 1 else f"{kind}_{seen[kind]}"
        stages.append(StageSpec(kind, options, name))
    seed = data.get("seed", 0)
    batch_size = data.get("batch_size", DEFAULT_BATCH_SIZE)
    if not isinstance(seed, int) or not isinstance(batch_size, int) or batch_size <= 0:
        raise UsageError(
            "seed and batch_size must be integers (batch_size > 0)",
            path=source,
            fix="e.g. seed = 0, batch_size = 65536",
        )
    report = data.get("report")
    if report is not None and not isinstance(report, dict):
        raise UsageError("[report] must be a table", path=source, fix="write [report] with budgets = [...]")
    if report is not None:
        from curate.report.config import parse_report_table

        parse_report_table(report, source)
    return PipelineSpec(
        against=_against(data.get("against", []), source, base),
        stages=stages,
        columns=ColumnSpec(
            text=input_table.get("text_column", "text"),
            id=input_table.get("id_column", "id"),
            format=_input_format(input_table, source),
            storage_options=_storage_table(input_table, "input", source),
        ),
        seed=seed,
        drop_null_text=bool(input_table.get("drop_null_text", False)),
        batch_size=batch_size,
        report=report,
        source=source,
        output_options=_storage_table(output_table, "output", source),
    )


def _storage_table(table: dict[str, Any], where: str, source: str) -> tuple[tuple[str, Any], ...]:
    """[input]/[output] storage_options: an inline table of fsspec keyword arguments."""
    options = table.get("storage_options", {})
    if not isinstance(options, dict):
        raise UsageError(
            f"[{where}] storage_options must be a table",
            path=source,
            fix=f'e.g. [{where}] storage_options = {{ endpoint_url = "http://127.0.0.1:9000" }}',
        )
    return tuple(sorted(options.items()))


def merge_options(
    base: tuple[tuple[str, Any], ...], extra: tuple[tuple[str, Any], ...]
) -> tuple[tuple[str, Any], ...]:
    """The pipeline file's storage options, with the command line's on top."""
    return tuple({**dict(base), **dict(extra)}.items())


def _input_format(table: dict[str, Any], source: str) -> str | None:
    from curate.io.formats import check_format

    try:
        return check_format(table.get("format"))
    except UsageError as exc:
        raise UsageError(
            f"[input] format: {exc}", path=source, fix='format = "parquet", "jsonl" or "hf" (or leave it out)'
        ) from None


def earlier_output(location: str) -> str:
    """How an earlier output is recorded: a URL as given, a local path absolute."""
    return location if "://" in location else str(Path(location).resolve())


def _against(value: Any, source: str, base: str | os.PathLike | None) -> tuple[str, ...]:
    """`against = "OLD_OUT"` or a list of them, oldest first; each relative path is taken from
    `base` (the pipeline file's directory), so a pipeline runs the same from any directory."""
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise UsageError(
            f"against must be a path or a list of paths, got {value!r}",
            path=source,
            fix='e.g. against = ["../out-2026-10"] (earlier outputs, oldest first)',
        )
    resolved = [
        str(Path(base) / p) if base is not None and not Path(p).is_absolute() and "://" not in p else p for p in paths
    ]
    return tuple(dict.fromkeys(resolved))  # an output listed twice is matched once
