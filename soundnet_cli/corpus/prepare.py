"""From a folder of videos to a distillation corpus (see corpus.py for the format).

The steps of one video (settings, decoding, labels, clips) are in ``corpus/videos.py``.
Decoding runs in a pool of threads (PyAV releases the GIL while it decodes), a bounded number of
videos ahead of the teachers, so decode overlaps inference. Teachers label the frames of several
videos together in batches of ``batch_size``. Each rank of a ``torchrun`` job (RANK, WORLD_SIZE)
takes every WORLD_SIZE-th video of the sorted list and writes its own shards (directories).

``engine="ray"`` runs the same steps on a Ray cluster (``corpus/ray.py``): decoding in CPU
tasks, teachers in an actor pool; this process writes tar shards from their results. Both
engines end in one loop here (:func:`_store_all`), so resuming, bad videos and the report are
one implementation. Videos are local paths or URLs (fetched to a temporary file, decoded, then
removed); a video's key, what resuming matches on, is its absolute path or its URL.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.corpus.format import (
    MANIFEST,
    Corpus,
    CorpusManifest,
    ShardWriter,
    is_corpus,
    write_manifest,
)
from soundnet_cli.corpus.videos import FRAME_AT as FRAME_AT  # re-exported
from soundnet_cli.corpus.videos import (
    Decoded,
    Labelled,
    PrepareSettings,
    build_manifest,
    decode_input,
    failure_reason,
    label,
    list_videos,
    split_clips,
    video_key,
)
from soundnet_cli.errors import UsageProblem

if TYPE_CHECKING:
    from soundnet_cli.runtime import World
    from soundnet_cli.teachers.base import Teacher

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


class NoVideos(UsageProblem):
    """The paths given to prepare hold no video file."""


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


def prepare_corpus(
    videos: Sequence[str | Path],
    out: Path,
    teachers: Sequence[Teacher],
    settings: PrepareSettings = PrepareSettings(),
    *,
    rank: int = 0,
    world_size: int = 1,
    engine: str = "local",
    engine_options: Mapping[str, Any] | None = None,
    on_progress: Callable[[PrepareProgress], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> PrepareReport:
    """Decode, label and store this rank's share of ``videos`` (paths or URLs) in the corpus
    at ``out``. ``engine="ray"``: on a Ray cluster (``engine_options``: see
    :func:`soundnet_cli.corpus.ray.labelled_on_ray`), written as tar shards by this process."""
    settings.check()
    if not teachers:
        raise UsageProblem("preparing a corpus needs at least one teacher", parameter="teacher")
    if not 0 <= rank < world_size:
        raise UsageProblem(f"rank {rank} is outside a world of {world_size}")
    if engine not in ENGINES:
        raise UsageProblem(
            f"the engine must be one of {', '.join(ENGINES)}, not {engine!r}", parameter="engine"
        )
    if engine == "ray":
        from soundnet_cli.runtime import require_ray

        require_ray()
    out = Path(out)
    manifest = build_manifest(teachers, settings)
    new_folder = not out.exists()
    write_manifest(out, manifest)
    try:
        return _prepare_into(
            out, manifest, videos, teachers, settings, rank, world_size, engine, engine_options,
            on_progress, on_failure,
        )  # fmt: skip
    except BaseException:
        if new_folder:
            _remove_if_empty(out)
        raise


def _remove_if_empty(out: Path) -> None:
    """Remove the corpus folder a failed first run made, when it holds no clip yet (only the
    manifest and empty folders): a cluster that cannot be joined leaves nothing behind."""
    entries = list(out.rglob("*"))
    if any(p.is_file() and p != out / MANIFEST for p in entries):
        return
    with contextlib.suppress(OSError):  # another rank began writing: keep the folder
        for path in sorted(entries, key=lambda p: len(p.parts), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        out.rmdir()


def _prepare_into(
    out: Path,
    manifest: CorpusManifest,
    videos: Sequence[str | Path],
    teachers: Sequence[Teacher],
    settings: PrepareSettings,
    rank: int,
    world_size: int,
    engine: str,
    engine_options: Mapping[str, Any] | None,
    on_progress: Callable[[PrepareProgress], None] | None,
    on_failure: Callable[[str, str], None] | None,
) -> PrepareReport:
    finished = Corpus(out).finished() if is_corpus(out) else set()
    if settings.retry_failed:
        finished -= set(Corpus(out).failures)
    unique = sorted({video_key(v): str(v) for v in videos}.items())
    mine = [item for index, (_, item) in enumerate(unique) if index % world_size == rank]
    todo = [item for item in mine if video_key(item) not in finished]
    shard_bytes = int(settings.shard_mb * (1 << 20))
    if engine == "ray":
        from soundnet_cli.corpus.ray import labelled_on_ray
        from soundnet_cli.corpus.shards import tar_committer

        writer = ShardWriter(out, manifest, rank, shard_bytes, tar_committer(manifest))
        results = labelled_on_ray(todo, teachers, manifest, settings, engine_options or {})
    else:
        writer = ShardWriter(out, manifest, rank, shard_bytes)
        results = _labelled_here(todo, teachers, manifest, settings)
    progress = PrepareProgress(total=len(todo))
    try:
        failed, clips = _store_all(results, writer, manifest, progress, on_progress, on_failure)
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


def _store_all(
    results: Iterator[Labelled],
    writer: ShardWriter,
    manifest: CorpusManifest,
    progress: PrepareProgress,
    on_progress: Callable[[PrepareProgress], None] | None,
    on_failure: Callable[[str, str], None] | None,
) -> tuple[list[dict[str, str]], int]:
    """Write every video's clips (or its failure) as results arrive; a video whose result
    arrives twice (a retried task) is stored once. The failures and the clips written."""
    failed: list[dict[str, str]] = []
    clips = 0
    seen: set[str] = set()
    for result in results:
        key = video_key(result.item)
        if key in seen:
            continue
        seen.add(key)
        error = result.error
        if not error and result.posteriors is not None:
            broken = [n for n, p in result.posteriors.items() if not np.isfinite(p).all()]
            if broken:  # a broken teacher (weights, precision): never stored
                error = (
                    f"{result.item}: the teacher gave NaN or infinite values for head {broken[0]}"
                )
        if error or result.decoded is None or result.posteriors is None:
            error = error or f"{result.item}: no result"
            writer.add_failure(key, result.item, error)
            failed.append({"path": result.item, "reason": error})
            progress.failed += 1
            if on_failure:
                on_failure(result.item, error)
        else:
            pieces = split_clips(result.decoded, result.posteriors, manifest)
            writer.add_video(result.decoded.record, pieces)
            clips += len(pieces)
            progress.done += 1
            progress.seconds += result.decoded.record.duration
        if on_progress:
            on_progress(progress)
    return failed, clips


def _labelled_here(
    todo: Sequence[str],
    teachers: Sequence[Teacher],
    manifest: CorpusManifest,
    settings: PrepareSettings,
) -> Iterator[Labelled]:
    """The local engine: decode in threads ahead, label frames of several videos together."""
    pending: list[tuple[str, Decoded]] = []

    def labelled() -> Iterator[Labelled]:
        items = [decoded for _, decoded in pending]
        for (item, decoded), posteriors in zip(
            pending, label(teachers, items, settings.batch_size), strict=True
        ):
            yield Labelled(item, decoded, posteriors)
        pending.clear()

    for item, result in _decoded(todo, manifest, settings):
        if isinstance(result, BaseException):
            yield Labelled(item, error=failure_reason(result))
            continue
        pending.append((item, result))
        if sum(len(d.frames) for _, d in pending) >= settings.batch_size:
            yield from labelled()
    if pending:
        yield from labelled()


def _decode_one(
    item: str, manifest: CorpusManifest, settings: PrepareSettings
) -> Decoded | Exception:
    try:
        return decode_input(item, manifest, settings)
    except Exception as exc:  # one bad video never stops the run
        return exc


def _decoded(paths: Sequence[str], manifest: CorpusManifest, settings: PrepareSettings) -> Any:
    """Yield (path, Decoded or the exception), in order, decoding ahead in worker threads."""
    if settings.workers == 0:
        for path in paths:
            yield path, _decode_one(path, manifest, settings)
        return
    ahead = settings.workers * 2
    with ThreadPoolExecutor(settings.workers, thread_name_prefix="decode") as pool:
        queue: deque[tuple[str, Future[Decoded | Exception]]] = deque()
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
    paths: Sequence[str | Path],
    out: Path,
    teacher_names: Sequence[str],
    settings: PrepareSettings = PrepareSettings(),
    *,
    weights: Mapping[str, str] | None = None,
    random_init: bool = False,
    device: str = "auto",
    world: World | None = None,
    engine: str = "local",
    engine_options: Mapping[str, Any] | None = None,
    on_progress: Callable[[PrepareProgress], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> PrepareReport:
    """Find the videos under ``paths`` (files, folders, URLs), build the named teachers and
    prepare this rank's share into the corpus at ``out`` (what `soundnet prepare` runs). With
    ``engine="ray"`` the teachers are built here on the CPU and shipped to the actors, which
    move them to their GPU when they hold one; ``device`` is then unused."""
    from soundnet_cli.runtime import device_for, world_from_env
    from soundnet_cli.teachers import get_teachers

    settings.check()
    if engine == "ray":
        from soundnet_cli.runtime import require_ray

        require_ray()
    world = world or world_from_env()
    files = list_videos(paths)
    if not files:
        raise NoVideos("no video files found in the given paths")
    target = "cpu" if engine == "ray" else device_for(device, world)
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
        rank=0 if engine == "ray" else world.rank,
        world_size=1 if engine == "ray" else world.size,
        engine=engine,
        engine_options=engine_options,
        on_progress=on_progress,
        on_failure=on_failure,
    )
