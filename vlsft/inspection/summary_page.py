"""The HTML page of `vlsft inspect --summary`: one self-contained page (no script, no external file) with a histogram
per measure, drawn as inline SVG bars, and the table of the packs packing would train on."""

from __future__ import annotations

import html as html_lib

from vlsft.inspection.summary import DatasetSummary, Histogram, histogram, summary_text

BAR_COLOUR = "#0b6e99"
# Packs listed on the page; the rest are counted.
PACKS_SHOWN = 200

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #1d1d1f; background: #ffffff; }}
section {{ border: 1px solid #d0d0d7; border-radius: 6px; padding: 12px 16px; margin-bottom: 20px; }}
h2 {{ font-size: 16px; margin: 0 0 8px 0; }}
pre {{ font-size: 13px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #d0d0d7; padding: 2px 8px; text-align: left; }}
.note {{ color: #555; font-size: 13px; }}
.problem {{ color: #b00020; }}
</style></head><body>
<h1>{title}</h1>
<pre>{text}</pre>
{sections}
</body></html>
"""


def _label(value: float, integer: bool) -> str:
    return f"{int(value)}" if integer else f"{value:.3g}"


def histogram_svg(hist: Histogram, integer: bool, width: int = 640, height: int = 180) -> str:
    """Bars of `hist` as an SVG element, each with its range and count in a tooltip and its count above it."""
    if not hist.counts:
        return '<p class="note">nothing to measure</p>'
    top = max(hist.counts) or 1
    bar = width / len(hist.counts)
    parts = [f'<svg width="{width}" height="{height + 36}" role="img">']
    for i, count in enumerate(hist.counts):
        low, high = hist.edges[i], hist.edges[i + 1]
        span = f"{_label(low, integer)}-{_label(high - 1, integer)}" if integer else f"{_label(low, False)}-{_label(high, False)}"
        h = height * count / top
        x = i * bar
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{height - h + 14:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
            f'fill="{BAR_COLOUR}"><title>{span}: {count}</title></rect>'
        )
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - h + 10:.1f}" font-size="11" text-anchor="middle">{count}</text>')
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{height + 28}" font-size="10" text-anchor="middle">{span}</text>')
    parts.append("</svg>")
    if hist.unknown:
        parts.append(f'<p class="note">{hist.unknown} not measured (no frame rate, or not decodable)</p>')
    return "".join(parts)


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{html_lib.escape(note)}</p>' if note else ""
    return f"<section><h2>{html_lib.escape(title)}</h2>{note_html}{body}</section>"


def render_summary_html(summary: DatasetSummary, title: str = "vlsft inspect: dataset summary") -> str:
    """The page: histograms of row length, supervised share, images per row and video length; the packs."""
    shares = [share * 100 for share in summary.supervised_shares]
    sections = [
        _section("Tokens per row", histogram_svg(histogram(summary.lengths, integer=True), True),
                 "image and video tokens included, before truncation, as validation counts them"),
        _section("Supervised share of each row (%)", histogram_svg(histogram(shares), False),
                 "tokens the loss sees / the row's tokens"),
        _section("Images per row", histogram_svg(histogram(summary.images, integer=True), True)),
        _section("Video length (seconds)", histogram_svg(histogram(summary.video_seconds), False),
                 f"{len(summary.video_seconds)} video(s)"),
    ]
    if summary.packs:
        position = {index: k for k, index in enumerate(summary.indices)}
        rows = "".join(
            f"<tr><td>{number}</td><td>{sum(min(summary.lengths[position[i]], summary.pack_budget) for i in pack)}</td>"
            f"<td>{', '.join(str(i) for i in pack)}</td></tr>"
            for number, pack in enumerate(summary.packs[:PACKS_SHOWN])
        )
        more = len(summary.packs) - PACKS_SHOWN
        table = f"<table><tr><th>pack</th><th>tokens</th><th>dataset rows</th></tr>{rows}</table>"
        if more > 0:
            table += f'<p class="note">{more} more packs</p>'
        sections.append(_section(
            f"Packing: {len(summary.packs)} packs of at most {summary.pack_budget} tokens", table,
            "the rows `packing: true` would put together (best-fit decreasing, the run's max_length and seed)",
        ))
    if summary.problems:
        items = "".join(
            f'<li class="problem">row {index}: {html_lib.escape(reason)}</li>' for index, reason in summary.problems.items()
        )
        sections.append(_section(f"{len(summary.problems)} row(s) cannot be trained on", f"<ul>{items}</ul>"))
    return _PAGE.format(
        title=html_lib.escape(title), text=html_lib.escape(summary_text(summary)), sections="\n".join(sections)
    )
