"""Predictions as rows: spans cover the file, segments merge steps, CSV/TSV/Audacity text."""

from __future__ import annotations

import csv
import io

import pytest

from soundnet_cli.errors import UsageProblem
from soundnet_cli.prediction.run import label_file_names
from soundnet_cli.prediction.tables import (
    COLUMNS,
    Row,
    audacity_labels,
    delimited,
    segment_rows,
    spans,
    step_rows,
    table_rows,
)
from soundnet_cli.students.predict import HeadPrediction, Prediction, StepPrediction


def prediction(tops: list[tuple[str, float]], *, duration: float = 20.0, tiled: bool = False):
    """A file with one step per entry of ``tops`` (the objects head's top label), centred
    every 3 s from 1.5 s; the scenes head always says 'beach'."""
    steps = [
        StepPrediction(
            1.5 + 3 * i,
            [
                HeadPrediction("objects", [label, "other"], [p, (1 - p) / 2]),
                HeadPrediction("scenes", ["beach"], [0.9]),
            ],
        )
        for i, (label, p) in enumerate(tops)
    ]
    summary = [
        HeadPrediction("objects", ["dog", "cat"], [0.6, 0.2]),
        HeadPrediction("scenes", ["beach"], [0.9]),
    ]
    return Prediction("a/clip.wav", duration, 20.0 if tiled else None, steps, summary)


def test_spans_cover_the_file_without_gaps() -> None:
    result = spans(prediction([("dog", 0.5)] * 5, duration=14.2))
    assert [s.start for s in result] == [0.0, 3.0, 6.0, 9.0, 12.0]
    assert [s.end for s in result] == [3.0, 6.0, 9.0, 12.0, 14.2]


def test_a_step_centred_past_the_end_covers_nothing() -> None:
    result = spans(prediction([("dog", 0.5)] * 5, duration=8.0))
    assert [(s.start, s.end) for s in result] == [(0.0, 3.0), (3.0, 6.0), (6.0, 8.0)]


def test_a_tiled_clip_is_one_span_holding_the_mean() -> None:
    (span,) = spans(prediction([("cat", 0.9)] * 4, duration=5.0, tiled=True))
    assert (span.start, span.end) == (0.0, 5.0)
    assert span.heads[0].labels == ["dog", "cat"]  # the summary, not a step


def test_step_rows_one_per_step_head_and_rank() -> None:
    rows = step_rows(prediction([("dog", 0.5), ("cat", 0.7)], duration=6.0), top_k=2)
    assert len(rows) == 2 * (2 + 1)  # scenes has a single label
    assert [(r.start, r.head, r.rank, r.label) for r in rows[:3]] == [
        (0.0, "objects", 1, "dog"),
        (0.0, "objects", 2, "other"),
        (0.0, "scenes", 1, "beach"),
    ]
    assert step_rows(prediction([("dog", 0.5)], duration=3.0), top_k=1)[0].rank == 1


def test_segments_merge_runs_of_the_same_top_label() -> None:
    tops = [("dog", 0.4), ("dog", 0.6), ("cat", 0.3), ("cat", 0.5), ("cat", 0.7), ("dog", 0.2)]
    rows = [r for r in segment_rows(prediction(tops, duration=18.0)) if r.head == "objects"]
    assert [(r.label, r.start, r.end) for r in rows] == [
        ("dog", 0.0, 6.0),
        ("cat", 6.0, 15.0),
        ("dog", 15.0, 18.0),
    ]
    assert [r.probability for r in rows] == pytest.approx([0.5, 0.5, 0.2], rel=1e-9)
    scenes = [r for r in segment_rows(prediction(tops, duration=18.0)) if r.head == "scenes"]
    assert [(r.start, r.end) for r in scenes] == [(0.0, 18.0)]


def test_threshold_drops_labels_and_breaks_events() -> None:
    tops = [("dog", 0.6), ("dog", 0.1), ("dog", 0.7)]
    rows = table_rows([prediction(tops, duration=9.0)], segments=True, threshold=0.5)
    objects = [(r.start, r.end) for r in rows if r.head == "objects"]
    assert objects == [(0.0, 3.0), (6.0, 9.0)]
    steps = table_rows([prediction(tops, duration=9.0)], top_k=5, threshold=0.5)
    assert all(r.probability >= 0.5 for r in steps)
    with pytest.raises(UsageProblem, match="threshold"):
        table_rows([], threshold=1.5)


def test_csv_and_tsv_have_the_columns_and_three_decimal_times() -> None:
    rows = step_rows(prediction([("dog, domestic", 0.5)], duration=2.0004), top_k=1)
    text = delimited(rows)
    parsed = list(csv.reader(io.StringIO(text)))
    assert tuple(parsed[0]) == COLUMNS
    assert parsed[1] == [
        "a/clip.wav",
        "0.000",
        "2.000",
        "objects",
        "1",
        "dog, domestic",
        "0.500000",
    ]
    tsv = delimited(rows, "\t").splitlines()
    assert tsv[0] == "\t".join(COLUMNS) and tsv[1].split("\t")[5] == "dog, domestic"


def test_audacity_label_track_format() -> None:
    rows = segment_rows(prediction([("dog", 0.5), ("dog\tbad", 0.6)], duration=6.0))
    lines = audacity_labels(rows).splitlines()
    assert len(lines) == len(rows)
    for line in lines:
        start, end, label = line.split("\t")  # exactly three fields: a tab in a label is removed
        assert float(start) < float(end) and label.split(": ")[0] in {"objects", "scenes"}
    assert lines[0].startswith("0.000000\t3.000000\tobjects: dog (0.50)")


def test_label_file_names_mirror_inputs_and_avoid_clashes() -> None:
    names = label_file_names(["in/a.wav", "in/sub/b.flac", "in/c.wav", "in/c.mp3"])
    assert names == {
        "in/a.wav": "a.txt",
        "in/sub/b.flac": "sub/b.txt",
        "in/c.wav": "c.wav.txt",
        "in/c.mp3": "c.mp3.txt",
    }


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_delimited_cells_that_start_a_formula_are_quoted_for_spreadsheets(delimiter):
    """Issue 25 (CSV injection): a spreadsheet runs `=cmd|...` as a formula; OWASP's fix is a
    leading `'` on cells starting with = + - @, tab or CR. Numbers stay numbers."""
    from soundnet_cli.prediction.tables import Row, delimited, spreadsheet_safe

    assert spreadsheet_safe("\rr.ogg") == "'\rr.ogg"
    names = ["=cmd|calc.ogg", "+1.ogg", "-x.ogg", "@sum.ogg", "\tt.ogg", "ok=.ogg"]
    rows = [Row(name, 0.0, 1.5, "@head", 1, "-label", 0.25) for name in names]
    text = io.StringIO(delimited(rows, delimiter), newline="")
    table = list(csv.reader(text, delimiter=delimiter))
    assert table[0] == ["path", "start", "end", "head", "rank", "label", "probability"]
    paths = [line[0] for line in table[1:]]
    assert paths == ["'" + name for name in names[:-1]] + ["ok=.ogg"]
    for line in table[1:]:
        assert line[1:] == ["0.000", "1.500", "'@head", "1", "'-label", "0.250000"]


# -- found by mutation testing (nox -s mutants -- tables; docs/testing.md) ----------------------
def test_thresholds_zero_and_one_are_probabilities() -> None:
    """Mutants: `0 < threshold` or `threshold < 1` in check_threshold."""
    assert len(table_rows([prediction([("dog", 0.5)])], threshold=0.0)) == 3
    assert table_rows([prediction([("dog", 1.0)])], threshold=1.0)[0].label == "dog"


def test_a_probability_equal_to_the_threshold_is_kept_and_the_summary_is_filtered_too() -> None:
    """Mutants: `p > threshold`; the summary left out of apply_threshold (a tiled clip's one
    span is its summary)."""
    rows = table_rows([prediction([("dog", 0.5)], tiled=True)], threshold=0.2)
    assert [(r.head, r.label, r.probability) for r in rows] == [
        ("objects", "dog", 0.6),
        ("objects", "cat", 0.2),
        ("scenes", "beach", 0.9),
    ]
    rows = table_rows([prediction([("dog", 0.5)], tiled=True)], threshold=0.5)
    assert [(r.head, r.label) for r in rows] == [("objects", "dog"), ("scenes", "beach")]


def test_a_step_starting_at_the_end_of_the_file_gives_no_empty_span() -> None:
    """Mutant: `start <= end` in spans (a zero-length span at the end of the file)."""
    out = spans(prediction([("dog", 0.5), ("cat", 0.5), ("cow", 0.5)], duration=6.0))
    assert [(s.start, s.end) for s in out] == [(0.0, 3.0), (3.0, 6.0)]


def test_segments_of_a_one_span_file_name_the_file_with_rank_one() -> None:
    """Mutants: segment_rows reading a second span for the head names, segments without the
    file's path, segment ranks other than 1."""
    rows = segment_rows(prediction([("dog", 0.5)], tiled=True))
    assert [(r.path, r.start, r.end, r.head, r.rank, r.label) for r in rows] == [
        ("a/clip.wav", 0.0, 20.0, "objects", 1, "dog"),
        ("a/clip.wav", 0.0, 20.0, "scenes", 1, "beach"),
    ]
    rows = segment_rows(prediction([("dog", 0.5), ("cat", 0.7)]))
    assert {r.path for r in rows} == {"a/clip.wav"} and {r.rank for r in rows} == {1}
    empty = Prediction("b.wav", 0.0, None, [], [])
    assert segment_rows(empty) == [] and table_rows([empty], segments=True) == []


def test_table_rows_are_steps_by_default_and_segments_on_request() -> None:
    """Mutants: table_rows defaulting to segments, ignoring `segments`, or dropping top_k."""
    two = prediction([("dog", 0.5), ("dog", 0.7)])
    assert table_rows([two]) == step_rows(two) and len(table_rows([two])) == 6
    assert table_rows([two], top_k=1) == step_rows(two, 1) and len(step_rows(two, 1)) == 4
    assert table_rows([two], segments=True) == segment_rows(two)
    assert len(segment_rows(two)) == 2


def test_csv_lines_end_with_a_newline_only() -> None:
    """Mutant: the csv module's default line ending (\\r\\n)."""
    text = delimited(step_rows(prediction([("dog", 0.5)])))
    assert "\r" not in text and text.endswith("\n")


def test_a_row_as_json_rounds_times_and_probabilities() -> None:
    """Row.as_dict (predict --format json writes it): times to 3 decimals, probability to 6."""
    (row,) = step_rows(prediction([("dog", 0.123456789)]), 1)[:1]
    assert row.as_dict() == {
        "path": "a/clip.wav",
        "start": 0.0,
        "end": 20.0,
        "head": "objects",
        "rank": 1,
        "label": "dog",
        "probability": 0.123457,
    }
    later = Row("x.wav", 1.23456, 2.98765, "scenes", 2, "beach", 0.5)
    assert later.as_dict() == {
        "path": "x.wav",
        "start": 1.235,
        "end": 2.988,
        "head": "scenes",
        "rank": 2,
        "label": "beach",
        "probability": 0.5,
    }
