"""`--format parquet`: one Parquet dataset per features folder, equal to the npy format bit for
bit, readable by pyarrow, pandas, DuckDB and Hugging Face datasets, resumable with whole parts
only and never holding an input twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.errors import UsageProblem
from soundnet_cli.extraction.engine import extract
from soundnet_cli.extraction.folder import list_feature_files, read_feature_file
from soundnet_cli.weights.checkpoints import load_checkpoint

from ..conftest import tone, write_wav

pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra (pyarrow) is not installed")


@pytest.fixture
def model(named_checkpoint: Path):
    return load_checkpoint(named_checkpoint)


def clips(folder: Path, count: int = 5) -> Path:
    for i in range(count):
        seconds = 1.0 + 0.25 * (i % 3)  # a few lengths: batches of equal length and not
        write_wav(folder / f"sub{i % 2}" / f"clip{i}.wav", tone(seconds, freq=220.0 * (i + 1)))
    return folder


def table_rows(out: Path):
    return pq.read_table(sorted(out.glob("*.parquet"))).to_pandas()


def vectors_of(out: Path, layer: str) -> dict[str, np.ndarray]:
    _, files = list_feature_files(out, layer)
    return {f.key: read_feature_file(f) for f in files}


def test_parquet_holds_the_npy_vectors_bit_for_bit(tmp_path: Path, model) -> None:
    audio = clips(tmp_path / "audio")
    layers = ["conv5", "pool5"]
    extract([audio], layers, tmp_path / "npy", model=model)
    summary = extract([audio], layers, tmp_path / "pq", model=model, fmt="parquet", part_size=2)
    assert summary.extracted == 5 and not summary.failures
    for layer in layers:
        ours, theirs = vectors_of(tmp_path / "pq", layer), vectors_of(tmp_path / "npy", layer)
        assert sorted(ours) == sorted(theirs) == [f"sub{i % 2}/clip{i}" for i in (0, 2, 4, 1, 3)]
        for key in ours:
            assert ours[key].dtype == np.float32
            assert np.array_equal(ours[key], theirs[key])  # bit-identical
    # the table as a user sees it
    frame = table_rows(tmp_path / "pq")
    assert set(frame.columns) == {"path", "key", "layer", "step", "start", "end", "vector"}
    pool5 = frame[frame.layer == "pool5"]
    npy = np.load(tmp_path / "npy" / "sub0" / "clip0.pool5.npy")
    mine = pool5[pool5.key == "sub0/clip0"].sort_values("step")
    assert list(mine.step) == list(range(len(npy)))
    assert np.array_equal(np.stack(mine.vector.to_numpy()), npy)
    assert (mine.end > mine.start).all() and mine.start.iloc[0] == 0.0
    assert mine.path.iloc[0] == str(audio / "sub0" / "clip0.wav")
    schema = pq.read_schema(next((tmp_path / "pq").glob("part-pool5-*.parquet")))
    assert schema.field("vector").type.list_size == 256
    assert str(schema.field("vector").type.value_type) == "float"
    settings = json.loads(schema.metadata[b"soundnet"])
    recorded = json.loads((tmp_path / "pq" / "features.json").read_text())
    assert settings == recorded and recorded["format"] == "parquet"
    # the manifest records each input done, once
    rows = [
        json.loads(line) for line in (tmp_path / "pq" / "manifest.jsonl").read_text().splitlines()
    ]
    assert sorted(r["key"] for r in rows) == sorted(ours) and {r["status"] for r in rows} == {"ok"}


def test_pooled_parquet_has_one_row_per_file_and_float16_when_asked(tmp_path: Path, model) -> None:
    audio = clips(tmp_path / "audio", 3)
    extract([audio], ["pool5"], tmp_path / "npy", model=model, pool="mean")
    extract([audio], ["pool5"], tmp_path / "pq", model=model, fmt="parquet", pool="mean")
    frame = table_rows(tmp_path / "pq")
    assert len(frame) == 3 and frame.step.isna().all()
    ours, theirs = vectors_of(tmp_path / "pq", "pool5"), vectors_of(tmp_path / "npy", "pool5")
    for key in theirs:
        assert ours[key].shape == (256,) and np.array_equal(ours[key], theirs[key])
    extract([audio], ["pool5"], tmp_path / "half", model=model, fmt="parquet", dtype="float16")
    schema = pq.read_schema(next((tmp_path / "half").glob("*.parquet")))
    assert str(schema.field("vector").type.value_type) == "halffloat"
    extract([audio], ["pool5"], tmp_path / "full", model=model, fmt="parquet")
    half, full = vectors_of(tmp_path / "half", "pool5"), vectors_of(tmp_path / "full", "pool5")
    for key, value in half.items():
        assert np.array_equal(value, full[key].astype(np.float16).astype(np.float32))


def test_float16_is_refused_for_per_file_formats(tmp_path: Path, model) -> None:
    audio = clips(tmp_path / "audio", 1)
    with pytest.raises(UsageProblem, match="parquet"):
        extract([audio], ["pool5"], tmp_path / "out", model=model, dtype="float16")
    assert not (tmp_path / "out").exists()


def test_duckdb_counts_and_datasets_loads(tmp_path: Path, model) -> None:
    duckdb = pytest.importorskip("duckdb", reason="duckdb is not installed")
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed")
    audio = clips(tmp_path / "audio", 4)
    out = tmp_path / "feats"
    extract([audio], ["pool5"], out, model=model, fmt="parquet", part_size=3)
    expected = sum(len(v) for v in vectors_of(out, "pool5").values())
    assert len(list(out.glob("*.parquet"))) == 2
    with duckdb.connect() as connection:
        count = connection.execute(f"SELECT count(*) FROM '{out}/*.parquet'").fetchall()[0][0]
    assert count == expected
    loaded = datasets.load_dataset(
        "parquet",
        data_files=str(out / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert loaded.num_rows == expected
    assert len(loaded[0]["vector"]) == 256


def test_rerun_skips_and_added_inputs_are_never_duplicated(tmp_path: Path, model) -> None:
    audio = clips(tmp_path / "audio", 4)
    out = tmp_path / "feats"
    extract([audio], ["pool5"], out, model=model, fmt="parquet", part_size=2)
    before = table_rows(out)
    again = extract([audio], ["pool5"], out, model=model, fmt="parquet", part_size=2)
    assert again.skipped == 4 and again.extracted == 0
    write_wav(audio / "new.wav", tone(1.5, freq=330.0))
    extract([audio], ["pool5"], out, model=model, fmt="parquet", part_size=2)
    after = table_rows(out)
    assert set(after.key) == set(before.key) | {"new"}
    assert not after.duplicated(["key", "layer", "step"]).any()
    # --overwrite redoes every input: still one copy of each
    extract([audio], ["pool5"], out, model=model, fmt="parquet", overwrite=True)
    redone = table_rows(out)
    assert len(redone) == len(after) and not redone.duplicated(["key", "layer", "step"]).any()


def test_a_rerun_removes_the_temporary_parts_a_killed_run_of_its_rank_left(
    tmp_path: Path, model
) -> None:
    """A part being written when its run was killed stays as a hidden ``.tmp`` file; the next
    run of the same rank removes it (the folder's plan starts the writer on the folder: a
    mutant starting it on None left them), and leaves another rank's alone (it may be
    running)."""
    audio = clips(tmp_path / "audio", 2)
    out = tmp_path / "feats"
    extract([audio], ["pool5"], out, model=model, fmt="parquet")
    mine = out / ".part-pool5-r0000-0123456789ab-000007.parquet.tmp"
    theirs = out / ".part-pool5-r0001-0123456789ab-000007.parquet.tmp"
    for leftover in (mine, theirs):
        leftover.write_bytes(b"PAR1 half a part")
    again = extract([audio], ["pool5"], out, model=model, fmt="parquet")
    assert again.skipped == 2
    assert not mine.exists() and theirs.exists()


KILL_SCRIPT = """
import sys, time
from soundnet_cli.extraction import engine
from soundnet_cli.extraction.writers import parquet
from soundnet_cli.weights.checkpoints import load_checkpoint

flush = parquet.ParquetWriter.flush
def slow_flush(self, out):
    flush(self, out)
    print("part", flush=True)
    time.sleep(60)  # killed here, after the first part, with the next inputs in memory
parquet.ParquetWriter.flush = slow_flush
model = load_checkpoint(sys.argv[1])
engine.extract([sys.argv[2]], ["pool5"], sys.argv[3], model=model, fmt="parquet", part_size=2,
               batch_size=1)
"""


def test_kill_9_after_a_part_then_rerun_equals_an_uninterrupted_run(
    tmp_path: Path, model, named_checkpoint: Path
) -> None:
    audio = clips(tmp_path / "audio", 5)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(named_checkpoint), str(audio), str(out)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "part"
        time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    parts = list(out.glob("*.parquet"))
    assert len(parts) == 1 and pq.read_table(parts[0]).column("key").unique().to_pylist()
    # batch size 1 in every run: a batch's arithmetic may round differently from one input's
    summary = extract(
        [audio], ["pool5"], out, model=model, fmt="parquet", part_size=2, batch_size=1
    )
    assert summary.skipped == 2 and summary.extracted == 3 and not summary.failures
    extract([audio], ["pool5"], tmp_path / "whole", model=model, fmt="parquet", batch_size=1)
    resumed, whole = table_rows(out), table_rows(tmp_path / "whole")
    assert not resumed.duplicated(["key", "layer", "step"]).any()
    columns = ["path", "key", "layer", "step", "start", "end"]
    resumed = resumed.sort_values(["key", "step"]).reset_index(drop=True)
    whole = whole.sort_values(["key", "step"]).reset_index(drop=True)
    assert resumed[columns].equals(whole[columns])
    assert np.array_equal(np.stack(resumed.vector.to_numpy()), np.stack(whole.vector.to_numpy()))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_linked_routes_get_their_own_rows(tmp_path: Path, model) -> None:
    audio = clips(tmp_path / "audio", 2)
    (audio / "alias.wav").symlink_to(audio / "sub0" / "clip0.wav")
    out = tmp_path / "feats"
    summary = extract([audio], ["pool5"], out, model=model, fmt="parquet")
    assert summary.extracted == 3
    found = vectors_of(out, "pool5")
    assert sorted(found) == ["alias", "sub0/clip0", "sub1/clip1"]
    assert np.array_equal(found["alias"], found["sub0/clip0"])
    # a shorter link added later becomes the file's first route: the file is computed again
    # for both routes, and its old rows are replaced, not doubled
    (audio / "later.wav").symlink_to(audio / "sub1" / "clip1.wav")
    again = extract([audio], ["pool5"], out, model=model, fmt="parquet")
    assert again.extracted == 2 and again.skipped == 2
    found = vectors_of(out, "pool5")
    assert np.array_equal(found["later"], found["sub1/clip1"])
    assert not table_rows(out).duplicated(["key", "layer", "step"]).any()
    # a longer link added later is an alias: it gets the finished rows copied from the table
    (audio / "deep" / "er").mkdir(parents=True)
    (audio / "deep" / "er" / "link.wav").symlink_to(audio / "sub0" / "clip0.wav")
    third = extract([audio], ["pool5"], out, model=model, fmt="parquet")
    assert third.extracted == 1 and third.skipped == 4
    found = vectors_of(out, "pool5")
    assert np.array_equal(found["deep/er/link"], found["sub0/clip0"])
    frame = table_rows(out)
    assert not frame.duplicated(["key", "layer", "step"]).any()
    assert set(frame[frame.key == "deep/er/link"].path) == {str(audio / "deep/er/link.wav")}


def test_a_part_that_cannot_be_written_fails_its_inputs_and_a_rerun_completes(
    tmp_path: Path, model, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    audio = clips(tmp_path / "audio", 5)
    out = tmp_path / "feats"
    real = pq.write_table
    calls = []

    def full_on_second_part(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_on_second_part)
    summary = extract([audio], ["pool5"], out, model=model, fmt="parquet", part_size=2)
    assert summary.extracted == 3 and len(summary.failures) == 2  # the second part's two
    assert all("No space left" in f.error or "no space" in f.error for f in summary.failures)
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in rows) == ["failed"] * 2 + ["ok"] * 3
    assert len(set(table_rows(out).key)) == 3  # what the manifest calls done is in the table
    monkeypatch.setattr(pq, "write_table", real)
    again = extract([audio], ["pool5"], out, model=model, fmt="parquet", part_size=2)
    assert again.extracted == 2 and again.skipped == 3 and not again.failures
    frame = table_rows(out)
    assert len(set(frame.key)) == 5 and not frame.duplicated(["key", "layer", "step"]).any()


NOT_IMPORTED = """
import sys
from soundnet_cli.extraction.engine import extract
from soundnet_cli.extraction.folder import list_feature_files
from soundnet_cli.weights.checkpoints import load_checkpoint

extract([sys.argv[2]], ["pool5"], sys.argv[3], model=load_checkpoint(sys.argv[1]))
list_feature_files(__import__("pathlib").Path(sys.argv[3]))
print(sorted(m for m in ("pyarrow", "ray") if m in sys.modules))
"""


def test_npy_runs_import_neither_pyarrow_nor_ray(tmp_path: Path, named_checkpoint: Path) -> None:
    audio = clips(tmp_path / "audio", 1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            NOT_IMPORTED,
            str(named_checkpoint),
            str(audio),
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert done.stdout.strip() == "[]"
