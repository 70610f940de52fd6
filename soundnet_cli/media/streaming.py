"""Long audio without holding it: windows of the model-ready waveform, and chunked features
equal to whole-file features.

:class:`StreamingAudio` reads a file in blocks and resamples them with libsoxr's streaming
interface, whose output equals whole-file resampling (``audio.resample``) sample for sample, so
a window equals the same slice of ``audio.load_audio``. The model then runs on chunks that start
at multiples of the deepest layer's stride and overlap by its receptive field
(:func:`chunk_plan`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from soundnet_cli.errors import AudioError, SoundnetError, reason
from soundnet_cli.media.audio import (
    RESAMPLE_QUALITY,
    SAMPLE_RATE,
    SCALE,
    Mix,
    check_complete,
    check_finite,
    open_audio,
    read_float,
    resampled_length,
    to_mono,
)


class StreamingAudio:
    """A long file read in windows of the model-ready waveform (mono, 22,050 Hz, x256).

    Windows are meant to be read in order (each starting at or after the previous start, as the
    chunk plan reads them); only the samples from the last window's start on are kept. Reading
    backwards restarts from the beginning of the file (correct, slower).
    """

    BLOCK_FRAMES = 1 << 16  # source frames decoded and resampled per step

    def __init__(
        self, path: str | os.PathLike[str], *, mix: Mix = "first", sample_rate: int = SAMPLE_RATE
    ) -> None:
        self.path = Path(path)
        try:
            self._file = open_audio(path)
        except SoundnetError:
            raise
        except Exception as exc:
            raise AudioError(f"{path}: cannot read audio ({reason(exc)})") from exc
        self.mix = mix
        self.source_rate = int(self._file.samplerate)
        self.source_channels = int(self._file.channels)
        self.source_frames = int(self._file.frames)
        if self.source_frames <= 0:
            self.close()
            raise AudioError(f"{path}: the file holds no audio samples")
        self.sample_rate = sample_rate
        self.samples = resampled_length(self.source_frames, self.source_rate, sample_rate)
        self._restart()

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StreamingAudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _restart(self) -> None:
        import soxr

        self._file.seek(0)
        self._read = 0  # source frames consumed
        self._ended = False
        self._buffer = np.zeros(0, dtype=np.float32)  # resampled, unscaled
        self._buffer_start = 0  # index of _buffer[0] in the whole resampled file
        self._stream = (
            None
            if self.source_rate == self.sample_rate
            else soxr.ResampleStream(
                self.source_rate, self.sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        )

    def _next_block(self) -> np.ndarray:
        """The next block of resampled mono samples (the stream's tail after the last block)."""
        want = min(self.BLOCK_FRAMES, self.source_frames - self._read)
        data = np.zeros((0, self.source_channels), dtype=np.float32)
        if want > 0:
            try:
                data = read_float(self._file, want)
            except Exception as exc:
                raise AudioError(f"{self.path}: cannot read audio ({reason(exc)})") from exc
            if len(data) < want:
                check_complete(self.path, self._read + len(data), self.source_frames)
            check_finite(data, str(self.path))
        self._read += len(data)
        mono = to_mono(data, self.mix) if len(data) else np.zeros(0, dtype=np.float32)
        last = len(data) < want or self._read >= self.source_frames
        if last and not self._ended:  # as whole-file decoding: the header's promise, checked
            check_complete(self.path, self._read, self.source_frames)
        self._ended = last
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(mono, last=last)

    def window(self, start: int, stop: int) -> np.ndarray:
        """Model-ready samples [start, stop) of the whole resampled file."""
        stop = min(stop, self.samples)
        if start < self._buffer_start:
            self._restart()
        pieces = [self._buffer]
        have = self._buffer_start + len(self._buffer)
        while have < stop and not self._ended:
            block = self._next_block()
            pieces.append(block)
            have += len(block)
        if len(pieces) > 1:
            self._buffer = np.concatenate(pieces)
        # a file a few frames shorter than its header (within check_complete's slack): zeros
        if have < stop:
            self._buffer = np.concatenate([self._buffer, np.zeros(stop - have, np.float32)])
        begin = start - self._buffer_start
        out = self._buffer[begin : begin + stop - start] * np.float32(SCALE)
        if begin > 0:  # windows move forward: what lies before this one is not read again
            self._buffer = self._buffer[begin:].copy()
            self._buffer_start = start
        return out
