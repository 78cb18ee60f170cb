"""The planner's acceptance figures on synthetic laws (#26), over several noise seeds.

- decision accuracy at the held-out budget on runs from a known law (0.2% noise), beside the
  simple rule "rank by the loss at the largest budget fitted";
- the same on runs whose pools cross after the fitted range (the law must not claim to win);
- `--mix weighted` against a brute-force grid over shares (step 0.05) and against `--mix prefix`;
- the time of a weighted plan for 20 budgets with caps, and the largest pool passes under --max-epochs 2.

    python -m bench.planner              # about a minute on 2 cores
    python -m bench.planner --seeds 3

Laws and run generators are the tests' (tests/test_planner.py), so the bench measures what the
tests assert, over more seeds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._harness import REPO_ROOT, add_result_argument, start_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="noise seeds for the decision-accuracy runs")
    add_result_argument(parser, "planner")
    args = parser.parse_args(argv)
    run = start_run(
        "planner", argv, args.result, "decision accuracy, weighted mixes, caps (synthetic laws)", vars(args)
    )

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from test_planner import BLEND, TRUE, grid_best, known_law_runs

    from curate.scaling.allocate import Constraints, allocate, allocate_constrained
    from curate.scaling.decision import decision_accuracy
    from curate.scaling.fit import fit_law
    from curate.scaling.runs import read_runs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for crossing in (False, True):
            for seed in range(args.seeds):
                path = known_law_runs(Path(tmp) / f"runs_{crossing}_{seed}.csv", seed=seed, crossing=crossing)
                result = decision_accuracy(read_runs(path), lambda t: fit_law(t).law, seed=seed, draws=300)
                rows.append(
                    [
                        "crossing after the fitted range" if crossing else "known law, 0.2% noise",
                        seed,
                        round(result["decision_accuracy"], 3),
                        round(result["baseline_decision_accuracy"], 3),
                        result["law_beats_baseline"],
                    ]
                )
    run.table(
        "decision accuracy at the held-out budget (21 pairs)",
        ["runs", "seed", "law", "simple rule", "law beats rule"],
        rows,
    )
    known = [r[2] for r in rows if r[0].startswith("known")]
    run.check("known law: decision accuracy >= 0.95 on every seed", min(known) >= 0.95)
    run.check(
        "crossing: the law never claims to beat the simple rule",
        not any(r[4] for r in rows if r[0].startswith("crossing")),
    )

    budgets = np.geomspace(1e2, 1e8, 20)
    start = time.perf_counter()
    weighted = allocate_constrained(BLEND, budgets, "weighted")
    seconds = time.perf_counter() - start
    prefix = allocate(BLEND, budgets)
    gaps = [w.predicted_loss / grid_best(BLEND, w.budget) - 1 for w in weighted]
    gains = [1 - w.predicted_loss / p.predicted_loss for w, p in zip(weighted, prefix)]
    run.table(
        "weighted vs grid (step 0.05) and vs prefix, 20 budgets",
        ["worst gap to grid", "smallest gain over prefix", "largest gain over prefix", "seconds"],
        [[f"{max(gaps):+.4%}", f"{min(gains):+.4%}", f"{max(gains):+.4%}", round(seconds, 3)]],
    )
    run.check("weighted within 0.5% of the grid at every budget", max(gaps) <= 0.005)
    run.check("weighted never worse than prefix", min(gains) >= -1e-12)

    start = time.perf_counter()
    capped = allocate_constrained(TRUE, np.geomspace(1e4, 1e9, 20), "weighted", Constraints(max_epochs=(2.0,) * 5))
    seconds = time.perf_counter() - start
    worst = max(max(p.pool_epochs.values()) for p in capped)
    run.table(
        "--max-epochs 2, 20 budgets 1e4..1e9, weighted",
        ["largest pool passes", "budgets within caps", "seconds"],
        [[round(worst, 6), sum(p.within_caps for p in capped), round(seconds, 3)]],
    )
    run.check("no pool over 2 passes", worst <= 2 * (1 + 1e-9))
    run.write()


if __name__ == "__main__":
    main()
