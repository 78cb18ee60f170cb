"""The pipeline's `[report]` table, checked when the pipeline is parsed (before any work runs).

Where the law comes from, first match wins: `law` (a LAW.json), `runs` (a RUNS.csv to fit), or
`label_column` (proxy trainings on the kept rows' pools). Without any of them the report still
shows the funnel and the pools, and says how to get the budget plan."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from curate.errors import UsageError

REPORT_DEFAULTS: dict[str, Any] = {
    "budgets": None,  # budgets (samples seen) to plan for; default: a log range over the pools' scale
    "law": None,  # path to a LAW.json
    "runs": None,  # path to a RUNS.csv to fit
    "label_column": None,  # a label column: fit from proxy trainings on the pools
    "pools": 4,  # pools made from proxy loss when kept/ has no `pool` column
    "epochs": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],  # proxy checkpoints, passes over each pool
    "mix_epochs": [0.5, 1.0, 2.0],  # proxy checkpoints for the prefix mixes (extra evidence)
    "classes": 20,  # proxy task: the most frequent label values
    "seeds": 1,
    "metric": "error",  # held-out error rate (1 - accuracy), or "loss" (cross-entropy, rises when repetition overfits)
    "heldout_fraction": 0.2,
    "irreducible": 0.0,
    "repetition": "goyal",
    "budget": None,  # the training budget in samples seen: the prototypes stage's keep = "auto" reads it
    "seta_rows": 10000,  # SeTa check (after a loss_clusters stage): training rows sampled for its short proxy runs
    "seta_seeds": 3,  # SeTa check: seeds per method (full, SeTa, random at equal visits)
}
_TYPES: dict[str, tuple[type, ...]] = {
    "law": (str,), "runs": (str,), "label_column": (str,), "pools": (int,), "classes": (int,), "seeds": (int,),
    "metric": (str,), "heldout_fraction": (float, int), "irreducible": (float, int), "repetition": (str,),
    "budget": (float, int), "seta_rows": (int,), "seta_seeds": (int,),
}


@dataclass(frozen=True)
class ReportSettings:
    budgets: list[float] | None = None
    law: str | None = None
    runs: str | None = None
    label_column: str | None = None
    pools: int = 4
    epochs: list[float] = field(default_factory=lambda: list(REPORT_DEFAULTS["epochs"]))
    mix_epochs: list[float] = field(default_factory=lambda: list(REPORT_DEFAULTS["mix_epochs"]))
    classes: int = 20
    seeds: int = 1
    metric: str = "error"
    heldout_fraction: float = 0.2
    irreducible: float = 0.0
    repetition: str = "goyal"
    seta_rows: int = 10000
    seta_seeds: int = 3


def _numbers(value: Any, key: str, where: str, allow_empty: bool = False) -> list[float]:
    if not isinstance(value, list) or (not value and not allow_empty) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        raise UsageError(f"[report] {key} must be a list of positive numbers, got {value!r}", path=where, fix=f"e.g. {key} = [1e5, 1e6, 1e7]")
    return [float(v) for v in value]


def parse_report_table(table: dict[str, Any] | None, where: str = "pipeline") -> ReportSettings:
    """Validate a `[report]` table; unknown keys and wrong types are a one-line UsageError."""
    table = dict(table or {})
    unknown = sorted(set(table) - set(REPORT_DEFAULTS))
    if unknown:
        raise UsageError(f"unknown [report] key(s) {unknown}", path=where, fix=f"valid keys: {', '.join(REPORT_DEFAULTS)}")
    for key, types in _TYPES.items():
        value = table.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise UsageError(f"[report] {key} should be {types[0].__name__}, got {value!r}", path=where, fix=f"e.g. {key} = {REPORT_DEFAULTS[key]!r}" if REPORT_DEFAULTS[key] is not None else f"set {key} to a {types[0].__name__}")
    values = {f.name: table[f.name] for f in fields(ReportSettings) if table.get(f.name) is not None}
    for key in ("budgets", "epochs"):
        if key in values:
            values[key] = _numbers(values[key], key, where)
    if "mix_epochs" in values:
        values["mix_epochs"] = _numbers(values["mix_epochs"], "mix_epochs", where, allow_empty=True)
    settings = ReportSettings(**values)
    if settings.metric not in ("loss", "error"):
        raise UsageError(f"[report] metric {settings.metric!r}", path=where, fix='use "loss" or "error"')
    if settings.repetition not in ("goyal", "muennighoff"):
        raise UsageError(f"[report] repetition {settings.repetition!r}", path=where, fix='use "goyal" or "muennighoff"')
    if settings.pools < 2 or settings.classes < 2 or settings.seeds < 1 or not (0 < settings.heldout_fraction < 1) or settings.irreducible < 0 or settings.seta_rows < 50 or settings.seta_seeds < 2:
        raise UsageError("[report] needs pools >= 2, classes >= 2, seeds >= 1, 0 < heldout_fraction < 1, irreducible >= 0, seta_rows >= 50, seta_seeds >= 2", path=where, fix="fix the [report] values")
    return settings
