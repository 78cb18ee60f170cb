"""The pipeline's `[report]` table, checked when the pipeline is parsed (before any work runs).

Where the law comes from, first match wins: `law` (a LAW.json), `runs` (a RUNS.csv to fit), or
`label_column` (proxy trainings on the kept rows' pools). Without any of them the report still
shows the funnel and the pools, and says how to get the budget plan.

Each key is declared once, in REPORT_OPTIONS (name, default, accepted values, what it is for):
the defaults, the checks and the ReportSettings fields all come from that table."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any

from curate.errors import UsageError
from curate.stages.constraints import Constraint, Interval, ListOf, Options, Text, describe_all

_POSITIVE = Interval(float, 0, None, closed="neither")


@dataclass(frozen=True)
class ReportOption:
    """One `[report]` key. A value of None means "not set" (the CLI passes None for a flag not
    given), so only other values are checked; `example` (TOML) goes into the fix of an error."""

    name: str
    type: Any
    default: Any
    constraints: list[Constraint]
    about: str
    example: str


REPORT_OPTIONS: tuple[ReportOption, ...] = (
    ReportOption(
        "budgets",
        list[float] | None,
        None,
        [ListOf(_POSITIVE)],
        "budgets (samples seen) to plan for; default: a log range over the pools' scale",
        "[1e5, 1e6, 1e7]",
    ),
    ReportOption("law", str | None, None, [Text()], "path to a LAW.json", '"LAW.json"'),
    ReportOption("runs", str | None, None, [Text()], "path to a RUNS.csv to fit", '"RUNS.csv"'),
    ReportOption(
        "label_column", str | None, None, [Text()], "a label column: fit from proxy trainings on the pools", '"label"'
    ),
    ReportOption(
        "pools", int, 4, [Interval(int, 2, None)], "pools made from proxy loss when kept/ has no `pool` column", "4"
    ),
    ReportOption(
        "epochs",
        list[float],
        [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
        [ListOf(_POSITIVE)],
        "proxy checkpoints, passes over each pool",
        "[0.5, 1.0, 2.0]",
    ),
    ReportOption(
        "mix_epochs",
        list[float],
        [0.5, 1.0, 2.0],
        [ListOf(_POSITIVE, nonempty=False)],
        "proxy checkpoints for the prefix mixes (extra evidence)",
        "[0.5, 1.0, 2.0]",
    ),
    ReportOption("classes", int, 20, [Interval(int, 2, None)], "proxy task: the most frequent label values", "20"),
    ReportOption(
        "seeds", int, 1, [Interval(int, 1, None)], "proxy trainings, each with its own seed, per pool mix", "1"
    ),
    ReportOption(
        "metric",
        str,
        "error",
        [Options(("error", "loss"))],
        'held-out error rate (1 - accuracy), or "loss" (cross-entropy, rises when repetition overfits)',
        '"error"',
    ),
    ReportOption(
        "heldout_fraction",
        float,
        0.2,
        [Interval(float, 0, 1, closed="neither")],
        "share of the proxy task's rows held out to score it",
        "0.2",
    ),
    ReportOption(
        "irreducible", float, 0.0, [Interval(float, 0, None)], "a fixed loss floor in the law (not fitted)", "0.0"
    ),
    ReportOption(
        "repetition",
        str,
        "goyal",
        [Options(("goyal", "muennighoff"))],
        "how the law discounts repeated epochs",
        '"goyal"',
    ),
    ReportOption(
        "budget",
        float | None,
        None,
        [_POSITIVE],
        'the training budget in samples seen: the prototypes stage\'s keep = "auto" reads it',
        "1e6",
    ),
    ReportOption(
        "seta_rows",
        int,
        10000,
        [Interval(int, 50, None)],
        "SeTa check (after a loss_clusters stage): training rows sampled for its short proxy runs",
        "10000",
    ),
    ReportOption(
        "seta_seeds",
        int,
        3,
        [Interval(int, 2, None)],
        "SeTa check: seeds per method (full, SeTa, random at equal visits)",
        "3",
    ),
)
REPORT_DEFAULTS: dict[str, Any] = {option.name: option.default for option in REPORT_OPTIONS}


def _field(option: ReportOption) -> Any:
    if isinstance(option.default, list):
        default = option.default
        return field(default_factory=lambda: list(default))
    return field(default=option.default)


ReportSettings = make_dataclass(
    "ReportSettings", [(option.name, option.type, _field(option)) for option in REPORT_OPTIONS], frozen=True
)
ReportSettings.__module__ = __name__  # so it pickles and prints as curate.report.config.ReportSettings
ReportSettings.__doc__ = (
    "The checked `[report]` settings: one field per REPORT_OPTIONS entry, its default when not set."
)


def parse_report_table(table: dict[str, Any] | None, where: str = "pipeline") -> ReportSettings:
    """Validate a `[report]` table: an unknown key, or a value its constraints refuse, is a
    one-line UsageError that names the key."""
    table = dict(table or {})
    unknown = sorted(set(table) - set(REPORT_DEFAULTS))
    if unknown:
        raise UsageError(
            f"unknown [report] key(s) {unknown}", path=where, fix=f"valid keys: {', '.join(REPORT_DEFAULTS)}"
        )
    values: dict[str, Any] = {}
    for option in REPORT_OPTIONS:
        value = table.get(option.name)
        if value is None:
            continue
        if not any(c.accepts(value) for c in option.constraints):
            raise UsageError(
                f"[report] {option.name} must be {describe_all(option.constraints)}, got {value!r}",
                path=where,
                fix=f"e.g. {option.name} = {option.example} ({option.about})",
            )
        values[option.name] = (
            [float(v) for v in value] if isinstance(value, list) else value
        )  # lists hold numbers only
    return ReportSettings(**values)
