"""The interface every output format of a features folder implements, and what they share.

A :class:`Writer` turns one input's features into files under the folder and reads them back.
It never decides names of inputs, resume or settings: the features folder
(``extraction/folder.py``) gives it a *stem* (the output path without suffix, safe to use as a
file name) and a :class:`WriteSpec` (layers, pooling, provenance, step times).

Writes are atomic (temporary file, then rename): a killed run leaves either the old output or
the new one. Nothing is memory-mapped for writing: a full disk is an ``OSError`` (ENOSPC) the
folder reports, never a SIGBUS.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FLOAT32 = np.dtype("<f4")


@dataclass(frozen=True)
class WriteSpec:
    """What every output of one folder shares."""

    layers: tuple[str, ...]
    pool: str | None  # None, "mean" or "max": features reduced over time to (channels,)
    provenance: Mapping[str, Any]  # the folder's settings (features.json)
    times: Callable[[str, int], np.ndarray]  # (layer, steps) -> centre of each step, seconds
    # A piece of a followed stream: each layer's first step is this step of the stream
    # (``times`` counts from it too); empty for a whole input.
    first_steps: Mapping[str, int] = field(default_factory=dict)
    # Pooled over sliding windows: each layer is (windows, channels), ``times`` gives where
    # each window starts, and the provenance holds ``window`` and ``hop`` (seconds).
    windows: bool = False


@dataclass(frozen=True)
class Finding:
    """What :meth:`Writer.check` found of one input's finished outputs."""

    missing: tuple[str, ...] = ()  # requested layers with no output yet (an added layer)
    damage: str | None = None  # why an output present cannot be trusted

    @property
    def complete(self) -> bool:
        return not self.missing and self.damage is None


@dataclass
class LayerStreams:
    """One input's layers written step by step (a long input streamed in chunks)."""

    sinks: dict[str, StepSink] = field(default_factory=dict)

    def add(self, layer: str, steps: np.ndarray) -> None:
        self.sinks[layer].add(steps)


class Writer(ABC):
    """One output format. Subclasses set ``format`` (its ``--format`` name) and ``suffix``."""

    format: str
    suffix: str

    # -- writing --
    @abstractmethod
    def names(self, stem: str, layers: Sequence[str]) -> list[str]:
        """The files (relative to the folder, posix) that hold ``layers`` of one input."""

    @abstractmethod
    def write(
        self,
        out: Path,
        stem: str,
        features: Mapping[str, np.ndarray],
        spec: WriteSpec,
        *,
        source: str = "",
    ) -> None:
        """Write one input's features, already pooled when ``spec.pool`` is set (``source``:
        the input as the user gave it, a path or URL, for formats that record it)."""

    @abstractmethod
    def stream(
        self,
        out: Path,
        stem: str,
        shapes: Mapping[str, tuple[int, int]],
        spec: WriteSpec,
        scratch: Path,
        *,
        source: str = "",
    ) -> contextlib.AbstractContextManager[LayerStreams]:
        """Write one input whose steps come in order, layer by layer (``shapes``: each
        layer's (steps, channels) before pooling); kept only when the block exits normally.
        ``scratch`` is an empty private folder for intermediate files."""

    # -- table formats (many inputs per file) --
    # A per-input format writes each input when asked; these defaults say so. A table format
    # buffers inputs and commits them a part file at a time: the folder records an input done
    # only once ``pending`` is 0 again, calls ``flush`` when the run ends, and ``forget``s
    # inputs about to be computed again so a table never holds an input twice.
    def start(self, out: Path, rank: int, spec: WriteSpec) -> None:  # noqa: B027  (tables only)
        """A run of rank ``rank`` begins writing into ``out`` (its lock is held)."""

    def pending(self) -> int:
        """Inputs written but not yet committed to a complete file."""
        return 0

    def flush(self, out: Path) -> None:  # noqa: B027  (a no-op unless a table format)
        """Commit what :meth:`pending` counts."""

    def forget(self, out: Path, stems: Sequence[str]) -> None:  # noqa: B027  (a no-op unless a table format)
        """Drop any committed outputs of ``stems`` (they are about to be written again)."""

    def copy(self, out: Path, stem: str, to_stem: str, layers: Sequence[str], source: str) -> None:
        """Give ``to_stem`` (another route, ``source``, to the same input) the outputs of
        ``stem``: a hard link or a copy of each file, atomically."""
        for mine, theirs in zip(self.names(stem, layers), self.names(to_stem, layers), strict=True):
            copy_file(out / mine, out / theirs)

    # -- checking, for resume --
    @abstractmethod
    def check(self, out: Path, stem: str, shapes: Mapping[str, Sequence[int] | None]) -> Finding:
        """Whether the outputs of ``stem`` hold each of ``shapes``' layers, complete (and of
        the recorded shape when one is given)."""

    # -- reading --
    # The defaults serve formats with files per input (npy, npz): a file's name says its stem
    # and layer. A table format (many inputs per file) overrides ``layers_in`` and ``find``.
    @abstractmethod
    def parse(self, rel: str) -> tuple[str, str | None] | None:
        """(stem, layer) of a file of this format (layer None: a file holding every layer),
        or None when ``rel`` is not one."""

    @abstractmethod
    def holds(self, path: Path, layer: str) -> bool:
        """Whether the file at ``path`` holds ``layer``."""

    @abstractmethod
    def read(self, path: Path, layer: str, key: str) -> np.ndarray:
        """``layer``'s features of the input ``key`` in the file at ``path``: (time,
        channels), or (channels,) when pooled."""

    def layers_in(self, folder: Path, files: Sequence[str]) -> set[str]:
        """The layers that ``files`` (of this format, relative to ``folder``) name."""
        return {p[1] for rel in files if (p := self.parse(rel)) is not None and p[1] is not None}

    def find(self, folder: Path, files: Sequence[str], layer: str) -> dict[str, Path]:
        """Stem -> the file among ``files`` that holds ``layer`` of that input."""
        found: dict[str, Path] = {}
        for rel in files:
            parsed = self.parse(rel)
            if parsed is None:
                continue
            stem, named = parsed
            if named == layer or (named is None and self.holds(folder / rel, layer)):
                found[stem] = folder / rel
        return found


# -- what the builtin formats share ----------------------------------------------------------
def copy_file(source: Path, target: Path) -> None:
    """Give ``target`` the content of the finished output ``source``: a hard link where the
    file system allows, else a copy; atomically either way."""
    import shutil

    from soundnet_cli.atomic import atomic_path

    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def pooled(features: np.ndarray, pool: str | None) -> np.ndarray:
    """(time, channels) reduced over time by ``pool`` (None: unchanged)."""
    if pool is None:
        return features
    if pool == "mean":
        return features.mean(axis=0, dtype=np.float64).astype(np.float32)
    return features.max(axis=0)


def save_npy(target: str | os.PathLike[str] | BinaryIO, array: np.ndarray) -> None:
    """``array`` as float32 .npy, to a path (as given: no .npy appended) or an open file."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "wb") as handle:
            save_npy(handle, array)
        return
    np.save(target, np.ascontiguousarray(array, dtype=np.float32))


class StepSink:
    """One layer's steps, in order, written to the .npy at ``path`` as they come (plain
    writes, no memory map), or reduced to a running mean or max when pooling."""

    def __init__(self, path: Path, steps: int, channels: int, pool: str | None) -> None:
        self.path, self.steps, self.pool, self.filled = path, steps, pool, 0
        self.handle: BinaryIO | None = None
        if pool is None:
            self.handle = open(path, "wb")  # noqa: SIM115  (closed by finish or close)
            header = {"descr": FLOAT32.str, "fortran_order": False, "shape": (steps, channels)}
            np.lib.format.write_array_header_1_0(self.handle, header)
        self.total = np.zeros(channels, np.float64) if pool == "mean" else None
        self.peak = np.full(channels, -np.inf, np.float32) if pool == "max" else None

    def add(self, part: np.ndarray) -> None:
        if self.handle is not None:
            self.handle.write(np.ascontiguousarray(part, dtype=FLOAT32).data)
        elif self.total is not None:
            self.total += part.sum(axis=0, dtype=np.float64)
        elif self.peak is not None:
            np.maximum(self.peak, part.max(axis=0), out=self.peak)
        self.filled += len(part)

    def finish(self) -> None:
        """Complete the file: checks the step count, writes the pooled vector if pooling."""
        if self.handle is not None:
            self.close()
            if self.filled != self.steps:
                raise ValueError(f"{self.filled} steps written, {self.steps} expected")
        elif self.total is not None:
            save_npy(self.path, (self.total / max(self.filled, 1)).astype(np.float32))
        elif self.peak is not None:
            save_npy(self.path, self.peak)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


@contextlib.contextmanager
def step_sinks(
    paths: Mapping[str, Path], shapes: Mapping[str, tuple[int, int]], pool: str | None
) -> Iterator[LayerStreams]:
    """A :class:`LayerStreams` over one :class:`StepSink` per layer; finished on success."""
    streams = LayerStreams()
    try:
        for layer, path in paths.items():
            steps, channels = shapes[layer]
            streams.sinks[layer] = StepSink(path, steps, channels, pool)
        yield streams
        for sink in streams.sinks.values():
            sink.finish()
    finally:
        for sink in streams.sinks.values():
            sink.close()


def npy_header(handle: Any) -> tuple[tuple[int, ...], int]:
    """(shape, data bytes) of the float32 .npy whose header ``handle`` is at."""
    version = np.lib.format.read_magic(handle)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read(handle)
    if dtype != np.dtype(np.float32) or fortran:
        raise ValueError(f"dtype {dtype}, expected float32")
    return tuple(shape), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
