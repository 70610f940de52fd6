"""The unit report as one self-contained HTML page: spectrogram PNGs and audio excerpts are
embedded as base64 data URIs, so the page opens anywhere, offline, with nothing beside it."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from soundnet_cli.atomic import atomic_path
from soundnet_cli.visualize.units import Hit, Unit, UnitsReport

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 18px; margin: 28px 0 4px; border-top: 1px solid #ddd; padding-top: 16px; }
.meta, .summary { color: #555; font-size: 13px; margin: 2px 0 10px; }
table.index { border-collapse: collapse; font-size: 13px; margin: 10px 0; }
table.index td, table.index th { border-bottom: 1px solid #e4e4e4; padding: 3px 10px;
  text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px; }
.card { background: white; border: 1px solid #e0e0e0; border-radius: 6px; padding: 8px; }
.card img { width: 320px; height: 160px; display: block; }
.card audio { width: 320px; height: 32px; margin-top: 4px; }
.card .name { font-size: 12px; font-weight: 600; word-break: break-all; }
.card .facts { font-size: 12px; color: #444; }
.label { background: #eef3fb; border-radius: 3px; padding: 0 4px; }
.errors { color: #a00; font-size: 13px; }
"""


def _data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _counts(pairs: list[tuple[str, int]], limit: int = 3) -> str:
    return ", ".join(f"{html.escape(name.split(',')[0])} ×{n}" for name, n in pairs[:limit])


def _card(rank: int, hit: Hit) -> str:
    e = html.escape
    parts = [
        '<div class="card">',
        f'<div class="name">{rank}. {e(hit.name)}</div>',
        f'<div class="facts">peak {hit.activation:.3f} at {hit.time:.2f} s · '
        f"excerpt {hit.start:.2f}–{hit.end:.2f} s"
        + (f' · <span class="label">{e(hit.label)}</span>' if hit.label else "")
        + "</div>",
    ]
    if hit.spectrogram:
        parts.append(
            f'<img alt="spectrogram of {e(hit.name)}" '
            f'src="{_data_uri("image/png", hit.spectrogram)}">'
        )
    if hit.audio:
        source = _data_uri("audio/flac", hit.audio)
        parts.append(f'<audio controls preload="metadata" src="{source}"></audio>')
    for head, top in hit.predictions.items():
        parts.append(
            f'<div class="facts">{e(head)}: {e(str(top["label"]).split(",")[0])} '
            f"({float(top['probability']):.2f})</div>"
        )
    parts.append("</div>")
    return "\n".join(parts)


def _section(unit: Unit, report: UnitsReport) -> str:
    summary = [
        f"selectivity {unit.selectivity:.2f} · mean peak over all clips {unit.mean_peak:.3f}"
    ]
    if unit.label_counts():
        summary.append(f"labels: {_counts(unit.label_counts())}")
    for head in report.heads:
        if unit.prediction_counts(head):
            summary.append(f"{html.escape(head)}: {_counts(unit.prediction_counts(head))}")
    cards = "\n".join(_card(i + 1, hit) for i, hit in enumerate(unit.hits))
    return (
        f'<section id="unit-{unit.unit}"><h2>{html.escape(report.layer)} unit {unit.unit}</h2>\n'
        f'<div class="summary">{" · ".join(summary)}</div>\n<div class="grid">\n{cards}\n</div>'
        "</section>"
    )


def _index(report: UnitsReport) -> str:
    heads = report.heads
    header = "".join(f"<th>{html.escape(h)} (excerpts)</th>" for h in heads)
    rows = []
    for unit in report.units:
        cells = "".join(f"<td>{_counts(unit.prediction_counts(h), 2)}</td>" for h in heads)
        rows.append(
            f'<tr><td><a href="#unit-{unit.unit}">{unit.unit}</a></td>'
            f"<td>{unit.selectivity:.2f}</td><td>{_counts(unit.label_counts(), 2)}</td>"
            f"{cells}</tr>"
        )
    return (
        '<table class="index"><tr><th>unit</th><th>selectivity</th><th>labels</th>'
        f"{header}</tr>\n" + "\n".join(rows) + "</table>"
    )


def render_units_page(report: UnitsReport, title: str | None = None) -> str:
    e = html.escape
    title = title or f"What {report.layer} units respond to"
    meta = (
        f"model {e(report.model)} · layer {e(report.layer)} ({report.channels} units) · "
        f"{report.clips} clips scanned · top {report.k} clips per unit · "
        f"excerpts of {report.excerpt_seconds:.2f} s around the peak (dashed line)"
    )
    errors = ""
    if report.failures:
        items = "".join(f"<li>{e(f.error)}</li>" for f in report.failures)
        errors = f'<div class="errors">{len(report.failures)} clips failed:<ul>{items}</ul></div>'
    sections = "\n".join(_section(unit, report) for unit in report.units)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>\n"
        f'<h1>{e(title)}</h1><div class="meta">{meta}</div>\n{errors}\n{_index(report)}\n'
        f"{sections}\n</body></html>\n"
    )


def write_units_page(
    report: UnitsReport, path: str | os.PathLike[str], title: str | None = None
) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        tmp.write_text(render_units_page(report, title), encoding="utf-8")
    return target
