"""Batch feature extraction: the decode -> batch -> model pipeline and its thread policy.

:func:`extract` discovers the inputs (``extraction/inputs.py``, over the one file walker of
``media/files.py``), takes this rank's share, and hands everything about the output folder to
:class:`~soundnet_cli.extraction.folder.FeatureFolder` (``extraction/folder.py``: names,
settings, lock, resume, mirroring, manifest; the formats are in ``extraction/writers/``).
This module only turns inputs into features:

* short inputs are decoded by worker threads while the model runs, and inputs of equal length
  are batched (never padded);
* long inputs are read and resampled in blocks and run through the model in chunks whose
  inputs overlap by the receptive field, aligned to the deepest layer's stride; the features
  equal those of the whole file at once (``extraction/chunks.py``);
* the model is the student's fast inference twin (``models.for_inference``) unless
  ``optimise=False``.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each rank takes every WORLD_SIZE-th input of
the sorted list; manifest rows go to a shared journal under a file lock, and each rank folds the
journal into ``manifest.jsonl`` when it finishes, so the last one leaves the complete manifest.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.errors import AudioError, SoundnetError, UsageProblem, reason
from soundnet_cli.extraction.chunks import chunked_features, step_times
from soundnet_cli.extraction.folder import FeatureFolder, FolderSettings
from soundnet_cli.extraction.inputs import Source, discover, shard
from soundnet_cli.extraction.windows import WindowPool, check_window
from soundnet_cli.extraction.writers import DTYPES, FORMATS
from soundnet_cli.extraction.writers.base import pooled as _pooled
from soundnet_cli.media.audio import (
    MIX_CHOICES,
    RESAMPLER,
    Mix,
    load_audio,
    model_ready,
    open_audio,
    read_whole,
    waveform,
)
from soundnet_cli.media.streaming import StreamingAudio
from soundnet_cli.runtime import available_cpus, world_from_env
from soundnet_cli.students.contract import check_taps, feature_of

if TYPE_CHECKING:
    import torch

    from soundnet_cli.students.contract import LayerGeometry, Student

log = logging.getLogger(__name__)

POOLS = ("mean", "max")
ENGINES = ("local", "ray")
DEFAULT_CHUNK_SECONDS = 60.0


def extract_array(
    wave: np.ndarray | torch.Tensor,
    sample_rate: int,
    layers: Sequence[str] = ("pool5",),
    *,
    model: Student | None = None,
    pool: str | None = None,
    chunk_seconds: float | None = None,
    optimise: bool = True,
) -> dict[str, np.ndarray]:
    """Features of one in-memory waveform: ``{layer: float32 (time, channels)}``.

    ``wave`` is float audio in [-1, 1] (mono, or (samples, channels): the first channel is
    used), at ``sample_rate``; it is resampled and scaled as files are. ``model`` defaults to
    the official SoundNet-8 (run with the inference rewrites unless ``optimise=False``).
    ``chunk_seconds`` runs the model in chunks (equal results, bounded memory).
    """
    import torch

    student: Any = model if model is not None else _default_model()
    if optimise:
        from soundnet_cli.students.inference import optimise as make_fast

        student = make_fast(student, layers=layers)
    array = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        array = array[:, 0]
    if array.ndim != 1 or array.size == 0:
        raise AudioError("expected a non-empty waveform shaped (samples,) or (samples, channels)")
    if not np.isfinite(array).all():
        raise AudioError("the waveform contains NaN or infinite samples")
    scaled = model_ready(array, int(sample_rate), student.sample_rate)
    _check_length(student, layers, len(scaled), "the waveform")
    device = student.device
    chunk = int((chunk_seconds or 1e9) * student.sample_rate)
    parts = list(
        chunked_features(student, lambda a, b: scaled[a:b], len(scaled), layers, chunk, device)
    )
    features = {name: np.concatenate([p[name] for p in parts if name in p]) for name in layers}
    return {name: _pooled(f, pool) for name, f in features.items()}


def _check_length(model: LayerGeometry, layers: Sequence[str], samples: int, what: str) -> None:
    for name in layers:
        if model.output_length(name, samples) == 0:
            need = model.min_samples(name)
            raise AudioError(
                f"{what} is too short: {samples / model.sample_rate:.3f} s; layer {name!r} "
                f"needs at least {need / model.sample_rate:.3f} s"
            )


def _default_model() -> Student:
    from soundnet_cli.models import load_student

    return load_student("soundnet8", pretrained=True)


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Failure:
    path: str
    error: str


@dataclass
class ExtractProgress:
    """Passed to the ``progress`` callback after every input."""

    total: int
    done: int
    audio_seconds: float
    elapsed: float
    path: str
    status: str


@dataclass
class ExtractSummary:
    out: Path
    total: int = 0
    extracted: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    audio_seconds: float = 0.0
    elapsed: float = 0.0
    rank: int = 0
    world_size: int = 1
    redone: list[str] = field(default_factory=list)  # finished outputs found damaged: why

    @property
    def realtime(self) -> float:
        return self.audio_seconds / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "total": self.total,
            "extracted": self.extracted,
            "skipped": self.skipped,
            "failed": len(self.failures),
            "failures": [{"path": f.path, "error": f.error} for f in self.failures],
            "audio_seconds": round(self.audio_seconds, 3),
            "elapsed_seconds": round(self.elapsed, 3),
            "x_realtime": round(self.realtime, 1),
            "rank": self.rank,
            "world_size": self.world_size,
            "redone": list(self.redone),
        }


@dataclass
class _Decoded:
    source: Source
    samples: np.ndarray | None = None  # model-ready (decoded, mono, resampled, scaled)
    duration: float = 0.0  # of the file, in seconds
    long: bool = False  # streamed in chunks by the main thread instead
    error: str | None = None
    local: Path | None = None  # a URL's fetched copy, kept for a long input until streamed


class _Extractor:
    """Runs one rank's inputs through ``model`` (the student, or its inference twin) into
    ``folder``: decoding in worker threads, the model in this one."""

    def __init__(
        self,
        model: Student,
        folder: FeatureFolder,
        *,
        mix: Mix,
        batch_size: int,
        workers: int,
        chunk_seconds: float,
        progress: Callable[[ExtractProgress], None] | None,
        summary: ExtractSummary,
    ) -> None:
        self.model, self.folder = model, folder
        self.layers, self.pool, self.mix = folder.layers, folder.settings.pool, mix
        self.batch_size, self.workers = max(1, batch_size), max(1, workers)
        self.chunk_samples = int(chunk_seconds * model.sample_rate)
        self.progress, self.summary = progress, summary
        self.device = model.device
        self.infos = {name: feature_of(model, name) for name in self.layers}
        self.started = time.perf_counter()
        self.done = 0
        self.total = 0
        self.fetched: Path | None = None  # a private folder for fetched URLs

    # -- decode stage (worker threads: libsndfile and libsoxr release the GIL) --
    def _decode(self, source: Source) -> _Decoded:
        if not source.url:
            return self._decode_file(source, source.path)
        from soundnet_cli.media.urls import fetch

        try:
            assert self.fetched is not None
            local = fetch(source.file, self.fetched)
        except SoundnetError as exc:
            return _Decoded(source, error=str(exc))
        item = self._decode_file(source, local)
        if item.error is not None:
            item.error = item.error.replace(str(local), source.file)
        if item.long:
            item.local = local
        else:
            local.unlink(missing_ok=True)
        return item

    def _decode_file(self, source: Source, path: Path) -> _Decoded:
        try:
            if not (path.is_file() and path.stat().st_size > 0):
                load_audio(path)  # raises the error that says what is wrong with the path
            try:  # audio, or a video's soundtrack: media decides how to open it
                with open_audio(path) as handle:  # opened once (an open costs ~0.5 ms)
                    frames, rate = int(handle.frames), int(handle.samplerate)
                    seconds = frames / rate if frames > 0 and rate > 0 else 0.0
                    if seconds * self.model.sample_rate > self.chunk_samples:
                        return _Decoded(source, long=True)
                    data, rate = read_whole(handle, str(path))
            except SoundnetError:
                raise
            except Exception as exc:
                raise AudioError(f"{path}: cannot read audio ({reason(exc)})") from exc
            # the one reading path (decode -> mono -> resample -> scale), as load_audio
            wave = waveform(data, rate, mix=self.mix, sample_rate=self.model.sample_rate)
            del data
            _check_length(self.model, self.layers, len(wave.samples), str(path))
            duration = wave.source_frames / wave.source_rate
            return _Decoded(source, samples=wave.samples, duration=duration)
        except SoundnetError as exc:
            return _Decoded(source, error=str(exc))
        except Exception as exc:  # a decoder crash on a hostile file must not stop the run
            return _Decoded(source, error=f"{source.display}: {type(exc).__name__}: {exc}")

    def run(self, sources: Sequence[Source]) -> None:
        if any(source.url for source in sources):
            import tempfile

            self.fetched = Path(tempfile.mkdtemp(prefix="soundnet-urls-"))
        try:
            self._run(sources)
        finally:
            if self.fetched is not None:
                import shutil

                shutil.rmtree(self.fetched, ignore_errors=True)

    def _run(self, sources: Sequence[Source]) -> None:
        self.total = len(sources)
        # Import these here: a first import is not safe in several threads at once.
        import soundfile  # noqa: F401
        import soxr  # noqa: F401

        from soundnet_cli.media.video import is_video

        if any(is_video(source.file) for source in sources):
            import av  # noqa: F401  (0.3 s: only when there are videos)

        groups: dict[int, list[_Decoded]] = {}
        window = self.workers * 2 + self.batch_size
        queue: deque[tuple[Source, Future[_Decoded]]] = deque()
        pending = iter(sources)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="soundnet-decode") as pool:
            try:
                while True:
                    while len(queue) < window:
                        source = next(pending, None)
                        if source is None:
                            break
                        queue.append((source, pool.submit(self._decode, source)))
                    if not queue:
                        break
                    if not queue[0][1].done() and self._decode_here(queue):
                        continue
                    item = queue.popleft()[1].result()
                    if item.error is not None:
                        self._failed(item.source, item.error)
                    elif item.long:
                        try:
                            self._long(item.source, item.local or item.source.path)
                        finally:
                            if item.local is not None:
                                item.local.unlink(missing_ok=True)
                    else:
                        assert item.samples is not None
                        shape = len(item.samples)
                        group = groups.setdefault(shape, [])
                        group.append(item)
                        if len(group) >= self.batch_size:
                            self._batch(groups.pop(shape))
                        elif sum(len(g) for g in groups.values()) > 4 * self.batch_size:
                            self._batch(groups.pop(max(groups, key=lambda n: len(groups[n]))))
                for group in list(groups.values()):
                    self._batch(group)
            finally:
                for _, future in queue:
                    future.cancel()

    def _decode_here(self, queue: deque[tuple[Source, Future[_Decoded]]]) -> bool:
        """Rather than wait for the workers, decode the latest input none has started, in this
        thread. Decoding costs more than the model on a small CPU (FLAC: about 2x fp32
        SoundNet-8), so the model's thread would otherwise sit idle; False when there is none."""
        for index in reversed(range(len(queue))):
            source, future = queue[index]
            if future.cancel():  # only an input no worker has started
                done: Future[_Decoded] = Future()
                done.set_result(self._decode(source))
                queue[index] = (source, done)
                return True
        return False

    # -- compute stage (main thread) --
    def _batch(self, items: list[_Decoded]) -> None:
        """Run one batch of equal-length, model-ready inputs."""
        import torch

        waves = np.stack([i.samples for i in items if i.samples is not None])
        try:
            with torch.inference_mode():
                batch = torch.from_numpy(waves).to(self.device)
                taps = self.model.forward_features(batch, self.layers)
            check_taps(self.model, taps, self.layers, batch.shape[0], batch.shape[-1])
            arrays = {n: t.transpose(1, 2).float().cpu().numpy() for n, t in taps.items()}
        except (SoundnetError, RuntimeError) as exc:
            if len(items) > 1:  # find the bad one (or run out of memory less): one at a time
                for item in items:
                    self._batch([item])
                return
            self._failed(items[0].source, f"{items[0].source.display}: {reason(exc)}")
            return
        for index, item in enumerate(items):
            self._write_whole(item, {n: a[index] for n, a in arrays.items()})

    def _write_whole(self, item: _Decoded, features: dict[str, np.ndarray]) -> None:
        assert item.samples is not None
        for name, values in features.items():
            if not np.isfinite(values).all():
                self._failed(item.source, _not_finite(item.source, name))
                return
        if self.folder.settings.window is not None:
            duration = len(item.samples) / self.model.sample_rate
            features = {n: windowed(self.folder, n, f, duration) for n, f in features.items()}
        shapes = {n: f.shape for n, f in features.items()}
        try:
            self.folder.write(item.source, {n: self._pooled(f) for n, f in features.items()})
        except OSError as exc:
            self._failed(item.source, _not_written(item.source, self.folder, exc))
            for path, error in self.folder.lost:  # inputs a table held, lost with its part
                self.summary.extracted -= 1
                self.summary.failures.append(Failure(path, error))
            self.folder.lost.clear()
            return
        except KeyboardInterrupt:
            self.folder.discard_temporaries(item.source)
            raise
        self._succeeded(item.source, item.duration, shapes)

    def _pooled(self, features: np.ndarray) -> np.ndarray:
        """An input's steps as the folder stores them (windows are pooled already)."""
        return features if self.folder.settings.window is not None else _pooled(features, self.pool)

    def _long(self, source: Source, path: Path) -> None:
        try:
            with StreamingAudio(path, mix=self.mix) as audio:
                _check_length(self.model, self.layers, audio.samples, source.display)
                shapes = self._stream(source, audio)
                duration = audio.duration
        except SoundnetError as exc:
            self._failed(source, str(exc).replace(str(path), source.display))
            return
        except OSError as exc:
            self._failed(source, _not_written(source, self.folder, exc))
            return
        except KeyboardInterrupt:
            self.folder.discard_temporaries(source)
            raise
        self._succeeded(source, duration, shapes)

    def _stream(self, source: Source, audio: StreamingAudio) -> dict[str, tuple[int, int]]:
        if self.folder.settings.window is not None:
            return self._stream_windows(source, audio)
        shapes = {
            n: (self.model.output_length(n, audio.samples), self.infos[n].channels)
            for n in self.layers
        }
        with self.folder.stream(source, shapes) as streams:
            parts = chunked_features(
                self.model,
                audio.window,
                audio.samples,
                self.layers,
                self.chunk_samples,
                self.device,
            )
            for part in _prefetch(parts):
                for name, steps in part.items():
                    if not np.isfinite(steps).all():  # raised inside: no output is kept
                        raise AudioError(_not_finite(source, name))
                    streams.add(name, steps)
        return shapes

    def _stream_windows(self, source: Source, audio: StreamingAudio) -> dict[str, tuple[int, int]]:
        """A long input pooled over windows: its chunks go through a :class:`WindowPool` per
        layer (only the windows are held), then it is written whole."""
        pools = {n: window_pool(self.folder, n) for n in self.layers}
        found: dict[str, list[np.ndarray]] = {n: [] for n in self.layers}
        parts = chunked_features(
            self.model, audio.window, audio.samples, self.layers, self.chunk_samples, self.device
        )
        for part in _prefetch(parts):
            for name, steps in part.items():
                if not np.isfinite(steps).all():
                    raise AudioError(_not_finite(source, name))
                found[name].append(pools[name].add(steps))
        duration = audio.samples / self.model.sample_rate
        features = {n: np.concatenate([*found[n], pools[n].finish(duration)]) for n in self.layers}
        self.folder.write(source, features)
        return {n: f.shape for n, f in features.items()}

    # -- bookkeeping --
    def _succeeded(
        self, source: Source, duration: float, shapes: Mapping[str, tuple[int, ...]]
    ) -> None:
        self.folder.succeeded(source, duration, shapes)
        self.summary.extracted += len(source.routes)
        self.summary.audio_seconds += duration
        self._advance(source, "ok")

    def _failed(self, source: Source, error: str) -> None:
        self.folder.failed(source, error)
        for route in source.routes:
            self.summary.failures.append(Failure(route.display, error))
        self._advance(source, "failed")

    def _advance(self, source: Source, status: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(
                ExtractProgress(
                    self.total,
                    self.done,
                    self.summary.audio_seconds,
                    time.perf_counter() - self.started,
                    source.display,
                    status,
                )
            )


def _not_written(source: Source, folder: FeatureFolder, exc: OSError) -> str:
    """One line for an output that could not be written (a full disk above all)."""
    if exc.errno == errno.ENOSPC:
        return (
            f"{source.display}: no space left on the device of {folder.path} while writing its "
            "features; nothing of it was kept (free space and run again to resume)"
        )
    return f"{source.display}: cannot write its features in {folder.path}: {reason(exc)}"


def _not_finite(source: Source, layer: str) -> str:
    return (
        f"{source.display}: the {layer} features are not finite (NaN or infinity): the audio holds "
        "samples far beyond [-1, 1], or the model's weights are not finite; nothing was written"
    )


def _prefetch(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Produce ``items`` in a background thread, ``depth`` ahead (decode overlaps compute)."""
    import queue as queue_module

    buffer: queue_module.Queue[tuple[str, Any]] = queue_module.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(kind: str, value: Any) -> bool:
        """Put into the buffer unless the consumer has gone (never blocks for good)."""
        while not stop.is_set():
            try:
                buffer.put((kind, value), timeout=0.1)
                return True
            except queue_module.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over("item", item):
                    return
            hand_over("end", None)
        except BaseException as exc:  # handed to the consumer
            hand_over("error", exc)

    thread = threading.Thread(target=produce, name="soundnet-chunks", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        # Wait for the producer to finish the item in hand: a daemon thread still inside a
        # decoder or a torch op when the interpreter exits aborts the process ("terminate
        # called without an active exception") instead of exiting 130 after Ctrl-C.
        stop.set()
        thread.join()


def extract(
    paths: Sequence[str | os.PathLike[str]],
    layers: Sequence[str] = ("pool5",),
    out: str | os.PathLike[str] = "features",
    *,
    model: Student | None = None,
    fmt: str = "npy",
    pool: str | None = None,
    extensions: Sequence[str] | None = None,
    globs: Sequence[str] | None = None,
    overwrite: bool = False,
    batch_size: int = 16,
    workers: int | None = None,
    threads: int | None = None,
    mix: str = "first",
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    optimise: bool = True,
    precision: str = "fp32",
    compile: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    progress: Callable[[ExtractProgress], None] | None = None,
    dtype: str = "float32",
    part_size: int | None = None,
    shard_of: tuple[int, int] | None = None,
    engine: str = "local",
    engine_options: Mapping[str, Any] | None = None,
    window: float | None = None,
    hop: float | None = None,
) -> ExtractSummary:
    """Extract ``layers`` for every audio file under ``paths`` into the features folder
    ``out`` (see ``extraction/folder.py`` for its layout and resume rules).

    ``workers`` decoding threads (default: half the cores on CPU, all but one beside a GPU) and
    ``threads`` for the model (default on CPU: the cores the workers leave) are set for the run.

    ``model`` is a :class:`~soundnet_cli.students.contract.Student` (default: the official
    SoundNet-8). Every setting is checked before the folder is touched. Bad inputs are recorded
    in the summary and the manifest, never raised. Returns the run's :class:`ExtractSummary`.

    ``paths`` may hold URLs (``media/urls.py``). ``shard_of=(i, n)`` keeps slice ``i`` of ``n``
    of the sorted inputs (a Slurm array task). ``fmt="parquet"`` writes a Parquet dataset
    (``dtype`` float32 or float16, ``part_size`` inputs a part file). ``window`` (seconds,
    with ``pool``) pools over sliding windows ``hop`` seconds apart (default: the window),
    one row per window (``extraction/windows.py``, as ``predict --window``). ``engine="ray"`` runs
    on a Ray cluster (``extraction/engines/ray.py``; ``engine_options``: address, batch sizes,
    concurrency, GPUs per actor).
    """
    layers = list(dict.fromkeys(layers))
    student: Any = model
    _check_settings(layers, fmt, pool, mix, chunk_seconds, precision, dtype, engine, window, hop)
    if student is None:
        student = _default_model()
    for name in layers:
        feature_of(student, name)  # LayerError: a usage error
    if rank is None or world_size is None:
        world = world_from_env()
        rank, world_size = world.rank, world.size
    started = time.perf_counter()
    sources = discover(paths, extensions=extensions, globs=globs)
    if not sources:
        raise UsageProblem("no audio files found in the given paths")
    slice_index, slices = shard_of or (0, 1)
    mine = shard(shard(sources, slice_index, slices), rank, world_size)
    precision_run = precision if optimise else "fp32"  # the plain model always runs in fp32
    settings = folder_settings(
        student, layers, fmt=fmt, pool=pool, mix=mix, precision=precision_run, dtype=dtype,
        window=window, hop=hop,
    )  # fmt: skip
    # each slice of each rank has its own lock and part files in a shared folder
    folder = FeatureFolder(Path(out), settings, rank=slice_index * world_size + rank)
    if part_size is not None:
        folder.writer.inputs_per_part = part_size  # type: ignore[attr-defined]
    folder.check_distinct(sources)
    folder.create()
    with folder.locked():
        folder.record_settings(overwrite)
        summary = ExtractSummary(
            folder.path, total=sum(len(s.routes) for s in mine), rank=rank, world_size=world_size
        )
        plan = folder.plan(mine, overwrite)
        summary.skipped, summary.extracted = plan.skipped, plan.mirrored
        summary.redone.extend(plan.redone)
        if engine == "ray":
            try:
                _run_on_ray(
                    student,
                    folder,
                    plan.todo,
                    summary,
                    mix=mix,
                    batch_size=batch_size,
                    chunk_seconds=chunk_seconds,
                    optimise=optimise,
                    precision=precision,
                    progress=progress,
                    options=engine_options or {},
                )
            finally:
                _finish(folder, summary)
                summary.elapsed = time.perf_counter() - started
            return summary
        if optimise:
            from soundnet_cli.models import for_inference

            student = for_inference(student, layers, precision=precision, compile=compile)
        extractor = _Extractor(
            student,
            folder,
            mix=mix,  # type: ignore[arg-type]
            batch_size=batch_size,
            workers=workers or default_workers(student.device.type),
            chunk_seconds=chunk_seconds,
            progress=progress,
            summary=summary,
        )
        import torch

        previous_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        elif extractor.device.type == "cpu":
            # One busy thread per core: the model's threads plus the decoding ones. More, and
            # the model's OpenMP threads wait on descheduled peers (3-4x slower on 2 cores).
            torch.set_num_threads(max(1, available_cpus() - extractor.workers))
        try:
            extractor.run(plan.todo)
        finally:
            torch.set_num_threads(previous_threads)
            _finish(folder, summary)
            summary.elapsed = time.perf_counter() - started
        return summary


def folder_settings(
    student: Student,
    layers: Sequence[str],
    *,
    fmt: str,
    pool: str | None,
    mix: str,
    precision: str,
    dtype: str,
    window: float | None = None,
    hop: float | None = None,
) -> FolderSettings:
    """The settings a features folder records (``features.json``) for ``student``'s
    ``layers``: the same for files and live input. ``precision``: what the model runs in (the
    plain model always runs in fp32)."""
    from soundnet_cli.weights.identity import identity

    who = identity(student)  # hashes a checkpoint once; later runs read the remembered digest
    layer_infos = {name: feature_of(student, name) for name in layers}
    return FolderSettings(
        architecture=str(getattr(student, "architecture", type(student).__name__)),
        checkpoint=str(who.path) if who.path is not None else None,
        checkpoint_sha256=who.file_sha256,
        sample_rate=int(student.sample_rate),
        layers={
            name: {
                "channels": info.channels,
                "stride": info.stride,
                "receptive_field": info.receptive_field,
                "offset": info.offset,
            }
            for name, info in layer_infos.items()
        },
        fmt=fmt,
        pool=pool,
        mix=mix,
        precision=precision,
        resampler=RESAMPLER,
        dtype=dtype,
        window=window,
        hop=(hop if hop is not None else window) if window is not None else None,
    )


def windowed(folder: FeatureFolder, layer: str, steps: np.ndarray, duration: float) -> np.ndarray:
    """A layer's steps of a whole input (``duration`` seconds) pooled over the folder's
    windows: float32 (windows, channels)."""
    pool = window_pool(folder, layer)
    return np.concatenate([pool.add(steps), pool.finish(duration)])


def window_pool(folder: FeatureFolder, layer: str) -> WindowPool:
    """A :class:`WindowPool` for ``layer`` with the folder's window, hop and pooling."""
    settings = folder.settings
    geometry = settings.layers[layer]
    assert settings.window is not None and settings.pool is not None
    return WindowPool(
        float(step_times(SimpleNamespace(**geometry), 1, settings.sample_rate)[0]),
        geometry["stride"] / settings.sample_rate,
        geometry["channels"],
        settings.window,
        settings.hop,
        settings.pool,
    )


def _run_on_ray(
    student: Student,
    folder: FeatureFolder,
    todo: Sequence[Source],
    summary: ExtractSummary,
    *,
    progress: Callable[[ExtractProgress], None] | None,
    **settings: Any,
) -> None:
    """``todo`` computed on Ray (``extraction/engines/ray.py``), each result written here
    through the folder as the local engine writes, with the same summary and progress."""
    from soundnet_cli.extraction.engines.ray import results_on_ray

    started = time.perf_counter()
    results = results_on_ray(
        student,
        [source.file for source in todo],
        folder.layers,
        pool=folder.settings.pool,
        **settings,
    )
    for done, result in enumerate(results, start=1):
        source = todo[result.index]
        error = result.error  # decoding names the input; the model's errors do not
        if error and source.file not in error:
            error = f"{source.display}: {error}"
        if not error:
            try:
                folder.write(source, result.features)
            except OSError as exc:
                error = _not_written(source, folder, exc)
            else:
                folder.succeeded(source, result.duration, result.shapes)
                summary.extracted += len(source.routes)
                summary.audio_seconds += result.duration
        if error:
            folder.failed(source, error)
            summary.failures.extend(Failure(r.display, error) for r in source.routes)
        if progress is not None:
            status = "failed" if error else "ok"
            elapsed = time.perf_counter() - started
            progress(
                ExtractProgress(
                    len(todo), done, summary.audio_seconds, elapsed, source.display, status
                )
            )


def _finish(folder: FeatureFolder, summary: ExtractSummary) -> None:
    """Commit what the writer holds, count inputs whose part could not be written as failed,
    fold the manifest's journal."""
    try:
        folder.finish()
    except OSError as exc:
        log.error("the last part could not be written: %s", reason(exc))
    finally:
        for path, error in folder.lost:
            summary.extracted -= 1
            summary.failures.append(Failure(path, error))
        folder.lost.clear()
        folder.manifest.merge()


def _check_settings(
    layers: Sequence[str],
    fmt: str,
    pool: str | None,
    mix: str,
    chunk_seconds: float,
    precision: str,
    dtype: str = "float32",
    engine: str = "local",
    window: float | None = None,
    hop: float | None = None,
) -> None:
    """Refuse a bad setting (a usage error) before anything is created or loaded."""
    from soundnet_cli.students.inference import PRECISIONS

    if not layers:
        raise UsageProblem("give at least one layer")
    if fmt not in FORMATS:
        raise UsageProblem(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if pool is not None and pool not in POOLS:
        raise UsageProblem(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    if mix not in MIX_CHOICES:
        raise UsageProblem(f"mix must be one of {', '.join(MIX_CHOICES)}, not {mix!r}")
    if not math.isfinite(chunk_seconds) or chunk_seconds <= 0:
        raise UsageProblem(f"chunk seconds must be a positive number, not {chunk_seconds}")
    if precision not in PRECISIONS:
        raise UsageProblem(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if dtype not in DTYPES:
        raise UsageProblem(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype != "float32" and fmt != "parquet":
        raise UsageProblem(f"dtype {dtype} is stored by the parquet format only")
    if fmt == "parquet":
        from soundnet_cli.extraction.writers.parquet import require_pyarrow

        require_pyarrow()
    if engine not in ENGINES:
        raise UsageProblem(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    check_window(window, hop)
    if window is not None and pool is None:
        raise UsageProblem(
            "a window pools features over time: it needs pooling (mean or max) too",
            parameter=("window", "pool"),
        )
    if window is not None and engine != "local":
        raise UsageProblem("windows run on the local engine only", parameter=("window", "engine"))
    if engine == "ray":
        from soundnet_cli.runtime import require_ray

        require_ray()


def default_workers(device_type: str) -> int:
    """Decoding threads: half the cores beside a CPU model, all but one beside a GPU."""
    cpus = available_cpus()
    return max(1, cpus // 2 if device_type == "cpu" else cpus - 1)
