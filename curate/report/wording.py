"""The words of a verdict: what the report and the CLI say about a mix against random data."""

from __future__ import annotations

from typing import Sequence

import numpy as np

STATUS_TEXT = {
    "beats_random": "beats random data of the same size",
    "no_better_than_random": "no better than random data of the same size (within the uncertainty)",
    "worse_than_random": "worse than random data of the same size",
    "all_data": "is all the data (nothing selected)",
}

STATUS_SHORT = {
    "beats_random": "beats random",
    "no_better_than_random": "no better than random",
    "worse_than_random": "worse than random",
    "all_data": "all data: nothing selected",
}


def _phrase(names: Sequence[str]) -> str:
    return f"pool {names[0]}" if len(names) == 1 else f"pools {names[0]}-{names[-1]}"


def _alternative_phrase(alt: dict) -> str:
    if alt["kind"] == "all_data":
        return f"all the data ({alt['unique']:,} unique samples, {alt['epochs']:.3g} epochs): predicted loss {alt['predicted_loss']:.4g}"
    return f"a uniform random {alt['unique']:,} samples ({alt['epochs']:.3g} epochs): predicted loss {alt['predicted_loss']:.4g}"


def comparison_lines(comparison: dict, what: str = "mix of the pools") -> list[str]:
    """The verdict first, then one line per budget: the mix against random and all data."""
    entries = comparison["budgets"]
    lines = []
    if comparison["verdict"] == "no_better_than_random":
        lines.append(
            f"No {what} beats random data of the same size by more than {comparison['margin_sd']:g} sd ({comparison['uncertainty']}) "
            f"at any planned budget: the pools are no better than random here; train on random data or all the data instead."
        )
    else:
        ok = [f"{e['budget']:.3g}" for e in entries if e["status"] == "beats_random"]
        lines.append(
            f"The chosen {what} beats random data of the same size by more than {comparison['margin_sd']:g} sd ({comparison['uncertainty']}) at budget{'s' if len(ok) > 1 else ''} {', '.join(ok)} only."
        )
    for e in entries:
        versus = (
            f"random data of the same size {e['random_same_size']:.4g} (difference {e['difference']:+.4g} ± {e['difference_sd']:.2g}), "
            f"all {e['all_data_unique']:,} samples {e['all_data']:.4g}"
        )
        if e["status"] == "beats_random":
            lines.append(
                f"For budget {e['budget']:.3g} samples, train on {_phrase(e['pools'])} ({e['unique']:,} unique samples, {e['epochs']:.3g} epochs): predicted loss {e['predicted_loss']:.4g}; {versus}."
            )
        elif e["status"] == "all_data":
            lines.append(
                f"For budget {e['budget']:.3g} samples, the best mix takes every pool, so nothing is selected: train on {_alternative_phrase(e['alternative'])}."
            )
        else:
            lines.append(
                f"For budget {e['budget']:.3g} samples, train on {_alternative_phrase(e['alternative'])}; the pools' best mix, {_phrase(e['pools'])}, "
                f"predicts {e['predicted_loss']:.4g}, {STATUS_TEXT[e['status']]}: {versus}."
            )
    return lines


def seta_lines(check: dict) -> list[str]:
    m = check["methods"]
    se = check["seta_minus_random_sd"] / np.sqrt(check["seeds"]) if check["seeds"] > 1 else float("nan")
    verdict = {
        "beats_random": "SeTa beats random subsets at equal visits",
        "no_better_than_random": "SeTa is no better than random subsets at equal visits (within the uncertainty)",
        "worse_than_random": "SeTa is worse than random subsets at equal visits",
    }[check["verdict"]]
    return [
        f"{verdict}: held-out accuracy {m['seta']['accuracy_mean']:.4f} vs {m['random@seta']['accuracy_mean']:.4f} "
        f"(difference {check['seta_minus_random']:+.4f} ± {se:.2g} se over {check['seeds']} seeds) at {m['seta']['visit_fraction']:.1%} of full-data visits; "
        f"full data {m['full']['accuracy_mean']:.4f} at 100% ({check['epochs']} epochs, {check['rows']:,} training rows, proxy classifier)."
    ]
