"""From a folder of videos to a distillation corpus (see corpus.py for the format).

Decoding runs in a pool of threads (PyAV releases the GIL while it decodes), a bounded number of
videos ahead of the teachers, so decode overlaps inference. Teachers label the frames of several
videos together in batches of ``batch_size``. Each rank of a ``torchrun`` job (RANK, WORLD_SIZE)
takes every WORLD_SIZE-th video of the sorted list and writes its own shards.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.corpus.format import (
    ClipData,
    Corpus,
    CorpusManifest,
    HeadInfo,
    ShardWriter,
    VideoRecord,
    frame_boundary,
    is_corpus,
    write_manifest,
)
from soundnet_cli.errors import SoundnetError, UsageProblem, VideoError, reason
from soundnet_cli.media.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from soundnet_cli.runtime import World
    from soundnet_cli.teachers.base import Teacher

log = logging.getLogger(__name__)

FRAME_AT = ("centre", "start")


class NoVideos(UsageProblem):
    """The paths given to prepare hold no video file."""


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


@dataclass
class PrepareProgress:
    """Counts handed to the progress callback after every video."""

    total: int
    done: int = 0
    failed: int = 0
    seconds: float = 0.0  # of video prepared in this run
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def videos_per_second(self) -> float:
        return (self.done + self.failed) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        rate = self.videos_per_second
        left = self.total - self.done - self.failed
        return left / rate if rate > 0 else None


@dataclass
class PrepareReport:
    out: str
    rank: int
    world_size: int
    videos: int  # this rank's share
    skipped: int  # finished in an earlier run
    prepared: int
    clips: int
    seconds: float
    elapsed: float
    failed: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "rank": self.rank,
            "world_size": self.world_size,
            "videos": self.videos,
            "skipped": self.skipped,
            "prepared": self.prepared,
            "failed": self.failed,
            "clips": self.clips,
            "hours": round(self.seconds / 3600, 4),
            "elapsed_s": round(self.elapsed, 3),
            "videos_per_s": round(self.prepared / self.elapsed, 4) if self.elapsed else None,
            "video_seconds_per_s": round(self.seconds / self.elapsed, 3) if self.elapsed else None,
        }


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


def prepare_corpus(
    videos: Sequence[Path],
    out: Path,
    teachers: Sequence[Teacher],
    settings: PrepareSettings = PrepareSettings(),
    *,
    rank: int = 0,
    world_size: int = 1,
    on_progress: Callable[[PrepareProgress], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> PrepareReport:
    """Decode, label and store this rank's share of ``videos`` in the corpus at ``out``."""
    settings.check()
    if not teachers:
        raise UsageProblem("preparing a corpus needs at least one teacher", parameter="teacher")
    if not 0 <= rank < world_size:
        raise UsageProblem(f"rank {rank} is outside a world of {world_size}")
    out = Path(out)
    manifest = build_manifest(teachers, settings)
    write_manifest(out, manifest)
    finished = Corpus(out).finished() if is_corpus(out) else set()
    if settings.retry_failed:
        finished -= set(Corpus(out).failures)
    unique = sorted({str(Path(v).resolve()): Path(v) for v in videos}.items())
    mine = [path for index, (_, path) in enumerate(unique) if index % world_size == rank]
    todo = [p for p in mine if str(p.resolve()) not in finished]
    writer = ShardWriter(out, manifest, rank, int(settings.shard_mb * (1 << 20)))
    progress = PrepareProgress(total=len(todo))
    failed: list[dict[str, str]] = []
    clips = 0

    def fail(path: Path, reason: str) -> None:
        writer.add_failure(str(path.resolve()), str(path), reason)
        failed.append({"path": str(path), "reason": reason})
        progress.failed += 1
        if on_failure:
            on_failure(str(path), reason)

    def store(batch: list[Decoded]) -> None:
        nonlocal clips
        if not batch:
            return
        for item, posteriors in zip(
            batch, label(teachers, batch, settings.batch_size), strict=True
        ):
            broken = [name for name, p in posteriors.items() if not np.isfinite(p).all()]
            if broken:  # a broken teacher (weights, precision): never stored
                path = Path(item.record.path)
                fail(path, f"{path}: the teacher gave NaN or infinite values for head {broken[0]}")
                if on_progress:
                    on_progress(progress)
                continue
            pieces = split_clips(item, posteriors, manifest)
            writer.add_video(item.record, pieces)
            clips += len(pieces)
            progress.done += 1
            progress.seconds += item.record.duration
            if on_progress:
                on_progress(progress)
        batch.clear()

    pending: list[Decoded] = []
    try:
        for path, result in _decoded(todo, manifest, settings):
            if isinstance(result, BaseException):
                fail(path, _reason(result))
                if on_progress:
                    on_progress(progress)
                continue
            pending.append(result)
            if sum(len(d.frames) for d in pending) >= settings.batch_size:
                store(pending)
        store(pending)
    finally:
        writer.flush()
    return PrepareReport(
        str(out),
        rank,
        world_size,
        len(mine),
        len(mine) - len(todo),
        progress.done,
        clips,
        progress.seconds,
        progress.elapsed,
        failed,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SoundnetError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {reason(exc)}"


def _decode_one(
    path: Path, manifest: CorpusManifest, settings: PrepareSettings
) -> Decoded | Exception:
    try:
        return decode_video(path, manifest, settings)
    except Exception as exc:  # one bad video never stops the run
        return exc


def _decoded(paths: Sequence[Path], manifest: CorpusManifest, settings: PrepareSettings) -> Any:
    """Yield (path, Decoded or the exception), in order, decoding ahead in worker threads."""
    if settings.workers == 0:
        for path in paths:
            yield path, _decode_one(path, manifest, settings)
        return
    ahead = settings.workers * 2
    with ThreadPoolExecutor(settings.workers, thread_name_prefix="decode") as pool:
        queue: deque[tuple[Path, Future[Decoded | Exception]]] = deque()
        iterator = iter(paths)
        for path in iterator:
            queue.append((path, pool.submit(_decode_one, path, manifest, settings)))
            if len(queue) >= ahead:
                break
        while queue:
            path, future = queue.popleft()
            nxt = next(iterator, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(_decode_one, nxt, manifest, settings)))
            yield path, future.result()


def prepare_videos(
    paths: Sequence[Path],
    out: Path,
    teacher_names: Sequence[str],
    settings: PrepareSettings = PrepareSettings(),
    *,
    weights: Mapping[str, str] | None = None,
    random_init: bool = False,
    device: str = "auto",
    world: World | None = None,
    on_progress: Callable[[PrepareProgress], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> PrepareReport:
    """Find the videos under ``paths``, build the named teachers on this rank's device and
    prepare this rank's share into the corpus at ``out`` (what `soundnet prepare` runs)."""
    from soundnet_cli.media.files import find_videos
    from soundnet_cli.runtime import device_for, world_from_env
    from soundnet_cli.teachers import get_teachers

    settings.check()
    world = world or world_from_env()
    files = find_videos(list(paths))
    if not files:
        raise NoVideos("no video files found in the given paths")
    target = device_for(device, world)
    teachers = get_teachers(
        list(teacher_names), weights=dict(weights or {}), random_init=random_init
    )
    for model in teachers:
        model.to(target)
    return prepare_corpus(
        files,
        out,
        teachers,
        settings,
        rank=world.rank,
        world_size=world.size,
        on_progress=on_progress,
        on_failure=on_failure,
    )
