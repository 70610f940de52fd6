"""Rows of a stream: spans, step rows and events equal the offline tables of the same
prediction; pooled windows average the spans they overlap, weighted by the overlap."""

from __future__ import annotations

import numpy as np
import pytest

from soundnet_cli.errors import UsageProblem
from soundnet_cli.prediction.follow import (
    EventRows,
    ScoredSpan,
    Spanner,
    Step,
    StepRows,
    WindowRows,
    check_window,
)
from soundnet_cli.prediction.tables import segment_rows, step_rows
from soundnet_cli.students.classifier import HeadSpec
from soundnet_cli.students.predict import HeadPrediction, Prediction, StepPrediction

HEADS = [HeadSpec("objects", 3, ("cat", "dog", "bird")), HeadSpec("scenes", 2, ("beach", "sea"))]


def random_steps(count: int, seed: int = 0) -> list[Step]:
    rng = np.random.default_rng(seed)
    steps = []
    for i in range(count):
        probs = {}
        for head in HEADS:
            p = rng.dirichlet(np.full(head.size, 0.3)).astype(np.float32)
            probs[head.name] = p
        steps.append(Step(i, 4.75 + 2.97 * i, probs))
    return steps


def offline(steps: list[Step], duration: float) -> Prediction:
    def ranked(probs: np.ndarray, names: tuple[str, ...]) -> HeadPrediction:
        order = np.argsort(-probs, kind="stable")
        return HeadPrediction("", [names[i] for i in order], [float(probs[i]) for i in order])

    out = Prediction("-", duration, None)
    for step in steps:
        heads = []
        for head in HEADS:
            h = ranked(step.probs[head.name], head.categories)
            heads.append(HeadPrediction(head.name, h.labels, h.probabilities))
        out.steps.append(StepPrediction(step.time, heads))
    return out


def streamed(stage, steps: list[Step], duration: float, sizes=(1, 3, 2)) -> list:
    """Steps handed out in batches; the steps past the end of the input come with the end, as
    the last run of the chunk plan gives them."""
    spanner, rows, at, k = Spanner(), [], 0, 0
    early = [s for s in steps if s.time + 2.97 / 2 < duration - 2.97]
    while at < len(early):
        batch = early[at : at + sizes[k % len(sizes)]]
        rows += stage.add(spanner.add(batch))
        at, k = at + len(batch), k + 1
    rows += stage.add(spanner.add(steps[len(early) :], duration))
    rows += stage.add(spanner.finish(duration))
    return rows + stage.finish(duration)


@pytest.mark.parametrize("duration", [30.0, 31.9, 28.5])
def test_step_rows_equal_the_offline_table(duration):
    steps = random_steps(10)
    rows = streamed(StepRows("-", HEADS, 2, None), steps, duration)
    assert rows == step_rows(offline(steps, duration), top_k=2)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_events_equal_the_offline_segments_as_they_close(threshold):
    steps = random_steps(40, seed=3)
    rows = streamed(EventRows("-", HEADS, 1, threshold), steps, 120.0)
    reference = offline(steps, 120.0)
    if threshold is not None:
        from soundnet_cli.prediction.tables import apply_threshold

        reference = apply_threshold(reference, threshold)
    expected = segment_rows(reference)
    assert sorted(rows, key=lambda r: (r.start, r.head)) == sorted(
        expected, key=lambda r: (r.start, r.head)
    )
    assert len(rows) == len(set(rows))
    ends = [r.end for r in rows[:-2]]
    assert ends == sorted(ends)  # handed out as each event closes


def test_windows_pool_the_spans_they_overlap():
    spans = [
        ScoredSpan(0.0, 2.0, {"objects": np.array([1.0, 0, 0]), "scenes": np.array([1.0, 0])}),
        ScoredSpan(2.0, 3.0, {"objects": np.array([0, 1.0, 0]), "scenes": np.array([0, 1.0])}),
        ScoredSpan(3.0, 5.5, {"objects": np.array([0, 0, 1.0]), "scenes": np.array([0, 1.0])}),
    ]
    stage = WindowRows("-", HEADS, None, None, window=2.5, hop=1.0)
    early = stage.add(spans[:2])
    assert {(r.start, r.end) for r in early} == {(0.0, 2.5)}  # [1, 3.5) waits for more
    rows = early + stage.add(spans[2:]) + stage.finish(5.5)
    windows = sorted({(r.start, r.end) for r in rows})
    assert windows == [(0.0, 2.5), (1.0, 3.5), (2.0, 4.5), (3.0, 5.5)]
    first = {r.label: r.probability for r in rows if r.start == 1.0 and r.head == "objects"}
    assert first == pytest.approx({"cat": 1 / 2.5, "dog": 1 / 2.5, "bird": 0.5 / 2.5})
    ranks = [r.rank for r in rows if r.start == 1.0 and r.head == "objects"]
    assert ranks == [1, 2, 3]


def test_a_window_longer_than_the_input_is_the_whole_input():
    span = ScoredSpan(0.0, 8.0, {"objects": np.array([0.2, 0.5, 0.3]), "scenes": np.ones(2) / 2})
    stage = WindowRows("-", HEADS, 1, None, window=10.0, hop=5.0)
    rows = stage.add([span]) + stage.finish(8.0)
    assert [(r.start, r.end, r.head, r.label) for r in rows] == [
        (0.0, 8.0, "objects", "dog"),
        (0.0, 8.0, "scenes", "beach"),
    ]


def test_bad_windows_are_usage_errors():
    check_window(None, None)
    for window, hop in [(0.0, None), (-1.0, 1.0), (2.0, 0.0), (None, 1.0)]:
        with pytest.raises(UsageProblem):
            check_window(window, hop)
