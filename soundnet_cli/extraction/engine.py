"""Batch feature extraction over files and directories: resumable, streaming, sharded.

Layout of an output folder ``OUT``::

    OUT/features.json            the run's setup: model, checkpoint sha256, layers, geometry
    OUT/manifest.jsonl           one row per input: path, duration, status, outputs, error
    OUT/<rel>.<layer>.npy        float32 (time, channels); (channels,) with ``pool``
    OUT/<rel>.npz                with ``fmt="npz"``: every layer, ``<layer>_times``, provenance

``<rel>`` is the input's path relative to the common folder of the inputs, without its
extension (with it where two inputs would share a name: ``inputs.output_stems``), so the output
mirrors the input tree, every path the user gave included (symlinked routes to one file are
computed once and linked). Every output is written to a temporary file and renamed into place,
and one run at a time holds the folder; a rerun skips inputs whose outputs exist, are complete
and have the shape the manifest records, and redoes (and reports) the others.

Long inputs are read and resampled in blocks and run through the model in chunks whose inputs
overlap by the receptive field, aligned to the deepest layer's stride; the features equal those
of the whole file at once (see :func:`chunk_plan`). Short inputs are decoded by worker threads
while the model runs, and inputs of equal length are batched (never padded).

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each rank takes every WORLD_SIZE-th input of
the sorted list; rows go to a shared journal under a file lock, and each rank folds the journal
into ``manifest.jsonl`` when it finishes, so the last one leaves the complete manifest.

Parts: ``extract_inputs`` (discovery, sharding), ``extract_outputs`` (names, setup, manifest),
``streaming`` (long files, chunk geometry), ``inference`` (the fast model); this module runs them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.atomic import atomic_file, atomic_path
from soundnet_cli.errors import AudioError, SoundnetError, UsageProblem, reason
from soundnet_cli.extraction.chunks import chunked_features, step_times
from soundnet_cli.extraction.inputs import Source, discover, shard
from soundnet_cli.extraction.outputs import (
    FeatureManifest,
    LayerSink,
    Setup,
    check_distinct,
    copy_output,
    output_lock,
    output_names,
    outputs_problem,
    record_setup,
    recovered_row,
    remove_stale_temporaries,
    save_npy,
    scratch_folder,
)
from soundnet_cli.media.audio import (
    MIX_CHOICES,
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

FORMATS = ("npy", "npz")
POOLS = ("mean", "max")
DEFAULT_CHUNK_SECONDS = 60.0


def extract_array(
    wave: np.ndarray | torch.Tensor,
    sample_rate: int,
    layers: Sequence[str] = ("pool5",),
    *,
    model: Any = None,
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

    if model is None:
        model = _default_model()
    if optimise:
        from soundnet_cli.students.inference import optimise as make_fast

        model = make_fast(model, layers=layers)
    array = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        array = array[:, 0]
    if array.ndim != 1 or array.size == 0:
        raise AudioError("expected a non-empty waveform shaped (samples,) or (samples, channels)")
    if not np.isfinite(array).all():
        raise AudioError("the waveform contains NaN or infinite samples")
    scaled = model_ready(array, int(sample_rate), model.sample_rate)
    _check_length(model, layers, len(scaled), "the waveform")
    device = model.device
    chunk = int((chunk_seconds or 1e9) * model.sample_rate)
    parts = list(
        chunked_features(model, lambda a, b: scaled[a:b], len(scaled), layers, chunk, device)
    )
    features = {name: np.concatenate([p[name] for p in parts if name in p]) for name in layers}
    return {name: _pooled(f, pool) for name, f in features.items()}


def _pooled(features: np.ndarray, pool: str | None) -> np.ndarray:
    if pool is None:
        return features
    if pool == "mean":
        return features.mean(axis=0, dtype=np.float64).astype(np.float32)
    return features.max(axis=0)


def _check_length(model: Any, layers: Sequence[str], samples: int, what: str) -> None:
    for name in layers:
        if model.output_length(name, samples) == 0:
            need = model.min_samples(name)
            raise AudioError(
                f"{what} is too short: {samples / model.sample_rate:.3f} s; layer {name!r} "
                f"needs at least {need / model.sample_rate:.3f} s"
            )


def _default_model() -> Any:
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


class _Extractor:
    def __init__(
        self,
        model: Any,
        layers: list[str],
        out: Path,
        setup: Setup,
        *,
        fmt: str,
        pool: str | None,
        mix: Mix,
        batch_size: int,
        workers: int,
        chunk_seconds: float,
        progress: Callable[[ExtractProgress], None] | None,
        summary: ExtractSummary,
        manifest: FeatureManifest,
        rank: int,
    ) -> None:
        self.model, self.layers, self.out, self.setup = model, layers, out, setup
        self.fmt, self.pool, self.mix = fmt, pool, mix
        self.batch_size, self.workers = max(1, batch_size), max(1, workers)
        self.chunk_samples = int(chunk_seconds * model.sample_rate)
        self.progress, self.summary, self.manifest, self.rank = progress, summary, manifest, rank
        self.device = model.device
        self.infos = {name: feature_of(model, name) for name in layers}
        self.timing = {  # of every manifest row
            name: {
                "first_time": round(float(step_times(info, 1, model.sample_rate)[0]), 9),
                "step_seconds": info.stride / model.sample_rate,
            }
            for name, info in self.infos.items()
        }
        self.started = time.perf_counter()
        self.done = 0
        self.total = 0

    # -- decode stage (worker threads: libsndfile and libsoxr release the GIL) --
    def _decode(self, source: Source) -> _Decoded:
        try:
            path = source.path
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
            return _Decoded(source, error=f"{source.path}: {type(exc).__name__}: {exc}")

    def run(self, sources: Sequence[Source]) -> None:
        self.total = len(sources)
        # Import these here: a first import is not safe in several threads at once.
        import soundfile  # noqa: F401
        import soxr  # noqa: F401

        from soundnet_cli.media.video import is_video

        if any(is_video(source.path) for source in sources):
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
                        self._long(item.source)
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
            self._failed(items[0].source, f"{items[0].source.path}: {reason(exc)}")
            return
        for index, item in enumerate(items):
            self._write_whole(item, {n: a[index] for n, a in arrays.items()})

    def _write_whole(self, item: _Decoded, features: dict[str, np.ndarray]) -> None:
        assert item.samples is not None
        for name, values in features.items():
            if not np.isfinite(values).all():
                self._failed(item.source, _not_finite(item.source, name))
                return
        shapes = {n: f.shape for n, f in features.items()}
        targets = self._targets(item.source)
        if self.fmt == "npz":
            with atomic_file(targets[0]) as handle:
                np.savez(handle, **self._npz_arrays(features, shapes))  # type: ignore[arg-type]
        else:
            for name, target in zip(self.layers, targets, strict=True):
                with atomic_file(target) as handle:
                    save_npy(handle, _pooled(features[name], self.pool))
        self._succeeded(item.source, item.duration, shapes)

    def _npz_arrays(
        self, features: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for name in self.layers:
            arrays[name] = _pooled(features[name], self.pool)
            if self.pool is None:
                arrays[f"{name}_times"] = step_times(
                    self.infos[name], shapes[name][0], self.model.sample_rate
                )
        arrays["provenance"] = np.array(json.dumps(self.setup.as_dict()))
        return arrays

    def _long(self, source: Source) -> None:
        try:
            with StreamingAudio(source.path, mix=self.mix) as audio:
                _check_length(self.model, self.layers, audio.samples, str(source.path))
                shapes = self._stream(source, audio)
                duration = audio.duration
        except SoundnetError as exc:
            self._failed(source, str(exc))
            return
        self._succeeded(source, duration, shapes)

    def _stream(self, source: Source, audio: StreamingAudio) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {
            n: (self.model.output_length(n, audio.samples), self.infos[n].channels)
            for n in self.layers
        }
        targets = self._targets(source)
        with contextlib.ExitStack() as stack:
            if self.fmt == "npz":
                final = stack.enter_context(atomic_path(targets[0]))
                folder = stack.enter_context(scratch_folder(self.out, self.rank))
                scratch = {n: folder / f"{n}.npy" for n in self.layers}
            else:
                scratch = {
                    n: stack.enter_context(atomic_path(t))
                    for n, t in zip(self.layers, targets, strict=True)
                }
            sinks = {
                n: LayerSink(scratch[n], shapes[n][0], shapes[n][1], self.pool) for n in self.layers
            }
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
                    sinks[name].add(steps)
            for name, sink in sinks.items():
                pooled = sink.result()
                if pooled is not None:
                    save_npy(scratch[name], pooled)
            if self.fmt == "npz":
                self._zip(final, scratch, shapes)
        return shapes

    def _zip(
        self, target: Path, scratch: dict[str, Path], shapes: dict[str, tuple[int, ...]]
    ) -> None:
        """An .npz (a zip of .npy members) built from per-layer files, never all in memory."""
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name in self.layers:
                archive.write(scratch[name], f"{name}.npy")
                if self.pool is None:
                    times = step_times(self.infos[name], shapes[name][0], self.model.sample_rate)
                    with archive.open(f"{name}_times.npy", "w", force_zip64=True) as handle:
                        np.save(handle, times)
            with archive.open("provenance.npy", "w") as handle:
                np.save(handle, np.array(json.dumps(self.setup.as_dict())))

    # -- bookkeeping --
    def _targets(self, source: Source) -> list[Path]:
        return [self.out / name for name in output_names(source.key, self.layers, self.fmt)]

    def _row(self, source: Source, status: str, duration: float | None) -> dict[str, Any]:
        return {
            "path": str(source.path),
            "key": source.key,
            "status": status,
            "duration": round(duration, 6) if duration is not None else None,
            "outputs": output_names(source.key, self.layers, self.fmt) if status == "ok" else [],
            "error": None,
            "rank": self.rank,
        }

    def _succeeded(
        self, source: Source, duration: float, shapes: dict[str, tuple[int, ...]]
    ) -> None:
        row = self._row(source, "ok", duration)
        row["layers"] = {
            name: {
                "shape": [shapes[name][1]] if self.pool else list(shapes[name]),
                **self.timing[name],
            }
            for name in self.layers
        }
        self.manifest.append(row)
        for alias in source.aliases:
            self.manifest.append(mirror(self.out, row, alias, self.layers, self.fmt))
        self.summary.extracted += len(source.routes)
        self.summary.audio_seconds += duration
        self._advance(source, "ok")

    def _failed(self, source: Source, error: str) -> None:
        for route in source.routes:
            row = self._row(route, "failed", None)
            row["error"] = error
            self.manifest.append(row)
            self.summary.failures.append(Failure(str(route.path), error))
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
                    str(source.path),
                    status,
                )
            )


def mirror(
    out: Path, row: dict[str, Any], alias: Source, layers: Sequence[str], fmt: str
) -> dict[str, Any]:
    """Outputs for another route to a finished file (a symlink to it): links to, or copies
    of, the finished outputs; returns the alias's manifest row."""
    names = output_names(alias.key, layers, fmt)
    for mine, theirs in zip(output_names(row["key"], layers, fmt), names, strict=True):
        copy_output(out / mine, out / theirs)
    layer_rows = row.get("layers") or {}
    return {
        **row,
        "path": str(alias.path),
        "key": alias.key,
        "outputs": names,
        "layers": {name: layer_rows[name] for name in layers if name in layer_rows},
        "copy_of": row["path"],
    }


def _not_finite(source: Source, layer: str) -> str:
    return (
        f"{source.path}: the {layer} features are not finite (NaN or infinity): the audio holds "
        "samples far beyond [-1, 1], or the model's weights are not finite; nothing was written"
    )


def _prefetch(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Produce ``items`` in a background thread, ``depth`` ahead (decode overlaps compute)."""
    import queue as queue_module

    buffer: queue_module.Queue[tuple[str, Any]] = queue_module.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(("item", item), timeout=0.1)
                        break
                    except queue_module.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(("end", None))
        except BaseException as exc:  # handed to the consumer
            buffer.put(("error", exc))

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
        stop.set()
        thread.join(timeout=5)


def extract(
    paths: Sequence[str | os.PathLike[str]],
    layers: Sequence[str] = ("pool5",),
    out: str | os.PathLike[str] = "features",
    *,
    model: Any = None,
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
    announce: Callable[[str], None] | None = None,
) -> ExtractSummary:
    """Extract ``layers`` for every audio file under ``paths`` into ``out``; see the module doc.

    ``workers`` decoding threads (default: half the cores on CPU, all but one beside a GPU) and
    ``threads`` for the model (default on CPU: the cores the workers leave) are set for the run.

    ``model`` is a student module (default: the official SoundNet-8). Bad inputs are recorded
    in the summary and the manifest, never raised. Returns the run's :class:`ExtractSummary`.
    """
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise UsageProblem("give at least one --layer")
    if fmt not in FORMATS:
        raise UsageProblem(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if pool is not None and pool not in POOLS:
        raise UsageProblem(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    if mix not in MIX_CHOICES:
        raise UsageProblem(f"mix must be one of {', '.join(MIX_CHOICES)}, not {mix!r}")
    if not math.isfinite(chunk_seconds) or chunk_seconds <= 0:
        raise UsageProblem(f"chunk seconds must be a positive number, not {chunk_seconds}")
    if model is None:
        model = _default_model()
    for name in layers:
        feature_of(model, name)  # LayerError (a usage error) for unknown layers
    if rank is None or world_size is None:
        world = world_from_env()
        rank, world_size = world.rank, world.size
    out = Path(out)
    started = time.perf_counter()
    sources = discover(paths, extensions=extensions, globs=globs)
    if not sources:
        raise UsageProblem("no audio files found in the given paths")
    mine = shard(sources, rank, world_size)
    from soundnet_cli.weights.identity import identity

    who = identity(model)  # hashes a checkpoint once; later runs read the remembered digest
    setup = Setup(
        architecture=str(getattr(model, "architecture", type(model).__name__)),
        checkpoint=str(who.path) if who.path is not None else None,
        checkpoint_sha256=who.file_sha256,
        sample_rate=int(model.sample_rate),
        layers={
            name: {
                "channels": feature_of(model, name).channels,
                "stride": feature_of(model, name).stride,
                "receptive_field": feature_of(model, name).receptive_field,
                "offset": feature_of(model, name).offset,
            }
            for name in layers
        },
        fmt=fmt,
        pool=pool,
        mix=mix,
    )
    check_distinct(sources, lambda key: output_names(key, layers, fmt))
    _make_folder(out)
    with output_lock(out, rank):
        record_setup(out, setup, overwrite)
        manifest = FeatureManifest(out)
        summary = ExtractSummary(
            out, total=sum(len(s.routes) for s in mine), rank=rank, world_size=world_size
        )
        todo = _plan(out, mine, layers, fmt, overwrite, manifest, summary, rank)
        targets = (
            out / n for s in todo for r in s.routes for n in output_names(r.key, layers, fmt)
        )
        remove_stale_temporaries(out, targets, rank)
        if optimise:
            from soundnet_cli.models import for_inference

            model = for_inference(
                model, layers, precision=precision, compile=compile, announce=announce
            )
        extractor = _Extractor(
            model,
            layers,
            out,
            setup,
            fmt=fmt,
            pool=pool,
            mix=mix,  # type: ignore[arg-type]
            batch_size=batch_size,
            workers=workers or default_workers(model.device.type),
            chunk_seconds=chunk_seconds,
            progress=progress,
            summary=summary,
            manifest=manifest,
            rank=rank,
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
            extractor.run(todo)
        finally:
            torch.set_num_threads(previous_threads)
            manifest.merge()
            summary.elapsed = time.perf_counter() - started
        return summary


def _make_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageProblem(f"--out {out} is a file; name a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SoundnetError(f"cannot create the output folder {out}: {exc.strerror}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise SoundnetError(f"cannot write to the output folder {out}: permission denied")


def _plan(
    out: Path,
    mine: Sequence[Source],
    layers: list[str],
    fmt: str,
    overwrite: bool,
    manifest: FeatureManifest,
    summary: ExtractSummary,
    rank: int,
) -> list[Source]:
    """The inputs still to compute. Finished outputs are trusted only when complete and of the
    shape their manifest row records; damaged ones are redone and reported in the summary.
    Routes that link to a finished file get its outputs now."""
    previous = manifest.rows()
    todo = []
    for source in mine:
        row = None if overwrite else _finished(out, source, layers, fmt, previous, summary)
        if row is None:
            todo.append(source)
            continue
        if previous.get(source.key) is not row:
            manifest.append(row)
        summary.skipped += 1
        for alias in source.aliases:
            done = _finished(out, alias, layers, fmt, previous, summary)
            if done is None:
                manifest.append(mirror(out, row, alias, layers, fmt))
                summary.extracted += 1
            else:
                if previous.get(alias.key) is not done:
                    manifest.append(done)
                summary.skipped += 1
    return todo


def _finished(
    out: Path,
    source: Source,
    layers: list[str],
    fmt: str,
    previous: dict[str, dict[str, Any]],
    summary: ExtractSummary,
) -> dict[str, Any] | None:
    """The manifest row of ``source``'s finished outputs (recovered when it has none), or None
    when they are missing or damaged."""
    names = output_names(source.key, layers, fmt)
    if not all((out / n).is_file() for n in names):
        return None
    row = previous.get(source.key)
    if row is not None and (
        row.get("status") != "ok" or not set(names) <= set(row.get("outputs") or [])
    ):
        row = None
    problem = outputs_problem(out, names, layers, row)
    if problem is not None:
        summary.redone.append(f"{source.path}: {problem}; extracted again")
        return None
    return row if row is not None else recovered_row(source, names, layers, rank=summary.rank)


def default_workers(device_type: str) -> int:
    """Decoding threads: half the cores beside a CPU model, all but one beside a GPU."""
    cpus = available_cpus()
    return max(1, cpus // 2 if device_type == "cpu" else cpus - 1)
