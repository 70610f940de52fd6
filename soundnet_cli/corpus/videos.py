"""One video for a corpus: its settings, decoding (a path or a URL), the teachers' labels of
its frames, and its clips. What both prepare engines run: the local threads
(``corpus/prepare.py``) and the Ray tasks and actors (``corpus/ray.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundnet_cli.corpus.format import (
    ClipData,
    CorpusManifest,
    HeadInfo,
    VideoRecord,
    frame_boundary,
)
from soundnet_cli.errors import SoundnetError, UsageProblem, VideoError, reason
from soundnet_cli.media.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from soundnet_cli.teachers.base import Teacher

FRAME_AT = ("centre", "start")


@dataclass(frozen=True)
class PrepareSettings:
    clip_seconds: float = 20.0
    frame_interval: float = 5.0
    frame_at: str = "centre"
    mix: str = "first"
    batch_size: int = 64
    workers: int = 2
    shard_mb: float = 128.0
    retry_failed: bool = False
    sample_rate: int = SAMPLE_RATE

    def check(self) -> None:
        if self.frame_interval <= 0:
            raise UsageProblem("the frame interval must be positive", parameter="frame_interval")
        ratio = self.clip_seconds / self.frame_interval
        if self.clip_seconds <= 0 or abs(ratio - round(ratio)) > 1e-6:
            raise UsageProblem(
                f"the clip length ({self.clip_seconds:g} s) must be a positive multiple of the "
                f"frame interval ({self.frame_interval:g} s)",
                parameter="clip_seconds",
            )
        if self.frame_at not in FRAME_AT:
            raise UsageProblem(
                f"the frame position must be one of {', '.join(FRAME_AT)}, not {self.frame_at!r}",
                parameter="frame_at",
            )
        if self.batch_size < 1:
            raise UsageProblem("the batch size must be at least 1", parameter="batch_size")
        if self.workers < 0:
            raise UsageProblem("the decode workers must be 0 or more", parameter="workers")


@dataclass
class Decoded:
    """One decoded video: its usable audio and one frame per interval."""

    record: VideoRecord
    audio: np.ndarray  # int16, whole intervals only
    frames: np.ndarray  # uint8 (n, H, W, 3)
    frame_times: list[float]  # requested times (seconds into the video)


def build_manifest(teachers: Sequence[Teacher], settings: PrepareSettings) -> CorpusManifest:
    return CorpusManifest(
        sample_rate=settings.sample_rate,
        clip_seconds=settings.clip_seconds,
        frame_interval=settings.frame_interval,
        frame_at=settings.frame_at,
        mix=settings.mix,
        teachers=tuple(t.describe() for t in teachers),
        heads=tuple(
            HeadInfo(h.name, t.name, h.categories, h.kind, h.dim if h.kind == "embedding" else 0)
            for t in teachers
            for h in t.heads
        ),
    )


def frame_times(intervals: int, settings: PrepareSettings) -> list[float]:
    shift = 0.5 if settings.frame_at == "centre" else 0.0
    return [(k + shift) * settings.frame_interval for k in range(intervals)]


def decode_video(path: Path, manifest: CorpusManifest, settings: PrepareSettings) -> Decoded:
    """Audio and frames of one video; VideoError says why a video cannot be used."""
    from soundnet_cli.media import video

    info = video.probe(path)
    if not info.has_video:
        raise VideoError(f"{path}: the video has no video stream")
    audio = video.read_audio(path, sample_rate=manifest.sample_rate, mix=settings.mix)  # type: ignore[arg-type]
    seconds = len(audio) / manifest.sample_rate
    if info.duration is not None:
        seconds = min(seconds, info.duration)
    intervals = int(math.floor(seconds / settings.frame_interval + 1e-9))
    if intervals < 1:
        raise VideoError(
            f"{path}: {seconds:.2f} s is shorter than one frame interval "
            f"({settings.frame_interval:g} s)"
        )
    wanted = frame_times(intervals, settings)
    frames, _ = video.read_frames(path, wanted)
    if len(frames) == 0:
        raise VideoError(f"{path}: no decodable video frames")
    intervals = len(frames)  # a truncated video stream ends the usable part early
    audio = audio[: frame_boundary(intervals, manifest)]
    if len(audio) < frame_boundary(intervals, manifest):
        raise VideoError(f"{path}: the audio is shorter than its frames")
    record = VideoRecord(str(path.resolve()), str(path), intervals * settings.frame_interval)
    return Decoded(record, audio, frames, wanted[:intervals])


def video_key(item: str | Path) -> str:
    """What resuming matches a video on: its URL as given, or its absolute path."""
    from soundnet_cli.media.urls import is_url, local_path, scheme_of

    text = str(item)
    if is_url(text):
        return text if scheme_of(text) != "file" else str(Path(local_path(text)).resolve())
    return str(Path(text).resolve())


def list_videos(inputs: Sequence[str | Path]) -> list[str]:
    """The videos under ``inputs`` (files, folders searched recursively, URLs: an object
    store's folder lists its videos), through the walker and URL listing extract uses; an
    unknown URL scheme is a usage error before any work."""
    from soundnet_cli.media.files import VIDEO_EXTENSIONS, find_videos
    from soundnet_cli.media.urls import check_url, expand, is_url, local_path, scheme_of

    local: list[str] = []
    found: list[str] = []
    for item in map(str, inputs):
        if is_url(item):
            check_url(item)
            if scheme_of(item) == "file":
                local.append(local_path(item))
            else:
                found.extend(expand(item, VIDEO_EXTENSIONS))
        else:
            local.append(item)
    if local:
        found.extend(str(path) for path in find_videos(local))
    return list(dict.fromkeys(found))


def decode_input(item: str | Path, manifest: CorpusManifest, settings: PrepareSettings) -> Decoded:
    """:func:`decode_video` of a path or a URL (fetched to a temporary file first; the record
    and any error then name the URL)."""
    from soundnet_cli.media.urls import fetch, is_url, scheme_of

    text = str(item)
    if not is_url(text) or scheme_of(text) == "file":
        path = Path(video_key(text)) if is_url(text) else Path(text)
        return decode_video(path, manifest, settings)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="soundnet-prepare-") as scratch:
        local = fetch(text, Path(scratch))
        try:
            decoded = decode_video(local, manifest, settings)
        except Exception as exc:
            raise VideoError(failure_reason(exc).replace(str(local), text)) from exc
    decoded.record = VideoRecord(text, text, decoded.record.duration)
    return decoded


def split_clips(
    item: Decoded, posteriors: dict[str, np.ndarray], manifest: CorpusManifest
) -> list[ClipData]:
    """Cut a video into clips of ``frames_per_clip`` intervals (the last may be shorter)."""
    per_clip = manifest.frames_per_clip
    clips = []
    for first in range(0, len(item.frame_times), per_clip):
        last = min(first + per_clip, len(item.frame_times))
        a, b = frame_boundary(first, manifest), frame_boundary(last, manifest)
        clips.append(
            ClipData(
                start=first * manifest.frame_interval,
                audio=np.ascontiguousarray(item.audio[a:b]),
                frame_times=item.frame_times[first:last],
                posteriors={name: p[first:last] for name, p in posteriors.items()},
            )
        )
    return clips


def label(
    teachers: Sequence[Teacher], items: Sequence[Decoded], batch_size: int
) -> list[dict[str, np.ndarray]]:
    """Posteriors per head for every item's frames; frames of several videos share batches."""
    import torch

    refs = [(i, j) for i, item in enumerate(items) for j in range(len(item.frames))]
    out: list[dict[str, list[np.ndarray]]] = [{} for _ in items]
    for teacher in teachers:
        device = teacher.device
        for start in range(0, len(refs), batch_size):
            chunk = refs[start : start + batch_size]
            pieces, owners = [], []
            for i in sorted({i for i, _ in chunk}):  # one transform per video (sizes differ)
                rows = [j for k, j in chunk if k == i]
                frames = torch.from_numpy(items[i].frames[rows[0] : rows[-1] + 1]).to(device)
                pieces.append(teacher.transform(frames))
                owners.extend([i] * len(rows))
            probs = teacher.label_pixels(torch.cat(pieces), batch_size)
            for name, array in probs.items():
                for i in sorted(set(owners)):
                    mask = np.asarray(owners) == i
                    out[i].setdefault(name, []).append(array[mask])
    return [{name: np.concatenate(parts) for name, parts in item.items()} for item in out]


@dataclass
class Labelled:
    """One video's outcome, as an engine hands it to the writer: decoded and labelled
    (``decoded`` and ``posteriors``), or the reason it could not be."""

    item: str  # the path or URL given
    decoded: Decoded | None = None
    posteriors: dict[str, np.ndarray] | None = None
    error: str = ""


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, SoundnetError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {reason(exc)}"
