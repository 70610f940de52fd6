"""Training a probe on your own labeled sounds and applying it (`soundnet probe`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.datasets.labels import (
    GROUP_COLUMNS,
    LABEL_COLUMNS,
    PATH_COLUMNS,
    check_labels,
    pick_column,
    read_table,
)
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.evaluation.features import compute_features, model_key
from soundnet_cli.evaluation.protocol import check_layers, fit_probe, plan_layer_fit
from soundnet_cli.media.audio import Mix
from soundnet_cli.probes import ProbeFile, build_probe, load_probe, save_probe, window_steps
from soundnet_cli.probes.windows import check_finite

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student


@dataclass(frozen=True)
class LabeledClip:
    path: Path
    label: str
    group: str


def read_labels(labels: Path, root: Path) -> list[LabeledClip]:
    """Rows of a CSV with a path column (relative to ``root``) and a label column; an optional
    group column (``group`` or ``src_file``) keeps related clips together when choosing C."""
    if not labels.is_file():
        raise UsageProblem(f"{labels}: no such labels file")
    header, rows = read_table(labels)
    path_col = pick_column(header, PATH_COLUMNS, "path", labels)
    label_col = pick_column(header, LABEL_COLUMNS, "label", labels)
    group_col = pick_column(header, GROUP_COLUMNS, "group", labels, required=False)
    assert path_col is not None and label_col is not None
    base = root if root.is_dir() else root.parent
    check_labels(labels, [(r.line, r[path_col], r[label_col]) for r in rows], inside=base)
    clips = []
    for row in rows:
        path = base / row[path_col]
        if not path.is_file():
            raise SoundnetError(f"{labels} line {row.line}: {row[path_col]} not found under {base}")
        group = row[group_col] if group_col else str(path)
        clips.append(LabeledClip(path, row[label_col], group))
    if len({c.label for c in clips}) < 2:
        raise UsageProblem(f"{labels}: a probe needs at least two labels")
    return clips


def model_source(checkpoint: Path | None, student: str | None) -> dict[str, Any]:
    """How `probe predict` loads the same model again (the official SoundNet-8 when neither)."""
    return {
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "student": student,
    }


def fit(
    clips: Sequence[LabeledClip],
    model: Student,
    *,
    layer: str = "pool5",
    probe: str = "linear-svm",
    window_seconds: float = 1.0,
    C: float | str = 0.01,
    repeat_to: float | None = 10.0,
    mix: Mix = "first",
    device: str = "cpu",
    source: dict[str, Any] | None = None,
    precision: str = "fp32",
    solver: str | None = None,
    max_memory: int | None = None,
    on_clip: Callable[[], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a clip probe on ``clips``; returns it with the metadata a probe file stores.

    ``precision`` bf16/fp16 computes the features in half precision where the device supports
    it (it logs a note when it falls back to fp32). ``solver`` (``torch``, the default, or
    ``liblinear``) fits the builtin linear probes, on ``device``; the metadata's ``solver``
    entry says whether it converged. The fit is planned before any feature is computed, and
    refused in one line saying what would fit when it would take more than ``max_memory``
    bytes (default: half the physical memory)."""
    from soundnet_cli.plugins import get_plugins

    check_layers(model, [layer])
    from soundnet_cli.models import for_inference

    model = for_inference(model, [layer], precision=precision)
    entry = get_plugins().probes.get(probe)

    def make(c: float) -> Any:
        return build_probe(entry.factory, c, solver=solver, device=device)

    classes = len({c.label for c in clips})
    plan_layer_fit(model, layer, make, window_seconds, len(clips), classes, repeat_to, max_memory)
    features = compute_features(
        model,
        [c.path for c in clips],
        [layer],
        repeat_to=repeat_to,
        mix=mix,
        device=device,
        on_clip=on_clip,
    )
    check_finite([f[layer] for f in features], [str(c.path) for c in clips])
    stride = next(i.stride for i in model.feature_info if i.name == layer)
    steps = window_steps(stride, window_seconds, model.sample_rate)
    clip_probe, chosen = fit_probe(
        make,
        [f[layer] for f in features],
        [c.label for c in clips],
        [c.group for c in clips],
        steps,
        C,
        max_memory=max_memory,
        step_seconds=stride / model.sample_rate,
        layer=layer,
    )
    meta = {
        "probe": probe,
        "params": clip_probe.estimator.get_params(),
        "solver": _fit_summary(clip_probe),
        "C_requested": C,
        "window_seconds": window_seconds,
        "window_steps": steps,
        "classes": [str(c) for c in clip_probe.classes_],
        "trained_on": len(clips),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "features": {
            "model": model_key(model),
            "layer": layer,
            "repeat_to": repeat_to,
            "mix": mix,
            "sample_rate": model.sample_rate,
            "source": source or {},
        },
    }
    return clip_probe, meta


def _fit_summary(clip_probe: Any) -> dict[str, Any] | None:
    """How the solver ended, for the probe file (readers of the format ignore it)."""
    report = clip_probe.fit_report
    return None if report is None else report.as_dict()


@dataclass
class ClipPrediction:
    path: str
    label: str
    scores: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "label": self.label,
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
        }


def predict(
    probe_file: ProbeFile,
    model: Student,
    paths: Sequence[Path],
    *,
    device: str = "cpu",
    precision: str = "fp32",
    on_clip: Callable[[], None] | None = None,
) -> list[ClipPrediction]:
    """Apply a saved probe to audio files with the model it was trained on (in ``precision``,
    as :func:`fit`)."""
    features_meta = probe_file.meta["features"]
    probe_file.check_features(features_meta["layer"], model_key(model))
    from soundnet_cli.models import for_inference

    model = for_inference(model, [features_meta["layer"]], precision=precision)
    features = compute_features(
        model,
        paths,
        [features_meta["layer"]],
        repeat_to=features_meta["repeat_to"],
        mix=features_meta["mix"],
        device=device,
        on_clip=on_clip,
    )
    layer_features = [f[features_meta["layer"]] for f in features]
    check_finite(layer_features, [str(p) for p in paths])
    decisions = probe_file.probe.decision_function(layer_features)
    classes = probe_file.probe.classes_
    return [
        ClipPrediction(
            str(path),
            str(classes[int(np.argmax(row))]),
            {str(c): float(v) for c, v in zip(classes, row, strict=True)},
        )
        for path, row in zip(paths, decisions, strict=True)
    ]


__all__ = ["LabeledClip", "fit", "load_probe", "predict", "read_labels", "save_probe"]
