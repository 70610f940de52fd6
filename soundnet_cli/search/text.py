"""Text-to-audio search: the files of a features folder whose sound is nearest a text query.

The folder must hold the layer that the checkpoint's embedding head projects (extract it with
``--layer`` that layer). Each file's vector is the head's projection of its features' mean over
time, normalised; the query is the CLIP text vector of the text (through ``--prompt``, default
the text as given) from the text tower of the head's recorded weights. Scores are cosines in
[-1, 1]; each hit also names its best-matching time step (centre, seconds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.extraction.folder import list_feature_files, read_feature_file, read_settings
from soundnet_cli.search.vectors import check_k


@dataclass
class TextHit:
    key: str
    source: str
    score: float
    time: float | None  # centre of the best-matching step, seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": self.source,
            "score": round(self.score, 6),
            "time": None if self.time is None else round(self.time, 3),
        }


@dataclass
class TextResult:
    query: str
    prompts: list[str]
    layer: str
    hits: list[TextHit]
    failures: list[tuple[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "prompts": self.prompts,
            "layer": self.layer,
            "results": [{"rank": i + 1, **h.as_dict()} for i, h in enumerate(self.hits)],
            "errors": [{"key": k, "error": e} for k, e in self.failures],
        }


def _checkpoint_of(setup: dict[str, Any], checkpoint: str | os.PathLike[str] | None) -> Path:
    """The folder's model checkpoint (``checkpoint`` when it moved), refused unless its sha256
    is the one ``features.json`` records."""
    from soundnet_cli.weights.checkpoints import file_sha256

    path = Path(checkpoint) if checkpoint is not None else Path(str(setup.get("checkpoint")))
    wanted = setup.get("checkpoint_sha256")
    if not setup.get("checkpoint") and checkpoint is None:
        raise UsageProblem(
            "these features were extracted without a checkpoint; a text query needs a student "
            "distilled with an embedding teacher (extract with --checkpoint RUN)"
        )
    if not path.is_file():
        raise UsageProblem(
            f"the checkpoint these features were extracted with is missing ({path}); give its "
            "new location with --checkpoint",
            parameter="checkpoint",
        )
    if wanted and file_sha256(path) != wanted:
        raise UsageProblem(
            f"{path} is not the model these features were extracted with; give the checkpoint "
            "they were extracted with",
            parameter="checkpoint",
        )
    return path


def query_text(
    folder: Path,
    text: str,
    *,
    k: int = 10,
    prompts: list[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> TextResult:
    from soundnet_cli.students.embedding import embedding_head, project, unit
    from soundnet_cli.teachers.text import TextEncoder

    check_k(k)
    if not text.strip():
        raise UsageProblem("the text query is empty", parameter="text")
    setup = read_settings(Path(folder))
    if setup is None:
        raise UsageProblem(f"{folder}: not a features folder written by `soundnet extract`")
    head = embedding_head(_checkpoint_of(setup, checkpoint))
    layer = head.spec.layer
    layers = setup.get("layers") or {}
    if layer not in layers:
        raise UsageProblem(
            f"{folder} holds {', '.join(layers) or 'no layer'}; the embedding head projects "
            f"{layer}: extract with --layer {layer}"
        )
    if not head.spec.clip:
        raise UsageProblem("the checkpoint's embedding head records no CLIP text tower")
    chosen = prompts or ["{}"]
    query = TextEncoder(head.spec.clip).labels([text], chosen)[0]
    geometry = layers[layer]
    rate = float(setup.get("sample_rate") or 22050)
    _, files = list_feature_files(Path(folder), layer)
    hits: list[TextHit] = []
    failures: list[tuple[str, str]] = []
    for item in files:
        try:
            features = np.asarray(read_feature_file(item), np.float32)
        except (SoundnetError, OSError, ValueError) as exc:
            failures.append((item.key, str(exc)))
            continue
        steps = features[None] if features.ndim == 1 else features
        projected = project(head, steps)
        score = float(unit(projected.mean(axis=0)) @ query)
        best = int(np.argmax(unit(projected) @ query)) if features.ndim == 2 else None
        time = None
        if best is not None and isinstance(geometry, dict) and "stride" in geometry:
            offset = geometry.get("offset", 0)
            field = geometry.get("receptive_field", 1)
            time = (offset + best * geometry["stride"] + (field - 1) / 2) / rate
        hits.append(TextHit(item.key, item.source, score, time))
    hits.sort(key=lambda h: -h.score)
    return TextResult(text, chosen, layer, hits[:k], failures)
