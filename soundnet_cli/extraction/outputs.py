"""Outputs of `soundnet extract`: names, the setup file, layer writers and the manifest."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli import __version__
from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import UsageProblem
from soundnet_cli.extraction.inputs import Source
from soundnet_cli.media.audio import SCALE

MANIFEST = "manifest.jsonl"
JOURNAL = ".manifest.journal.jsonl"
LOCK = ".manifest.lock"
SETUP = "features.json"
SCRATCH = ".scratch-rank"


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


class LayerSink:
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


def save_npy(path: Path, array: np.ndarray) -> None:
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


@contextlib.contextmanager
def scratch_folder(out: Path, rank: int) -> Iterator[Path]:
    """A private folder for one input's intermediate files, emptied afterwards."""
    import shutil

    folder = out / f"{SCRATCH}{rank}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_temporaries(out: Path, targets: Iterable[Path], rank: int) -> None:
    """Delete temporary files a killed run left beside this rank's outputs, and its scratch."""
    import shutil

    shutil.rmtree(out / f"{SCRATCH}{rank}", ignore_errors=True)
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


def recovered_row(source: Source, names: list[str], layers: list[str], rank: int) -> dict[str, Any]:
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


def record_setup(out: Path, setup: Setup, overwrite: bool) -> None:
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
