"""`soundnet search index / query` read a Parquet features folder as they read an npy one."""

from __future__ import annotations

import json

import pytest

from ..conftest import tone, write_wav

pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")


def test_search_over_parquet_equals_search_over_npy(run, named_checkpoint, tmp_path):
    for i, freq in enumerate((220.0, 330.0, 440.0, 660.0, 880.0)):
        write_wav(tmp_path / "audio" / f"tone{i}.wav", tone(2.0, freq=freq))
    results = {}
    for fmt in ("npy", "parquet"):
        out = tmp_path / fmt
        extracted = run(
            "extract", str(tmp_path / "audio"), "--out", str(out), "--format", fmt,
            "--checkpoint", str(named_checkpoint),
        )  # fmt: skip
        assert extracted.exit_code == 0, extracted.stderr
        indexed = run("search", "index", str(out), "--json")
        assert indexed.exit_code == 0, indexed.stderr
        assert json.loads(indexed.stdout)["count"] == 5
        by_key = run("search", "query", str(out), "--key", "tone2", "-k", "5", "--json")
        assert by_key.exit_code == 0, by_key.stderr
        by_audio = run("search", "query", str(out), str(tmp_path / "audio" / "tone3.wav"), "--json")
        assert by_audio.exit_code == 0, by_audio.stderr
        results[fmt] = (
            json.loads(by_key.stdout)["results"],
            json.loads(by_audio.stdout)["results"],
        )
    assert results["parquet"] == results["npy"]
    hits = results["parquet"][0]
    assert hits[0]["key"] == "tone2" and hits[0]["path"] == str(tmp_path / "audio" / "tone2.wav")
