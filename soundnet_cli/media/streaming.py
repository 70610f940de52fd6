"""Long audio without holding it: windows of the model-ready waveform, and chunked features
equal to whole-file features.

Resampling uses torchaudio's windowed-sinc kernel (that of ``audio.resample``) as a matrix
product over strided blocks; a window is resampled from the source frames it needs plus the
kernel's context, at the phase whole-file resampling would use, so windows equal slices of the
whole resampled file up to float rounding. The model then runs on chunks that start at
multiples of the deepest layer's stride and overlap by its receptive field (:func:`chunk_plan`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.errors import AudioError, SoundnetError
from soundnet_cli.media.audio import SAMPLE_RATE, SCALE, Mix, to_mono

if TYPE_CHECKING:
    import torch


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


class SincResampler:
    """``audio.resample`` (torchaudio's windowed-sinc kernel, same phases) as a matrix product
    over strided blocks of the input, several times faster on CPU than torchaudio's convolution
    with one output channel, and batched."""

    MAX_TEMPORARY = 1 << 24  # floats in the strided copy one product makes (64 MiB)

    def __init__(self, source_rate: int, target_rate: int = SAMPLE_RATE, device: Any = "cpu"):
        from torchaudio.transforms import Resample

        reference = Resample(source_rate, target_rate)
        self.orig = int(reference.orig_freq) // int(reference.gcd)
        self.new = int(reference.new_freq) // int(reference.gcd)
        self.width = int(reference.width)
        self.matrix = reference.kernel[:, 0, :].t().contiguous().to(device)  # (taps, new)
        self.taps = self.matrix.shape[0]

    def blocks(self, padded: torch.Tensor) -> torch.Tensor:
        """Every whole block of ``padded`` (batch, length): ``new`` outputs per ``orig`` inputs."""
        import torch

        padded = padded.contiguous()
        batch, length = padded.shape
        count = (length - self.taps) // self.orig + 1
        step = max(1, self.MAX_TEMPORARY // (batch * self.taps))
        pieces = []
        for first in range(0, count, step):
            n = min(step, count - first)
            cols = padded[:, first * self.orig :].as_strided(
                (batch, n, self.taps), (padded.stride(0), self.orig, 1)
            )
            pieces.append((cols @ self.matrix).reshape(batch, n * self.new))
        return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        length = wave.shape[-1]
        padded = F.pad(wave, (self.width, self.width + self.orig))
        return self.blocks(padded)[:, : math.ceil(self.new * length / self.orig)]


class StreamingAudio:
    """A long file read in windows of the model-ready waveform (mono, 22,050 Hz, x256).

    Resampling uses torchaudio's windowed-sinc kernel, applied per window to the source frames
    the window needs plus the kernel's context, at the same phase alignment as whole-file
    resampling, so windows equal slices of ``audio.load_audio`` (within float rounding).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, mix: Mix = "first", sample_rate: int = SAMPLE_RATE
    ) -> None:
        import soundfile as sf

        self.path = Path(path)
        try:
            self._file = sf.SoundFile(str(path))
        except Exception as exc:
            raise AudioError(f"{path}: cannot read audio ({reason_of(exc)})") from exc
        self.mix = mix
        self.source_rate = int(self._file.samplerate)
        self.source_channels = int(self._file.channels)
        self.source_frames = int(self._file.frames)
        if self.source_frames <= 0:
            self.close()
            raise AudioError(f"{path}: the file holds no audio samples")
        self.sample_rate = sample_rate
        gcd = math.gcd(self.source_rate, sample_rate)
        self._orig, self._new = self.source_rate // gcd, sample_rate // gcd
        self._resampler: SincResampler | None = None
        if self._orig != self._new:
            self._resampler = SincResampler(self.source_rate, sample_rate)
            self.samples = math.ceil(self._new * self.source_frames / self._orig)
        else:
            self.samples = self.source_frames

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StreamingAudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _source(self, start: int, stop: int) -> np.ndarray:
        """Mono source frames [start, stop), zeros outside the file."""
        lo, hi = max(start, 0), min(stop, self.source_frames)
        out = np.zeros(stop - start, dtype=np.float32)
        if hi > lo:
            try:
                self._file.seek(lo)
                data = self._file.read(hi - lo, dtype="float32", always_2d=True)
            except Exception as exc:
                raise AudioError(f"{self.path}: cannot read audio ({reason_of(exc)})") from exc
            if len(data) < hi - lo:
                check_complete(self.path, lo + len(data), self.source_frames)
            if not np.isfinite(data).all():
                raise AudioError(f"{self.path}: the audio contains NaN or infinite samples")
            out[lo - start : lo - start + len(data)] = to_mono(data, self.mix)
        return out

    def window(self, start: int, stop: int) -> np.ndarray:
        """Model-ready samples [start, stop) of the whole resampled file."""
        stop = min(stop, self.samples)
        if self._resampler is None:
            return self._source(start, stop) * np.float32(SCALE)
        import torch

        width = self._resampler.width
        first, last = start // self._new, -(-stop // self._new)  # resampler blocks
        source = self._source(first * self._orig - width, last * self._orig + width + self._orig)
        with torch.inference_mode():
            wave = self._resampler.blocks(torch.from_numpy(source)[None])[0].numpy()
        offset = start - first * self._new
        return wave[offset : offset + stop - start] * np.float32(SCALE)


def reason_of(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def resampled_length(frames: int, rate: int, target: int = SAMPLE_RATE) -> int:
    """Samples that ``audio.resample`` gives for ``frames`` at ``rate``."""
    gcd = math.gcd(rate, target)
    return math.ceil((target // gcd) * frames / (rate // gcd))


# -- chunked features ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """One model run: input samples [start, stop) give steps [first[L], last[L]) of each layer,
    found at local indices starting at ``skip[L]`` of that run's output."""

    start: int
    stop: int
    steps: dict[str, tuple[int, int, int]]  # layer -> (first, last, skip)


def chunk_plan(model: Any, layers: Sequence[str], samples: int, chunk_samples: int) -> list[Chunk]:
    """Split a ``samples``-long input into model runs whose features equal the whole input's.

    Each layer's step i sees input [offset + i*stride, offset + i*stride + receptive_field).
    A run starting at a multiple of the deepest stride computes the same steps as the whole
    input wherever a step's field lies inside the run (or reaches a real edge of the file).
    """
    infos = {name: model.feature(name) for name in layers}
    deepest = max(info.stride for info in infos.values())
    totals = {name: model.output_length(name, samples) for name in layers}
    core = max(deepest, (chunk_samples // deepest) * deepest)
    plan = []
    for begin in range(0, max(samples, 1), core):
        end = begin + core
        final = end >= samples
        steps: dict[str, tuple[int, int]] = {}
        for name, info in infos.items():
            first = begin // info.stride
            last = totals[name] if final else min(totals[name], end // info.stride)
            if last > first:
                steps[name] = (first, last)
        if not steps:
            continue
        lo = min(infos[n].offset + a * infos[n].stride for n, (a, _) in steps.items())
        hi = max(
            infos[n].offset + (b - 1) * infos[n].stride + infos[n].receptive_field
            for n, (_, b) in steps.items()
        )
        start = max(0, (lo // deepest) * deepest)
        stop = samples if hi >= samples else hi
        plan.append(
            Chunk(
                start,
                stop,
                {n: (a, b, a - start // infos[n].stride) for n, (a, b) in steps.items()},
            )
        )
    return plan


def chunked_features(
    model: Any,
    read: Callable[[int, int], np.ndarray],
    samples: int,
    layers: Sequence[str],
    chunk_samples: int,
    device: Any = "cpu",
) -> Iterator[dict[str, np.ndarray]]:
    """Per chunk, each layer's next steps as float32 (time, channels), in order."""
    import torch

    for chunk in chunk_plan(model, layers, samples, chunk_samples):
        wave = torch.from_numpy(np.ascontiguousarray(read(chunk.start, chunk.stop))).to(device)
        with torch.inference_mode():
            taps = model.forward_features(wave, list(chunk.steps))
        out = {}
        for name, (first, last, skip) in chunk.steps.items():
            part = taps[name][0, :, skip : skip + last - first]
            if part.shape[1] != last - first:  # a geometry the plan does not cover
                raise SoundnetError(f"chunk geometry mismatch at layer {name}")
            out[name] = part.t().float().cpu().numpy()
        yield out


def step_times(info: Any, steps: int, sample_rate: int) -> np.ndarray:
    """``FeatureInfo.step_centres`` as a float64 array (fast for millions of steps)."""
    half = (info.receptive_field - 1) / 2
    return (info.offset + np.arange(steps, dtype=np.float64) * info.stride + half) / sample_rate
