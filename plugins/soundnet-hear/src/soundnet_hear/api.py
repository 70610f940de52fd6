"""load_model, get_timestamp_embeddings and get_scene_embeddings, as HEAR 2021 defines them.

Embeddings are one layer of a student (``pool5`` for SoundNet-8 by default). Long audio is cut
into chunks on the layer's step grid, each widened by the layer's receptive field, so that every
step is computed from exactly the samples it would see in one pass over the whole recording:
the result equals the one-pass result, but memory stays bounded by ``chunk_seconds`` whatever
the recording's length (20 minutes of audio included).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from soundnet_cli.errors import AudioError, SoundnetError
from soundnet_cli.extraction.chunks import chunk_plan, run_chunk
from soundnet_cli.students import SCALE, Student, feature_of

OFFICIAL = ("", "official")
DEFAULT_CHUNK_SECONDS = 60.0


class HearModel(nn.Module):
    """A student and the layer whose activations are the embeddings.

    Attributes HEAR reads: ``sample_rate`` (22,050), ``scene_embedding_size`` and
    ``timestamp_embedding_size`` (the layer's channels).
    """

    def __init__(
        self,
        student: Student,
        layer: str | None = None,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> None:
        super().__init__()
        self.student = student
        student.eval()  # type: ignore[attr-defined]  (a Student is an nn.Module)
        self.layer = layer or student.default_layer
        self.info = feature_of(student, self.layer)
        self.sample_rate = int(student.sample_rate)
        self.scene_embedding_size = int(self.info.channels)
        self.timestamp_embedding_size = int(self.info.channels)
        if chunk_seconds <= 0:
            raise SoundnetError(f"chunk_seconds must be positive, got {chunk_seconds}")
        self.chunk_samples = max(
            int(chunk_seconds * self.sample_rate), self.info.receptive_field + self.info.stride
        )

    @property
    def device(self) -> torch.device:
        return self.student.device

    def min_samples(self) -> int:
        """Shorter audio is padded with zeros at its end to this length."""
        return int(self.student.min_samples(self.layer))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return get_timestamp_embeddings(audio, self)


def load_model(
    model_file_path: str = "",
    *,
    layer: str | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    device: str = "cpu",
    **student_options: Any,
) -> HearModel:
    """A HEAR model.

    ``model_file_path``: ``""`` (or ``"official"``) for the authors' SoundNet-8 (fetched once
    and cached, see ``soundnet weights``); the path of a ``.safetensors`` checkpoint; or the
    name of a registered student (``soundnet5``, ``mfcc``, ...), built with ``student_options``.
    ``layer`` picks the embedding layer; ``chunk_seconds`` bounds the audio run in one pass.
    """
    from soundnet_cli.models import load_student
    from soundnet_cli.plugins import get_plugins

    text = str(model_file_path)
    is_file = text not in OFFICIAL and (text.endswith(".safetensors") or Path(text).is_file())
    if student_options and (text in OFFICIAL or is_file):
        raise SoundnetError(
            f"options {sorted(student_options)} apply only to a registered student's name, "
            "not to the official model or a checkpoint"
        )
    if text in OFFICIAL:
        student = load_student("soundnet8", pretrained=True, device=device)
    elif is_file:
        student = load_student(text, device=device)
    else:
        entry = get_plugins().students.get(text)
        student = entry.factory(**student_options).to(device).eval()
    return HearModel(student, layer=layer, chunk_seconds=chunk_seconds)


def _as_student_input(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2:
        raise AudioError(
            f"HEAR audio must be a tensor (n_sounds, n_samples); got "
            f"{tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__}"
        )
    wave = audio.to(model.device, torch.float32) * SCALE
    short = model.min_samples() - wave.shape[1]
    if short > 0:
        wave = nn.functional.pad(wave, (0, short))
    return wave


def _chunks(wave: torch.Tensor, model: HearModel) -> Iterator[torch.Tensor]:
    """Activations (batch, channels, steps) for consecutive runs of steps, from the core's
    chunk plan (bounded memory, equal to one pass), a few sounds at a time."""
    student, layer = model.student, model.layer
    for chunk in chunk_plan(student, [layer], wave.shape[1], model.chunk_samples):
        rows = max(1, model.chunk_samples // max(1, chunk.stop - chunk.start))
        piece = wave[:, chunk.start : chunk.stop]
        parts = [
            run_chunk(student, piece[r : r + rows], chunk)[layer]
            for r in range(0, len(piece), rows)
        ]
        # a new, ordinary tensor: inference-mode tensors must not leak to the caller
        yield (torch.cat(parts) if len(parts) > 1 else parts[0]).clone()


def get_timestamp_embeddings(
    audio: torch.Tensor, model: HearModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (n_sounds, n_timestamps, size), float32, and their timestamps (n_sounds,
    n_timestamps) in milliseconds: the centre of each step's receptive field, evenly spaced by
    the layer's stride."""
    wave = _as_student_input(audio, model)
    pieces = [taps.transpose(1, 2) for taps in _chunks(wave, model)]
    embeddings = torch.cat(pieces, dim=1).float()  # a new, ordinary (not inference) tensor
    steps = embeddings.shape[1]
    centres = torch.tensor(model.info.step_centres(steps, model.sample_rate), dtype=torch.float64)
    timestamps = (centres * 1000.0).to(torch.float32).expand(audio.shape[0], steps)
    return embeddings.to(audio.device), timestamps.contiguous().to(audio.device)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """One embedding per sound, (n_sounds, size), float32: the mean over its time steps."""
    wave = _as_student_input(audio, model)
    total: torch.Tensor | None = None
    steps = 0
    for taps in _chunks(wave, model):
        chunk_sum = taps.double().sum(dim=2)
        total = chunk_sum if total is None else total + chunk_sum
        steps += taps.shape[2]
    assert total is not None
    return (total / steps).to(torch.float32).to(audio.device)
