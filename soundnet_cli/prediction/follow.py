"""`soundnet predict` on audio that is still arriving: time steps, events and pooled windows as
soon as the audio that determines them is in, equal to an offline pass over the same audio.

The pipeline: model-ready samples -> :class:`StreamPredictor` (the head layer's steps through
the streamed chunk plan; probabilities per head) -> :class:`Spanner` (each step's span of the
timeline, as ``tables.spans`` cuts it) -> a row stage (:class:`StepRows`, :class:`EventRows`
or :class:`WindowRows`) -> rows.

Timing (the latency documented in docs/commands/predict.md): a step is computed once the audio
up to the end of its receptive field plus at most one chunk has arrived; its span ends where
the next step's begins, which is known one step later. A row therefore follows the end of its
span by at most the layer's receptive field plus one chunk. An input shorter than the 20-s
training length is tiled to it, as offline, so the first rows wait for 20 s of audio (or the
end of the stream); for SoundNet-8's conv8 that wait is inside the receptive field bound.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.extraction.streamed import StreamedFeatures, latency_samples
from soundnet_cli.extraction.windows import check_window, pool_spans
from soundnet_cli.media.audio import Waveform, tile
from soundnet_cli.prediction.tables import Row, check_threshold
from soundnet_cli.students.contract import feature_of
from soundnet_cli.students.predict import (
    TRAINING_SECONDS,
    HeadPrediction,
    Prediction,
    StepPrediction,
)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SECONDS = 6.0


@dataclass
class Step:
    """One time step of the head layer: the centre of its receptive field (seconds) and each
    head's probabilities over all its categories."""

    index: int
    time: float
    probs: dict[str, np.ndarray]


@dataclass
class ScoredSpan:
    """A stretch of the timeline (seconds) and each head's probabilities over it."""

    start: float
    end: float
    probs: dict[str, np.ndarray]


def heads_of(model: Any) -> list[Any]:
    heads = getattr(model, "head_specs", None)
    if not heads or any(h.categories is None for h in heads):
        raise SoundnetError(
            "this model has no named output categories to predict; use a "
            "pretrained model or a distilled checkpoint"
        )
    return list(heads)


def head_probabilities(model: Any, logits: np.ndarray) -> dict[str, np.ndarray]:
    """(time, channels) head-layer logits -> each head's probabilities, (time, categories)."""
    import torch

    out, start = {}, 0
    values = torch.from_numpy(np.ascontiguousarray(logits))
    for head in heads_of(model):
        part = values[:, start : start + head.size]
        out[head.name] = part.log_softmax(dim=1).exp().numpy()
        start += head.size
    return out


def latency_seconds(model: Any, chunk_seconds: float, layer: str | None = None) -> float:
    """The documented bound from a row's audio arriving to the row: receptive field + a chunk
    (and, for the first rows, at least the 20-s training length)."""
    name = layer or model.head_layer
    rate = model.sample_rate
    return latency_samples(model, name, int(round(chunk_seconds * rate))) / rate


class StreamPredictor:
    """Model-ready samples in (:meth:`push`), head-layer steps out as soon as they are exact.

    The first steps are held until the input reaches the training length (shorter inputs are
    tiled, as offline); :meth:`finish` ends the stream and gives the rest. After it,
    ``duration`` is known and ``tiled`` holds the whole-input mean of a short input.
    """

    def __init__(self, model: Any, chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> None:
        if chunk_seconds <= 0:
            raise UsageProblem(f"the chunk length must be positive, not {chunk_seconds}")
        self.model = model
        self.heads = heads_of(model)
        self.layer = model.head_layer
        self.rate = int(model.sample_rate)
        self.info = feature_of(model, self.layer)
        self.features = StreamedFeatures(model, [self.layer], int(round(chunk_seconds * self.rate)))
        self.target = int(round(TRAINING_SECONDS * self.rate))
        self._start: list[np.ndarray] = []  # the first samples, until the training length
        self._held: list[Step] = []
        self._count = 0
        self.duration: float | None = None
        self.tiled: Step | None = None  # a short input: its mean over the tiled steps
        self.short_wave: np.ndarray | None = None  # a short input, kept to predict it offline

    @property
    def received(self) -> int:
        return self.features.received

    def _steps(self, logits: np.ndarray) -> list[Step]:
        probs = head_probabilities(self.model, logits)
        half = (self.info.receptive_field - 1) / 2
        out = []
        for t in range(len(logits)):
            index = self._count + t
            time = (self.info.offset + index * self.info.stride + half) / self.rate
            out.append(Step(index, time, {name: p[t] for name, p in probs.items()}))
        self._count += len(logits)
        return out

    def push(self, samples: np.ndarray) -> list[Step]:
        if self.received < self.target:
            self._start.append(np.asarray(samples[: self.target - self.received], np.float32))
        steps = self._steps(self.features.push(samples)[self.layer])
        if self.received < self.target:
            self._held.extend(steps)
            return []
        self._start = []
        held, self._held = self._held, []
        return held + steps

    def finish(self) -> list[Step]:
        self.duration = self.received / self.rate
        if self.received >= self.target:
            return self._steps(self.features.finish()[self.layer])
        if not self.received:
            raise SoundnetError("the stream ended before any audio arrived")
        self._held = []
        self.short_wave = np.concatenate(self._start)
        self.tiled = self._tiled(self.short_wave)
        return []

    def _tiled(self, wave: np.ndarray) -> Step:
        """A short input as offline: tiled circularly to the training length, one mean."""
        import torch

        with torch.inference_mode():
            tiled = torch.from_numpy(tile(wave, self.target)).to(self.model.device)
            logits = self.model.forward_features(tiled, [self.layer])[self.layer]
        probs = head_probabilities(self.model, logits[0].t().float().cpu().numpy())
        mean = {name: p.mean(axis=0) for name, p in probs.items()}
        return Step(0, (self.duration or 0.0) / 2, mean)


class Spanner:
    """Steps -> the spans ``tables.spans`` gives offline: from the midpoint with the step before
    to the midpoint with the step after (0 and the end of the input at the edges); a span is
    handed out once the next step is known."""

    def __init__(self) -> None:
        self._last: Step | None = None
        self._start = 0.0

    def add(self, steps: Sequence[Step], duration: float | None = None) -> list[ScoredSpan]:
        """Spans of the steps before the last one given; ``duration`` once it is known (before
        the end of the input, a span ends before the audio that arrived)."""
        out = []
        for step in steps:
            if self._last is not None:
                bound = (self._last.time + step.time) / 2
                end = bound if duration is None else min(bound, duration)
                if self._start < end:
                    out.append(ScoredSpan(self._start, end, self._last.probs))
                self._start = bound
            self._last = step
        return out

    def finish(self, duration: float, tiled: Step | None = None) -> list[ScoredSpan]:
        if tiled is not None:
            return [ScoredSpan(0.0, duration, tiled.probs)]
        if self._last is None or self._start >= duration:
            return []
        return [ScoredSpan(self._start, duration, self._last.probs)]


def top_labels(
    probs: np.ndarray, names: Sequence[str], k: int | None, threshold: float | None
) -> list[tuple[str, float]]:
    """The ``k`` most probable categories (ties in index order), those under ``threshold``
    left out."""
    order = np.argsort(-probs, kind="stable")[:k]
    pairs = [(names[i], float(probs[i])) for i in order]
    return [(n, p) for n, p in pairs if threshold is None or p >= threshold]


class RowStage:
    """Spans in, rows out; :meth:`finish` at the end of the input."""

    def __init__(
        self, path: str, heads: Sequence[Any], top_k: int | None, threshold: float | None
    ) -> None:
        check_threshold(threshold)
        self.path = path
        self.heads = list(heads)
        self.top_k = top_k
        self.threshold = threshold

    def ranked(self, span: ScoredSpan, k: int | None) -> list[Row]:
        rows = []
        for head in self.heads:
            names = list(head.categories)
            for rank, (label, p) in enumerate(
                top_labels(span.probs[head.name], names, k, self.threshold), start=1
            ):
                rows.append(Row(self.path, span.start, span.end, head.name, rank, label, p))
        return rows

    def add(self, spans: Sequence[ScoredSpan]) -> list[Row]:
        raise NotImplementedError

    def finish(self, duration: float) -> list[Row]:
        return []


class StepRows(RowStage):
    """One row per span, head and rank: ``tables.step_rows``."""

    def add(self, spans: Sequence[ScoredSpan]) -> list[Row]:
        return [row for span in spans for row in self.ranked(span, self.top_k)]


class EventRows(RowStage):
    """Consecutive spans with the same top label merged per head (``tables.segment_rows``);
    an event is handed out when it closes, so rows come in the order events end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: dict[str, tuple[str, float, float, list[float]] | None] = {
            h.name: None for h in self.heads
        }

    def _row(self, head: str, event: tuple[str, float, float, list[float]]) -> Row:
        label, start, end, probabilities = event
        return Row(self.path, start, end, head, 1, label, sum(probabilities) / len(probabilities))

    def add(self, spans: Sequence[ScoredSpan]) -> list[Row]:
        rows = []
        for span in spans:
            for head in self.heads:
                ranked = top_labels(span.probs[head.name], head.categories, 1, self.threshold)
                top = ranked[0] if ranked else None
                current = self._open[head.name]
                if current is not None and top is not None and top[0] == current[0]:
                    self._open[head.name] = (
                        current[0],
                        current[1],
                        span.end,
                        [*current[3], top[1]],
                    )
                    continue
                if current is not None:
                    rows.append(self._row(head.name, current))
                self._open[head.name] = (
                    (top[0], span.start, span.end, [top[1]]) if top is not None else None
                )
        return rows

    def finish(self, duration: float) -> list[Row]:
        order = {h.name: i for i, h in enumerate(self.heads)}
        rows = [self._row(name, ev) for name, ev in self._open.items() if ev is not None]
        self._open = {h.name: None for h in self.heads}
        return sorted(rows, key=lambda r: (r.start, order[r.head]))


class WindowRows(RowStage):
    """Rows pooled over sliding windows [k*hop, k*hop + window) (the last one cut at the end of
    the input, which it reaches): each head's probabilities averaged over the spans the window
    overlaps, weighted by the overlap, then ranked."""

    def __init__(self, *args: Any, window: float, hop: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_window(window, hop)
        self.window, self.hop = window, hop
        self._spans: list[ScoredSpan] = []
        self._k = 0
        self._known = 0.0  # the timeline is known up to here
        self._closed = False

    def _pooled(self, start: float, end: float) -> ScoredSpan:
        starts = np.array([s.start for s in self._spans])
        ends = np.array([s.end for s in self._spans])
        probs = {}
        for head in self.heads:
            values = np.stack([s.probs[head.name] for s in self._spans])
            pooled = pool_spans(starts, ends, values, start, end, "mean")
            # a window inside no span (cannot happen for spans covering the input)
            probs[head.name] = pooled if pooled is not None else values[-1]
        return ScoredSpan(start, end, probs)

    def _emit(self, duration: float | None) -> list[Row]:
        rows: list[Row] = []
        while not self._closed:
            start = self._k * self.hop
            end = start + self.window
            if duration is None:
                if end > self._known:
                    break
            else:
                if self._k > 0 and start >= duration:
                    self._closed = True
                    break
                end = min(end, duration)
            rows.extend(self.ranked(self._pooled(start, end), self.top_k))
            self._k += 1
            if duration is not None and start + self.window >= duration:
                self._closed = True
            next_start = self._k * self.hop
            self._spans = [s for s in self._spans if s.end > next_start]
        return rows

    def add(self, spans: Sequence[ScoredSpan]) -> list[Row]:
        for span in spans:
            self._spans.append(span)
            self._known = span.end
        return self._emit(None)

    def finish(self, duration: float) -> list[Row]:
        if self._k > 0 and (self._k - 1) * self.hop + self.window >= duration:
            self._closed = True  # the last window handed out already reached the end
        return self._emit(duration) if self._spans else []


def row_stage(
    path: str,
    model: Any,
    *,
    top_k: int | None,
    threshold: float | None,
    segments: bool = False,
    window: float | None = None,
    hop: float | None = None,
) -> RowStage:
    """The stage turning spans into the rows the user asked for."""
    heads = heads_of(model)
    if window is not None:
        if segments:
            raise UsageProblem("windows pool rows over time; they cannot go with segments")
        return WindowRows(
            path, heads, top_k, threshold, window=window, hop=hop if hop is not None else window
        )
    if segments:
        return EventRows(path, heads, top_k, threshold)
    return StepRows(path, heads, top_k, threshold)


class RowStream:
    """Samples in, rows out: a :class:`StreamPredictor`, a :class:`Spanner` and a row stage.
    ``prediction()`` after ``finish`` gives the offline-shaped :class:`Prediction`."""

    def __init__(
        self,
        model: Any,
        path: str,
        *,
        top_k: int | None = 5,
        threshold: float | None = None,
        segments: bool = False,
        window: float | None = None,
        hop: float | None = None,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
        keep_steps: bool = False,
    ) -> None:
        self.path = path
        self.predictor = StreamPredictor(model, chunk_seconds)
        self.spanner = Spanner()
        self.stage = row_stage(
            path,
            model,
            top_k=top_k,
            threshold=threshold,
            segments=segments,
            window=window,
            hop=hop,
        )
        self.top_k = top_k
        self.keep_steps = keep_steps
        self._steps: list[StepPrediction] = []
        self._sums: dict[str, np.ndarray] = {}
        self._count = 0

    def _keep(self, steps: Sequence[Step]) -> None:
        for step in steps:
            self._count += 1
            for name, p in step.probs.items():
                self._sums[name] = self._sums.get(name, 0.0) + p.astype(np.float64)
            if self.keep_steps:
                self._steps.append(StepPrediction(step.time, self._heads(step.probs)))

    def _heads(self, probs: dict[str, np.ndarray]) -> list[HeadPrediction]:
        out = []
        for head in self.predictor.heads:
            ranked = top_labels(probs[head.name], head.categories, self.top_k, None)
            out.append(HeadPrediction(head.name, [n for n, _ in ranked], [p for _, p in ranked]))
        return out

    def push(self, samples: np.ndarray) -> list[Row]:
        steps = self.predictor.push(samples)
        self._keep(steps)
        return self.stage.add(self.spanner.add(steps))

    def finish(self) -> list[Row]:
        steps = self.predictor.finish()
        self._keep(steps)
        duration = self.predictor.duration or 0.0
        rows = self.stage.add(self.spanner.add(steps, duration))
        rows += self.stage.add(self.spanner.finish(duration, self.predictor.tiled))
        return rows + self.stage.finish(duration)

    def prediction(self) -> Prediction:
        """The whole input as ``predict_waveform`` gives it (steps kept with ``keep_steps``)."""
        wave = self.predictor.short_wave
        if wave is not None:
            from soundnet_cli.students.predict import predict_waveform

            rate = self.predictor.rate
            short = Waveform(wave, rate, rate, 1, len(wave))
            return predict_waveform(
                self.predictor.model, short, top_k=self.top_k or 5, path=self.path
            )
        mean = {
            name: (s / max(1, self._count)).astype(np.float32) for name, s in self._sums.items()
        }
        return Prediction(
            self.path,
            self.predictor.duration or 0.0,
            None,
            list(self._steps),
            self._heads(mean) if mean else [],
        )
