"""`curate fit` and `curate allocate`: the bodies behind the CLI's parsing (tables built here, printed there)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from rich.table import Table

from curate.errors import UsageError
from curate.scaling import load_law, save_json, save_law
from curate.scaling.allocate import MIX_MODES, Constraints, parse_budgets, plan
from curate.scaling.decision import decision_accuracy, decision_fields
from curate.scaling.fit import fit_law
from curate.scaling.law import REPETITION_NAMES, Law
from curate.scaling.runs import read_runs

BUDGET_UNITS = ("samples", "tokens")


def run_fit(
    runs_path: Path,
    output: Path,
    irreducible: float = 0.0,
    repetition: str = "goyal",
    default_tau: float | None = None,
    holdout_budgets: int | None = None,
    seed: int = 0,
) -> tuple[Law, list[str]]:
    """Fit on all runs (the law written), and measure decision accuracy by a second fit that holds
    out the largest budgets; both go into LAW.json's `fit`. Returns the law and its warnings."""
    if repetition not in REPETITION_NAMES:
        raise UsageError(f"unknown --repetition {repetition!r}", fix="use goyal or muennighoff")
    if irreducible < 0 or (default_tau is not None and default_tau <= 0):
        raise UsageError("--irreducible must be >= 0 and --default-tau > 0", fix="e.g. --irreducible 0.5")
    if holdout_budgets is not None and holdout_budgets < 0:
        raise UsageError("--holdout-budgets must be >= 0", fix="e.g. --holdout-budgets 1 (0: skip)")
    model = REPETITION_NAMES[repetition]
    runs = read_runs(runs_path)
    result = fit_law(runs, model, irreducible, default_tau)
    decision = decision_accuracy(
        runs, lambda t: fit_law(t, model, irreducible, default_tau).law, holdout=holdout_budgets, seed=seed
    )
    result.law.fit.update(decision_fields(decision))
    save_law(output, result.law)
    return result.law, result.warnings


def fit_table(law: Law) -> Table:
    """Per pool and mix: size, b, tau, passes, rmse, and what is suspect about it (bounds, trends)."""
    fit = law.fit
    table = Table(
        title=f"{law.model}: a = {law.a:.4g}, rmse(log loss) = {fit['rmse_log']:.4f} over {fit['runs']} runs"
    )
    for column in (
        "pool",
        "size",
        "b",
        "tau" if law.model == "goyal2024" else "R*",
        "max epochs",
        "rmse(log)",
        "flags",
    ):
        table.add_column(column, justify="left" if column in ("pool", "flags") else "right")
    flags: dict[str, list[str]] = {}
    for f in fit.get("flags", []):
        what = f"{f['parameter']} at bound" if f["kind"] == "at_bound" else "residual trend"
        flags.setdefault(str(f["pool"]), []).append(what)
    for label, rmse in fit["rmse_log_per_pool"].items():
        pool = next((p for p in law.pools if p.name == label), None)
        b, tau = (
            (f"{pool.b:.4f}", f"{pool.tau:.3g}" + ("" if pool.tau_identified else " (default)"))
            if pool
            else ("mix", "")
        )
        size = pool.size if pool else next(o["pool_size"] for o in fit["observations"] if o["pool"] == label)
        table.add_row(
            label,
            f"{size:,.0f}",
            b,
            tau,
            f"{fit['max_epochs_per_pool'][label]:.3g}",
            f"{rmse:.4f}",
            ", ".join(flags.get(label, [])),
        )
    if "decision" in fit:
        table.caption = fit["decision"]["summary"]
    return table


def parse_caps(text: str | None, law: Law) -> tuple[float, ...] | None:
    """'2' (every pool) or '0=4,1=8' (per pool name; others uncapped) -> a cap per pool."""
    if text is None:
        return None
    fix = "write E (every pool) or POOL=E,... with E >= 1 passes, e.g. --max-epochs 4 or --max-epochs 0=4,1=8"
    caps = np.full(len(law.pools), np.inf)
    names = law.names
    try:
        if "=" not in text:
            caps[:] = float(text)
        else:
            for part in text.split(","):
                name, value = (x.strip() for x in part.split("=", 1))
                if name not in names:
                    raise UsageError(f"--max-epochs names pool {name!r}, the law has {', '.join(names)}", fix=fix)
                caps[names.index(name)] = float(value)
    except ValueError:
        raise UsageError(f"bad --max-epochs {text!r}", fix=fix) from None
    if not np.all(caps > 0) or np.isnan(caps).any():
        raise UsageError(f"bad --max-epochs {text!r}: caps must be positive", fix=fix)
    return tuple(float(c) for c in caps)


def run_allocate(
    law_path: Path,
    output: Path,
    budgets_text: str,
    pool_sizes: Sequence[float] | None = None,
    mix: str = "prefix",
    max_epochs: str | None = None,
    budget_unit: str = "samples",
    pool_tokens: Sequence[float] | None = None,
) -> tuple[Law, list[float], dict, dict]:
    """Plan per budget (returns the law, budgets, MIX.json and the plan options for a report); MIX.json written. Token budgets need the tokens per pool (--pool-tokens, as
    the pools stage records them) unless the law itself was fitted in tokens."""
    if mix not in MIX_MODES:
        raise UsageError(f"unknown --mix {mix!r}", fix="use prefix or weighted")
    if budget_unit not in BUDGET_UNITS:
        raise UsageError(f"unknown --budget-unit {budget_unit!r}", fix="use samples or tokens")
    chosen = parse_budgets(budgets_text)
    law = load_law(law_path)
    for values, option in ((pool_sizes, "--pool-sizes"), (pool_tokens, "--pool-tokens")):
        if values is not None and len(values) != len(law.pools):
            raise UsageError(
                f"{option} has {len(values)} values, the law has {len(law.pools)} pools",
                fix="one value per pool, best first, comma-separated",
            )
    if pool_sizes is not None:
        law = law.with_sizes(pool_sizes)
    law_unit = law.fit.get("unit", "samples")
    lengths = None
    if budget_unit == "tokens" and law_unit != "tokens":
        if pool_tokens is None:
            raise UsageError(
                "--budget-unit tokens needs the tokens of each pool",
                fix="pass --pool-tokens T0,T1,... (the pools stage records them in the manifest), or fit on tokens_seen",
            )
        lengths = tuple(float(t) / p.size for t, p in zip(pool_tokens, law.pools))
    elif budget_unit == "samples" and law_unit == "tokens":
        raise UsageError(
            "the law was fitted on tokens_seen, so its budgets are tokens", fix="pass --budget-unit tokens"
        )
    constraints = Constraints(parse_caps(max_epochs, law), lengths)
    options = {"mix": mix, "constraints": constraints, "budget_unit": budget_unit}
    result = plan(law, chosen, **options)
    save_json(output, result)
    return law, chosen, result, options


def plan_lines(result: dict) -> list[str]:
    """One line per budget (shares and passes per pool for a weighted plan), then the switches."""
    unit = result.get("budget_unit", "samples")
    lines = []
    for e in result.get("mixes", [result]):
        if e.get("mix") == "weighted":
            parts = ", ".join(
                f"{name} {share:.1%} ({e['pool_epochs'][name]:.3g} ep)" for name, share in e["shares"].items()
            )
            what = f"shares {parts}"
        else:
            what = f"pools {'+'.join(e['pools'])} ({e['unique']:,} unique, {e['epochs']:.3g} epochs)"
        line = f"budget {e['budget']:.3g} {unit}: {what}, predicted loss {e['predicted_loss']:.4g}"
        if not e.get("within_caps", True):
            line += f" -- the caps allow only {e['spendable_budget']:.3g} {unit}: planned for that"
        lines.append(line)
    plain = result.get("mix", "prefix") == "prefix" and not result.get("max_epochs") and unit == "samples"
    for switch in result["switches"] if plain else []:  # the unconstrained prefix plan's switches
        lines.append(f"switch at {switch['budget']:.3g}: {'+'.join(switch['from'])} -> {'+'.join(switch['to'])}")
    return lines
