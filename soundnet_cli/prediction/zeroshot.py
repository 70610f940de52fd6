"""Zero-shot labels: a student with an embedding head scores the user's own labels, per time step
and per file, by cosine with the labels' CLIP text vectors.

Each label becomes one text vector (its prompts' ensemble, :mod:`soundnet_cli.teachers.text`).
A step's sound vector is the embedding head's projection of that step of its layer; a file's is
the mean over its steps. Scores are CLIP's: softmax over the labels of 100 x cosine. Clips
shorter than the 20-s training length are tiled to it, as ``predict`` does. The result is a
:class:`~soundnet_cli.prediction.run.PredictRun`, so every predict format and ``--segments``
work; the head is called ``zero-shot``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.errors import SoundnetError
from soundnet_cli.prediction.run import Failure, PredictRun
from soundnet_cli.students.predict import (
    TRAINING_SECONDS,
    HeadPrediction,
    Prediction,
    StepPrediction,
)

HEAD = "zero-shot"
LOGIT_SCALE = 100.0  # CLIP's: cosines of unit vectors to softmax scores


def scores(vectors: np.ndarray, label_vectors: np.ndarray) -> np.ndarray:
    """Softmax over labels of 100 x cosine; ``vectors`` (N, size) unit, labels (L, size)."""
    logits = LOGIT_SCALE * vectors @ label_vectors.T
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def _ranked(values: np.ndarray, labels: Sequence[str], k: int) -> HeadPrediction:
    order = np.argsort(-values, kind="stable")[:k]
    return HeadPrediction(HEAD, [labels[i] for i in order], [float(values[i]) for i in order])


def zero_shot_waveform(
    model: Any,
    head: Any,
    wave: Any,
    labels: Sequence[str],
    label_vectors: np.ndarray,
    *,
    top_k: int,
    path: str = "",
) -> Prediction:
    import torch

    from soundnet_cli.media.audio import tile
    from soundnet_cli.students.embedding import project, unit

    samples = wave.samples
    target = int(round(TRAINING_SECONDS * wave.sample_rate))
    tiled_to = None
    if len(samples) < target:
        samples, tiled_to = tile(samples, target), TRAINING_SECONDS
    layer = head.spec.layer
    with torch.inference_mode():
        tap = model.forward_features(torch.from_numpy(samples).to(model.device), [layer])[layer]
    features = tap[0].T.float().cpu().numpy()  # (time, channels)
    projected = project(head, features)
    per_step = scores(unit(projected), label_vectors)
    whole = scores(unit(projected.mean(axis=0))[None], label_vectors)[0]
    times = model.feature(layer).step_centres(len(features), wave.sample_rate)
    result = Prediction(path, wave.duration, tiled_to)
    result.steps = [
        StepPrediction(times[t], [_ranked(per_step[t], labels, top_k)])
        for t in range(len(features))
    ]
    result.summary = [_ranked(whole, labels, top_k)]
    return result


def zero_shot_files(
    files: Sequence[str | os.PathLike[str]],
    model: Any,
    head: Any,
    labels: Sequence[str],
    label_vectors: np.ndarray,
    *,
    top_k: int,
    mix: str = "first",
    on_file: Callable[[Path, Prediction | None, str | None], None] | None = None,
) -> PredictRun:
    """Score every file; a file that fails is recorded and skipped (as ``predict_files``)."""
    from soundnet_cli.media.audio import load_audio

    run = PredictRun()
    for name in files:
        path = Path(name)
        try:
            wave = load_audio(path, mix=mix)  # type: ignore[arg-type]
            prediction = zero_shot_waveform(
                model, head, wave, labels, label_vectors, top_k=top_k, path=str(path)
            )
        except SoundnetError as exc:
            run.failures.append(Failure(str(path), str(exc)))
            if on_file is not None:
                on_file(path, None, str(exc))
        else:
            run.predictions.append(prediction)
            if on_file is not None:
                on_file(path, prediction, None)
    return run


def with_prompts(text: str, fmt: str, labels: Sequence[str], prompts: Sequence[str]) -> str:
    """The rendered output with the labels and prompts in its header: JSON keys ``labels`` and
    ``prompts``; for CSV/TSV, one ``# zero-shot ...`` comment line before the column names."""
    if fmt == "json":
        document = json.loads(text)
        document = {"labels": list(labels), "prompts": list(prompts)} | document
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if fmt in ("csv", "tsv"):
        header = {"labels": list(labels), "prompts": list(prompts)}
        return f"# zero-shot {json.dumps(header, ensure_ascii=False)}\n" + text
    return text
