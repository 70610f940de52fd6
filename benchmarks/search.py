"""Benchmark `soundnet search`: the approximate index against exact search on random vectors.

Builds the index through the same code as `soundnet search index --method approximate` (the
stored index: vectors.npy, entries, the faiss IVF, nprobe calibration) over COUNT random
256-channel vectors (pool5's width), then answers held-out queries with it and with the exact
scan, and prints build time, query times and recall@10 (the share of the exact 10 nearest that
the index returns).

Two distributions of random vectors:

  features - Gaussian with the shape of real pooled SoundNet features, then ReLU: the mean and
             the covariance spectrum measured on ESC-10 pool5 (mean over time, unit length):
             eigenvalues falling as i^-1.6 (10 components hold 72% of the variance), total
             variance 0.27 around a mean of norm 0.86. The default.
  iid      - isotropic Gaussian: every direction equally likely, no structure for any index to
             use; the worst case (an index needs to scan most cells to find the 10 nearest).

    python benchmarks/search.py                       # 1,000,000 "features" vectors
    python benchmarks/search.py --count 100000 --distribution iid
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHANNELS = 256
SPECTRUM_DECAY = 1.6  # fitted to the ESC-10 pool5 eigenvalues (log-log slope, first 150)
TOTAL_VARIANCE = 0.27
MEAN_NORM = 0.86


class Generator:
    def __init__(self, distribution: str, seed: int) -> None:
        self.distribution = distribution
        self.rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(self.rng.standard_normal((CHANNELS, CHANNELS)))
        self.basis = basis.astype(np.float32)
        spectrum = np.arange(1, CHANNELS + 1, dtype=np.float64) ** -SPECTRUM_DECAY
        self.scale = np.sqrt(spectrum * TOTAL_VARIANCE / spectrum.sum()).astype(np.float32)
        mean = np.abs(self.rng.standard_normal(CHANNELS))
        self.mean = (mean * MEAN_NORM / np.linalg.norm(mean)).astype(np.float32)

    def __call__(self, count: int) -> np.ndarray:
        z = self.rng.standard_normal((count, CHANNELS), dtype=np.float32)
        if self.distribution == "iid":
            return z
        return np.maximum((z * self.scale) @ self.basis.T + self.mean, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--distribution", choices=("features", "iid"), default="features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="faiss threads (0: its default)")
    args = parser.parse_args()

    import faiss

    from soundnet_cli.search.store import Entry, StoredIndex, update_index
    from soundnet_cli.search.vectors import exact_search, normalise

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    generate = Generator(args.distribution, args.seed)
    blocks = range(0, args.count, 100_000)
    data = np.concatenate([generate(min(100_000, args.count - start)) for start in blocks])
    queries = normalise(generate(args.queries))
    listing = [Entry(f"{i:07d}", f"{i:07d}.wav", f"{i:07d}.npy", 0, 0) for i in range(len(data))]
    model = {"architecture": "benchmark", "checkpoint": None, "checkpoint_sha256": None}

    with tempfile.TemporaryDirectory(prefix="soundnet-search-bench-") as root:
        started = time.perf_counter()
        update_index(
            Path(root),
            "pool5",
            "mean",
            listing,
            lambda e: data[int(e.key)],
            model,
            method="approximate",
        )
        build = time.perf_counter() - started
        index = StoredIndex.open(Path(root), "pool5", "mean")
        assert index is not None and index.description.ivf is not None
        disk = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())

        started = time.perf_counter()
        _, truth = exact_search(index.vectors, queries, 10)
        exact_batch = time.perf_counter() - started
        started = time.perf_counter()
        for q in queries[:20]:
            exact_search(index.vectors, q[None, :], 10)
        exact_single = (time.perf_counter() - started) / 20

        index.search(queries[:1], 10)  # load the IVF file first: its time is not a query's
        started = time.perf_counter()
        _, found = index.search(queries, 10)
        ann_batch = time.perf_counter() - started
        started = time.perf_counter()
        for q in queries:
            index.search(q[None, :], 10)
        ann_single = (time.perf_counter() - started) / len(queries)

    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
    ivf = index.description.ivf
    print(
        json.dumps(
            {
                "count": args.count,
                "channels": CHANNELS,
                "distribution": args.distribution,
                "queries": args.queries,
                "build_seconds": round(build, 1),
                "index_disk_mb": round(disk / 2**20),
                "nlist": ivf.nlist,
                "nprobe": ivf.nprobe,
                "calibrated_recall_at_10": ivf.recall_at_10,
                "recall_at_10": round(recall, 4),
                "approximate_ms_per_query_single": round(ann_single * 1000, 3),
                "approximate_ms_per_query_batch": round(ann_batch / len(queries) * 1000, 3),
                "exact_ms_per_query_single": round(exact_single * 1000, 1),
                "exact_ms_per_query_batch": round(exact_batch / len(queries) * 1000, 2),
                "faiss": faiss.__version__,
                "faiss_threads": faiss.omp_get_max_threads(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
