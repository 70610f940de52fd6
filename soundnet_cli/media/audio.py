"""Decode audio files into the waveform SoundNet expects: mono, 22,050 Hz, scaled to [-256, 256]."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from soundnet_cli.errors import AudioError

SAMPLE_RATE = 22050
SCALE = 256.0  # float audio in [-1, 1] times 256, as the authors' release; no mean subtraction
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".w64")
Mix = Literal["first", "mean"]
MIX_CHOICES: tuple[str, ...] = ("first", "mean")


@dataclass(frozen=True)
class Waveform:
    """A decoded, model-ready waveform and where it came from."""

    samples: np.ndarray  # float32, (n,), scaled to [-256, 256]
    sample_rate: int
    source_rate: int
    source_channels: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def decode(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a file as float32 (frames, channels) in [-1, 1] with its sample rate."""
    import soundfile as sf

    name = str(path)
    if not Path(name).is_file():
        raise AudioError(f"{name}: no such file")
    try:
        data, rate = sf.read(name, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile reports every format problem as its own error type
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise AudioError(f"{name}: cannot read audio ({reason})") from exc
    if data.size == 0:
        raise AudioError(f"{name}: the file holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: the audio contains NaN or infinite samples")
    return data, int(rate)


def to_mono(data: np.ndarray, mix: str = "first") -> np.ndarray:
    """First channel (the authors' release) or the mean of all channels."""
    if mix == "first":
        return np.ascontiguousarray(data[:, 0])
    if mix == "mean":
        return data.mean(axis=1, dtype=np.float32)
    raise AudioError(f"unknown channel mix {mix!r}; use one of {', '.join(MIX_CHOICES)}")


def resample(wave: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (windowed sinc) to ``target_rate``."""
    if source_rate == target_rate:
        return wave
    import torch
    import torchaudio.functional as taf

    out = taf.resample(torch.from_numpy(np.ascontiguousarray(wave)), source_rate, target_rate)
    return out.numpy()


def load_audio(
    path: str | os.PathLike[str], *, mix: Mix = "first", sample_rate: int = SAMPLE_RATE
) -> Waveform:
    """Decode ``path`` and return the model-ready waveform; raises AudioError naming the file."""
    data, rate = decode(path)
    mono = resample(to_mono(data, mix), rate, sample_rate)
    scaled = (mono * SCALE).astype(np.float32, copy=False)
    return Waveform(scaled, sample_rate, rate, data.shape[1])


def tile(wave: np.ndarray, length: int) -> np.ndarray:
    """Repeat ``wave`` circularly to exactly ``length`` samples (the paper's tiling)."""
    if len(wave) == 0:
        raise AudioError("cannot tile an empty waveform")
    reps = -(-length // len(wave))
    return np.tile(wave, reps)[:length]


def is_audio_file(path: Path, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> bool:
    return path.is_file() and path.suffix.lower() in extensions


def find_audio(paths: list[Path], extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Path]:
    """Expand files and directories (recursively, sorted) into a list of audio files.

    Files named explicitly are kept whatever their extension, so that a bad one is reported
    rather than silently dropped.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if is_audio_file(p, extensions)))
        else:
            found.append(path)
    return found
