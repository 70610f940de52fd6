"""Cosine nearest neighbours over the rows of a matrix: exact (a blocked scan in numpy) or
approximate (an inverted-file index from faiss, its ``nprobe`` calibrated on the data).

Rows are stored unit-length, so the cosine is a dot product. A zero row (a silent file) stays
zero and scores 0 against everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from soundnet_cli.errors import SoundnetError, UsageProblem

BLOCK_ROWS = 65_536  # rows scored at once by the exact scan: bounds memory, keeps BLAS busy
CALIBRATION_QUERIES = 200
CALIBRATION_RECALL = 0.97  # aim above the 0.95 the index promises, for queries unlike the sample


def normalise(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of unit length (zero rows stay zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise SoundnetError(f"expected vectors shaped (count, channels), got {array.shape}")
    if not np.isfinite(array).all():
        raise SoundnetError("the vectors contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)


def _merge(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row of (queries, candidates), ordered by score then id."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.lexsort((ids, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and row ids (each (queries, k'), k' = min(k, rows)) of the best cosine matches.

    ``vectors`` are unit rows (a memory map is fine: it is read in blocks); ``queries`` too.
    """
    count = len(vectors)
    k = min(k, count)
    if k <= 0:
        empty = np.zeros((len(queries), 0))
        return empty.astype(np.float32), empty.astype(np.int64)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, count, BLOCK_ROWS):
        block = np.asarray(vectors[start : start + BLOCK_ROWS], dtype=np.float32)
        scores = queries @ block.T
        ids = np.broadcast_to(np.arange(start, start + len(block), dtype=np.int64), scores.shape)
        best_scores, best_ids = _merge(
            np.concatenate([best_scores, scores], axis=1),
            np.concatenate([best_ids, ids], axis=1),
            k,
        )
    return best_scores, best_ids


@dataclass
class IvfSettings:
    """What an inverted-file index was built with; stored in the index's description."""

    nlist: int  # cells (k-means centroids)
    nprobe: int  # cells scanned per query
    trained_rows: int  # rows when the centroids were trained: retrain once it grows 4x
    recall_at_10: float  # measured against exact search when ``nprobe`` was chosen

    def as_dict(self) -> dict[str, Any]:
        return {
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "trained_rows": self.trained_rows,
            "recall_at_10": round(self.recall_at_10, 4),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IvfSettings:
        return cls(
            int(data["nlist"]),
            int(data["nprobe"]),
            int(data["trained_rows"]),
            float(data["recall_at_10"]),
        )


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a dependency; a broken install only
        raise SoundnetError(
            "approximate search needs faiss: pip install faiss-cpu (or reinstall soundnet-cli)"
        ) from exc
    return faiss


def cells_for(rows: int) -> int:
    """Inverted lists for ``rows`` vectors: about sqrt(rows), so a query that scans a few dozen
    cells reads a few percent of the data, and k-means trains in seconds."""
    return max(1, min(int(round(math.sqrt(rows))), rows // 40 or 1))


class IvfIndex:
    """A faiss ``IndexIVFFlat`` (inner product on unit rows = cosine), ids = row numbers."""

    def __init__(self, index: Any, settings: IvfSettings) -> None:
        self.index, self.settings = index, settings
        self.index.nprobe = settings.nprobe

    @classmethod
    def train(cls, vectors: np.ndarray, *, seed: int = 0) -> IvfIndex:
        """Centroids from a sample of ``vectors`` (not yet added)."""
        faiss = _faiss()
        rows, channels = vectors.shape
        nlist = cells_for(rows)
        rng = np.random.default_rng(seed)
        sample_size = min(rows, 50 * nlist)
        sample = np.sort(rng.choice(rows, size=sample_size, replace=False))
        training = np.ascontiguousarray(vectors[sample], dtype=np.float32)
        quantizer = faiss.IndexFlatIP(channels)
        index = faiss.IndexIVFFlat(quantizer, channels, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.seed = seed
        index.cp.min_points_per_centroid = 1  # a small index may train on few points per cell
        index.train(training)
        return cls(index, IvfSettings(nlist, min(nlist, 8), rows, 0.0))

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, first_id: int) -> None:
        """Add rows ``first_id, first_id + 1, ...`` in blocks (bounded memory)."""
        for start in range(0, len(vectors), BLOCK_ROWS):
            block = np.ascontiguousarray(vectors[start : start + BLOCK_ROWS], dtype=np.float32)
            ids = np.arange(first_id + start, first_id + start + len(block), dtype=np.int64)
            self.index.add_with_ids(block, ids)

    def clear(self) -> None:
        """Empty the lists, keep the centroids."""
        self.index.reset()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.count)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        # Cells scanned may hold fewer than k rows: faiss pads with id -1.
        return scores, ids

    def calibrate(self, vectors: np.ndarray, *, seed: int = 0) -> IvfSettings:
        """Choose the smallest ``nprobe`` (a power of two) whose recall@10 against exact search
        reaches ``CALIBRATION_RECALL`` on indexed rows used as queries (each query's own row is
        left out of both answers)."""
        rows = len(vectors)
        rng = np.random.default_rng(seed + 1)
        picked = np.sort(rng.choice(rows, size=min(CALIBRATION_QUERIES, rows), replace=False))
        queries = np.ascontiguousarray(vectors[picked], dtype=np.float32)
        k = min(10, rows - 1)
        if k <= 0:
            self.settings.recall_at_10 = 1.0
            return self.settings
        _, truth = exact_search(vectors, queries, k + 1)
        expected = [set(row) - {int(q)} for row, q in zip(truth.tolist(), picked, strict=True)]
        nprobe, recall = 1, 0.0
        while True:
            self.index.nprobe = nprobe
            _, found = self.search(queries, k + 1)
            hits = [
                len(want & (set(row) - {int(q)})) / max(len(want), 1)
                for row, want, q in zip(found.tolist(), expected, picked, strict=True)
            ]
            recall = float(np.mean(hits))
            if recall >= CALIBRATION_RECALL or nprobe >= self.settings.nlist:
                break
            nprobe = min(nprobe * 2, self.settings.nlist)
        self.settings.nprobe, self.settings.recall_at_10 = nprobe, recall
        return self.settings

    def save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, settings: IvfSettings) -> IvfIndex:
        if not path.is_file():
            raise SoundnetError(
                f"{path}: the approximate index is missing; rebuild it with `soundnet search index`"
            )
        return cls(_faiss().read_index(str(path)), settings)


def check_k(k: int) -> int:
    if k < 1:
        raise UsageProblem(f"-k must be at least 1, got {k}")
    return k
