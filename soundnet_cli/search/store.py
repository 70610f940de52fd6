"""A search index on disk, inside the features folder it indexes, and its incremental update.

Layout (``NAME`` is ``<layer>-<pool>``)::

    FEATURES/.search/NAME.json          the description; names the current generation
    FEATURES/.search/NAME.<generation>/
        vectors.npy                     float32 (files, channels), unit rows, in entries' order
        entries.jsonl                   one row per file: key, source, file, mtime_ns, size
        ivf.faiss                       the approximate index (above the exact-search limit)

An update writes a new generation folder and then replaces the description in one rename, so
a reader sees the old index or the new one, never half of each; older generations are removed
afterwards. The folder is hidden, so readers of the features folder never take it for features.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import SoundnetError, UsageProblem, reason
from soundnet_cli.search.vectors import (
    BLOCK_ROWS,
    IvfIndex,
    IvfSettings,
    exact_search,
    normalise,
)

SEARCH_DIR = ".search"
FORMAT_VERSION = 1
EXACT_LIMIT = 100_000  # below this many files a scan is fast enough and exact
METHODS = ("auto", "exact", "approximate")
RETRAIN_GROWTH = 4  # retrain the cells once the index holds 4x the rows they were trained on
VECTORS, ENTRIES, IVF = "vectors.npy", "entries.jsonl", "ivf.faiss"
HASH_BLOCK = 16 * 2**20
# Files up to this size are checked against their sha256 on every open (about 0.1 s); larger
# ones (a million vectors is 1 GB) only when an update opens them, so that a query stays fast:
# their dtype, shape, size and finite scores are still checked on every open.
CHECKSUM_ON_OPEN = 256 * 2**20

log = logging.getLogger(__name__)


class DamagedIndex(SoundnetError):
    """A search index whose stored files do not match its description."""


@dataclass(frozen=True)
class Entry:
    """One indexed file: its key in the features folder and what its features file was."""

    key: str
    source: str  # the input path recorded by extract (the key when unknown)
    file: str  # the features file, relative to the features folder
    mtime_ns: int
    size: int

    def same_file(self, other: Entry) -> bool:
        return (self.file, self.mtime_ns, self.size) == (other.file, other.mtime_ns, other.size)


@dataclass
class Description:
    layer: str
    pool: str
    channels: int
    count: int
    kind: str  # "exact" or "approximate"
    model: dict[str, Any]  # architecture, checkpoint, checkpoint_sha256 from features.json
    generation: str
    built_at: float
    ivf: IvfSettings | None = None
    # sha256 of vectors.npy, entries.jsonl and ivf.faiss (absent in older indexes)
    checksums: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ivf"] = self.ivf.as_dict() if self.ivf else None
        return {"version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Description:
        if data.get("version") != FORMAT_VERSION:
            raise SoundnetError(
                f"search index format {data.get('version')!r} is not {FORMAT_VERSION}; "
                "rebuild it with `soundnet search index --rebuild`"
            )
        ivf = data.get("ivf")
        return cls(
            layer=str(data["layer"]),
            pool=str(data["pool"]),
            channels=int(data["channels"]),
            count=int(data["count"]),
            kind=str(data["kind"]),
            model=dict(data.get("model") or {}),
            generation=str(data["generation"]),
            built_at=float(data["built_at"]),
            ivf=IvfSettings.from_dict(ivf) if ivf else None,
            checksums={str(k): str(v) for k, v in (data.get("checksums") or {}).items()},
        )


def index_name(layer: str, pool: str) -> str:
    return f"{layer}-{pool}"


def _description_path(root: Path, name: str) -> Path:
    return root / SEARCH_DIR / f"{name}.json"


class StoredIndex:
    """An index opened for queries: entries, memory-mapped vectors, the approximate index.

    Opening verifies the stored files against the description (entries' count and fields,
    the vectors' dtype, shape and size, and the files' sha256 when recorded: see
    ``CHECKSUM_ON_OPEN``), so a damaged index is refused, naming the file and how to rebuild
    it, before it answers anything.
    """

    def __init__(self, root: Path, description: Description, *, thorough: bool = False) -> None:
        self.root, self.description = root, description
        self.thorough = thorough  # every checksum, whatever the files' size (updates)
        self.folder = root / SEARCH_DIR / description.generation
        self.entries = self._verified_entries()
        self._check_vectors_file()
        self._vectors: np.ndarray | None = None
        self._ivf: IvfIndex | None = None
        self._rows: dict[str, int] | None = None

    def damaged(self, name: str, why: str) -> DamagedIndex:
        d = self.description
        return DamagedIndex(
            f"{self.folder / name}: the search index is damaged ({why}); rebuild it with "
            f"`soundnet search index {self.root} --layer {d.layer} --pool {d.pool} --rebuild`"
        )

    def _verified_entries(self) -> list[Entry]:
        path = self.folder / ENTRIES
        if not path.is_file():
            raise self.damaged(ENTRIES, "missing")
        self._check_checksum(ENTRIES)
        try:
            entries = list(_read_entries(path))
        except (ValueError, TypeError, KeyError) as exc:
            raise self.damaged(ENTRIES, str(exc)) from exc
        if len(entries) != self.description.count:
            raise self.damaged(
                ENTRIES, f"{len(entries)} entries, the description says {self.description.count}"
            )
        return entries

    def _check_vectors_file(self) -> None:
        path = self.folder / VECTORS
        d = self.description
        try:
            with open(path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read(handle)
                start = handle.tell()
            size = path.stat().st_size
        except FileNotFoundError:
            raise self.damaged(VECTORS, "missing") from None
        except (OSError, ValueError) as exc:
            raise self.damaged(VECTORS, f"unreadable: {exc}") from exc
        if dtype != np.dtype(np.float32) or fortran:
            raise self.damaged(VECTORS, f"dtype {dtype}, not float32")
        if tuple(shape) != (d.count, d.channels):
            raise self.damaged(
                VECTORS, f"shape {list(shape)}, the description says [{d.count}, {d.channels}]"
            )
        if size != start + 4 * d.count * d.channels:
            raise self.damaged(
                VECTORS, f"{size} bytes, its header asks for {start + 4 * d.count * d.channels}"
            )
        self._check_checksum(VECTORS)

    def load_ivf(self, settings: IvfSettings) -> IvfIndex:
        """The approximate index, checked against its recorded sha256 before faiss reads it."""
        if not (self.folder / IVF).is_file():
            raise self.damaged(IVF, "missing")
        self._check_checksum(IVF)
        try:
            ivf = IvfIndex.load(self.folder / IVF, settings)
        except RuntimeError as exc:  # faiss reports a malformed file as a RuntimeError
            raise self.damaged(IVF, reason(exc, "first")) from exc
        if ivf.count != self.description.count:
            why = f"{ivf.count} vectors, the description says {self.description.count}"
            raise self.damaged(IVF, why)
        return ivf

    def _check_checksum(self, name: str) -> None:
        expected = self.description.checksums.get(name)
        path = self.folder / name
        if not expected or (path.stat().st_size > CHECKSUM_ON_OPEN and not self.thorough):
            return
        if file_digest(path) != expected:
            raise self.damaged(name, "its sha256 is not the one recorded when it was written")

    @classmethod
    def open(
        cls, root: Path, layer: str, pool: str, *, thorough: bool = False
    ) -> StoredIndex | None:
        path = _description_path(root, index_name(layer, pool))
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            description = Description.from_dict(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DamagedIndex(
                f"{path}: not a search index description ({exc}); rebuild it with "
                f"`soundnet search index {root} --layer {layer} --pool {pool} --rebuild`"
            ) from exc
        return cls(root, description, thorough=thorough)

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = np.load(self.folder / VECTORS, mmap_mode="r")
        return self._vectors

    def row_of(self, key: str) -> int:
        if self._rows is None:
            self._rows = {entry.key: row for row, entry in enumerate(self.entries)}
        row = self._rows.get(key)
        if row is None:
            raise UsageProblem(
                f"{key!r} is not in the index (keys are the features' paths "
                "relative to the folder, without the layer and extension)"
            )
        return row

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and rows, best first, for unit-length ``queries`` (queries, channels)."""
        if queries.shape[-1] != self.description.channels:
            raise UsageProblem(
                f"the query has {queries.shape[-1]} channels, the index {self.description.channels}"
            )
        if self.description.kind == "exact" or self.description.ivf is None:
            scores, rows = exact_search(self.vectors, queries, k)
        else:
            if self._ivf is None:
                self._ivf = self.load_ivf(self.description.ivf)
            scores, rows = self._ivf.search(queries, k)
        if not np.isfinite(scores).all():  # an index written before checksums were kept
            raise self.damaged(VECTORS, "it holds NaN or infinite values")
        return scores, rows


def file_digest(path: Path) -> str:
    """The sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _read_entries(path: Path) -> Iterator[Entry]:
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise TypeError("not an object")
                    yield Entry(
                        key=str(row["key"]),
                        source=str(row["source"]),
                        file=str(row["file"]),
                        mtime_ns=int(row["mtime_ns"]),
                        size=int(row["size"]),
                    )
                except (ValueError, TypeError, KeyError) as exc:
                    raise ValueError(f"line {number}: {type(exc).__name__}: {exc}") from None


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """One update of an index at a time (two `search index` runs on one folder queue up)."""
    folder = root / SEARCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class UpdateSummary:
    """What ``update_index`` did."""

    name: str
    kind: str
    count: int
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    rebuilt: bool = False
    recall_at_10: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.name,
            "kind": self.kind,
            "count": self.count,
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "rebuilt": self.rebuilt,
            "calibrated_recall_at_10": self.recall_at_10,
            "failed": len(self.failures),
            "failures": [{"key": k, "error": e} for k, e in self.failures],
            "seconds": round(self.seconds, 3),
        }


def choose_kind(method: str, count: int, exact_limit: int = EXACT_LIMIT) -> str:
    if method not in METHODS:
        raise UsageProblem(
            f"the index method must be one of {', '.join(METHODS)}, not {method!r}",
            parameter="method",
        )
    if method == "auto":
        return "exact" if count < exact_limit else "approximate"
    return method


def update_index(
    root: Path,
    layer: str,
    pool: str,
    listing: Sequence[Entry],
    load: Callable[[Entry], np.ndarray],
    model: dict[str, Any],
    *,
    method: str = "auto",
    rebuild: bool = False,
    exact_limit: int = EXACT_LIMIT,
    progress: Callable[[int, int], None] | None = None,
) -> UpdateSummary:
    """Bring the index of ``root`` in line with ``listing`` (the feature files there now).

    Files whose features file is unchanged (same path, size and mtime) keep their vector;
    new or changed ones are read with ``load`` (one pooled vector each; a file that fails is
    recorded and left out); files gone from ``listing`` leave the index. A different model, a
    different channel count or ``rebuild`` starts from scratch.
    """
    started = time.perf_counter()
    name = index_name(layer, pool)
    with _locked(root, name):
        old = None if rebuild else _open_or_rebuild(root, layer, pool)
        if old is not None and _model_changed(old.description.model, model):
            old = None
        summary, kept, fresh = _plan(name, old, listing)
        new_vectors, new_entries = _load_fresh(fresh, load, summary, progress)
        if old is not None and new_vectors and len(new_vectors[0]) != old.description.channels:
            # Another layer shape under the same name (re-extracted): index every file anew.
            old = None
            summary, kept, fresh = _plan(name, None, listing)
            new_vectors, new_entries = _load_fresh(fresh, load, summary, None)
        _count_failures(summary, old)
        count = len(kept) + len(new_entries)
        kind = choose_kind(method, count, exact_limit)
        summary.count, summary.kind = count, kind
        unchanged = not new_entries and summary.removed == 0 and summary.changed == 0
        if old is not None and unchanged and old.description.kind == kind:
            ivf = old.description.ivf
            summary.recall_at_10 = ivf.recall_at_10 if ivf else None
            summary.seconds = time.perf_counter() - started
            return summary
        if count == 0:
            raise UsageProblem(f"{root}: no {layer} features could be indexed")
        channels = len(new_vectors[0]) if new_vectors else old.description.channels  # type: ignore[union-attr]
        generation = f"{name}.{uuid.uuid4().hex[:12]}"
        folder = root / SEARCH_DIR / generation
        folder.mkdir(parents=True)
        try:
            vectors = _write_vectors(folder, old, kept, new_vectors, channels)
            _write_entries(folder, [e for _, e in kept] + new_entries)
            ivf = None
            if kind == "approximate":
                appended = old is not None and len(kept) == old.description.count
                ivf = _approximate(folder, old, vectors, appended, len(kept))
                summary.recall_at_10 = ivf.recall_at_10
            names = (VECTORS, ENTRIES, IVF) if ivf is not None else (VECTORS, ENTRIES)
            checksums = {name: file_digest(folder / name) for name in names}
            description = Description(
                layer, pool, channels, count, kind, model, generation, time.time(), ivf, checksums
            )
            with atomic_path(_description_path(root, name)) as tmp:
                tmp.write_text(json.dumps(description.as_dict(), indent=2) + "\n", "utf-8")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        _remove_other_generations(root, name, generation)
    summary.seconds = time.perf_counter() - started
    return summary


def _open_or_rebuild(root: Path, layer: str, pool: str) -> StoredIndex | None:
    """The index to update, or None (build anew) when it is damaged: updating is rebuilding."""
    try:
        return StoredIndex.open(root, layer, pool, thorough=True)
    except DamagedIndex as exc:
        log.warning("%s; building it anew", str(exc).split("; rebuild it")[0])
        return None


def _plan(
    name: str, old: StoredIndex | None, listing: Sequence[Entry]
) -> tuple[UpdateSummary, list[tuple[int, Entry]], list[Entry]]:
    """Which old rows stay (in their old order, so an index that only grew is appended to) and
    which files must be read."""
    previous = {e.key: (row, e) for row, e in enumerate(old.entries)} if old else {}
    kept: list[tuple[int, Entry]] = []
    fresh: list[Entry] = []
    summary = UpdateSummary(name, "exact", 0, rebuilt=old is None)
    for entry in sorted(listing, key=lambda e: e.key):
        found = previous.get(entry.key)
        if found is not None and found[1].same_file(entry):
            kept.append(found)
        else:
            fresh.append(entry)
            summary.changed += found is not None
            summary.added += found is None
    kept.sort(key=lambda pair: pair[0])
    summary.unchanged = len(kept)
    summary.removed = len(previous) - len(kept) - summary.changed
    return summary, kept, fresh


def _count_failures(summary: UpdateSummary, old: StoredIndex | None) -> None:
    """A file that could not be read is neither added nor changed: it is left out (and if it
    was indexed before, removed)."""
    before = {e.key for e in old.entries} if old is not None else set()
    for key, _ in summary.failures:
        if key in before:
            summary.changed -= 1
            summary.removed += 1
        else:
            summary.added -= 1


def _model_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = ("architecture", "checkpoint_sha256")
    return any(old.get(k) != new.get(k) for k in keys)


def _load_fresh(
    fresh: list[Entry],
    load: Callable[[Entry], np.ndarray],
    summary: UpdateSummary,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[np.ndarray], list[Entry]]:
    vectors: list[np.ndarray] = []
    entries: list[Entry] = []
    for done, entry in enumerate(fresh, start=1):
        try:
            vector = np.asarray(load(entry), dtype=np.float32).reshape(-1)
            if vectors and vector.shape != vectors[0].shape:
                raise SoundnetError(
                    f"{vector.shape[0]} channels where other files have {vectors[0].shape[0]}"
                )
            if not np.isfinite(vector).all():
                raise SoundnetError("features contain NaN or infinite values")
        except (
            SoundnetError,
            OSError,
            ValueError,
            EOFError,
            MemoryError,
            zipfile.BadZipFile,
        ) as exc:
            summary.failures.append((entry.key, str(exc) or type(exc).__name__))
        else:
            vectors.append(vector)
            entries.append(entry)
        if progress is not None:
            progress(done, len(fresh))
    return vectors, entries


def _write_vectors(
    folder: Path,
    old: StoredIndex | None,
    kept: list[tuple[int, Entry]],
    new_vectors: list[np.ndarray],
    channels: int,
) -> np.ndarray:
    count = len(kept) + len(new_vectors)
    out = np.lib.format.open_memmap(
        folder / VECTORS, mode="w+", dtype=np.float32, shape=(count, channels)
    )
    if old is not None and kept:
        rows = np.fromiter((r for r, _ in kept), dtype=np.int64, count=len(kept))
        for start in range(0, len(rows), BLOCK_ROWS):
            part = rows[start : start + BLOCK_ROWS]
            out[start : start + len(part)] = old.vectors[part]
    for start in range(0, len(new_vectors), BLOCK_ROWS):
        block = normalise(np.stack(new_vectors[start : start + BLOCK_ROWS]))
        out[len(kept) + start : len(kept) + start + len(block)] = block
    out.flush()
    return out


def _write_entries(folder: Path, entries: list[Entry]) -> None:
    with open(folder / ENTRIES, "w", encoding="utf-8") as handle:
        for entry in entries:
            handle.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")


def _approximate(
    folder: Path, old: StoredIndex | None, vectors: np.ndarray, appended_only: bool, kept: int
) -> IvfSettings:
    """The approximate index for ``vectors``: the old one extended when rows were only added,
    its cells reused while the index has not outgrown them, else trained anew."""
    settings = old.description.ivf if old is not None else None
    reusable = (
        old is not None
        and settings is not None
        and len(vectors) <= RETRAIN_GROWTH * settings.trained_rows
    )
    ivf: IvfIndex | None = None
    if reusable:
        assert old is not None and settings is not None
        try:
            ivf = old.load_ivf(settings)
        except DamagedIndex as exc:
            log.warning("%s; training it anew", str(exc).split("; rebuild it")[0])
    if ivf is not None:
        if appended_only:
            ivf.add(vectors[kept:], first_id=kept)
        else:
            ivf.clear()
            ivf.add(vectors, first_id=0)
    else:
        ivf = IvfIndex.train(vectors)
        ivf.add(vectors, first_id=0)
    settings = ivf.calibrate(vectors)
    ivf.save(folder / IVF)
    return settings


def _remove_other_generations(root: Path, name: str, current: str) -> None:
    for path in (root / SEARCH_DIR).glob(f"{name}.*"):
        if path.is_dir() and path.name != current:
            shutil.rmtree(path, ignore_errors=True)
