"""Predictions as tables: one row per file, time step, head and rank, or per event.

Time steps become spans of the file's own timeline: a step runs from the midpoint with the step
before to the midpoint with the step after; the first starts at 0 and the last ends at the end
of the file, so the spans of a file cover it without gaps or overlaps. A clip shorter than the
20-s training length is tiled to it, and every step then sees the whole clip looped; such a
clip gets one span, 0 to its duration, holding the mean over its steps.

Segments (events) merge consecutive spans whose top label is the same, per head, into one row
with the mean of that label's probability.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from soundnet_cli.errors import UsageProblem
from soundnet_cli.students.predict import HeadPrediction, Prediction, StepPrediction

FORMATS = ("table", "json", "csv", "tsv", "jsonl", "audacity")
COLUMNS = ("path", "start", "end", "head", "rank", "label", "probability")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads these as a formula


@dataclass(frozen=True)
class Row:
    path: str
    start: float  # seconds into the file
    end: float
    head: str
    rank: int  # 1 = the head's most probable label in this span (always 1 for segments)
    label: str
    probability: float  # for a segment: the mean over its steps

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "head": self.head,
            "rank": self.rank,
            "label": self.label,
            "probability": round(self.probability, 6),
        }


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    heads: list[HeadPrediction]


def check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UsageProblem(
            f"a threshold must be a probability in [0, 1], not {threshold}", parameter="threshold"
        )


def spreadsheet_safe(text: str) -> str:
    """``text`` for a CSV/TSV cell that a spreadsheet will not run: a cell starting with
    ``= + - @``, a tab or a carriage return gets a leading ``'`` (OWASP's advice against CSV
    injection; a file named ``=cmd|calc.ogg`` stays a name). A lone ``-`` (standard input)
    cannot start a formula and is kept as it is."""
    return "'" + text if text.startswith(FORMULA_STARTS) and text != "-" else text


def apply_threshold(prediction: Prediction, threshold: float | None) -> Prediction:
    """The prediction without the labels whose probability is below ``threshold``."""
    if threshold is None:
        return prediction

    def keep(head: HeadPrediction) -> HeadPrediction:
        pairs = [(lab, p) for lab, p in zip(head.labels, head.probabilities, strict=True)]
        kept = [(lab, p) for lab, p in pairs if p >= threshold]
        return HeadPrediction(head.head, [lab for lab, _ in kept], [p for _, p in kept])

    return replace(
        prediction,
        steps=[StepPrediction(s.time, [keep(h) for h in s.heads]) for s in prediction.steps],
        summary=[keep(h) for h in prediction.summary],
    )


def spans(prediction: Prediction) -> list[Span]:
    """The file's time steps as spans of its own timeline (see the module doc)."""
    duration = prediction.duration
    if prediction.tiled_to is not None or not prediction.steps:
        return [Span(0.0, duration, prediction.summary)]
    centres = [step.time for step in prediction.steps]
    bounds = [0.0, *((a + b) / 2 for a, b in zip(centres[:-1], centres[1:], strict=True)), duration]
    out = []
    for index, step in enumerate(prediction.steps):
        start, end = bounds[index], min(bounds[index + 1], duration)
        if start < end:  # a step centred past the end of the file covers nothing of it
            out.append(Span(start, end, step.heads))
    return out


def step_rows(prediction: Prediction, top_k: int | None = None) -> list[Row]:
    """One row per span, head and rank (up to ``top_k`` ranks), sorted by time."""
    rows = []
    for span in spans(prediction):
        for head in span.heads:
            ranked = list(zip(head.labels, head.probabilities, strict=True))[:top_k]
            for rank, (label, probability) in enumerate(ranked, start=1):
                rows.append(
                    Row(prediction.path, span.start, span.end, head.head, rank, label, probability)
                )
    return rows


def segment_rows(prediction: Prediction) -> list[Row]:
    """Consecutive spans with the same top label merged into one row per head (an event);
    a span where a head has no label (all below the threshold) ends that head's event."""
    rows: list[Row] = []
    all_spans = spans(prediction)
    heads = [h.head for h in all_spans[0].heads] if all_spans else []
    for position, name in enumerate(heads):
        current: tuple[str, float, float, list[float]] | None = None  # label, start, end, p
        for span in all_spans:
            head = span.heads[position]
            top = (head.labels[0], head.probabilities[0]) if head.labels else None
            if current is not None and top is not None and top[0] == current[0]:
                current = (current[0], current[1], span.end, [*current[3], top[1]])
                continue
            if current is not None:
                rows.append(_segment(prediction.path, name, current))
            current = (top[0], span.start, span.end, [top[1]]) if top is not None else None
        if current is not None:
            rows.append(_segment(prediction.path, name, current))
    order = {name: i for i, name in enumerate(heads)}
    return sorted(rows, key=lambda r: (r.start, order[r.head]))


def _segment(path: str, head: str, event: tuple[str, float, float, list[float]]) -> Row:
    label, start, end, probabilities = event
    return Row(path, start, end, head, 1, label, sum(probabilities) / len(probabilities))


def table_rows(
    predictions: Iterable[Prediction],
    *,
    segments: bool = False,
    top_k: int | None = None,
    threshold: float | None = None,
) -> list[Row]:
    """The rows of every file, file after file (in the order given)."""
    check_threshold(threshold)
    rows: list[Row] = []
    for prediction in predictions:
        kept = apply_threshold(prediction, threshold)
        rows.extend(segment_rows(kept) if segments else step_rows(kept, top_k))
    return rows


def delimited(rows: Sequence[Row], delimiter: str = ",") -> str:
    """CSV (or TSV with ``delimiter="\\t"``) with a header line; times with 3 decimals. Text
    cells are made :func:`spreadsheet_safe`; numbers are written as numbers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            [
                spreadsheet_safe(row.path),
                f"{row.start:.3f}",
                f"{row.end:.3f}",
                spreadsheet_safe(row.head),
                row.rank,
                spreadsheet_safe(row.label),
                f"{row.probability:.6f}",
            ]
        )
    return buffer.getvalue()


def json_lines(rows: Sequence[Row]) -> str:
    """JSON Lines: one object per row (``Row.as_dict``), for pipes and ``--follow``."""
    import json

    return "".join(json.dumps(row.as_dict(), ensure_ascii=False) + "\n" for row in rows)


def audacity_labels(rows: Sequence[Row]) -> str:
    """An Audacity label track: ``start<TAB>end<TAB>label`` per line (File > Import > Labels);
    the label names the head and the probability."""
    lines = []
    for row in rows:
        text = " ".join(f"{row.head}: {row.label} ({row.probability:.2f})".split())
        lines.append(f"{row.start:.6f}\t{row.end:.6f}\t{text}\n")
    return "".join(lines)
