"""`--format parquet` over the 400 ESC-50 fold-4 clips with the official SoundNet-8 holds
exactly the vectors of the npy format (bit-identical float32), and DuckDB counts its rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.extraction.engine import extract
from soundnet_cli.extraction.folder import list_feature_files, read_feature_file

from ..conftest import SHARED_DATA, missing

pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra (pyarrow) is not installed")


def test_fold4_parquet_equals_npy_bit_for_bit(official_model, tmp_path: Path) -> None:
    audio = SHARED_DATA / "esc50-fold4" / "audio"
    if not audio.is_dir():
        missing(f"real audio not found: {audio}")
    layers = ["pool5", "conv7"]
    extract([audio], layers, tmp_path / "npy", model=official_model)
    summary = extract([audio], layers, tmp_path / "pq", model=official_model, fmt="parquet")
    assert summary.extracted == 400 and not summary.failures
    rows = 0
    for layer in layers:
        _, npy_files = list_feature_files(tmp_path / "npy", layer)
        _, pq_files = list_feature_files(tmp_path / "pq", layer)
        assert [f.key for f in pq_files] == [f.key for f in npy_files] and len(npy_files) == 400
        for ours, theirs in zip(pq_files, npy_files, strict=True):
            expected = read_feature_file(theirs)
            assert np.array_equal(read_feature_file(ours), expected), ours.key
            rows += len(expected) if layer == "pool5" else 0
    duckdb = pytest.importorskip("duckdb", reason="duckdb is not installed")
    with duckdb.connect() as connection:
        query = f"SELECT count(*) FROM '{tmp_path / 'pq'}/part-pool5-*.parquet'"
        assert connection.execute(query).fetchall()[0][0] == rows
