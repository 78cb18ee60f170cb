"""Render the review (and diff) page: one self-contained HTML file from jinja2 templates shipped
as package data, inline SVG plots, a little plain JavaScript for the filter and the search box."""

from __future__ import annotations

import html
import math
from typing import Any

import jinja2

from curate.report.review import SIM_LABEL, Shown

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("curate.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _text_html(row: Shown) -> str:
    """The row's text escaped (or its marked version), cut at MAX_CHARS with the length said."""
    if row.html is not None:
        body = row.html
    elif row.text is None:
        return '<span class="missing">(text not available)</span>'
    else:
        body = html.escape(row.to_json()["text"])
    chars = len(row.text or "")
    cut = row.to_json()["text"] is not None and chars > len(row.to_json()["text"])
    return body + (f' <span class="cut">[… {chars:,} characters in all]</span>' if cut else "")


def _settings(options: dict) -> str:
    return ", ".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in options.items())


def bar_svg(counts: list[dict], width: int = 640) -> str:
    """Horizontal bars: rows removed per (stage, reason), as a share of the input."""
    if not counts:
        return ""
    bar_h, label_w = 22, 260
    top = max(c["share"] for c in counts) or 1.0
    parts = [
        f'<svg class="plot" role="img" aria-label="rows removed per stage and reason" width="{width}" '
        f'height="{bar_h * len(counts) + 8}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for k, c in enumerate(counts):
        y = 4 + k * bar_h
        w = (width - label_w - 120) * c["share"] / top
        label = html.escape(f"{c['stage']}: {c['reason']}")
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{label}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{bar_h - 6}" class="bar"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{c["rows"]:,} ({c["share"]:.2%})</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(hist: dict | None, width: int = 640, height: int = 140) -> str:
    """Score histogram, removed rows over kept rows, on the same bins."""
    if not hist:
        return ""
    edges, removed, kept = hist["edges"], hist["removed"], hist["kept"]
    top = max(max(removed), max(kept), 1)
    n = len(removed)
    bw = (width - 20) / n
    parts = [
        f'<svg class="plot" role="img" aria-label="score histogram" width="{width}" height="{height + 20}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    for k in range(n):
        for value, css, off in ((kept[k], "kept", 0), (removed[k], "removed", bw / 2)):
            h = (height - 10) * value / top
            parts.append(
                f'<rect class="{css}" x="{10 + k * bw + off:.1f}" y="{height - h:.1f}" width="{bw / 2:.1f}" height="{h:.1f}"/>'
            )
    parts.append(f'<text x="10" y="{height + 15}">{edges[0]:.4g}</text>')
    parts.append(f'<text x="{width - 10}" y="{height + 15}" text-anchor="end">{edges[-1]:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_review(data: dict[str, Any], title: str = "curate review") -> str:
    template = _ENV.get_template("review.html.j2")
    return template.render(
        title=title,
        data=data,
        fmt=_fmt,
        text_html=_text_html,
        settings=_settings,
        bars=bar_svg(data.get("counts", [])),
        histogram=histogram_svg,
        markup=jinja2.utils.markupsafe.Markup,
        sim_label=SIM_LABEL,
    )
