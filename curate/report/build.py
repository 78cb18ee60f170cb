"""Build the budget-aware mix report: report.json, report.html (self-contained: images embedded
as base64, also written to plots/), from a law alone or from a finished pipeline output."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from curate.engine.progress import QUIET, Progress
from curate.errors import UsageError
from curate.io.atomic import atomic_write_json, atomic_write_text
from curate.output.read import read_kept
from curate.report import plots
from curate.report.config import ReportSettings, parse_report_table
from curate.scaling import load_law, save_json, save_law
from curate.scaling.allocate import plan, prefix_sizes
from curate.scaling.fit import fit_law
from curate.scaling.law import REPETITION_NAMES, Law, law_to_json
from curate.scaling.runs import read_runs

SCALING_DIR = "scaling"
POOL_COLUMN = "pool"
FALLBACK_SCORE = "proxy_loss"


def default_budgets(law: Law, count: int = 12) -> list[float]:
    """From a tenth of the best pool to 100 passes over everything: where the choice can change."""
    sizes = prefix_sizes(law)
    return [float(b) for b in np.geomspace(0.1 * sizes[0], 100.0 * sizes[-1], count)]


def _pools_phrase(names: Sequence[str]) -> str:
    if len(names) == 1:
        return f"pool {names[0]}"
    return f"pools {names[0]}-{names[-1]}"


def recommendation(law: Law, mix: dict, comparison: dict | None = None) -> str:
    """The plan in words, one line per statement: per budget the mix and epochs, where adding a
    pool starts to pay, then caveats. With a random baseline (`comparison`), its verdict comes
    first and each budget's line says how the mix compares with random data and all data.
    The HTML shows the lines as a list."""
    from curate.report.wording import comparison_lines

    entries = mix.get("mixes", [mix])
    lines = comparison_lines(comparison) if comparison else []
    for e in [] if comparison else entries:
        all_pools = e["candidates"][-1]
        gain = (1 - e["predicted_loss"] / all_pools["predicted_loss"]) * 100
        versus = (
            "" if len(e["pools"]) == len(law.pools) else f", {gain:.1f}% below training on all {len(law.pools)} pools"
        )
        lines.append(
            f"For budget {e['budget']:.3g} samples, train on {_pools_phrase(e['pools'])} ({e['unique']:,} unique samples, "
            f"{e['epochs']:.3g} epochs): predicted loss {e['predicted_loss']:.4g}{versus}."
        )
    paying = [c for c in mix["crossovers"] if c["budget"] is not None]
    from_start = [c["add_pool"] for c in paying if c.get("pays_from_start")]
    later = [c for c in paying if not c.get("pays_from_start")]
    if from_start:
        lines.append(
            f"Adding pool{'s' if len(from_start) > 1 else ''} {', '.join(from_start)} pays already at the smallest budget considered ({mix['search_range'][0]:.3g} samples)."
        )
    for c in later:
        lines.append(f"Adding pool {c['add_pool']} starts to pay from {c['budget']:.3g} samples.")
    never = [c["add_pool"] for c in mix["crossovers"] if c["budget"] is None]
    if never:
        lines.append(
            f"Adding pool{'s' if len(never) > 1 else ''} {', '.join(never)} never pays in the range planned (up to {mix['search_range'][1]:.3g} samples)."
        )
    observed = [o["samples_seen"] for o in law.fit.get("observations", [])]
    if observed and max(e["budget"] for e in entries) > 10 * max(observed):
        lines.append(
            f"Budgets above {10 * max(observed):.3g} are extrapolations more than 10x beyond the largest run fitted ({max(observed):.3g} samples seen)."
        )
    decision = law.fit.get("decision")
    if decision:
        lines.append(decision["summary"])
    for flag in law.fit.get("flags", []):
        lines.append(f"Suspect: {flag['message']}.")
    unidentified = [p.name for p in law.pools if not p.tau_identified]
    if unidentified:
        lines.append(
            f"Pool{'s' if len(unidentified) > 1 else ''} {', '.join(unidentified)} had no run past one pass, so their repetition half-life is a default, not a fit."
        )
    return "\n".join(lines)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)} <a href="plots/{path.name}">(PNG)</a></figcaption></figure>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.rec{background:#f3f7ee;border-left:4px solid #5a8f29;padding:.8em 1em .8em 2.2em}.rec li{margin:.2em 0}
.rec.warn{background:#fdf3e7;border-left-color:#c2571a}.rec.warn li:first-child{font-weight:600}
.note{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
"""


def render_html(report: dict, images: dict[str, Path]) -> str:
    """One page: recommendation, plots, parameter and plan tables; images inline."""
    sections = [f"<h1>{html.escape(report['title'])}</h1>"]
    if report.get("recommendation"):
        items = "".join(f"<li>{html.escape(line)}</li>" for line in report["recommendation"].splitlines())
        warn = (report.get("random_baseline") or {}).get("verdict") == "no_better_than_random"
        sections.append(f'<ul class="rec{" warn" if warn else ""}">{items}</ul>')
    for note in report.get("notes", []):
        sections.append(f'<p class="note">{html.escape(note)}</p>')
    if report.get("random_baseline"):
        sections.append("<h2>Against random data</h2>")
        sections.append(_comparison_html(report["random_baseline"], "the pools' chosen mix"))
        if "random_baseline" in images:
            sections.append(
                _img(
                    images["random_baseline"],
                    "Predicted loss of the chosen mix, of random data of the same size (bars: 2 sd of the difference) and of all data",
                )
            )
    law = report.get("law")
    if law:
        sections.append("<h2>Budget plan</h2>")
        for key, alt in (
            (
                "loss_vs_budget",
                "Predicted loss vs budget for each candidate mix; the grey band is the chosen envelope",
            ),
            ("mix_vs_budget", "Chosen mix (pools) and epochs vs budget"),
        ):
            if key in images:
                sections.append(_img(images[key], alt))
        entries = report["plan"].get("mixes", [report["plan"]])
        sections.append(
            _table(
                [
                    "budget",
                    "pools",
                    "unique",
                    "epochs",
                    "predicted loss",
                    *[f"loss {_pools_phrase(c['pools'])}" for c in entries[0]["candidates"]],
                ],
                [
                    [
                        f"{e['budget']:.3g}",
                        "+".join(e["pools"])
                        if e.get("mix", "prefix") == "prefix"
                        else ", ".join(f"{k} {v:.0%}" for k, v in e["shares"].items()),
                        f"{e['unique']:,}",
                        f"{e['epochs']:.3g}" + ("" if e.get("within_caps", True) else " (capped)"),
                        f"{e['predicted_loss']:.4g}",
                        *[f"{c['predicted_loss']:.4g}" for c in e["candidates"]],
                    ]
                    for e in entries
                ],
            )
        )
        if report["plan"]["switches"]:
            sections.append("<p>Budgets where the chosen mix changes:</p>")
            sections.append(
                _table(
                    ["budget", "from", "to"],
                    [
                        [f"{s['budget']:.3g}", "+".join(s["from"]), "+".join(s["to"])]
                        for s in report["plan"]["switches"]
                    ],
                )
            )
        sections.append("<h2>Fitted law</h2>")
        key = "tau" if law["model"] == "goyal2024" else "r_star"
        rmse = law["fit"].get("rmse_log_per_pool", {})
        sections.append(
            f"<p>Model {html.escape(law['model'])}, a = {law['a']:.4g}, irreducible loss {law['irreducible']:.4g}; rmse of log loss {law['fit'].get('rmse_log', float('nan')):.4f} over {law['fit'].get('runs', 0)} runs.</p>"
        )
        sections.append(
            _table(
                [
                    "pool",
                    "unique samples",
                    "utility b",
                    "half-life (epochs)" if key == "tau" else "R*",
                    "rmse(log)",
                    "flags",
                ],
                [
                    [
                        p["name"],
                        f"{p['size']:,}",
                        f"{p['b']:.4f}",
                        f"{p[key]:.3g}" + ("" if p.get("tau_identified", True) else " (default)"),
                        f"{rmse[p['name']]:.4f}" if p["name"] in rmse else "",
                        ", ".join(_flag_words(law["fit"], p["name"])),
                    ]
                    for p in law["pools"]
                ]
                + [
                    ["mix " + label, "", "", "", f"{value:.4f}", ", ".join(_flag_words(law["fit"], label))]
                    for label, value in rmse.items()
                    if label not in {p["name"] for p in law["pools"]} and _flag_words(law["fit"], label)
                ],
            )
        )
        sections.append(_decision_html(law["fit"]))
        if "fit_per_pool" in images:
            sections.append(_img(images["fit_per_pool"], "Fitted curves against the observed runs, per pool and mix"))
    for evaluation in report.get("evaluations") or []:
        sections.append(f"<h2>Score {html.escape(evaluation['score'])} against random data</h2>")
        sections.append(
            f"<p>{evaluation['pools']} quantile pools of {html.escape(evaluation['score'])} ({html.escape(evaluation['direction_reason'])}; rows per pool {', '.join(f'{c:,}' for c in evaluation['pool_rows'])}), each prefix against random pools of the same sizes.</p>"
        )
        from curate.report.wording import comparison_lines

        items = "".join(
            f"<li>{html.escape(line)}</li>"
            for line in comparison_lines(evaluation["comparison"], f"quality prefix of {evaluation['score']}")
        )
        sections.append(f'<ul class="rec">{items}</ul>')
        sections.append(_comparison_html(evaluation["comparison"], f"pools of {evaluation['score']}"))
    seta = report.get("seta_check")
    if seta:
        from curate.report.wording import seta_lines

        sections.append("<h2>SeTa schedule against random data</h2>")
        sections.append(
            f'<ul class="rec">{"".join(f"<li>{html.escape(line)}</li>" for line in seta_lines(seta))}</ul>'
        )
        sections.append(
            _table(
                ["method", "held-out accuracy", "sd", "visits", "of full-data visits"],
                [
                    [
                        m,
                        f"{v['accuracy_mean']:.4f}",
                        f"{v['accuracy_sd']:.4f}",
                        f"{v['visits']:,}",
                        f"{v['visit_fraction']:.1%}",
                    ]
                    for m, v in seta["methods"].items()
                ],
            )
        )
        schedule = seta.get("schedule")
        if schedule:
            sections.append(
                f"<p>Schedule (seta_schedule.json): {schedule['epochs']} epochs, {schedule['groups']} loss clusters, window {schedule['window']}; "
                f"it visits {schedule['visit_fraction']:.1%} of full-data training on the kept rows.</p>"
            )
            sections.append(
                _table(
                    ["epoch", "mode", "clusters", "rows"],
                    [
                        [
                            e.get("epoch", i),
                            e["mode"],
                            ",".join(str(c) for c in e.get("clusters") or []) or "all",
                            f"{e['rows']:,}",
                        ]
                        for i, e in enumerate(schedule["plan"])
                    ],
                )
            )
    pipeline = report.get("pipeline")
    if pipeline:
        sections.append("<h2>Pipeline</h2>")
        if "funnel" in images:
            sections.append(_img(images["funnel"], "Rows left after each stage and rows removed by it"))
        sections.append(
            _table(
                ["stage", "in", "out", "removed"],
                [
                    [s["name"], f"{s['rows_in']:,}", f"{s['rows_out']:,}", f"{s['rows_removed']:,}"]
                    for s in pipeline["stages"]
                ],
            )
        )
        if pipeline.get("decontamination"):
            sections.append("<p>Evaluation sets (decontaminate): items, items found in the corpus, rows removed.</p>")
            sections.append(
                _table(
                    ["set", "items", "items found", "rows removed", "stage"],
                    [
                        [d["set"], f"{d['items']:,}", f"{d['items_found']:,}", f"{d['rows_removed']:,}", d["stage"]]
                        for d in pipeline["decontamination"]
                    ],
                )
            )
        if pipeline.get("pools"):
            if "pool_scores" in images:
                sections.append(_img(images["pool_scores"], f"Distribution of {pipeline['pools']['score']} per pool"))
            sections.append(_table(["pool", "rows"], [[k, f"{v:,}"] for k, v in pipeline["pools"]["counts"].items()]))
    return f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(report['title'])}</title><style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n"


def _flag_words(fit: dict, label: str) -> list[str]:
    return [
        f"{f['parameter']} at the fit's bound" if f["kind"] == "at_bound" else "residual trend at the largest budgets"
        for f in fit.get("flags", [])
        if str(f.get("pool")) == label
    ]


def _decision_html(fit: dict) -> str:
    """Decision accuracy on the held-out budget beside the simple rule, and what is suspect in the fit."""
    decision = fit.get("decision")
    parts = []
    if decision:
        parts.append(f'<h3>Decision accuracy</h3><p id="decision-accuracy">{html.escape(decision["summary"])}</p>')
        if decision.get("decision_accuracy") is not None:
            parts.append(
                _table(
                    ["ranking", "decision accuracy", "interval"],
                    [
                        [
                            "the law (fitted below the held-out budget)",
                            f"{decision['decision_accuracy']:.2f}",
                            "{:.2f} .. {:.2f}".format(*decision["decision_accuracy_interval"]),
                        ],
                        [
                            f"baseline: {decision['baseline']}",
                            f"{decision['baseline_decision_accuracy']:.2f}",
                            "{:.2f} .. {:.2f}".format(*decision["baseline_decision_accuracy_interval"]),
                        ],
                    ],
                )
            )
            parts.append(
                f'<p class="note">Pairwise: of every two candidates measured at the held-out budget, the share ranked like the measured losses '
                f"({decision['pairs']} pairs, {len(decision['candidates'])} candidates; {html.escape(decision['interval'])}).</p>"
            )
    flags = fit.get("flags", [])
    if flags:
        items = "".join(f"<li>{html.escape(f['message'])}</li>" for f in flags)
        parts.append(f'<p>Suspect in this fit:</p><ul class="rec warn">{items}</ul>')
    return "".join(parts)


def _comparison_html(comparison: dict, what: str) -> str:
    """Per budget: the chosen prefix, random data of its size, all data, the difference ± sd, the verdict."""
    from curate.report.wording import STATUS_SHORT

    intro = (
        f"<p>Verdict: <b>{'beats random data' if comparison['verdict'] == 'beats_random' else 'no better than random data'}</b> "
        f"({html.escape(what)}; a mix beats random only when its predicted loss is lower by more than {comparison['margin_sd']:g} sd of the difference; "
        f"uncertainty: {html.escape(comparison['uncertainty'])}).</p>"
    )
    return intro + _table(
        [
            "budget",
            "chosen pools",
            "unique",
            "predicted loss",
            "random, same size",
            "all data",
            "difference ± sd",
            "per-prefix fits: difference ± sd",
            "verdict",
            "train on",
        ],
        [
            [
                f"{e['budget']:.3g}",
                "+".join(e["pools"]),
                f"{e['unique']:,}",
                f"{e['predicted_loss']:.4g}",
                f"{e['random_same_size']:.4g}",
                f"{e['all_data']:.4g}",
                "(same data)" if e["status"] == "all_data" else f"{e['difference']:+.3g} ± {e['difference_sd']:.2g}",
                "(same data)"
                if e["status"] == "all_data"
                else f"{e.get('prefix_fit_difference', float('nan')):+.3g} ± {e.get('prefix_fit_difference_sd', float('nan')):.2g}",
                STATUS_SHORT[e["status"]],
                _pools_phrase(e["pools"])
                if e["status"] == "beats_random"
                else (
                    "all data" if e["alternative"]["kind"] == "all_data" else f"random {e['alternative']['unique']:,}"
                ),
            ]
            for e in comparison["budgets"]
        ],
    )


def write_report(directory: Path, report: dict, images: dict[str, Path]) -> Path:
    report = {**report, "plots": {k: f"plots/{p.name}" for k, p in images.items()}}
    atomic_write_json(directory / "report.json", report)
    atomic_write_text(directory / "report.html", render_html(report, images))
    return directory / "report.html"


def _law_section(
    law: Law,
    budgets: Sequence[float],
    plot_dir: Path,
    comparison: dict | None = None,
    plan_options: dict | None = None,
) -> tuple[dict, dict[str, Path]]:
    mix = plan(law, budgets, **(plan_options or {}))
    images = {
        "loss_vs_budget": plots.loss_vs_budget(law, budgets, mix["switches"], plot_dir / "loss_vs_budget.png"),
        "mix_vs_budget": plots.mix_vs_budget(law, budgets, plot_dir / "mix_vs_budget.png"),
    }
    fitted = plots.fit_per_pool(law, plot_dir / "fit_per_pool.png")
    if fitted is not None:
        images["fit_per_pool"] = fitted
    if comparison:
        images["random_baseline"] = plots.random_baseline(comparison, plot_dir / "random_baseline.png")
    return {
        "law": law_to_json(law),
        "plan": mix,
        "recommendation": recommendation(law, mix, comparison),
        "random_baseline": comparison,
    }, images


def build_law_report(
    law: Law, budgets: Sequence[float] | None, directory: str | Path, plan_options: dict | None = None
) -> Path:
    """`curate allocate --report DIR`: the plan for a law, no pipeline sections."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    budgets = list(budgets) if budgets else default_budgets(law)
    if len(budgets) == 1:  # one budget: still show the curves around it
        budgets = sorted({*default_budgets(law), *budgets})
    section, images = _law_section(law, budgets, directory / "plots", plan_options=plan_options)
    return write_report(directory, {"title": "curate: budget-aware data mix", "notes": [], **section}, images)


# ---------------------------------------------------------------------------------------
# From a pipeline output.


def _pools_score_column(manifest: dict, kept: pl.DataFrame) -> str | None:
    """The score the pools stage bucketed (its `score` option), if that column survived into kept/."""
    for stage in manifest.get("config", {}).get("stages", []):
        if stage.get("kind") == "pools":
            score = stage.get("options", {}).get("score")
            if isinstance(score, str) and score in kept.columns:
                return score
    return None


def _proxy_law(
    out: Path,
    kept: pl.DataFrame,
    pools: np.ndarray,
    settings: ReportSettings,
    manifest: dict,
    rerun: bool,
    progress: Progress,
) -> tuple[Law, list[dict], list[dict]]:
    """Fit from proxy trainings on the pools; also the same trainings on random pools of the same
    sizes (the random baseline). Runs cached in scaling/runs.csv and runs_random.csv unless rerun."""
    from curate.scaling.baseline import proxy_rows

    text_column = manifest["config"]["input"]["text_column"]
    quality, random = proxy_rows(
        out, out / SCALING_DIR, kept, pools, settings, text_column, int(manifest.get("seed", 0)), rerun, progress
    )
    law = _fit_with_decision(read_runs(out / SCALING_DIR / "runs.csv"), settings, int(manifest.get("seed", 0)))
    return law, quality, random


def _fit_with_decision(runs, settings: ReportSettings, seed: int = 0) -> Law:
    """The law on every run, with the decision accuracy of a fit that holds out the largest budget."""
    from curate.scaling.decision import decision_accuracy, decision_fields

    model = REPETITION_NAMES[settings.repetition]
    law = fit_law(runs, model, settings.irreducible).law
    decision = decision_accuracy(runs, lambda t: fit_law(t, model, settings.irreducible).law, seed=seed)
    law.fit.update(decision_fields(decision))
    return law


def _seta_check(
    out: Path, kept: pl.DataFrame, settings: ReportSettings, manifest: dict, rerun: bool, progress: Progress
) -> dict | None:
    """SeTa vs full data vs random at equal visits, when loss_clusters wrote a schedule and a label
    column is known ([report] label_column, else the stage's own); cached in scaling/seta_check.json."""
    import json

    from curate.algorithms.loss_clusters import SeTaConfig
    from curate.stages.loss_clusters import SCHEDULE_FILE
    from curate.training.seta_check import seta_check

    path = out / SCHEDULE_FILE
    stage = next((s for s in manifest.get("config", {}).get("stages", []) if s.get("kind") == "loss_clusters"), None)
    if stage is None or not path.exists():
        return None
    options = stage.get("options", {})
    label = settings.label_column or options.get("label_column")
    if not label or label not in kept.columns:
        return None
    schedule = json.loads(path.read_text())
    config = SeTaConfig(
        epochs=schedule["epochs"],
        prune_ratio=schedule["prune_ratio"],
        groups=schedule["groups"],
        window_scale=schedule["window_scale"],
        delta=schedule["delta"],
    )
    key = {
        "config": repr(config),
        "label": label,
        "rows": kept.height,
        "seta_rows": settings.seta_rows,
        "seta_seeds": settings.seta_seeds,
        "classes": settings.classes,
    }
    cache = out / SCALING_DIR / "seta_check.json"
    if not rerun and cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    text_column = manifest["config"]["input"]["text_column"]
    check = seta_check(
        kept.get_column(text_column).to_arrow(),
        kept.get_column(label).to_list(),
        config,
        seeds=settings.seta_seeds,
        classes=settings.classes,
        max_rows=settings.seta_rows,
        seed=int(manifest.get("seed", 0)),
        progress=progress,
    )
    check = {
        **check,
        "label_column": label,
        "schedule": {k: schedule[k] for k in ("epochs", "groups", "window", "visit_fraction", "plan")},
        "key": key,
    }
    save_json(cache, check)
    return check


def build_pipeline_report(
    out: str | Path, overrides: dict | None = None, rerun: bool = False, progress: Progress = QUIET
) -> Path:
    """report.html/json and plots/ in a finished output dir, from its `[report]` settings (plus overrides)."""
    from curate.output.read import load_finished_manifest, stage_summaries

    out = Path(out)
    manifest = load_finished_manifest(out)
    settings = parse_report_table(
        {**(manifest.get("config", {}).get("report") or {}), **(overrides or {})}, str(out / "manifest.json")
    )
    plot_dir = out / "plots"
    notes: list[str] = []
    images: dict[str, Path] = {}

    stages = [
        {
            "name": s.name,
            "kind": s.kind,
            "rows_in": s.rows_in,
            "rows_out": s.rows_out,
            "rows_removed": s.rows_removed,
            "reasons": s.reasons,
        }
        for s in stage_summaries(out)
    ]
    images["funnel"] = plots.funnel(stages, plot_dir / "funnel.png")
    pipeline: dict[str, Any] = {"stages": stages, "pools": None}
    from curate.output.read import decontamination_summaries

    leaks = decontamination_summaries(manifest)
    if leaks:
        pipeline["decontamination"] = [
            {
                "stage": d.stage,
                "set": d.name,
                "items": d.items,
                "items_found": d.items_found,
                "rows_removed": d.rows_removed,
            }
            for d in leaks
        ]

    kept = read_kept(out)
    pools = scores = None
    score_name = None
    if POOL_COLUMN in kept.columns:
        pools = kept.get_column(POOL_COLUMN).to_numpy().astype(np.int64)
        score_name = _pools_score_column(manifest, kept)
        scores = kept.get_column(score_name).to_numpy().astype(np.float64) if score_name else None
        if score_name is None:
            notes.append("kept/ has pools but not the score they were made from; no score plot.")
    elif settings.label_column and settings.law is None and settings.runs is None and kept.height:
        if settings.label_column not in kept.columns:
            raise UsageError(
                f"[report] label_column {settings.label_column!r} is not a column of kept/",
                path=out,
                fix=f"use one of {kept.columns}",
            )
        pools, scores = _fallback_pools(out, kept, settings, manifest)
        score_name = FALLBACK_SCORE
        notes.append(
            f"No pools stage in this pipeline: pools are {settings.pools} quantiles of out-of-fold proxy loss "
            f"(pool 0 = lowest loss: labels the rest of the corpus agrees with). Add prototypes + pools stages for pools from prototype distance."
        )
    if pools is not None:
        pooled = pools >= 0  # fallback pools leave rows outside the proxy task's classes at -1
        counts = {str(int(k)): int(v) for k, v in zip(*np.unique(pools[pooled], return_counts=True))}
        pipeline["pools"] = {"score": score_name, "counts": counts}
        if scores is not None:
            images["pool_scores"] = plots.pool_scores(
                scores[pooled], pools[pooled], score_name, plot_dir / "pool_scores.png"
            )

    law = None
    comparison = None
    if settings.law:
        law = load_law(settings.law)
    elif settings.runs:
        law = _fit_with_decision(read_runs(settings.runs), settings, int(manifest.get("seed", 0)))
    elif settings.label_column and pools is not None:
        if settings.label_column not in kept.columns:
            raise UsageError(
                f"[report] label_column {settings.label_column!r} is not a column of kept/",
                path=out,
                fix=f"use one of {kept.columns}",
            )
        law, quality_runs, random_runs = _proxy_law(out, kept, pools, settings, manifest, rerun, progress)
        measured = "held-out error rate (1 - accuracy)" if settings.metric == "error" else "held-out cross-entropy"
        notes.append(
            f"'Loss' in this plan is the proxy classifier's {measured} on {settings.label_column!r} (the {settings.classes} most frequent values), from scaling/runs.csv."
        )
        counts = pipeline["pools"]["counts"]
        full_sizes = None
        if [p.name for p in law.pools] == list(counts):
            full_sizes = [float(counts[p.name]) for p in law.pools]
            law = law.with_sizes(full_sizes)
            notes.append(
                "The law was fitted on proxy trainings over part of each pool (the largest label classes, a held-out split); the plan is for the full pools in kept/."
            )
        from curate.scaling.baseline import compare_to_random

        comparison = compare_to_random(
            quality_runs,
            random_runs,
            settings.budgets or default_budgets(law),
            REPETITION_NAMES[settings.repetition],
            settings.irreducible,
            sizes=full_sizes,
            seed=int(manifest.get("seed", 0)),
            quality_law=law,
        )
        notes.append(
            "Random baseline: the same proxy trainings on random pools of the same sizes (scaling/runs_random.csv), fitted the same way; "
            "'random data of the same size' is that law's prediction for the chosen prefix's size. The chosen mix, its predicted loss and 'all data' come "
            "from the budget plan's own law, so each budget has one answer; the laws fitted to each prefix's own runs are shown beside as a check, "
            "and a mix beats random only when both agree."
        )
    else:
        notes.append(
            'No budget plan: set label_column (proxy trainings on the pools), runs = "RUNS.csv" or law = "LAW.json" in the pipeline\'s [report] table.'
        )

    report: dict[str, Any] = {
        "title": "curate: pipeline report and budget-aware data mix",
        "notes": notes,
        "pipeline": pipeline,
        "recommendation": None,
        "law": None,
        "plan": None,
        "random_baseline": None,
    }
    if law is not None:
        save_law(out / SCALING_DIR / "law.json", law)
        budgets = settings.budgets or default_budgets(law)
        section, law_images = _law_section(law, budgets, plot_dir, comparison)
        save_json(out / SCALING_DIR / "mix.json", section["plan"])
        report.update(section)
        images = {**law_images, **images}
    from curate.scaling.baseline import load_evaluations

    report["verdict"] = (report.get("random_baseline") or {}).get(
        "verdict"
    )  # the plan's verdict against random data, or None
    report["evaluations"] = load_evaluations(out)
    report["seta_check"] = _seta_check(out, kept, settings, manifest, rerun, progress) if kept.height else None
    return write_report(out, report, images)


def _fallback_pools(
    out: Path, kept: pl.DataFrame, settings: ReportSettings, manifest: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Pools from out-of-fold proxy loss over the kept rows, cached in scaling/pools.parquet."""
    from curate.scaling.proxy_runs import score_pools, top_classes
    from curate.training.features import hashed_ngram_bags

    cache = out / SCALING_DIR / "pools.parquet"
    id_column = manifest["config"]["input"]["id_column"]
    ids = (
        kept.get_column(id_column).cast(pl.String)
        if id_column in kept.columns
        else pl.Series(np.arange(kept.height).astype(str))
    )
    if cache.exists():
        cached = pl.read_parquet(cache)
        if (
            cached.height == kept.height
            and cached.get_column("id").equals(ids.rename("id"))
            and cached.get_column(POOL_COLUMN).max() == settings.pools - 1
        ):
            return cached.get_column(POOL_COLUMN).to_numpy(), cached.get_column(FALLBACK_SCORE).to_numpy()
    text_column = manifest["config"]["input"]["text_column"]
    rows, labels = top_classes(kept.get_column(settings.label_column).to_list(), settings.classes)
    pools = np.full(kept.height, -1, dtype=np.int64)
    scores = np.full(kept.height, np.nan)
    bags = hashed_ngram_bags(kept.get_column(text_column).to_arrow().take(rows))
    pools[rows], scores[rows] = score_pools(bags, labels, settings.pools, seed=int(manifest.get("seed", 0)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": ids, POOL_COLUMN: pools, FALLBACK_SCORE: scores}).write_parquet(cache)
    return pools, scores
