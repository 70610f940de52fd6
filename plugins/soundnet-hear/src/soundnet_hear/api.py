"""load_model, get_timestamp_embeddings and get_scene_embeddings, as HEAR 2021 defines them.

Embeddings are one layer of a student (``pool5`` for SoundNet-8 by default). Long audio is cut
into chunks on the layer's step grid, each widened by the layer's receptive field, so that every
step is computed from exactly the samples it would see in one pass over the whole recording:
the result equals the one-pass result, but memory stays bounded by ``chunk_seconds`` whatever
the recording's length (20 minutes of audio included).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from soundnet_cli.errors import AudioError, LayerError, SoundnetError
from soundnet_cli.students import FeatureInfo

SCALE = 256.0  # HEAR audio is in [-1, 1]; students take it times 256
OFFICIAL = ("", "official")
DEFAULT_CHUNK_SECONDS = 60.0


def default_layer(student: Any) -> str:
    """The student's own ``default_layer``, else ``pool5`` (the paper's best), else its deepest
    layer that is not an output head."""
    names = [info.name for info in student.feature_info]
    chosen = getattr(student, "default_layer", None)
    if chosen in names:
        return str(chosen)
    if "pool5" in names:
        return "pool5"
    head = getattr(getattr(student, "head_spec", None), "name", None)
    body = [name for name in names if name != head]
    return body[-1] if body else names[-1]


class HearModel(nn.Module):
    """A student and the layer whose activations are the embeddings.

    Attributes HEAR reads: ``sample_rate`` (22,050), ``scene_embedding_size`` and
    ``timestamp_embedding_size`` (the layer's channels).
    """

    def __init__(
        self,
        student: Any,
        layer: str | None = None,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> None:
        super().__init__()
        self.student = student.eval()
        infos: dict[str, FeatureInfo] = {i.name: i for i in student.feature_info}
        self.layer = layer or default_layer(student)
        if self.layer not in infos:
            raise LayerError(
                f"{getattr(student, 'architecture', 'this student')} has no layer "
                f"{self.layer!r}; valid layers: {', '.join(infos)}"
            )
        self.info = infos[self.layer]
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
        for tensor in itertools.chain(self.student.parameters(), self.student.buffers()):
            return tensor.device
        return torch.device("cpu")

    def min_samples(self) -> int:
        """Shorter audio is padded with zeros at its end to this length."""
        measure = getattr(self.student, "min_samples", None)
        return int(measure(self.layer)) if callable(measure) else 1

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


def _chunks(wave: torch.Tensor, model: HearModel) -> Iterator[tuple[int, torch.Tensor]]:
    """(first step, activations (batch, channels, steps)) for consecutive runs of steps."""
    student, layer, info = model.student, model.layer, model.info
    samples = wave.shape[1]
    output_length = getattr(student, "output_length", None)
    if not callable(output_length):  # no geometry: one pass
        yield 0, _run(student, wave, layer, wave.shape[0])
        return
    total = int(output_length(layer, samples))
    per_chunk = max(1, (model.chunk_samples - info.receptive_field) // info.stride + 1)
    for first in range(0, total, per_chunk):
        last = min(total, first + per_chunk)  # steps [first, last)
        # Start on the step grid at or before step `first`'s receptive field, end where step
        # `last - 1`'s ends: the steps in between never see the chunk's edges.
        grid = max(0, first + info.offset // info.stride)
        start = grid * info.stride
        stop = min(samples, info.offset + (last - 1) * info.stride + info.receptive_field)
        rows = max(1, model.chunk_samples // max(1, stop - start))
        taps = _run(student, wave[:, start:stop], layer, rows)
        if taps.shape[2] < last - grid:
            raise SoundnetError(
                f"{layer}: a chunk gave {taps.shape[2]} steps, expected at least "
                f"{last - grid}; the student's feature_info does not match its output"
            )
        yield first, taps[:, :, first - grid : last - grid]


def _run(student: Any, wave: torch.Tensor, layer: str, rows: int) -> torch.Tensor:
    """One layer for ``wave``, ``rows`` sounds at a time (inference mode stays inside here:
    a generator must not leave it switched on for its caller)."""
    with torch.inference_mode():
        parts = [
            student.forward_features(wave[r : r + rows], [layer])[layer]
            for r in range(0, wave.shape[0], rows)
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def get_timestamp_embeddings(
    audio: torch.Tensor, model: HearModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (n_sounds, n_timestamps, size), float32, and their timestamps (n_sounds,
    n_timestamps) in milliseconds: the centre of each step's receptive field, evenly spaced by
    the layer's stride."""
    wave = _as_student_input(audio, model)
    pieces = [taps.transpose(1, 2) for _, taps in _chunks(wave, model)]
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
    for _, taps in _chunks(wave, model):
        chunk_sum = taps.double().sum(dim=2)
        total = chunk_sum if total is None else total + chunk_sum
        steps += taps.shape[2]
    assert total is not None
    return (total / steps).to(torch.float32).to(audio.device)
