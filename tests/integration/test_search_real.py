"""`soundnet search` on ESC-10 with the official SoundNet-8 (pool5, mean over time): each fold-1
clip queried against the other folds retrieves mostly its own class; a file of the index queried
by its audio comes back first with score 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soundnet_cli.extraction.engine import extract
from soundnet_cli.search import index_features, open_index, precision_at, query_audio

from .conftest import esc_rows

CHANCE = 0.1  # 10 balanced classes
MEASURED = 0.805  # mean precision@5, measured when this test was written


@pytest.fixture(scope="module")
def esc10_features(official_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = esc_rows("esc10")
    out = tmp_path_factory.mktemp("esc10-pool5")
    summary = extract([str(Path(rows[0]["path"]).parent)], ["pool5"], out, model=official_model)
    assert not summary.failures
    return out


def test_precision_at_5_same_class_across_folds(esc10_features: Path) -> None:
    rows = {Path(r["filename"]).stem: r for r in esc_rows("esc10")}
    summary = index_features(esc10_features)
    assert summary.count == 400 and summary.kind == "exact"
    index = open_index(esc10_features)
    labels = {key: row["category"] for key, row in rows.items()}
    queries = [key for key, row in rows.items() if row["fold"] == "1"]
    assert len(queries) == 80
    precision = precision_at(
        index,
        queries,
        labels,
        k=5,
        exclude=lambda query, key: rows[key]["fold"] == rows[query]["fold"],
    )
    print(json.dumps({"esc10_pool5_mean_precision_at_5": round(precision, 4)}))
    assert precision > 6 * CHANCE
    assert precision == pytest.approx(MEASURED, abs=0.05)


def test_an_indexed_file_queried_by_its_audio_comes_first(
    esc10_features: Path, official_home: Path, official_checkpoint: Path
) -> None:
    index_features(esc10_features)
    index = open_index(esc10_features)
    row = esc_rows("esc10")[17]
    # features.json names the checkpoint the fixture loaded; the query verifies its sha256
    result = query_audio(index, row["path"], k=3, checkpoint=official_checkpoint, device="cpu")
    assert result.hits[0].key == Path(row["filename"]).stem
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-6)
    assert result.hits[1].score < result.hits[0].score
