"""Decision accuracy: does a law fitted on small budgets rank the options the way the large runs do?

AI2's DataDecide showed that what matters for a data decision is pairwise ranking: of every
pair of candidates (pools and mixes) measured at a held-out budget, the fraction the prediction
orders like the measured losses. Its baseline, which many fitted laws fail to beat, is the simple
rule "rank by the loss at the largest budget fitted". Here: hold out the largest budgets of the
runs, fit on the rest, and score both rankings with a bootstrap interval over candidates.

Budgets of different candidates rarely match to the sample (quantile pools differ by a few
percent in rows once the proxy task keeps its largest classes; a mix checkpoint at 0.5 passes
over twice the rows), so run budgets within BUDGET_TOLERANCE of each other (relative) count as
one budget. The law predicts each run at its own budget; the simple rule cannot, which costs it
little: at b ~ -0.15 a 10% budget gap moves a loss by about 1.5%."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from curate.scaling.law import Law
from curate.scaling.runs import RunsTable

BUDGET_TOLERANCE = 0.1
BOOTSTRAP = 1000
LEVEL = 0.95


def pairwise_accuracy(predicted: np.ndarray, measured: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Fraction of pairs (within a group: one held-out budget) that `predicted` orders like `measured`.
    Pairs tied in `measured` carry no decision and are skipped; a tie in `predicted` counts half.
    NaN when there is no pair."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    groups = np.zeros(len(measured), int) if groups is None else np.asarray(groups)
    i, j = np.triu_indices(len(measured), k=1)
    same = groups[i] == groups[j]
    i, j = i[same], j[same]
    truth = np.sign(measured[i] - measured[j])
    guess = np.sign(predicted[i] - predicted[j])
    decided = truth != 0
    if not decided.any():
        return float("nan")
    score = np.where(guess[decided] == truth[decided], 1.0, np.where(guess[decided] == 0, 0.5, 0.0))
    return float(score.mean())


def bootstrap_accuracy(
    rankings: dict[str, np.ndarray],
    measured: np.ndarray,
    candidate: np.ndarray,
    groups: np.ndarray,
    seed: int = 0,
    draws: int = BOOTSTRAP,
) -> dict[str, tuple[float, float]]:
    """Percentile interval (LEVEL) of each ranking's accuracy, resampling candidates with replacement
    (the same draws for every ranking, so their intervals compare like with like); a candidate drawn
    twice is one candidate (its pair with itself is no decision)."""
    rng = np.random.default_rng([seed, 26])
    names = np.unique(candidate)
    values: dict[str, list[float]] = {k: [] for k in rankings}
    values["difference"] = []
    keys = list(rankings)
    for _ in range(draws):
        picked = np.unique(rng.choice(names, size=len(names), replace=True))
        rows = np.isin(candidate, picked)
        scores = [pairwise_accuracy(rankings[k][rows], measured[rows], groups[rows]) for k in keys]
        for k, v in zip(keys, scores):
            values[k].append(v)
        values["difference"].append(scores[0] - scores[-1])
    tail = (1 - LEVEL) / 2 * 100
    out = {}
    for k, v in values.items():
        v = np.asarray(v)
        v = v[np.isfinite(v)]
        out[k] = (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) if len(v) else (np.nan, np.nan)
    return out


def budget_groups(samples_seen: np.ndarray, tolerance: float = BUDGET_TOLERANCE) -> np.ndarray:
    """Group id per run: sorted budgets within `tolerance` (relative) of the group's first are one budget."""
    order = np.argsort(samples_seen, kind="stable")
    groups = np.empty(len(samples_seen), dtype=np.int64)
    current, anchor = -1, -np.inf
    for r in order:
        if samples_seen[r] > anchor * (1 + tolerance):
            current += 1
            anchor = samples_seen[r]
        groups[r] = current
    return groups


def _subset(runs: RunsTable, rows: np.ndarray) -> RunsTable:
    return replace(
        runs,
        members=[runs.members[r] for r in rows],
        mix_size=runs.mix_size[rows],
        samples_seen=runs.samples_seen[rows],
        loss=runs.loss[rows],
    )


def held_out_budgets(runs: RunsTable, holdout: int | None) -> tuple[np.ndarray, list[int]] | None:
    """(budget group per run, the held-out groups): the `holdout` largest budgets at which two or
    more candidates were measured (default: 1 when there are 3+ such budgets, else none)."""
    groups = budget_groups(runs.samples_seen)
    labels = np.array([runs.label(r) for r in range(runs.rows)])
    shared = [g for g in np.unique(groups) if len(np.unique(labels[groups == g])) >= 2]
    if holdout is None:
        holdout = 1 if len(shared) >= 3 else 0
    if holdout <= 0 or len(shared) <= holdout:
        return None
    return groups, [int(g) for g in shared[-holdout:]]


def decision_accuracy(
    runs: RunsTable,
    fit: Callable[[RunsTable], Law],
    holdout: int | None = None,
    seed: int = 0,
    draws: int = BOOTSTRAP,
) -> dict:
    """Hold out the largest budgets, fit on the runs below them, and score the law's ranking of every
    candidate measured there against the simple rule (its loss at the largest budget fitted).

    The simple rule reads each candidate's loss at the largest fitted budget where every candidate
    was measured (else each candidate's own largest fitted run). Candidates with no fitted run are
    left out (neither ranking has anything to go on)."""
    split = held_out_budgets(runs, holdout)
    if split is None:
        return {
            "decision_accuracy": None,
            "baseline_decision_accuracy": None,
            "reason": "needs runs of two or more candidates at three or more budgets (hold out the largest)",
        }
    groups, held = split
    labels = np.array([runs.label(r) for r in range(runs.rows)])
    first_held = min(runs.samples_seen[groups == g].min() for g in held)
    train = np.nonzero(runs.samples_seen < first_held * (1 - BUDGET_TOLERANCE / 2))[0]
    law = fit(_subset(runs, train))
    trained = set(labels[train])
    test = np.array([r for r in range(runs.rows) if groups[r] in held and labels[r] in trained], dtype=np.int64)
    if len(set(labels[test])) < 2:
        return {
            "decision_accuracy": None,
            "baseline_decision_accuracy": None,
            "reason": "fewer than two candidates at the held-out budget have runs below it to fit on",
        }
    train_labels = labels[train]
    train_groups = groups[train]
    candidates = sorted(set(labels[test]), key=lambda x: list(labels).index(x))
    complete = [g for g in np.unique(train_groups) if set(candidates) <= set(train_labels[train_groups == g])]
    baseline_loss = {}
    for c in candidates:
        own = train[train_labels == c]
        if complete:
            own = own[train_groups[train_labels == c] == complete[-1]]
        else:
            own = own[runs.samples_seen[own] == runs.samples_seen[own].max()]
        baseline_loss[c] = float(np.mean(runs.loss[own]))
    predicted = np.array(
        [float(law.log_loss(runs.samples_seen[r], runs.members[r])[0]) for r in test], dtype=np.float64
    )
    simple = np.array([baseline_loss[labels[r]] for r in test])
    measured = runs.loss[test]
    rows_groups = groups[test]
    accuracy = pairwise_accuracy(predicted, measured, rows_groups)
    baseline = pairwise_accuracy(simple, measured, rows_groups)
    intervals = bootstrap_accuracy(
        {"law": predicted, "baseline": simple}, measured, labels[test], rows_groups, seed=seed, draws=draws
    )
    # beats: more accurate, and at least as accurate in 97.5% of the draws (a draw without the
    # pairs where the two disagree ties them, so a strictly positive bound is out of reach)
    beats = bool(accuracy > baseline and intervals["difference"][0] >= 0)
    return {
        "decision_accuracy": accuracy,
        "decision_accuracy_interval": list(intervals["law"]),
        "baseline_decision_accuracy": baseline,
        "baseline_decision_accuracy_interval": list(intervals["baseline"]),
        "difference_interval": list(intervals["difference"]),
        "law_beats_baseline": beats,
        "baseline": "rank by the loss at the largest budget fitted",
        "held_out_budgets": [float(np.median(runs.samples_seen[groups == g])) for g in held],
        "fitted_below": float(first_held),
        "largest_budget_fitted": float(runs.samples_seen[train].max()) if len(train) else None,
        "candidates": candidates,
        "pairs": int(
            sum(
                len(set(labels[test][rows_groups == g])) * (len(set(labels[test][rows_groups == g])) - 1) // 2
                for g in held
            )
        ),
        "interval": f"{LEVEL:.0%} bootstrap over candidates ({draws} draws)",
        "per_run": [
            {
                "pool": str(labels[r]),
                "samples_seen": float(runs.samples_seen[r]),
                "measured": float(runs.loss[r]),
                "predicted": float(np.exp(p)),
                "simple_rule": float(s),
            }
            for r, p, s in zip(test, predicted, simple)
        ],
    }


def verdict_line(result: dict) -> str:
    """One sentence for the fit table and the report."""
    if result.get("decision_accuracy") is None:
        return f"Decision accuracy not measured: {result.get('reason', 'no held-out budget')}."
    low, high = result["decision_accuracy_interval"]
    blow, bhigh = result["baseline_decision_accuracy_interval"]
    budgets = ", ".join(f"{b:.3g}" for b in result["held_out_budgets"])
    head = (
        f"Decision accuracy at held-out budget {budgets} samples: {result['decision_accuracy']:.2f} "
        f"[{low:.2f}, {high:.2f}] over {result['pairs']} pairs; the simple rule ({result['baseline']}) "
        f"{result['baseline_decision_accuracy']:.2f} [{blow:.2f}, {bhigh:.2f}]."
    )
    if result["law_beats_baseline"]:
        return head + " The law beats the simple rule."
    return head + " The law does not beat the simple rule: trust the ranking of the largest runs as much as the plan."


def decision_fields(decision: dict) -> dict:
    """LAW.json's decision-accuracy keys: the two accuracies at the top, the detail under `decision`."""
    return {
        "decision_accuracy": decision.get("decision_accuracy"),
        "baseline_decision_accuracy": decision.get("baseline_decision_accuracy"),
        "decision": {**decision, "summary": verdict_line(decision)},
    }
