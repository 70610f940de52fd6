"""Decode audio files into the waveform SoundNet expects: mono, 22,050 Hz, scaled to [-256, 256]."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.errors import AudioError, SoundnetError, reason
from soundnet_cli.media.files import AUDIO_EXTENSIONS as AUDIO_EXTENSIONS  # re-exported
from soundnet_cli.media.files import is_video
from soundnet_cli.media.pcm import MIX_CHOICES as MIX_CHOICES  # re-exported, as the two below
from soundnet_cli.media.pcm import SAMPLE_RATE as SAMPLE_RATE
from soundnet_cli.media.pcm import SCALE as SCALE
from soundnet_cli.media.pcm import Mix as Mix

RESAMPLER = "soxr-hq"  # names the resampling in feature caches (features depend on it)
RESAMPLE_QUALITY = "HQ"  # libsoxr "HQ": 20-bit precision, a steep low-pass below Nyquist


@dataclass(frozen=True)
class Waveform:
    """A decoded, model-ready waveform and where it came from."""

    samples: np.ndarray  # float32, (n,), scaled to [-256, 256]
    sample_rate: int
    source_rate: int
    source_channels: int
    source_frames: int = 0  # frames in the file, at ``source_rate``

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def decode(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a whole file as float32 (frames, channels) in [-1, 1] with its sample rate.

    Raises AudioError naming the file when it is missing, unreadable, empty, truncated (fewer
    frames than its header promises) or holds NaN/infinite samples.
    """
    name = str(path)
    if not Path(name).is_file():
        broken = " (broken link)" if Path(name).is_symlink() else ""
        raise AudioError(f"{name}: no such file{broken}")
    if Path(name).stat().st_size == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    try:
        with open_audio(name) as handle:
            return read_whole(handle, name)
    except SoundnetError:
        raise
    except Exception as exc:  # libsndfile reports every format problem as its own error type
        raise AudioError(f"{name}: cannot read audio ({reason(exc)})") from exc


def read_whole(handle: Any, name: str) -> tuple[np.ndarray, int]:
    """:func:`decode` of a file already open (``open_audio``) at its start."""
    declared, rate = int(handle.frames), int(handle.samplerate)
    data = read_float(handle)
    if data.size == 0:
        raise AudioError(f"{name}: the file holds no audio samples")
    check_complete(Path(name), len(data), declared)
    check_finite(data, name)
    return data, rate


def open_audio(path: str | os.PathLike[str]) -> Any:
    """The one place that decides how a file is opened for its audio: a video (by extension,
    see :mod:`soundnet_cli.media.files`) by its first audio stream through PyAV, anything else
    with libsndfile. Both give ``samplerate``, ``channels``, ``frames``, ``read`` and ``seek``."""
    from soundnet_cli.media.video import Soundtrack

    if is_video(path):
        return Soundtrack(path)
    import soundfile as sf

    return sf.SoundFile(os.fspath(path))


def read_float(handle: Any, frames: int = -1) -> np.ndarray:
    """``frames`` frames (all: -1) from an open file as float32 (frames, channels) in [-1, 1].

    16-bit PCM is read as integers and scaled here: the same numbers as libsndfile's float
    conversion (n / 32768, exact in float32), without its per-sample conversion loop, which
    costs 15% of decoding a FLAC file."""
    if getattr(handle, "subtype", None) == "PCM_16":
        data = handle.read(frames, dtype="int16", always_2d=True).astype(np.float32)
        data *= np.float32(1 / 32768)
        return data
    result: np.ndarray = handle.read(frames, dtype="float32", always_2d=True)
    return result


def check_finite(data: np.ndarray, name: str) -> None:
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: the audio contains NaN or infinite samples")


def declared_wav_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header promises, or None when it is not a plain RIFF WAV."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = 0
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"fmt ":
                body = handle.read(size + (size & 1))
                block_align = int.from_bytes(body[12:14], "little")
            elif chunk[:4] == b"data":
                return size // block_align if block_align else None
            else:
                handle.seek(size + (size & 1), os.SEEK_CUR)


def check_complete(path: Path, frames_read: int, frames_declared: int) -> None:
    """AudioError when a file holds fewer frames than its header promises (a truncated file)."""
    declared = frames_declared
    if path.suffix.lower() in {".wav", ".wave"}:
        declared = declared_wav_frames(path) or frames_declared
    # MP3 lengths from a Xing header are estimates; a truncated file falls far short.
    slack = max(2048, declared // 100) if path.suffix.lower() == ".mp3" else 2
    if frames_read + slack < declared:
        raise AudioError(
            f"{path}: truncated file (the header promises {declared} frames, "
            f"only {frames_read} are there)"
        )


def to_mono(data: np.ndarray, mix: str = "first") -> np.ndarray:
    """First channel (the authors' release) or the mean of all channels."""
    if mix == "first":
        return np.ascontiguousarray(data[:, 0])
    if mix == "mean":
        return data.mean(axis=1, dtype=np.float32)
    raise AudioError(f"unknown channel mix {mix!r}; use one of {', '.join(MIX_CHOICES)}")


def resampled_length(frames: int, rate: int, target: int = SAMPLE_RATE) -> int:
    """Samples that :func:`resample` gives for ``frames`` at ``rate`` (rounded half up)."""
    return (2 * frames * target + rate) // (2 * rate)


def resample(wave: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling to ``target_rate`` with libsoxr (its "HQ" setting).

    ``wave`` is float32 (samples,) or (samples, channels); channels are resampled alike, so a
    batch of equal-length clips can go as channels. Cost and memory depend on the length only,
    not on how the two rates divide (any ratio, e.g. 16,001 -> 22,050 Hz). Windows read by
    :class:`~soundnet_cli.media.streaming.StreamingAudio` equal slices of this result.
    """
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if source_rate == target_rate:
        return wave
    import soxr

    return soxr.resample(wave, source_rate, target_rate, quality=RESAMPLE_QUALITY)


def model_ready(mono: np.ndarray, source_rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float audio in [-1, 1] -> what a student takes: resampled, times :data:`SCALE`."""
    out = resample(mono, source_rate, sample_rate)
    if out is mono:
        out = out.copy()
    out *= np.float32(SCALE)
    return out


def load_audio(
    path: str | os.PathLike[str], *, mix: Mix = "first", sample_rate: int = SAMPLE_RATE
) -> Waveform:
    """Decode ``path`` and return the model-ready waveform; raises AudioError naming the file.

    The one reading path (decode -> mono -> resample -> scale) of every command; long files are
    read in windows of the same waveform by :class:`~soundnet_cli.media.streaming.StreamingAudio`.
    """
    data, rate = decode(path)
    return waveform(data, rate, mix=mix, sample_rate=sample_rate)


def waveform(
    data: np.ndarray, rate: int, *, mix: Mix = "first", sample_rate: int = SAMPLE_RATE
) -> Waveform:
    """Decoded (frames, channels) float audio at ``rate`` -> the model-ready :class:`Waveform`."""
    frames, channels = data.shape
    mono = to_mono(data, mix)
    return Waveform(model_ready(mono, rate, sample_rate), sample_rate, rate, channels, frames)


def tile(wave: np.ndarray, length: int) -> np.ndarray:
    """Repeat ``wave`` circularly to exactly ``length`` samples (the paper's tiling)."""
    if len(wave) == 0:
        raise AudioError("cannot tile an empty waveform")
    reps = -(-length // len(wave))
    return np.tile(wave, reps)[:length]
