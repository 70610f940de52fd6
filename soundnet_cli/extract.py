"""Batch feature extraction over files and directories: resumable, streaming, sharded.

Layout of an output folder ``OUT``::

    OUT/features.json            the run's setup: model, checkpoint sha256, layers, geometry
    OUT/manifest.jsonl           one row per input: path, duration, status, outputs, error
    OUT/<rel>.<layer>.npy        float32 (time, channels); (channels,) with ``pool``
    OUT/<rel>.npz                with ``fmt="npz"``: every layer, ``<layer>_times``, provenance

``<rel>`` is the input's path relative to the common folder of the inputs, without its
extension (with it, where two inputs differ only by extension), so the output mirrors the
input tree. Every output is written to a temporary file and renamed into place, so a file that
exists is complete; a rerun skips inputs whose outputs all exist.

Long inputs are read and resampled in blocks and run through the model in chunks whose inputs
overlap by the receptive field, aligned to the deepest layer's stride; the features equal those
of the whole file at once (see :func:`chunk_plan`). Short inputs are decoded by worker threads
while the model runs, and inputs of equal length are batched (never padded).

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each rank takes every WORLD_SIZE-th input of
the sorted list; rows go to a shared journal under a file lock, and each rank folds the journal
into ``manifest.jsonl`` when it finishes, so the last one leaves the complete manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import math
import os
import sys
import threading
import time
import types
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .atomic import atomic_path
from .audio import AUDIO_EXTENSIONS, MIX_CHOICES, SAMPLE_RATE, SCALE, Mix, decode, to_mono
from .errors import AudioError, SoundnetError, UsageProblem

if TYPE_CHECKING:
    import torch

MANIFEST = "manifest.jsonl"
JOURNAL = ".manifest.journal.jsonl"
LOCK = ".manifest.lock"
SETUP = "features.json"
FORMATS = ("npy", "npz")
POOLS = ("mean", "max")
DEFAULT_CHUNK_SECONDS = 60.0


# -- discovery ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One input file and the output stem it maps to (posix, relative to OUT)."""

    path: Path
    key: str


def _normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _walk(root: Path) -> Iterator[Path]:
    """Every file under ``root``, sorted, following directory symlinks but never twice."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop or a second link to one folder
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def discover(
    paths: Sequence[str | os.PathLike[str]],
    *,
    extensions: Sequence[str] | None = None,
    globs: Sequence[str] | None = None,
) -> list[Source]:
    """Expand files and folders (recursively) into inputs with collision-free output stems.

    In folders a file is kept when its extension is one of ``extensions`` (default: the audio
    extensions) and, if ``globs`` are given, its path relative to the folder or its name matches
    one. Files named explicitly are always kept, so that a bad one is reported.
    """
    exts = _normalise_extensions(extensions) if extensions else AUDIO_EXTENSIONS
    candidates: list[tuple[Path, Path]] = []  # (file, the folder given that holds it)
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for file in _walk(path):
                rel = file.relative_to(path).as_posix()
                if (extensions is not None or not globs) and file.suffix.lower() not in exts:
                    continue
                if globs and not any(
                    fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(file.name, g) for g in globs
                ):
                    continue
                candidates.append((file, path))
        elif path.exists() or path.is_symlink():
            candidates.append((path, path.parent))
        else:
            raise UsageProblem(f"{path}: no such file or folder")
    # One file reached by several routes (links) is read once, by its shortest route.
    found: dict[str, tuple[Path, Path]] = {}
    for file, base in sorted(candidates, key=lambda c: (len(c[0].parts), str(c[0]))):
        found.setdefault(os.path.realpath(file), (file, base))
    if not found:
        return []
    bases = [os.path.abspath(base) for _, base in found.values()]
    common = Path(os.path.commonpath(bases))
    rels = {
        real: Path(os.path.relpath(os.path.abspath(file), common)).as_posix()
        for real, (file, _) in found.items()
    }
    stems = [str(Path(r).with_suffix("")) if Path(r).suffix else r for r in rels.values()]
    clash = {s for s in stems if stems.count(s) > 1}
    sources = []
    for (real, (path, _)), stem in zip(found.items(), stems, strict=True):
        sources.append(Source(path, rels[real] if stem in clash else stem))
    return sorted(sources, key=lambda s: s.key)


def shard(sources: Sequence[Source], rank: int, world_size: int) -> list[Source]:
    """This rank's share: every ``world_size``-th input, starting at ``rank``."""
    return list(sources[rank::world_size])


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise UsageProblem(f"RANK and WORLD_SIZE must be integers ({exc})") from exc
    if world < 1 or not 0 <= rank < world:
        raise UsageProblem(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world


# -- decoding ----------------------------------------------------------------------------------
def _declared_wav_frames(path: Path) -> int | None:
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


def _check_complete(path: Path, frames_read: int, frames_declared: int) -> None:
    declared = frames_declared
    if path.suffix.lower() in {".wav", ".wave"}:
        declared = _declared_wav_frames(path) or frames_declared
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
            raise AudioError(f"{path}: cannot read audio ({_reason(exc)})") from exc
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
                raise AudioError(f"{self.path}: cannot read audio ({_reason(exc)})") from exc
            if len(data) < hi - lo:
                _check_complete(self.path, lo + len(data), self.source_frames)
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


def _reason(exc: BaseException) -> str:
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

    from .audio import resample

    if model is None:
        model = _default_model()
    if optimise:
        from .inference import optimise as make_fast

        model = make_fast(model, layers=layers)
    array = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        array = array[:, 0]
    if array.ndim != 1 or array.size == 0:
        raise AudioError("expected a non-empty waveform shaped (samples,) or (samples, channels)")
    if not np.isfinite(array).all():
        raise AudioError("the waveform contains NaN or infinite samples")
    scaled = resample(array, int(sample_rate), model.sample_rate) * np.float32(SCALE)
    _check_length(model, layers, len(scaled), "the waveform")
    device = next(model.parameters()).device
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
    from .models import load_student

    return load_student("soundnet8", pretrained=True)


# -- outputs -----------------------------------------------------------------------------------
@dataclass
class Setup:
    """What every output of one folder shares; stored as ``features.json``."""

    architecture: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    sample_rate: int
    layers: dict[str, dict[str, int]]
    fmt: str
    pool: str | None
    mix: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "soundnet_cli": __version__,
            "architecture": self.architecture,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "sample_rate": self.sample_rate,
            "layers": self.layers,
            "format": self.fmt,
            "pool": self.pool,
            "mix": self.mix,
            "scale": SCALE,
            "times": "centre of step i = (offset + i * stride + (receptive_field - 1) / 2) "
            "/ sample_rate seconds",
        }

    def compatible(self, other: dict[str, Any]) -> str | None:
        """Why features from ``other`` cannot share a folder with these, or None."""
        for key, mine in (
            ("checkpoint_sha256", self.checkpoint_sha256),
            ("architecture", self.architecture),
            ("format", self.fmt),
            ("pool", self.pool),
            ("mix", self.mix),
        ):
            if other.get(key) != mine:
                return f"{key} was {other.get(key)!r}, now {mine!r}"
        return None


def output_names(key: str, layers: Sequence[str], fmt: str) -> list[str]:
    if fmt == "npz":
        return [f"{key}.npz"]
    return [f"{key}.{layer}.npy" for layer in layers]


class _LayerSink:
    """Collects one layer's steps in order; writes a .npy at ``path`` (memory-mapped when the
    size is known) or keeps a running mean/max when pooling."""

    def __init__(self, path: Path, steps: int, channels: int, pool: str | None) -> None:
        self.pool, self.filled = pool, 0
        self.array: np.memmap[Any, Any] | None = None
        if pool is None:
            self.array = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float32, shape=(steps, channels)
            )
        self.total = np.zeros(channels, np.float64) if pool == "mean" else None
        self.peak = np.full(channels, -np.inf, np.float32) if pool == "max" else None

    def add(self, part: np.ndarray) -> None:
        if self.array is not None:
            self.array[self.filled : self.filled + len(part)] = part
        elif self.total is not None:
            self.total += part.sum(axis=0, dtype=np.float64)
        elif self.peak is not None:
            np.maximum(self.peak, part.max(axis=0), out=self.peak)
        self.filled += len(part)

    def result(self) -> np.ndarray | None:
        if self.total is not None:
            return (self.total / max(self.filled, 1)).astype(np.float32)
        if self.peak is not None:
            return self.peak
        assert self.array is not None
        self.array.flush()
        del self.array
        self.array = None
        return None


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.save would append .npy to the name
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32))


# -- manifest ----------------------------------------------------------------------------------
class Manifest:
    """``manifest.jsonl`` (one row per input, rewritten atomically) fed by an append-only
    journal shared by all ranks under a file lock."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / MANIFEST
        self.journal = out / JOURNAL
        self.lock_path = out / LOCK

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, row: dict[str, Any]) -> None:
        # The leading newline keeps a row whole even after a line cut short by kill -9.
        line = "\n" + json.dumps(row, ensure_ascii=False) + "\n"
        with self._locked(), open(self.journal, "a", encoding="utf-8") as handle:
            handle.write(line)

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        rows = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    row = json.loads(line)
                    if isinstance(row, dict) and "key" in row:
                        rows.append(row)
        return rows

    def rows(self) -> dict[str, dict[str, Any]]:
        """Latest row per output stem, from the manifest then the journal."""
        merged: dict[str, dict[str, Any]] = {}
        for row in [*self._read(self.path), *self._read(self.journal)]:
            merged[row["key"]] = row
        return merged

    def merge(self) -> dict[str, dict[str, Any]]:
        """Fold the journal into ``manifest.jsonl`` (sorted by stem); empty the journal."""
        with self._locked():
            merged = self.rows()
            with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
                for key in sorted(merged):
                    handle.write(json.dumps(merged[key], ensure_ascii=False) + "\n")
            with contextlib.suppress(FileNotFoundError):
                self.journal.unlink()
        return merged


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Failure:
    path: str
    error: str


@dataclass
class Progress:
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
        }


@dataclass
class _Decoded:
    source: Source
    mono: np.ndarray | None = None  # decoded at once, at the source rate (resampled in batches)
    rate: int = 0
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
        progress: Callable[[Progress], None] | None,
        summary: ExtractSummary,
        manifest: Manifest,
        rank: int,
    ) -> None:
        self.model, self.layers, self.out, self.setup = model, layers, out, setup
        self.fmt, self.pool, self.mix = fmt, pool, mix
        self.batch_size, self.workers = max(1, batch_size), max(1, workers)
        self.chunk_samples = int(chunk_seconds * model.sample_rate)
        self.progress, self.summary, self.manifest, self.rank = progress, summary, manifest, rank
        self.device = next(model.parameters()).device
        self.infos = {name: model.feature(name) for name in layers}
        self.started = time.perf_counter()
        self._resamplers: dict[int, Any] = {}
        self.done = 0
        self.total = 0

    # -- decode stage (worker threads) --
    def _decode(self, source: Source) -> _Decoded:
        try:
            import soundfile as sf

            path = source.path
            if not path.is_file():
                raise AudioError(
                    f"{path}: no such file" + (" (broken link)" if path.is_symlink() else "")
                )
            if path.stat().st_size == 0:
                raise AudioError(f"{path}: empty file (0 bytes)")
            try:
                info = sf.info(str(path))
            except Exception as exc:
                raise AudioError(f"{path}: cannot read audio ({_reason(exc)})") from exc
            if info.frames > 0 and info.samplerate > 0:
                seconds = info.frames / info.samplerate
                if seconds * self.model.sample_rate > self.chunk_samples:
                    return _Decoded(source, long=True)
            data, rate = decode(path)
            frames_read = len(data)
            _check_complete(path, frames_read, info.frames)
            mono = to_mono(data, self.mix)
            del data
            _check_length(self.model, self.layers, resampled_length(frames_read, rate), str(path))
            return _Decoded(source, mono=mono, rate=rate)
        except SoundnetError as exc:
            return _Decoded(source, error=str(exc))
        except Exception as exc:  # a decoder crash on a hostile file must not stop the run
            return _Decoded(source, error=f"{source.path}: {type(exc).__name__}: {exc}")

    def run(self, sources: Sequence[Source]) -> None:
        self.total = len(sources)
        # Import torchaudio here: its first import is not safe in several threads at once.
        import torchaudio.functional  # noqa: F401
        import torchaudio.transforms  # noqa: F401

        groups: dict[tuple[int, int], list[_Decoded]] = {}
        window = self.workers * 2 + self.batch_size
        queue: deque[Future[_Decoded]] = deque()
        pending = iter(sources)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="soundnet-decode") as pool:
            try:
                while True:
                    while len(queue) < window:
                        source = next(pending, None)
                        if source is None:
                            break
                        queue.append(pool.submit(self._decode, source))
                    if not queue:
                        break
                    item = queue.popleft().result()
                    if item.error is not None:
                        self._failed(item.source, item.error)
                    elif item.long:
                        self._long(item.source)
                    else:
                        assert item.mono is not None
                        shape = (item.rate, len(item.mono))
                        group = groups.setdefault(shape, [])
                        group.append(item)
                        if len(group) >= self.batch_size:
                            self._batch(groups.pop(shape))
                        elif sum(len(g) for g in groups.values()) > 4 * self.batch_size:
                            self._batch(groups.pop(max(groups, key=lambda n: len(groups[n]))))
                for group in list(groups.values()):
                    self._batch(group)
            finally:
                for future in queue:
                    future.cancel()

    # -- compute stage (main thread) --
    def _resampler(self, rate: int) -> Any:
        """The cached windowed-sinc resampler for ``rate`` (that of ``audio.resample``)."""
        if rate not in self._resamplers:
            self._resamplers[rate] = SincResampler(rate, self.model.sample_rate, self.device)
        return self._resamplers[rate]

    def _batch(self, items: list[_Decoded]) -> None:
        """Resample (here, batched: small torch ops in decode threads would fight the model's
        threads) and run one batch of equal-length inputs."""
        import torch

        rate = items[0].rate
        waves = np.stack([i.mono for i in items if i.mono is not None])
        try:
            with torch.inference_mode():
                batch = torch.from_numpy(waves).to(self.device)
                if rate != self.model.sample_rate:
                    batch = self._resampler(rate)(batch)
                taps = self.model.forward_features(batch * SCALE, self.layers)
            arrays = {n: t.transpose(1, 2).float().cpu().numpy() for n, t in taps.items()}
        except (SoundnetError, RuntimeError) as exc:
            if len(items) > 1:  # find the bad one (or run out of memory less): one at a time
                for item in items:
                    self._batch([item])
                return
            self._failed(items[0].source, f"{items[0].source.path}: {_reason(exc)}")
            return
        for index, item in enumerate(items):
            self._write_whole(item, {n: a[index] for n, a in arrays.items()})

    def _write_whole(self, item: _Decoded, features: dict[str, np.ndarray]) -> None:
        assert item.mono is not None
        shapes = {n: f.shape for n, f in features.items()}
        targets = self._targets(item.source)
        if self.fmt == "npz":
            with atomic_path(targets[0]) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **self._npz_arrays(features, shapes))  # type: ignore[arg-type]
        else:
            for name, target in zip(self.layers, targets, strict=True):
                with atomic_path(target) as tmp:
                    _save_npy(tmp, _pooled(features[name], self.pool))
        self._succeeded(item.source, len(item.mono) / item.rate, shapes)

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
                folder = stack.enter_context(_scratch_folder(self.out, self.rank))
                scratch = {n: folder / f"{n}.npy" for n in self.layers}
            else:
                scratch = {
                    n: stack.enter_context(atomic_path(t))
                    for n, t in zip(self.layers, targets, strict=True)
                }
            sinks = {
                n: _LayerSink(scratch[n], shapes[n][0], shapes[n][1], self.pool)
                for n in self.layers
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
                    sinks[name].add(steps)
            for name, sink in sinks.items():
                pooled = sink.result()
                if pooled is not None:
                    _save_npy(scratch[name], pooled)
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
                "first_time": round(step_times(self.infos[name], 1, self.model.sample_rate)[0], 9),
                "step_seconds": self.infos[name].stride / self.model.sample_rate,
            }
            for name in self.layers
        }
        self.manifest.append(row)
        self.summary.extracted += 1
        self.summary.audio_seconds += duration
        self._advance(source, "ok")

    def _failed(self, source: Source, error: str) -> None:
        row = self._row(source, "failed", None)
        row["error"] = error
        self.manifest.append(row)
        self.summary.failures.append(Failure(str(source.path), error))
        self._advance(source, "failed")

    def _advance(self, source: Source, status: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(
                Progress(
                    self.total,
                    self.done,
                    self.summary.audio_seconds,
                    time.perf_counter() - self.started,
                    str(source.path),
                    status,
                )
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


SCRATCH = ".scratch-rank"


@contextlib.contextmanager
def _scratch_folder(out: Path, rank: int) -> Iterator[Path]:
    """A private folder for one input's intermediate files, emptied afterwards."""
    import shutil

    folder = out / f"{SCRATCH}{rank}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _model_identity(model: Any) -> tuple[str | None, str | None]:
    from .checkpoints import file_sha256

    info = getattr(model, "checkpoint_info", None)
    if info is None:
        return None, None
    return str(info.path), file_sha256(info.path)


def _remove_stale_temporaries(out: Path, targets: Iterable[Path]) -> None:
    """Delete temporary files a killed run left beside this rank's outputs."""
    wanted: dict[Path, set[str]] = {}
    for target in targets:
        wanted.setdefault(target.parent, set()).add(target.name)
    for folder, names in wanted.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if (
                entry.name.startswith(".")
                and entry.name.endswith(".part")
                and entry.name[1:].rsplit(".", 2)[0] in names
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


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
    progress: Callable[[Progress], None] | None = None,
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
    if chunk_seconds <= 0:
        raise UsageProblem("chunk seconds must be positive")
    if model is None:
        model = _default_model()
    for name in layers:
        model.feature(name)  # LayerError (a usage error) for unknown layers
    if rank is None or world_size is None:
        rank, world_size = distributed_rank()
    out = Path(out)
    started = time.perf_counter()
    sources = discover(paths, extensions=extensions, globs=globs)
    if not sources:
        raise UsageProblem("no audio files found in the given paths")
    mine = shard(sources, rank, world_size)
    checkpoint, sha = _model_identity(model)
    setup = Setup(
        architecture=str(getattr(model, "architecture", type(model).__name__)),
        checkpoint=checkpoint,
        checkpoint_sha256=sha,
        sample_rate=int(model.sample_rate),
        layers={
            name: {
                "channels": model.feature(name).channels,
                "stride": model.feature(name).stride,
                "receptive_field": model.feature(name).receptive_field,
                "offset": model.feature(name).offset,
            }
            for name in layers
        },
        fmt=fmt,
        pool=pool,
        mix=mix,
    )
    out.mkdir(parents=True, exist_ok=True)
    _record_setup(out, setup, overwrite)
    manifest = Manifest(out)
    previous = manifest.rows()
    summary = ExtractSummary(out, total=len(mine), rank=rank, world_size=world_size)
    todo = []
    for source in mine:
        names = output_names(source.key, layers, fmt)
        if not overwrite and all((out / n).is_file() for n in names):
            summary.skipped += 1
            row = previous.get(source.key)
            if (
                row is None
                or row.get("status") != "ok"
                or set(row.get("outputs", [])) != set(names)
            ):
                manifest.append(_recovered_row(source, names, layers, rank))
        else:
            todo.append(source)
    _remove_stale_temporaries(
        out, (out / n for s in todo for n in output_names(s.key, layers, fmt))
    )
    if optimise:
        from .inference import optimise as make_fast

        model = make_fast(
            model, layers=layers, precision=precision, compile=compile, announce=announce
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
        workers=workers or default_workers(next(model.parameters()).device.type),
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
        # One busy thread per core: the model's threads plus the decoding ones. More, and the
        # model's OpenMP threads wait on descheduled peers (3-4x slower on 2 cores).
        torch.set_num_threads(max(1, available_cpus() - extractor.workers))
    try:
        extractor.run(todo)
    finally:
        torch.set_num_threads(previous_threads)
        manifest.merge()
        summary.elapsed = time.perf_counter() - started
    return summary


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(device_type: str) -> int:
    """Decoding threads: half the cores beside a CPU model, all but one beside a GPU."""
    cpus = available_cpus()
    return max(1, cpus // 2 if device_type == "cpu" else cpus - 1)


def _recovered_row(
    source: Source, names: list[str], layers: list[str], rank: int
) -> dict[str, Any]:
    """A manifest row for outputs found complete on disk without one (a run killed before its
    manifest was written)."""
    duration = None
    with contextlib.suppress(Exception):
        import soundfile as sf

        duration = round(sf.info(str(source.path)).duration, 6)
    return {
        "path": str(source.path),
        "key": source.key,
        "status": "ok",
        "duration": duration,
        "outputs": names,
        "error": None,
        "rank": rank,
    }


def _record_setup(out: Path, setup: Setup, overwrite: bool) -> None:
    target = out / SETUP
    mine = setup.as_dict()
    if target.is_file() and not overwrite:
        try:
            existing = json.loads(target.read_text(encoding="utf-8"))
        except ValueError:
            existing = None
        if isinstance(existing, dict):
            reason = setup.compatible(existing)
            if reason is not None:
                raise UsageProblem(
                    f"{out} holds features from a different setup ({reason}); "
                    "use another --out, or --overwrite to redo every input"
                )
            mine["layers"] = {**existing.get("layers", {}), **mine["layers"]}
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(mine, indent=2) + "\n", encoding="utf-8")


class _CallableModule(types.ModuleType):
    """``soundnet_cli.extract`` names both this module and its main function; once the module
    is imported the package attribute is the module, so calling it runs :func:`extract`."""

    def __call__(self, *args: Any, **kwargs: Any) -> ExtractSummary:
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
