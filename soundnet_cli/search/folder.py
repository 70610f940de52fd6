"""Search over a folder written by `soundnet extract`: index its files, query by key or audio.

Each file is one vector: its layer's features pooled over time (mean or max), unit length.
The index lives in the folder (see :mod:`soundnet_cli.search.store`) and follows it: a rerun
of :func:`index_features` reads only files added or re-extracted since the last one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.errors import AudioError, SoundnetError, UsageProblem
from soundnet_cli.extraction.folder import (
    MANIFEST,
    SETUP,
    FeatureFile,
    FeatureManifest,
    list_feature_files,
    read_feature_file,
)
from soundnet_cli.extraction.writers.npy import npy_problem
from soundnet_cli.extraction.writers.npz import npz_problem
from soundnet_cli.search.store import (
    EXACT_LIMIT,
    Entry,
    StoredIndex,
    UpdateSummary,
    update_index,
)
from soundnet_cli.search.vectors import check_k, normalise

POOLS = ("mean", "max")
POOL_BLOCK_BYTES = 16 * 2**20  # a features file is pooled this many bytes at a time


@dataclass
class Hit:
    key: str
    source: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "path": self.source, "score": round(self.score, 6)}


@dataclass
class QueryResult:
    query: str  # the key or the audio file asked about
    hits: list[Hit]
    index: str
    kind: str
    stale: bool  # the folder changed after the index was built

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "index": self.index,
            "kind": self.kind,
            "stale": self.stale,
            "results": [{"rank": i + 1, **h.as_dict()} for i, h in enumerate(self.hits)],
        }


def read_setup(folder: Path) -> dict[str, Any]:
    """The folder's ``features.json`` (what extract recorded: model, layers, pool, mix)."""
    path = folder / SETUP
    if not folder.is_dir():
        raise UsageProblem(f"{folder}: no such features folder")
    if not path.is_file():
        raise UsageProblem(f"{folder}: no {SETUP}; is it a folder written by `soundnet extract`?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SoundnetError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise SoundnetError(f"{path}: not a features description")
    return data


def resolve_pool(setup: dict[str, Any], pool: str | None) -> str:
    """The pooling the index uses: the folder's own when extract pooled, else ``pool`` (mean)."""
    extracted = setup.get("pool")
    if extracted:
        if pool is not None and pool != extracted:
            raise UsageProblem(
                f"these features were pooled by extract ({extracted}); pooling by {pool} cannot "
                "be applied to them",
                parameter="pool",
            )
        return str(extracted)
    chosen = pool or "mean"
    if chosen not in POOLS:
        raise UsageProblem(
            f"pooling must be one of {', '.join(POOLS)}, not {chosen!r}", parameter="pool"
        )
    return chosen


def pool_features(array: np.ndarray, pool: str) -> np.ndarray:
    """One vector from (time, channels) features (a (channels,) vector is already pooled)."""
    if array.ndim == 1:
        return array.astype(np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise SoundnetError(f"expected (time, channels) features, got shape {array.shape}")
    if pool == "max":
        return array.max(axis=0).astype(np.float32)
    return array.mean(axis=0, dtype=np.float64).astype(np.float32)


def pool_file(path: Path, layer: str, pool: str, shape: Sequence[int] | None = None) -> np.ndarray:
    """One pooled vector from a features file, checked before it is read: a float32 array
    whose header agrees with the bytes stored (and with ``shape``, the manifest's, when known),
    read a block of rows at a time, so a file's memory is bounded whatever its header claims
    and however well it compresses."""
    if path.suffix == ".npz":
        problem = npz_problem(path, {layer: shape})
    else:
        problem = npy_problem(path, shape)
    if problem:
        raise SoundnetError(problem)
    if path.suffix != ".npz":
        return _pool_rows(np.load(path, mmap_mode="r", allow_pickle=False), pool)
    import zipfile

    with zipfile.ZipFile(path) as archive, archive.open(f"{layer}.npy") as handle:
        version = np.lib.format.read_magic(handle)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        found, _, _ = read(handle)
        return _pool_stream(handle, tuple(found), pool)


def _pool_rows(array: np.ndarray, pool: str) -> np.ndarray:
    if array.ndim == 1:
        return np.array(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise SoundnetError(f"expected (time, channels) features, got shape {array.shape}")
    rows = max(1, POOL_BLOCK_BYTES // (4 * max(1, array.shape[1])))
    total = np.zeros(array.shape[1], dtype=np.float64)
    best = np.full(array.shape[1], -np.inf, dtype=np.float32)
    for start in range(0, array.shape[0], rows):
        block = np.asarray(array[start : start + rows], dtype=np.float32)
        if pool == "max":
            best = np.maximum(best, block.max(axis=0))
        else:
            total += block.sum(axis=0, dtype=np.float64)
    return best if pool == "max" else (total / array.shape[0]).astype(np.float32)


def _pool_stream(handle: Any, shape: tuple[int, ...], pool: str) -> np.ndarray:
    """Pool a float32 C-order array read from ``handle`` (a zip member) block by block."""
    if len(shape) == 1:
        return _pool_rows(np.frombuffer(handle.read(4 * shape[0]), dtype=np.float32), pool)
    if len(shape) != 2 or shape[0] == 0:
        raise SoundnetError(f"expected (time, channels) features, got shape {list(shape)}")
    steps, channels = shape
    rows = max(1, POOL_BLOCK_BYTES // (4 * max(1, channels)))
    total = np.zeros(channels, dtype=np.float64)
    best = np.full(channels, -np.inf, dtype=np.float32)
    for start in range(0, steps, rows):
        count = min(rows, steps - start)
        data = handle.read(4 * count * channels)
        if len(data) != 4 * count * channels:
            raise SoundnetError("truncated")
        block = np.frombuffer(data, dtype=np.float32).reshape(count, channels)
        if pool == "max":
            best = np.maximum(best, block.max(axis=0))
        else:
            total += block.sum(axis=0, dtype=np.float64)
    return best if pool == "max" else (total / steps).astype(np.float32)


def _recorded_shape(row: dict[str, Any] | None, layer: str) -> list[int] | None:
    layers = (row or {}).get("layers")
    info = layers.get(layer) if isinstance(layers, dict) else None
    shape = info.get("shape") if isinstance(info, dict) else None
    return list(shape) if isinstance(shape, list) else None


def _model_of(setup: dict[str, Any]) -> dict[str, Any]:
    return {k: setup.get(k) for k in ("architecture", "checkpoint", "checkpoint_sha256")}


def _entries(folder: Path, files: Sequence[FeatureFile]) -> list[Entry]:
    entries = []
    for item in files:
        stat = item.path.stat()
        entries.append(
            Entry(
                key=item.key,
                source=item.source,
                file=item.path.relative_to(folder).as_posix(),
                mtime_ns=stat.st_mtime_ns,
                size=stat.st_size,
            )
        )
    return entries


def index_features(
    folder: str | os.PathLike[str],
    *,
    layer: str | None = None,
    pool: str | None = None,
    method: str = "auto",
    rebuild: bool = False,
    exact_limit: int = EXACT_LIMIT,
    progress: Callable[[int, int], None] | None = None,
) -> UpdateSummary:
    """Build or update the search index of a features folder (one vector per file).

    ``layer`` may be omitted when the folder holds one; ``pool`` is ``mean`` (default) or
    ``max`` over time. ``method``: ``auto`` (exact below ``exact_limit`` files, approximate
    above), ``exact`` or ``approximate``. Files that cannot be read are reported in the
    summary's failures and left out.
    """
    root = Path(folder)
    setup = read_setup(root)
    chosen = resolve_pool(setup, pool)
    layer, files = list_feature_files(root, layer)
    listing = _entries(root, files)
    rows = FeatureManifest(root).rows()
    by_key = {item.key: item for item in files}

    def load(entry: Entry) -> np.ndarray:
        item = by_key[entry.key]
        if item.path.suffix not in (".npy", ".npz"):  # a table (Parquet): rows, through its reader
            return _pool_rows(read_feature_file(item), chosen)
        shape = _recorded_shape(rows.get(entry.key), layer)
        return pool_file(root / entry.file, layer, chosen, shape)

    return update_index(
        root,
        layer,
        chosen,
        listing,
        load,
        _model_of(setup),
        method=method,
        rebuild=rebuild,
        exact_limit=exact_limit,
        progress=progress,
    )


def open_index(
    folder: str | os.PathLike[str], *, layer: str | None = None, pool: str | None = None
) -> StoredIndex:
    """The folder's index for ``layer``/``pool``; a usage error says how to build it."""
    root = Path(folder)
    setup = read_setup(root)
    chosen = resolve_pool(setup, pool)
    if layer is None:
        layers = list(setup.get("layers") or {})
        if len(layers) != 1:
            raise UsageProblem(
                f"{root}: choose a layer (layers: {', '.join(layers) or 'none'})",
                parameter="layer",
            )
        layer = layers[0]
    index = StoredIndex.open(root, layer, chosen)
    if index is None:
        raise UsageProblem(
            f"{root}: no search index for {layer} ({chosen} over time); build it with "
            f"`soundnet search index {root} --layer {layer} --pool {chosen}`"
        )
    return index


def _stale(index: StoredIndex) -> bool:
    """Whether extract finished files after the index was built that the index lacks (a rerun
    that skipped everything rewrites the manifest too: its time alone proves nothing)."""
    try:
        if (index.root / MANIFEST).stat().st_mtime <= index.description.built_at:
            return False
    except FileNotFoundError:
        return False
    indexed = {entry.key for entry in index.entries}
    layer = index.description.layer
    return any(
        row.get("status") == "ok"
        and key not in indexed
        and layer in (row.get("layers") or {layer: 1})
        for key, row in FeatureManifest(index.root).rows().items()
    )


def _hits(index: StoredIndex, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
    hits = []
    for score, row in zip(scores.tolist(), rows.tolist(), strict=True):
        if row < 0:  # the approximate index found fewer than k
            continue
        entry = index.entries[row]
        hits.append(Hit(entry.key, entry.source, float(score)))
    return hits


def query_key(index: StoredIndex, key: str, k: int = 10) -> QueryResult:
    """The ``k`` files most like the indexed file ``key`` (itself first, score 1)."""
    check_k(k)
    vector = np.asarray(index.vectors[index.row_of(key)], dtype=np.float32)[None, :]
    return query_vector(index, vector, k, label=key)


def query_vector(
    index: StoredIndex, vector: np.ndarray, k: int = 10, *, label: str = "(vector)"
) -> QueryResult:
    """The ``k`` files whose pooled features are closest in cosine to ``vector``."""
    check_k(k)
    scores, rows = index.search(normalise(vector), k)
    d = index.description
    return QueryResult(
        label, _hits(index, scores[0], rows[0]), f"{d.layer}-{d.pool}", d.kind, _stale(index)
    )


def query_audio(
    index: StoredIndex,
    audio: str | os.PathLike[str],
    k: int = 10,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> QueryResult:
    """Extract ``audio`` with the model recorded in the folder (refusing any other) and query."""
    vector = audio_vector(index, audio, checkpoint=checkpoint, device=device)
    return query_vector(index, vector, k, label=str(audio))


def audio_vector(
    index: StoredIndex,
    audio: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> np.ndarray:
    """The pooled features of one audio file, computed as extract computed the folder's."""
    from soundnet_cli.extraction.engine import extract

    setup = read_setup(index.root)
    model = recorded_model(setup, checkpoint=checkpoint, device=device)
    layer = index.description.layer
    with tempfile.TemporaryDirectory(prefix="soundnet-query-") as scratch:
        summary = extract(
            [audio],
            [layer],
            scratch,
            model=model,
            pool=setup.get("pool") or None,
            mix=str(setup.get("mix") or "first"),
            overwrite=True,
            workers=1,
            rank=0,
            world_size=1,
        )
        if summary.failures:
            raise AudioError(summary.failures[0].error)
        _, files = list_feature_files(Path(scratch), layer)
        if len(files) != 1:
            raise AudioError(f"{audio}: no {layer} features were extracted")
        return pool_features(read_feature_file(files[0]), index.description.pool)


def recorded_model(
    setup: dict[str, Any],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> Any:
    """The model the folder was extracted with: the checkpoint ``features.json`` names (or
    ``checkpoint``, when it moved), refused unless its sha256 is the one recorded."""
    from soundnet_cli.models import load_student
    from soundnet_cli.runtime import resolve_device
    from soundnet_cli.weights.checkpoints import file_sha256

    wanted = setup.get("checkpoint_sha256")
    if not wanted:
        raise UsageProblem(
            "these features were extracted by a model without a checkpoint (an untrained "
            "student), so an audio query cannot be extracted the same way; query by an indexed "
            "file's key instead"
        )
    candidates = [Path(checkpoint)] if checkpoint is not None else []
    recorded = setup.get("checkpoint")
    if checkpoint is None and recorded:
        candidates.append(Path(str(recorded)))
    if checkpoint is None and setup.get("architecture") == "soundnet8":
        from soundnet_cli.weights.official import ensure_official

        if not any(c.is_file() for c in candidates):
            candidates.append(Path(ensure_official()))
    for path in candidates:
        if not path.is_file():
            continue
        actual = file_sha256(path)
        if actual != wanted:
            raise UsageProblem(
                f"{path} is not the model these features were extracted with (sha256 "
                f"{actual[:12]}..., features.json records {str(wanted)[:12]}...); an audio "
                "query must use the same model: re-extract, or give the checkpoint they were "
                "extracted with",
                parameter="checkpoint",
            )
        return load_student(path, device=resolve_device(device))
    raise UsageProblem(
        f"the checkpoint these features were extracted with is missing ({recorded}); give "
        "its new location",
        parameter="checkpoint",
    )


def precision_at(
    index: StoredIndex,
    queries: Sequence[str],
    labels: dict[str, str],
    *,
    k: int = 5,
    exclude: Callable[[str, str], bool] | None = None,
) -> float:
    """Mean fraction of each query's ``k`` nearest files (other than the query, and not
    ``exclude(query, key)``) that share its label: retrieval quality on a labelled folder."""
    check_k(k)
    fractions = []
    for key in queries:
        found = [
            h
            for h in query_key(index, key, k=index.description.count).hits
            if h.key != key and (exclude is None or not exclude(key, h.key))
        ][:k]
        if found:
            fractions.append(sum(labels.get(h.key) == labels[key] for h in found) / len(found))
    return float(np.mean(fractions)) if fractions else 0.0
