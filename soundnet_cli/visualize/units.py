"""What hidden units respond to (the paper's unit visualisations): one extraction pass over a set
of clips keeps, for every unit of a layer, the k clips whose peak activation is highest and the
time step of that peak; the chosen units' excerpts then get a spectrogram, an audio player and
the model's own top object and scene.

Each clip is wrapped circularly by one receptive field on both sides (as the paper tiles short
clips), and only time steps whose receptive field lies wholly inside that input count: steps
that see the zero padding at a file's edges otherwise give the highest activations of almost
every unit, for the same few clips. A step's time is its centre, taken modulo the clip length.

A unit's ``selectivity`` ranks units for ``top_units``: how far its top-k peaks stand above the
peaks of all clips, in standard deviations ((mean of top-k peaks - mean peak) / std of peaks).
Units that fire on everything, or never, score low; units that fire on a few clips score high.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.datasets.labels import LabelMap
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.media.audio import SCALE, Mix, Waveform, load_audio
from soundnet_cli.students.contract import HeadedStudent, Student, feature_of, has_named_heads

MAX_EXCERPT_SECONDS = 5.0
MIN_EXCERPT_SECONDS = 0.5


@dataclass
class Failure:
    path: str
    error: str


def wrapped_features(
    model: Student, samples: np.ndarray, layer: str, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(steps, channels) activations of the steps that see only the clip (wrapped circularly),
    and the time of each step in seconds into the clip."""
    from soundnet_cli.evaluation.features import clip_features

    info = feature_of(model, layer)
    count, pad = len(samples), info.receptive_field
    wrapped = np.take(samples, np.arange(-pad, count + pad), mode="wrap")
    features = clip_features(model, wrapped, [layer], device)[layer]
    starts = info.offset + np.arange(len(features)) * info.stride
    inside = (starts >= 0) & (starts + info.receptive_field <= len(wrapped))
    centres = starts[inside] + (info.receptive_field - 1) / 2 - pad
    return features[inside], np.mod(centres, count) / model.sample_rate


class UnitScan:
    """Per unit, a running top-k of clip peaks (value, clip index, peak time) and the sum and sum
    of squares of all clip peaks; memory does not grow with the number of clips."""

    def __init__(self, channels: int, k: int) -> None:
        self.k = k
        self.values = np.full((channels, k), -np.inf, dtype=np.float64)
        self.clips = np.full((channels, k), -1, dtype=np.int64)
        self.times = np.zeros((channels, k), dtype=np.float64)
        self.total = np.zeros(channels, dtype=np.float64)
        self.total_sq = np.zeros(channels, dtype=np.float64)
        self.count = 0

    @property
    def channels(self) -> int:
        return len(self.values)

    def add(self, clip: int, features: np.ndarray, times: np.ndarray) -> None:
        """``features``: one clip's (steps, channels) activations; ``times``: of each step."""
        peak = features.max(axis=0).astype(np.float64)
        time = times[features.argmax(axis=0)]
        values = np.concatenate([self.values, peak[:, None]], axis=1)
        clips = np.concatenate([self.clips, np.full((self.channels, 1), clip)], axis=1)
        when = np.concatenate([self.times, time[:, None]], axis=1)
        order = np.argsort(-values, axis=1, kind="stable")[:, : self.k]  # ties: earlier clip
        self.values = np.take_along_axis(values, order, axis=1)
        self.clips = np.take_along_axis(clips, order, axis=1)
        self.times = np.take_along_axis(when, order, axis=1)
        self.total += peak
        self.total_sq += peak**2
        self.count += 1

    def selectivity(self) -> np.ndarray:
        if self.count == 0:
            return np.zeros(self.channels)
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_sq / self.count - mean**2, 0.0))
        filled = np.isfinite(self.values)
        top = np.where(filled, self.values, 0.0).sum(axis=1) / np.maximum(filled.sum(axis=1), 1)
        return np.divide(top - mean, std, out=np.zeros(self.channels), where=std > 1e-12)


@dataclass
class Hit:
    """One of a unit's top clips: where its peak is, and the excerpt shown for it."""

    path: str
    name: str  # the path relative to the scanned folder
    time: float  # centre of the peak step's receptive field, seconds into the clip
    activation: float
    start: float  # excerpt start and end, seconds into the clip
    end: float
    label: str | None = None  # from --labels
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)  # head -> top label
    spectrogram: bytes = b""
    audio: bytes = b""

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "time": round(self.time, 3),
            "activation": round(self.activation, 5),
            "excerpt": [round(self.start, 3), round(self.end, 3)],
            "label": self.label,
            "predictions": self.predictions,
        }


@dataclass
class Unit:
    unit: int
    selectivity: float
    mean_peak: float
    hits: list[Hit]

    def label_counts(self) -> list[tuple[str, int]]:
        return Counter(h.label for h in self.hits if h.label).most_common()

    def prediction_counts(self, head: str) -> list[tuple[str, int]]:
        return Counter(
            h.predictions[head]["label"] for h in self.hits if head in h.predictions
        ).most_common()

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "selectivity": round(self.selectivity, 4),
            "mean_peak": round(self.mean_peak, 5),
            "labels": dict(self.label_counts()),
            "top": [h.as_dict() for h in self.hits],
        }


@dataclass
class UnitsReport:
    layer: str
    model: str
    channels: int
    k: int
    excerpt_seconds: float
    clips: int
    heads: list[str]
    units: list[Unit]
    failures: list[Failure]

    def as_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "model": self.model,
            "channels": self.channels,
            "k": self.k,
            "excerpt_seconds": self.excerpt_seconds,
            "clips": self.clips,
            "heads": self.heads,
            "units": [u.as_dict() for u in self.units],
            "errors": [{"path": f.path, "error": f.error} for f in self.failures],
        }


@dataclass
class ScanResult:
    scan: UnitScan
    paths: list[Path]
    durations: list[float]
    failures: list[Failure]


def relative_names(paths: Sequence[Path], roots: Sequence[Path]) -> list[str]:
    """Each path relative to the common folder of ``roots`` (posix), else its file name."""
    folders = [os.path.abspath(r if r.is_dir() else r.parent) for r in roots]
    common = os.path.commonpath(folders) if folders else ""
    names = []
    for path in paths:
        rel = os.path.relpath(os.path.abspath(path), common) if common else path.name
        names.append(Path(rel).as_posix() if not rel.startswith("..") else path.name)
    return names


def scan_units(
    model: Student,
    paths: Sequence[Path],
    layer: str,
    *,
    k: int,
    mix: Mix = "first",
    device: str = "cpu",
    on_clip: Callable[[], None] | None = None,
) -> ScanResult:
    """One pass over ``paths``: the running top-k of every unit of ``layer``. Clips that fail
    are recorded and skipped."""
    scan = UnitScan(feature_of(model, layer).channels, k)
    kept: list[Path] = []
    durations: list[float] = []
    failures: list[Failure] = []
    for path in paths:
        try:
            wave = load_audio(path, mix=mix)
            features, times = wrapped_features(model, wave.samples, layer, device)
        except SoundnetError as exc:
            failures.append(Failure(str(path), str(exc)))
        else:
            scan.add(len(kept), features, times)
            kept.append(path)
            durations.append(wave.duration)
        if on_clip:
            on_clip()
    return ScanResult(scan, kept, durations, failures)


def check_units(units: Sequence[int], channels: int, layer: str) -> None:
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise UsageProblem(f"unit {bad[0]} does not exist: {layer} has units 0..{channels - 1}")


def choose_units(scan: UnitScan, units: Sequence[int] | None, top_units: int) -> list[int]:
    """The units asked for, or the ``top_units`` most selective ones (ties: lower index)."""
    if units:
        check_units(units, scan.channels, "the layer")
        return list(dict.fromkeys(units))
    order = np.lexsort((np.arange(scan.channels), -scan.selectivity()))
    return [int(u) for u in order[:top_units]]


def excerpt_window(time: float, duration: float, length: float) -> tuple[float, float]:
    """A window of ``length`` s centred on ``time``, shifted to lie inside the clip."""
    length = min(length, duration)
    start = min(max(time - length / 2, 0.0), duration - length)
    return start, start + length


def flac_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Model-scaled samples ([-256, 256]) as a 16-bit FLAC file in memory."""
    import soundfile as sf

    buffer = io.BytesIO()
    clipped = np.clip(samples / SCALE, -1.0, 1.0)
    sf.write(buffer, clipped, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _head_names(model: Student) -> list[str]:
    """The heads the report's predictions name (none for a student without named heads)."""
    if isinstance(model, HeadedStudent) and has_named_heads(model):
        return [h.name for h in model.head_specs]
    return []


def _predict_excerpt(model: Student, wave: Waveform) -> dict[str, dict[str, Any]]:
    from soundnet_cli.students.predict import predict_waveform

    result = predict_waveform(model, wave, top_k=1)
    return {
        h.head: {"label": h.labels[0], "probability": round(h.probabilities[0], 4)}
        for h in result.summary
    }


def describe_units(
    model: Student,
    scanned: ScanResult,
    chosen: Sequence[int],
    layer: str,
    *,
    names: Sequence[str],
    excerpt_seconds: float,
    labels: LabelMap | None = None,
    mix: Mix = "first",
    media: bool = True,
    on_hit: Callable[[], None] | None = None,
) -> list[Unit]:
    """Excerpts, spectrograms, audio and predictions for the top clips of ``chosen`` units.
    ``names`` are the scanned clips' display names, in scan order."""
    from soundnet_cli.visualize.figures import spectrogram_png

    scan = scanned.scan
    predict = has_named_heads(model)
    selectivity = scan.selectivity()
    mean_peak = scan.total / max(scan.count, 1)
    waves: dict[int, Waveform] = {}
    done: dict[tuple[int, int], tuple[bytes, bytes, dict[str, dict[str, Any]]]] = {}
    result = []
    for unit in chosen:
        hits = []
        for value, clip, time in zip(
            scan.values[unit], scan.clips[unit], scan.times[unit], strict=True
        ):
            if clip < 0:
                continue
            clip = int(clip)
            duration = scanned.durations[clip]
            start, end = excerpt_window(time, duration, excerpt_seconds)
            hit = Hit(
                str(scanned.paths[clip]), names[clip], float(time), float(value), start, end,
                labels.lookup(names[clip]) if labels else None,
            )  # fmt: skip
            if media:
                if clip not in waves:
                    waves[clip] = load_audio(scanned.paths[clip], mix=mix)
                wave = waves[clip]
                first = int(round(start * wave.sample_rate))
                key = (clip, first)
                if key not in done:
                    samples = wave.samples[first : int(round(end * wave.sample_rate))]
                    excerpt = Waveform(samples, wave.sample_rate, wave.sample_rate, 1)
                    done[key] = (
                        spectrogram_png(samples, wave.sample_rate, marker=time - start),
                        flac_bytes(samples, wave.sample_rate),
                        _predict_excerpt(model, excerpt) if predict else {},
                    )
                hit.spectrogram, hit.audio, hit.predictions = done[key]
            hits.append(hit)
            if on_hit:
                on_hit()
        result.append(Unit(unit, float(selectivity[unit]), float(mean_peak[unit]), hits))
    return result


def default_excerpt_seconds(model: Student, layer: str) -> float:
    """The layer's receptive field, kept between 0.5 and 5 s."""
    field_seconds = feature_of(model, layer).receptive_field / model.sample_rate
    return float(min(max(field_seconds, MIN_EXCERPT_SECONDS), MAX_EXCERPT_SECONDS))


def visualize_units(
    model: Student,
    paths: Sequence[Path],
    layer: str,
    *,
    roots: Sequence[Path] | None = None,
    units: Sequence[int] | None = None,
    top_units: int = 12,
    k: int = 9,
    excerpt_seconds: float | None = None,
    labels: LabelMap | None = None,
    mix: Mix = "first",
    device: str = "cpu",
    media: bool = True,
    on_clip: Callable[[], None] | None = None,
    on_hit: Callable[[], None] | None = None,
) -> UnitsReport:
    """Scan ``paths`` once and describe the chosen units of ``layer`` (see the module doc)."""
    from soundnet_cli.evaluation.features import model_key

    if k < 1 or top_units < 1:
        raise UsageProblem("k and the number of top units must be at least 1")
    info = feature_of(model, layer)  # LayerError (exit 2) for a bad layer, before any work
    if units:
        check_units(units, info.channels, layer)
    seconds = excerpt_seconds or default_excerpt_seconds(model, layer)
    scanned = scan_units(model, paths, layer, k=k, mix=mix, device=device, on_clip=on_clip)
    names = relative_names(scanned.paths, roots or scanned.paths)
    chosen = choose_units(scanned.scan, units, top_units) if scanned.paths else []
    described = describe_units(
        model, scanned, chosen, layer, names=names, excerpt_seconds=seconds, labels=labels,
        mix=mix, media=media, on_hit=on_hit,
    )  # fmt: skip
    return UnitsReport(
        layer=layer,
        model=model_key(model),
        channels=info.channels,
        k=k,
        excerpt_seconds=seconds,
        clips=len(scanned.paths),
        heads=[h.name for h in model.head_specs]
        if isinstance(model, HeadedStudent) and has_named_heads(model)
        else [],
        units=described,
        failures=scanned.failures,
    )
