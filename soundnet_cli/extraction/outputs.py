"""Outputs of `soundnet extract`: names, the setup file, layer writers and the manifest."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from soundnet_cli._version import __version__
from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import SoundnetError, UsageProblem
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


def save_npy(target: str | os.PathLike[str] | BinaryIO, array: np.ndarray) -> None:
    """``array`` as float32 .npy, to a path (as given: no .npy appended) or an open file."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "wb") as handle:
            save_npy(handle, array)
        return
    np.save(target, np.ascontiguousarray(array, dtype=np.float32))


# -- manifest ----------------------------------------------------------------------------------
class FeatureManifest:
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
        """Latest row per output stem, from the manifest then the journal.

        A row that adds layers in their own files keeps the earlier row's other layers (a run
        with ``--layer pool5`` into a folder that holds conv5 features lists both)."""
        merged: dict[str, dict[str, Any]] = {}
        for row in [*self._read(self.path), *self._read(self.journal)]:
            earlier = merged.get(row["key"])
            merged[row["key"]] = _carry_layers(earlier, row) if earlier else row
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


def _carry_layers(earlier: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    if earlier.get("status") != "ok" or row.get("status") != "ok":
        return row
    outputs = list(row.get("outputs") or [])
    layers = dict(row.get("layers") or {})
    old_outputs = earlier.get("outputs") or []
    old_layers = earlier.get("layers") or {}
    if not isinstance(old_layers, dict) or any(name in outputs for name in old_outputs):
        return row  # the same file rewritten (an .npz): it holds only what the new row says
    for name in old_outputs:
        outputs.append(name)
    for layer, info in old_layers.items():
        layers.setdefault(layer, info)
    return {**row, "outputs": outputs, "layers": layers}


# -- checking finished outputs -----------------------------------------------------------------
def npy_problem(path: Path, shape: Sequence[int] | None = None) -> str | None:
    """Why the .npy at ``path`` is not a complete float32 array (of ``shape``), or None."""
    try:
        with open(path, "rb") as handle:
            found, data_bytes = _npy_header(handle)
            start = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    if size != start + data_bytes:
        return f"truncated or padded ({size} bytes, the header asks for {start + data_bytes})"
    if shape is not None and list(found) != list(shape):
        return f"shape {list(found)}, the manifest recorded {list(shape)}"
    return None


def _npy_header(handle: Any) -> tuple[tuple[int, ...], int]:
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


def npz_problem(path: Path, shapes: dict[str, Sequence[int] | None]) -> str | None:
    """Why the .npz at ``path`` lacks a complete member for each of ``shapes``' layers."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for layer, shape in shapes.items():
                if f"{layer}.npy" not in names:
                    return f"no layer {layer!r} inside"
                info = archive.getinfo(f"{layer}.npy")
                with archive.open(info) as handle:
                    found, data_bytes = _npy_header(handle)
                    start = handle.tell()
                if info.file_size != start + data_bytes:
                    return f"layer {layer!r} truncated"
                if shape is not None and list(found) != list(shape):
                    return f"layer {layer!r} has shape {list(found)}, the manifest recorded "
                    f"{list(shape)}"
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"unreadable ({exc})"
    return None


def outputs_problem(
    out: Path, names: Sequence[str], layers: Sequence[str], row: dict[str, Any] | None
) -> str | None:
    """Why outputs found on disk cannot be trusted, or None when each is complete and has the
    shape its manifest row records (with no row: is complete)."""
    recorded = (row or {}).get("layers") or {}
    if not isinstance(recorded, dict):
        recorded = {}

    def shape_of(layer: str) -> Sequence[int] | None:
        info = recorded.get(layer)
        return info.get("shape") if isinstance(info, dict) else None

    if len(names) == 1 and names[0].endswith(".npz"):
        reason = npz_problem(out / names[0], {layer: shape_of(layer) for layer in layers})
        return f"{names[0]}: {reason}" if reason else None
    for name, layer in zip(names, layers, strict=True):
        reason = npy_problem(out / name, shape_of(layer))
        if reason:
            return f"{name}: {reason}"
    return None


def check_distinct(sources: Iterable[Source], names_of: Any) -> None:
    """Refuse, before any work, routes whose outputs would land on one file, or on a folder
    that another route's outputs need (``x.pool5.npy`` the file and ``x.pool5.npy/`` the
    folder)."""
    files: dict[str, str] = {}
    for source in sources:
        for route in source.routes:
            for name in names_of(route.key):
                other = files.setdefault(name, route.file)
                if other != route.file:
                    raise UsageProblem(
                        f"{other} and {route.file} would both be written to {name}; rename one"
                    )
    folders = {parent for name in files for parent in _parents(name)}
    for name, file in files.items():
        if name in folders:
            raise UsageProblem(f"the output {name} of {file} is also a folder of other outputs")


def _parents(name: str) -> Iterator[str]:
    head, _, _ = name.rpartition("/")
    while head:
        yield head
        head, _, _ = head.rpartition("/")


def copy_output(source: Path, target: Path) -> None:
    """Give ``target`` the content of the finished output ``source``: a hard link where the
    file system allows, else a copy; atomically either way."""
    import shutil

    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


# -- one run per folder ------------------------------------------------------------------------
@contextlib.contextmanager
def output_lock(out: Path, rank: int) -> Iterator[None]:
    """Hold ``OUT/.extract-rank<rank>.lock`` for the run: a second run into the same folder
    stops with a clear error instead of deleting the first one's temporary files. The ranks of
    one torchrun job take different locks and share the folder."""
    path = out / f".extract-rank{rank}.lock"
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SoundnetError(
                f"{out} is in use by another `soundnet extract` (rank {rank}); wait for it to "
                "finish, or write to another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


# -- reading a features folder -----------------------------------------------------------------
@dataclass(frozen=True)
class FeatureFile:
    """One input's features for one layer, in a folder written by extract."""

    key: str  # the output stem: the input's path relative to the inputs, without extension
    layer: str
    path: Path  # ``<key>.<layer>.npy``, or ``<key>.npz`` holding every layer
    source: str  # the input path from the manifest (the key when there is no row)


def _recorded_layers(folder: Path) -> list[str]:
    try:
        setup = json.loads((folder / SETUP).read_text(encoding="utf-8"))
        return list(setup.get("layers", {}))
    except (OSError, ValueError, AttributeError):
        return []


def list_feature_files(folder: Path, layer: str | None = None) -> tuple[str, list[FeatureFile]]:
    """The layer's features files under ``folder``, sorted by key, without reading them.

    ``layer`` may be omitted when the folder holds one layer. Hidden files and folders (the
    manifest's journal, a search index) are never taken for features.
    """
    if not folder.is_dir():
        raise UsageProblem(f"{folder}: no such features folder")
    known = _recorded_layers(folder)
    found: dict[str, dict[str, Path]] = {}  # layer -> key -> .npy
    archives: dict[str, Path] = {}  # key -> .npz
    for path in sorted(folder.rglob("*")):
        if path.suffix not in {".npy", ".npz"} or not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if path.suffix == ".npz":
            archives[rel[: -len(".npz")]] = path
            continue
        key, _, name = rel[: -len(".npy")].rpartition(".")
        if key and (not known or name in known):
            found.setdefault(name, {})[key] = path
    if layer is None:
        layers = sorted(found) or known
        if len(layers) != 1:
            what = ", ".join(layers) if layers else "none found"
            raise UsageProblem(f"{folder}: choose a layer with --layer (layers: {what})")
        layer = layers[0]
    chosen = dict(found.get(layer, {}))
    for key, path in archives.items():
        if key not in chosen and _npz_may_hold(path, layer):
            chosen[key] = path
    if not chosen:
        raise UsageProblem(f"{folder}: no features for layer {layer!r} (run `soundnet extract`)")
    rows = FeatureManifest(folder).rows()
    sources = {key: str(row.get("path", key)) for key, row in rows.items()}
    files = [FeatureFile(key, layer, chosen[key], sources.get(key, key)) for key in sorted(chosen)]
    return layer, files


def _npz_may_hold(path: Path, layer: str) -> bool:
    """Whether an archive lists ``layer`` (its names only, nothing inflated); one that cannot
    be read is listed too, so the reader reports it as a failed file instead of the listing
    stopping on it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return f"{layer}.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return True


def read_feature_file(item: FeatureFile) -> np.ndarray:
    """The features of one :class:`FeatureFile`: float32 (time, channels), or (channels,) when
    extract pooled them."""
    if item.path.suffix == ".npz":
        with np.load(item.path, allow_pickle=False) as data:
            return np.asarray(data[item.layer])
    return np.asarray(np.load(item.path, allow_pickle=False))
