"""Embedding heads: a projection from one student layer to an embedding teacher's vector size.

Any student gets one through its contract (``forward_features`` and ``feature_info``): the
head projects every time step of its ``layer`` (a 1x1 convolution, i.e. a linear map per step)
and a span of time (a teacher's frame interval, a prediction step, a whole file) is the mean of
its steps' projections, L2-normalised. The projection is linear, so that equals projecting the
layer's mean over the span. A checkpoint stores a head's tensors as ``embedding.<name>.*`` next
to the student's, and its description (layer, size, teacher, CLIP identity) in the metadata
key ``embedding_heads``; :func:`read_embedding_heads` reads them back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from soundnet_cli.errors import CheckpointError

PREFIX = "embedding."
METADATA = "embedding_heads"


@dataclass(frozen=True)
class EmbeddingHeadSpec:
    """What a checkpoint says about one embedding head."""

    name: str
    layer: str
    in_channels: int
    size: int
    teacher: str = ""
    clip: dict[str, Any] | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer": self.layer,
            "in_channels": self.in_channels,
            "size": self.size,
            "teacher": self.teacher,
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingHeadSpec:
        return cls(
            str(data["name"]),
            str(data["layer"]),
            int(data["in_channels"]),
            int(data["size"]),
            str(data.get("teacher", "")),
            data.get("clip"),
        )


class EmbeddingHead(nn.Module):
    """``forward(tap)``: (batch, channels, time) of ``spec.layer`` -> (batch, size, time),
    unnormalised per-step projections; :meth:`span_vectors` pools and normalises."""

    def __init__(self, spec: EmbeddingHeadSpec) -> None:
        super().__init__()
        self.spec = spec
        self.projection = nn.Conv1d(spec.in_channels, spec.size, 1)

    def forward(self, tap: torch.Tensor) -> torch.Tensor:
        return self.projection(tap)

    def span_vectors(self, tap: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Unit vectors (batch, spans, size): ``weights`` (time, spans) averages steps."""
        projected = self(tap)  # (B, D, T)
        pooled = torch.einsum("bdt,ts->bsd", projected, weights.to(projected.dtype))
        return nn.functional.normalize(pooled, dim=-1)


def frame_weights(
    centres: Sequence[float], interval: float, frames: int, *, tile: bool = False
) -> torch.Tensor:
    """(steps, frames): column k averages the steps whose centre lies in frame interval k; a
    frame with no step of its own takes the nearest step. ``centres`` are in seconds."""
    steps = len(centres)
    weights = np.zeros((steps, frames), np.float32)
    owner = [int(c // interval) for c in centres]
    for k in range(frames):
        mine = [i for i, f in enumerate(owner) if f == k]
        if not mine:
            middle = (k + 0.5) * interval
            mine = [int(np.argmin([abs(c - middle) for c in centres]))]
        weights[mine, k] = 1.0 / len(mine)
    return torch.from_numpy(weights)


def spec_for(student: Any, name: str, layer: str, size: int, **extra: Any) -> EmbeddingHeadSpec:
    from soundnet_cli.students.contract import feature_of

    return EmbeddingHeadSpec(name, layer, feature_of(student, layer).channels, size, **extra)


def embedding_tensors(heads: dict[str, EmbeddingHead]) -> dict[str, torch.Tensor]:
    return {
        f"{PREFIX}{name}.{key}": value
        for name, head in heads.items()
        for key, value in head.state_dict().items()
    }


def embedding_metadata(heads: dict[str, EmbeddingHead]) -> str:
    return json.dumps([head.spec.as_dict() for head in heads.values()])


def split_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the student's tensors, the embedding heads' tensors) of a checkpoint's state."""
    student = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    return student, {k: v for k, v in state.items() if k.startswith(PREFIX)}


def read_embedding_heads(path: str | os.PathLike[str]) -> dict[str, EmbeddingHead]:
    """The embedding heads a checkpoint holds (none: an empty dict), loaded, in eval mode."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA)
            if not raw:
                return {}
            heads: dict[str, EmbeddingHead] = {}
            for data in json.loads(raw):
                spec = EmbeddingHeadSpec.from_dict(data)
                head = EmbeddingHead(spec)
                state = {
                    key: handle.get_tensor(f"{PREFIX}{spec.name}.{key}")
                    for key in head.state_dict()
                }
                head.load_state_dict(state)
                heads[spec.name] = head.eval()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: damaged embedding head ({exc})") from exc
    return heads


def embedding_head(checkpoint: str | os.PathLike[str] | None, name: str | None = None) -> Any:
    """The embedding head of a checkpoint (the one named, else its first); a checkpoint without
    one is a usage problem naming how to make one."""
    from soundnet_cli.errors import UsageProblem

    if checkpoint is None:
        raise UsageProblem(
            "zero-shot labels and text queries need --checkpoint of a student distilled with an "
            "embedding teacher (such as clip:ViT-B-32/openai)",
            parameter="checkpoint",
        )
    heads = read_embedding_heads(checkpoint)
    if not heads:
        raise UsageProblem(
            f"{checkpoint} has no embedding head; distill with an embedding teacher (such as "
            "clip:ViT-B-32/openai) to answer text",
            parameter="checkpoint",
        )
    if name is not None and name not in heads:
        raise UsageProblem(f"{checkpoint} has no embedding head {name!r}: {', '.join(heads)}")
    return heads[name] if name is not None else next(iter(heads.values()))


def project(head: EmbeddingHead, features: np.ndarray) -> np.ndarray:
    """Per-step projections (time, size), unnormalised, of a layer's features (time, channels)."""
    with torch.inference_mode():
        tap = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).T[None]
        return head(tap)[0].T.numpy()


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def clip_vector(head: EmbeddingHead, features: np.ndarray) -> np.ndarray:
    """One unit vector for a whole clip: the mean of its steps' projections, normalised."""
    return unit(project(head, features).mean(axis=0))
