"""Top objects and scenes per time step for audio files, from a student with output heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soundnet_cli.errors import SoundnetError
from soundnet_cli.media.audio import Waveform, tile
from soundnet_cli.students.contract import HeadedStudent, Student, feature_of, has_named_heads

TRAINING_SECONDS = 20.0  # clips shorter than the training length are tiled to it


@dataclass
class HeadPrediction:
    head: str
    labels: list[str]
    probabilities: list[float]


@dataclass
class StepPrediction:
    time: float  # centre of the step's receptive field, seconds into the (tiled) input
    heads: list[HeadPrediction]


@dataclass
class Prediction:
    """Per-step and whole-file (mean over steps) top-k predictions for one file."""

    path: str
    duration: float
    tiled_to: float | None
    steps: list[StepPrediction] = field(default_factory=list)
    summary: list[HeadPrediction] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def head(h: HeadPrediction) -> dict[str, Any]:
            return {
                "head": h.head,
                "top": [
                    {"label": label, "probability": round(p, 6)}
                    for label, p in zip(h.labels, h.probabilities, strict=True)
                ],
            }

        return {
            "path": self.path,
            "duration": round(self.duration, 4),
            "tiled_to": self.tiled_to,
            "steps": [
                {"time": round(s.time, 3), "heads": [head(h) for h in s.heads]} for s in self.steps
            ],
            "summary": [head(h) for h in self.summary],
        }


def _top(head: str, probs: np.ndarray, names: list[str], k: int) -> HeadPrediction:
    order = np.argsort(-probs, kind="stable")[:k]
    return HeadPrediction(head, [names[i] for i in order], [float(probs[i]) for i in order])


def predict_waveform(
    model: Student, wave: Waveform, *, top_k: int = 5, path: str = ""
) -> Prediction:
    """Predict one waveform, tiling it circularly to 20 s if it is shorter (see PAPER "Edges").

    ``model`` must keep :class:`~soundnet_cli.students.contract.HeadedStudent` with category
    names (SoundnetError otherwise)."""
    import torch

    if not has_named_heads(model) or not isinstance(model, HeadedStudent):
        raise SoundnetError(
            "this model has no named output categories to predict; use a "
            "pretrained model or a distilled checkpoint"
        )
    heads = list(model.head_specs)
    samples = wave.samples
    target = int(round(TRAINING_SECONDS * wave.sample_rate))
    tiled_to = None
    if len(samples) < target:
        samples = tile(samples, target)
        tiled_to = TRAINING_SECONDS
    device = model.device
    with torch.inference_mode():
        log_probs = model(torch.from_numpy(samples).to(device))
    info = feature_of(model, model.head_layer)
    per_head = {name: lp[0].exp().cpu().numpy() for name, lp in log_probs.items()}  # (C, T)
    steps = next(iter(per_head.values())).shape[1]
    times = info.step_centres(steps, wave.sample_rate)
    result = Prediction(path, wave.duration, tiled_to)
    for t in range(steps):
        result.steps.append(
            StepPrediction(
                times[t],
                [
                    _top(h.name, per_head[h.name][:, t], list(h.categories or ()), top_k)
                    for h in heads
                ],
            )
        )
    result.summary = [
        _top(h.name, per_head[h.name].mean(axis=1), list(h.categories or ()), top_k) for h in heads
    ]
    return result
