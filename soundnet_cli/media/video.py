"""Video decoding with PyAV: the soundtrack as 22,050 Hz mono int16, and frames at chosen times.

Frames are found by seeking to the keyframe before each requested time and decoding forward to
it, never by decoding the whole stream. The frame taken for time ``t`` is the one on screen at
``t``: the last frame whose presentation time is at or before ``t`` (times count from the video
stream's start).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.errors import VideoError, reason
from soundnet_cli.media.files import VIDEO_EXTENSIONS as VIDEO_EXTENSIONS  # re-exported
from soundnet_cli.media.files import is_video as is_video  # re-exported
from soundnet_cli.media.pcm import INT16_SCALE, SAMPLE_RATE, Mix
from soundnet_cli.media.pcm import int16_to_model as int16_to_model  # re-exported


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (durations in seconds; None when unknown)."""

    path: str
    duration: float | None
    has_audio: bool
    has_video: bool
    width: int
    height: int
    fps: float | None


def _open(path: str | os.PathLike[str]) -> Any:
    import av

    name = os.fspath(path)
    if not Path(name).is_file():
        raise VideoError(f"{name}: no such file")
    if Path(name).stat().st_size == 0:
        raise VideoError(f"{name}: the file is empty")
    try:
        return av.open(name)
    except Exception as exc:  # FFmpeg reports every container problem as its own error type
        raise VideoError(f"{name}: cannot open the video ({reason(exc)})") from exc


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        duration = None
        if video is not None and video.duration is not None and video.time_base is not None:
            duration = float(video.duration * video.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        return VideoInfo(
            os.fspath(path),
            duration,
            bool(container.streams.audio),
            video is not None,
            int(video.codec_context.width) if video is not None else 0,
            int(video.codec_context.height) if video is not None else 0,
            float(video.average_rate) if video is not None and video.average_rate else None,
        )


def read_audio(
    path: str | os.PathLike[str], *, sample_rate: int = SAMPLE_RATE, mix: Mix = "first"
) -> np.ndarray:
    """The first audio track as int16 mono at ``sample_rate``: the first channel (as the authors'
    release) or the mean of all. Decoding stops quietly at a truncated or corrupt tail."""
    import av

    name = os.fspath(path)
    chunks: list[np.ndarray] = []
    with _open(path) as container:
        if not container.streams.audio:
            raise VideoError(f"{name}: the video has no audio stream")
        stream = container.streams.audio[0]
        resampler = None
        try:
            for frame in container.decode(stream):
                if resampler is None:
                    layout = frame.layout.name
                    resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
                for out in resampler.resample(frame):
                    chunks.append(_mono(out.to_ndarray(), mix))
        except av.error.FFmpegError:
            pass  # a damaged tail: keep what decoded
        if resampler is not None:
            for out in resampler.resample(None):
                chunks.append(_mono(out.to_ndarray(), mix))
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise VideoError(f"{name}: the audio stream holds no samples")
    wave = np.concatenate(chunks)
    if not np.isfinite(wave).all():
        raise VideoError(f"{name}: the audio contains NaN or infinite samples")
    return np.clip(np.round(wave * INT16_SCALE), -32768, 32767).astype(np.int16)


def _mono(planes: np.ndarray, mix: Mix) -> np.ndarray:
    planes = planes.reshape(-1, planes.shape[-1])
    return planes[0].astype(np.float32) if mix == "first" else planes.mean(axis=0, dtype=np.float32)


def read_frames(
    path: str | os.PathLike[str], times: Sequence[float]
) -> tuple[np.ndarray, list[float]]:
    """RGB frames (N, H, W, 3) uint8 on screen at ``times`` (seconds), and their own times.

    Stops at the first time beyond the decodable video (a truncated file): the arrays returned
    can be shorter than ``times``.
    """
    import av

    name = os.fspath(path)
    frames: list[np.ndarray] = []
    found: list[float] = []
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{name}: the video has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = stream.time_base
        start = float(stream.start_time * base) if stream.start_time is not None else 0.0
        rate = float(stream.average_rate) if stream.average_rate else 25.0
        last_shown = 1.5 / rate  # how long the stream's last frame stays on screen, at most
        for t in times:
            target = start + t
            try:
                container.seek(int(target / base), stream=stream, backward=True, any_frame=False)
                frame, ended = _frame_at(container, stream, target)
            except av.error.FFmpegError:
                frame, ended = None, True
            if frame is None or (ended and target - float(frame.time) > last_shown):
                break  # past the end of what decodes (a truncated file)
            frames.append(frame.to_ndarray(format="rgb24"))
            found.append(float(frame.time) - start)
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8), []
    return np.stack(frames), found


def _frame_at(container: Any, stream: Any, target: float) -> tuple[Any, bool]:
    """Decode forward from the current position to the frame on screen at ``target``; also say
    whether the stream ended before any later frame (then ``target`` may lie past the end)."""
    import av

    chosen = None
    try:
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            if frame.time <= target + 1e-6:
                chosen = frame
                continue
            return (chosen if chosen is not None else frame), False  # target before frame 0
    except av.error.FFmpegError:
        pass  # a damaged tail ends the stream
    return chosen, True


# -- the soundtrack as an audio file -----------------------------------------------------------
CACHE_BYTES = 64 << 20  # a soundtrack up to this size is decoded once; a longer one twice


class Soundtrack:
    """The first audio stream of a video, read like ``soundfile.SoundFile``: ``samplerate``,
    ``channels``, ``frames``, ``read(n, dtype="float32", always_2d=True)``, ``seek(0)``.

    Samples are the stream's own (its rate, its channels), converted to float in [-1, 1] as
    libsndfile converts PCM (int16 / 32768 ...), so a video whose soundtrack is a lossless copy
    of an audio file reads as that file does, and everything after (mono, resampling, scaling)
    is the audio path's. ``frames`` is counted by decoding the stream once (containers only
    estimate it); a soundtrack under :data:`CACHE_BYTES` is kept from that pass, a longer one
    is decoded again as it is read, so memory stays bounded. A damaged tail ends the stream,
    as in :func:`read_audio`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        self._container = _open(path)
        if not self._container.streams.audio:
            self._container.close()
            raise VideoError(f"{self.name}: the video has no audio stream")
        stream = self._container.streams.audio[0]
        self.samplerate = int(stream.codec_context.sample_rate or 0)
        self.channels = int(stream.codec_context.channels or 0)
        if self.samplerate <= 0 or self.channels <= 0:
            self._container.close()
            raise VideoError(f"{self.name}: the audio stream has no sample rate or channels")
        self._frames: int | None = None
        self._cache: list[np.ndarray] | None = None
        self._position = 0
        self._pending = np.zeros((0, self.channels), np.float32)
        self._source: Iterator[np.ndarray] = self._blocks(self._container)

    def __enter__(self) -> Soundtrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    @property
    def frames(self) -> int:
        if self._frames is None:
            blocks: list[np.ndarray] | None = []
            total = 0
            with _open(self.name) as container:
                for block in self._blocks(container):
                    total += len(block)
                    if blocks is not None:
                        blocks.append(block)
                        if total * self.channels * 4 > CACHE_BYTES:
                            blocks = None
            self._frames = total
            if blocks is not None and self._position == 0:
                self._cache = blocks
                self._restart()  # read from the kept blocks: the file is not decoded again
        return self._frames

    def seek(self, frame: int) -> int:
        if frame != 0:
            raise VideoError(f"{self.name}: a soundtrack is read from its start only")
        self._restart()
        return 0

    def read(self, frames: int = -1, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        """The next ``frames`` (all that are left with -1) as float32 (frames, channels)."""
        if dtype != "float32" or not always_2d:
            raise ValueError("a soundtrack reads as float32 (frames, channels) only")
        wanted = None if frames < 0 else frames
        pieces, have = [], 0
        while wanted is None or have < wanted:
            if not len(self._pending):
                block = self._next()
                if block is None:
                    break
                self._pending = block
            take = len(self._pending) if wanted is None else min(wanted - have, len(self._pending))
            pieces.append(self._pending[:take])
            self._pending = self._pending[take:]
            have += take
        self._position += have
        if not pieces:
            return np.zeros((0, self.channels), np.float32)
        return np.concatenate(pieces)

    def _restart(self) -> None:
        self._position = 0
        self._pending = np.zeros((0, self.channels), np.float32)
        if self._cache is not None:
            self._source = iter(self._cache)
        else:  # reopened rather than sought: every demuxer and decoder starts clean
            self._container.close()
            self._container = _open(self.name)
            self._source = self._blocks(self._container)

    def _next(self) -> np.ndarray | None:
        return next(self._source, None)

    def _blocks(self, container: Any) -> Iterator[np.ndarray]:
        """Decoded blocks of the first audio stream, float32 (frames, channels)."""
        import av

        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                if frame.sample_rate != self.samplerate:
                    raise VideoError(
                        f"{self.name}: the audio stream changes sample rate "
                        f"({self.samplerate} -> {frame.sample_rate} Hz)"
                    )
                yield _as_float(frame, self.channels)
        except av.error.FFmpegError:
            return  # a damaged tail: keep what decoded


def _as_float(frame: Any, channels: int) -> np.ndarray:
    """One decoded audio frame as float32 (samples, channels), scaled as libsndfile scales PCM."""
    array = frame.to_ndarray()  # planar: (channels, samples); packed: (1, samples * channels)
    array = array.T if frame.format.is_planar else array.reshape(-1, channels)
    kind = array.dtype
    if kind == np.uint8:
        return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if kind.kind == "i":
        return (array.astype(np.float64) / float(2 ** (8 * kind.itemsize - 1))).astype(np.float32)
    return np.ascontiguousarray(array, dtype=np.float32)
