"""The search index: exact and approximate cosine search, its files, incremental updates."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.search import store, vectors
from soundnet_cli.search.store import Entry, StoredIndex, update_index
from soundnet_cli.search.vectors import IvfIndex, exact_search, normalise

MODEL = {"architecture": "soundnet8", "checkpoint": "a.safetensors", "checkpoint_sha256": "ab"}


def clustered(count: int, channels: int = 32, seed: int = 0) -> np.ndarray:
    """Non-negative vectors around 20 centres, like pooled ReLU features."""
    rng = np.random.default_rng(seed)
    centres = rng.random((20, channels)) * 2
    picks = rng.integers(0, 20, count)
    return np.maximum(centres[picks] + 0.3 * rng.standard_normal((count, channels)), 0)


def brute_force(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = normalise(queries) @ normalise(data).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


# -- vectors ------------------------------------------------------------------------------------
def test_normalise_gives_unit_rows_and_keeps_zero_rows_zero() -> None:
    out = normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    with pytest.raises(SoundnetError, match="NaN"):
        normalise(np.array([[np.nan, 1.0]]))


def test_exact_search_matches_brute_force_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "BLOCK_ROWS", 37)  # many blocks, the last one partial
    data = clustered(500)
    queries = clustered(7, seed=1)
    scores, ids = exact_search(normalise(data), normalise(queries), 10)
    np.testing.assert_array_equal(ids, brute_force(data, queries, 10))
    expected = np.take_along_axis(normalise(queries) @ normalise(data).T, ids, axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_exact_search_asks_for_more_than_there_is() -> None:
    data = normalise(clustered(3))
    scores, ids = exact_search(data, data[:1], 10)
    assert ids.shape == (1, 3) and ids[0, 0] == 0
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_ivf_index_is_calibrated_to_the_recall_it_promises() -> None:
    everything = normalise(clustered(4100))
    data, queries = everything[:4000], everything[4000:]  # held-out queries, same distribution
    ivf = IvfIndex.train(data)
    ivf.add(data, first_id=0)
    settings = ivf.calibrate(data)
    assert settings.nlist == vectors.cells_for(4000)
    assert settings.recall_at_10 >= vectors.CALIBRATION_RECALL or settings.nprobe == settings.nlist
    _, found = ivf.search(queries, 10)
    truth = brute_force(data, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.9


# -- the stored index ---------------------------------------------------------------------------
class Folder:
    """A fake features folder: keys -> vectors, with file stamps that change on rewrite."""

    def __init__(self, root: Path, data: np.ndarray) -> None:
        self.root = root
        self.vectors = {f"clip{i:04d}": row for i, row in enumerate(data)}
        self.stamps = {key: 1 for key in self.vectors}
        self.loaded: list[str] = []

    def listing(self) -> list[Entry]:
        return [
            Entry(key, f"/audio/{key}.wav", f"{key}.pool5.npy", self.stamps[key], 1024)
            for key in self.vectors
        ]

    def load(self, entry: Entry) -> np.ndarray:
        self.loaded.append(entry.key)
        return self.vectors[entry.key]

    def update(self, **kwargs: object) -> store.UpdateSummary:
        self.loaded = []
        return update_index(
            self.root,
            "pool5",
            "mean",
            self.listing(),
            self.load,
            MODEL,
            **kwargs,  # type: ignore[arg-type]
        )


def query_self(root: Path, key: str) -> tuple[str, float]:
    index = StoredIndex.open(root, "pool5", "mean")
    assert index is not None
    vector = np.asarray(index.vectors[index.row_of(key)])[None, :]
    scores, rows = index.search(vector, 3)
    return index.entries[rows[0, 0]].key, float(scores[0, 0])


@pytest.mark.parametrize("method", ["exact", "approximate"])
def test_update_reads_only_new_and_changed_files(tmp_path: Path, method: str) -> None:
    data = clustered(900)
    folder = Folder(tmp_path, data[:600])
    first = folder.update(method=method)
    assert (first.count, first.added, first.kind) == (600, 600, method)
    assert len(folder.loaded) == 600

    for i in range(600, 900):  # extract ran again on more files
        folder.vectors[f"clip{i:04d}"] = data[i]
        folder.stamps[f"clip{i:04d}"] = 1
    folder.stamps["clip0003"] = 2  # re-extracted
    folder.vectors["clip0003"] = data[5]
    del folder.vectors["clip0010"], folder.stamps["clip0010"]
    second = folder.update(method=method)
    assert (second.added, second.changed, second.removed) == (300, 1, 1)
    assert second.unchanged == 598 and second.count == 899
    assert sorted(folder.loaded) == sorted(["clip0003"] + [f"clip{i:04d}" for i in range(600, 900)])

    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None and index.description.count == 899
    assert "clip0010" not in {e.key for e in index.entries}
    for key in ("clip0000", "clip0700", "clip0899"):
        found, score = query_self(tmp_path, key)
        assert found == key and score == pytest.approx(1.0, abs=1e-6)
    # clip0003 now holds clip0005's vector: the two are equal, so both score 1.
    row = index.row_of("clip0003")
    np.testing.assert_allclose(index.vectors[row], normalise(data[5])[0], rtol=1e-6)
    generations = [p for p in (tmp_path / store.SEARCH_DIR).iterdir() if p.is_dir()]
    assert len(generations) == 1  # the old generation was removed

    third = folder.update(method=method)
    assert folder.loaded == [] and third.unchanged == 899 and third.added == 0


def test_approximate_index_grows_by_appending(tmp_path: Path) -> None:
    data = clustered(1200)
    folder = Folder(tmp_path, data[:1000])
    folder.update(method="approximate")
    before = StoredIndex.open(tmp_path, "pool5", "mean")
    assert before is not None and before.description.ivf is not None
    trained = before.description.ivf.trained_rows
    for i in range(1000, 1200):
        folder.vectors[f"clip{i:04d}"] = data[i]
        folder.stamps[f"clip{i:04d}"] = 1
    folder.update(method="approximate")
    after = StoredIndex.open(tmp_path, "pool5", "mean")
    assert after is not None and after.description.ivf is not None
    assert after.description.ivf.trained_rows == trained  # cells reused, rows appended
    assert [e.key for e in after.entries[:1000]] == [e.key for e in before.entries]
    assert query_self(tmp_path, "clip1100")[0] == "clip1100"


def test_auto_switches_to_approximate_at_the_limit(tmp_path: Path) -> None:
    folder = Folder(tmp_path, clustered(300))
    assert folder.update(exact_limit=1000).kind == "exact"
    summary = folder.update(exact_limit=200)
    assert summary.kind == "approximate" and summary.recall_at_10 is not None
    assert StoredIndex.open(tmp_path, "pool5", "mean").description.kind == "approximate"  # type: ignore[union-attr]


def test_another_model_rebuilds_and_a_bad_file_is_left_out(tmp_path: Path) -> None:
    folder = Folder(tmp_path, clustered(50))
    folder.update()
    folder.vectors["clip0007"] = np.array([np.nan] * 32)
    folder.stamps["clip0007"] = 5
    summary = update_index(
        tmp_path,
        "pool5",
        "mean",
        folder.listing(),
        folder.load,
        {**MODEL, "checkpoint_sha256": "cd"},
    )
    assert summary.rebuilt and summary.count == 49 and summary.added == 49
    assert [key for key, _ in summary.failures] == ["clip0007"]
    description = json.loads((tmp_path / ".search" / "pool5-mean.json").read_text())
    assert description["model"]["checkpoint_sha256"] == "cd"


def test_unknown_key_and_bad_method_are_usage_errors(tmp_path: Path) -> None:
    folder = Folder(tmp_path, clustered(20))
    folder.update()
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    with pytest.raises(UsageProblem, match="not in the index"):
        index.row_of("nope")
    with pytest.raises(UsageProblem, match="the index method must be one of"):
        folder.update(method="fast")


def test_a_damaged_approximate_index_is_refused_then_trained_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = Folder(tmp_path, clustered(300))
    folder.update(method="approximate")
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    ivf = index.folder / "ivf.faiss"
    ivf.write_bytes(ivf.read_bytes()[:-64])
    query = np.asarray(index.vectors[0])[None, :]
    with pytest.raises(store.DamagedIndex, match=r"ivf\.faiss: the search index is damaged"):
        index.search(query, 3)
    folder.stamps["clip0001"] = 2  # one file changed: the update reuses the cells if it can
    summary = folder.update(method="approximate")
    assert summary.count == 300
    assert any("ivf.faiss" in r.getMessage() for r in caplog.records)
    assert query_self(tmp_path, "clip0005")[0] == "clip0005"


def test_an_edited_vector_is_caught_by_its_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same dtype, shape and size, finite values: only the sha256 sees the edit. Queries check
    it for files up to CHECKSUM_ON_OPEN; updates always do, and rebuild."""
    folder = Folder(tmp_path, clustered(40))
    folder.update()
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    vectors = np.load(index.folder / "vectors.npy")
    vectors[[0, 1]] = vectors[[1, 0]]  # two rows swapped: wrong neighbours, nothing else
    np.save(index.folder / "vectors.npy", vectors)
    with pytest.raises(store.DamagedIndex, match=r"vectors\.npy: .*sha256"):
        StoredIndex.open(tmp_path, "pool5", "mean")
    monkeypatch.setattr(store, "CHECKSUM_ON_OPEN", 0)  # as if the file were large
    assert StoredIndex.open(tmp_path, "pool5", "mean") is not None  # a query stays fast
    with pytest.raises(store.DamagedIndex, match="sha256"):
        StoredIndex.open(tmp_path, "pool5", "mean", thorough=True)
    assert folder.update().rebuilt
    assert query_self(tmp_path, "clip0000")[0] == "clip0000"


# -- found by mutation testing (nox -s mutants -- store; docs/testing.md) -----------------------
def test_rebuild_reads_every_file_again(tmp_path: Path) -> None:
    """Mutant: `rebuild` ignored (the unchanged index kept)."""
    folder = Folder(tmp_path, clustered(40))
    folder.update()
    summary = folder.update(rebuild=True)
    assert summary.rebuilt and summary.added == 40 and summary.unchanged == 0
    assert sorted(folder.loaded) == sorted(folder.vectors)


def test_a_new_channel_count_indexes_every_file_anew(tmp_path: Path) -> None:
    """Mutants of the branch for features re-extracted with another shape under the same name:
    every file is read again (also the unchanged ones), the index takes the new width."""
    folder = Folder(tmp_path, clustered(30, channels=32))
    folder.update()
    wider = clustered(30, channels=48, seed=1)
    folder.stamps = {key: 2 for key in folder.stamps}
    folder.vectors = {key: wider[i] for i, key in enumerate(sorted(folder.vectors))}
    folder.stamps["clip0001"] = 1  # one file looks unchanged, but its old vector has 32 channels
    folder.vectors["clip0001"] = wider[1]
    summary = folder.update()
    assert summary.rebuilt and summary.count == 30 and summary.added == 30
    assert "clip0001" in folder.loaded and len(folder.loaded) == 30 + 29
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None and index.description.channels == 48
    assert query_self(tmp_path, "clip0001") == ("clip0001", pytest.approx(1.0, abs=1e-6))


def test_an_approximate_index_is_searched_through_its_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutants: the kind test in StoredIndex.search sending an approximate index to the exact
    search (right answers, but the cost the approximate index exists to avoid)."""
    Folder(tmp_path, clustered(300)).update(method="approximate")
    calls: list[int] = []
    original = IvfIndex.search

    def counted(self, queries, k):
        calls.append(k)
        return original(self, queries, k)

    monkeypatch.setattr(IvfIndex, "search", counted)
    assert query_self(tmp_path, "clip0100")[0] == "clip0100"
    assert calls == [3]


def test_auto_is_exact_below_the_limit_and_approximate_from_it() -> None:
    """Mutant: `count <= exact_limit` in choose_kind."""
    assert store.choose_kind("auto", 999, 1000) == "exact"
    assert store.choose_kind("auto", 1000, 1000) == "approximate"
    assert store.choose_kind("exact", 10**6, 1000) == "exact"


def test_the_description_and_summary_read_back_as_written(tmp_path: Path) -> None:
    """Mutants of Description.from_dict (fields dropped or stringified None) and of
    UpdateSummary.as_dict (what `search index --json` prints)."""
    summary = Folder(tmp_path, clustered(20)).update()
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    d = index.description
    assert (d.layer, d.pool, d.channels, d.count, d.kind) == ("pool5", "mean", 32, 20, "exact")
    assert d.model == MODEL and isinstance(d.built_at, float) and d.ivf is None
    assert store.Description.from_dict(d.as_dict()) == d
    printed = summary.as_dict()
    assert printed == {
        "index": "pool5-mean",
        "kind": "exact",
        "count": 20,
        "added": 20,
        "changed": 0,
        "removed": 0,
        "unchanged": 0,
        "rebuilt": True,
        "calibrated_recall_at_10": None,
        "failed": 0,
        "failures": [],
        "seconds": round(summary.seconds, 3),
    }
    with pytest.raises(SoundnetError, match="format 0 is not .*--rebuild"):
        store.Description.from_dict({**d.as_dict(), "version": 0})


def test_an_update_with_nothing_new_rewrites_nothing_and_keeps_its_calibration(
    tmp_path: Path,
) -> None:
    """Mutants of update_index's no-op test (removed/changed conditions, `old is None`) and of
    the recall it reports then; `seconds` is a duration."""
    folder = Folder(tmp_path, clustered(300))
    first = folder.update(method="approximate")
    generation = StoredIndex.open(tmp_path, "pool5", "mean").description.generation  # type: ignore[union-attr]
    again = folder.update(method="approximate")
    assert again.recall_at_10 == first.recall_at_10 is not None
    assert 0 <= again.seconds < 600 and 0 <= first.seconds < 600
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None and index.description.generation == generation
    del folder.vectors["clip0004"], folder.stamps["clip0004"]  # only a removal
    removed = folder.update(method="approximate")
    assert (removed.removed, removed.added, removed.count) == (1, 0, 299)
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None and index.description.count == 299
    assert "clip0004" not in {e.key for e in index.entries}


def test_one_file_is_an_index_and_none_is_a_usage_error(tmp_path: Path) -> None:
    """Mutant: `count == 1` for `count == 0` in update_index."""
    assert Folder(tmp_path / "one", clustered(1)).update().count == 1
    with pytest.raises(UsageProblem, match="no pool5 features could be indexed"):
        Folder(tmp_path / "none", clustered(0)).update()


def test_an_indexed_file_that_now_fails_is_removed_not_added(tmp_path: Path) -> None:
    """Mutants of _count_failures and of the failure's reason."""
    folder = Folder(tmp_path, clustered(10))
    folder.update()
    folder.vectors["clip0002"], folder.stamps["clip0002"] = np.full(32, np.nan), 2
    summary = folder.update()
    assert (summary.added, summary.changed, summary.removed, summary.count) == (0, 0, 1, 9)
    ((key, reason),) = summary.failures
    assert key == "clip0002" and reason and reason != "None"


def test_another_architecture_rebuilds(tmp_path: Path) -> None:
    """Mutant: the architecture left out of _model_changed (only the checkpoint compared)."""
    folder = Folder(tmp_path, clustered(10))
    folder.update()
    summary = update_index(
        tmp_path, "pool5", "mean", folder.listing(), folder.load, {**MODEL, "architecture": "x"}
    )
    assert summary.rebuilt and summary.added == 10


def test_progress_counts_the_files_read(tmp_path: Path) -> None:
    """Mutants of the progress callback's arguments in _load_fresh."""
    folder = Folder(tmp_path, clustered(5))
    seen: list[tuple[int, int]] = []
    folder.update(progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_an_update_in_small_blocks_keeps_every_vector_and_counts_each_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutants: ``summary.removed = 1`` for ``+= 1`` in _count_failures (two indexed files that
    now fail counted as one removal); the block loops of _write_vectors (``range(0,
    BLOCK_ROWS)``, the appended rows' slice ``len(kept) - start``), which only show when an
    update copies more than one block of kept and of new rows."""
    monkeypatch.setattr(store, "BLOCK_ROWS", 2)
    data = clustered(12)
    folder = Folder(tmp_path, data[:7])
    folder.update(method="exact")
    failing = {"clip0001", "clip0002"}
    original = folder.load

    def load(entry: Entry) -> np.ndarray:
        if entry.key in failing:
            raise SoundnetError("unreadable")
        return original(entry)

    folder.load = load  # type: ignore[method-assign]
    for key in failing:
        folder.stamps[key] = 2
    for i in range(7, 12):
        folder.vectors[f"clip{i:04d}"] = data[i]
        folder.stamps[f"clip{i:04d}"] = 1
    summary = folder.update(method="exact")
    assert (summary.removed, summary.added, summary.count) == (2, 5, 10)
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None and len(index.entries) == 10
    for entry in index.entries:
        expected = normalise(data[int(entry.key[4:])][None, :])[0]
        np.testing.assert_allclose(index.vectors[index.row_of(entry.key)], expected, rtol=1e-6)


def test_a_failed_update_leaves_no_half_written_generation_and_the_old_index_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutants of the clean-up in update_index (``shutil.rmtree(None, ...)``, the ``except``
    removed): a write that fails half-way must leave the index as it was, with no new generation
    folder beside it, and the next update must succeed."""
    data = clustered(40)
    folder = Folder(tmp_path, data[:30])
    folder.update(method="exact")
    before = StoredIndex.open(tmp_path, "pool5", "mean")
    assert before is not None
    for i in range(30, 40):
        folder.vectors[f"clip{i:04d}"] = data[i]
        folder.stamps[f"clip{i:04d}"] = 1

    def disk_full(*args: object) -> None:
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(store, "_write_entries", disk_full)
        with pytest.raises(OSError, match="No space left"):
            folder.update(method="exact")
    generations = [p.name for p in (tmp_path / store.SEARCH_DIR).iterdir() if p.is_dir()]
    assert generations == [before.description.generation]
    still = StoredIndex.open(tmp_path, "pool5", "mean")
    assert still is not None and still.description.count == 30
    assert query_self(tmp_path, "clip0007") == ("clip0007", pytest.approx(1.0, abs=1e-6))

    assert folder.update(method="exact").count == 40
    generations = [p for p in (tmp_path / store.SEARCH_DIR).iterdir() if p.is_dir()]
    assert len(generations) == 1


class IvfCalls:
    """Records what an update asks of the approximate index: rows added (count, first id) and
    clears."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.added: list[tuple[int, int]] = []
        self.cleared = 0
        add, clear = IvfIndex.add, IvfIndex.clear

        def recording_add(index: IvfIndex, rows: np.ndarray, first_id: int) -> None:
            self.added.append((len(rows), first_id))
            add(index, rows, first_id)

        def recording_clear(index: IvfIndex) -> None:
            self.cleared += 1
            clear(index)

        monkeypatch.setattr(IvfIndex, "add", recording_add)
        monkeypatch.setattr(IvfIndex, "clear", recording_clear)


def test_an_index_that_only_grew_adds_only_the_new_rows_to_its_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutants of ``appended`` in update_index and of ``appended_only`` in _approximate that
    refill every cell although only rows were added: right answers at the cost of re-adding the
    whole index on each update, which appending exists to avoid."""
    data = clustered(360)
    folder = Folder(tmp_path, data[:300])
    folder.update(method="approximate")
    calls = IvfCalls(monkeypatch)
    for i in range(300, 360):
        folder.vectors[f"clip{i:04d}"] = data[i]
        folder.stamps[f"clip{i:04d}"] = 1
    folder.update(method="approximate")
    assert (calls.added, calls.cleared) == ([(60, 300)], 0)
    assert query_self(tmp_path, "clip0330")[0] == "clip0330"


def test_an_index_with_a_removed_row_refills_its_cells_with_the_new_row_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutants that treat an update with a removal as an append (``appended`` always true, or
    ``len(kept) <= count``): the cells would keep the removed row and the old row numbers, so a
    search would answer with the wrong files."""
    data = clustered(301)
    folder = Folder(tmp_path, data[:300])
    folder.update(method="approximate")
    calls = IvfCalls(monkeypatch)
    del folder.vectors["clip0004"], folder.stamps["clip0004"]
    folder.vectors["clip0300"], folder.stamps["clip0300"] = data[300], 1
    summary = folder.update(method="approximate")
    assert (summary.removed, summary.added, summary.count) == (1, 1, 300)
    assert calls.cleared == 1 and calls.added == [(300, 0)]
    for key in ("clip0005", "clip0150", "clip0299", "clip0300"):
        assert query_self(tmp_path, key)[0] == key


def _without_checksums(root: Path) -> None:
    """The description of an index written before checksums were kept."""
    path = root / store.SEARCH_DIR / "pool5-mean.json"
    data = json.loads(path.read_text())
    data["checksums"] = {}
    path.write_text(json.dumps(data))


DAMAGE = {
    "entries missing": (store.ENTRIES, "missing", lambda d: (d / store.ENTRIES).unlink()),
    "entries short": (
        store.ENTRIES,
        "299 entries, the description says 300",
        lambda d: (d / store.ENTRIES).write_text(
            "".join((d / store.ENTRIES).read_text().splitlines(keepends=True)[:-1])
        ),
    ),
    "vectors missing": (store.VECTORS, "missing", lambda d: (d / store.VECTORS).unlink()),
    "vectors float64": (
        store.VECTORS,
        "dtype float64, not float32",
        lambda d: np.save(d / store.VECTORS, np.zeros((300, 32))),
    ),
    "vectors shape": (
        store.VECTORS,
        "shape [300, 16], the description says [300, 32]",
        lambda d: np.save(d / store.VECTORS, np.zeros((300, 16), np.float32)),
    ),
    "vectors truncated": (
        store.VECTORS,
        "38272 bytes, its header asks for 38528",
        lambda d: (d / store.VECTORS).write_bytes((d / store.VECTORS).read_bytes()[:-256]),
    ),
    "ivf missing": (store.IVF, "missing", lambda d: (d / store.IVF).unlink()),
    "entries not json": (
        store.ENTRIES,
        "line 301: JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
        lambda d: (d / store.ENTRIES).open("a").write("not json\n"),
    ),
    "entries not objects": (
        store.ENTRIES,
        "line 1: TypeError: not an object",
        lambda d: (d / store.ENTRIES).write_text(
            "[1, 2]\n" + (d / store.ENTRIES).read_text().split("\n", 1)[1]
        ),
    ),
    "vectors nan": (
        store.VECTORS,
        "it holds NaN or infinite values",
        lambda d: np.save(d / store.VECTORS, np.full((300, 32), np.nan, np.float32)),
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_each_kind_of_damage_is_named_in_full_with_the_command_that_rebuilds(
    tmp_path: Path, case: str
) -> None:
    """Mutants of the store's messages (``"XX...XX"``, upper-cased, ``None``): the message is
    what a user acts on, so it is checked word for word: the file, what is wrong with it and the
    exact command that rebuilds the index."""
    name, why, damage = DAMAGE[case]
    Folder(tmp_path, clustered(300)).update(method="exact" if "nan" in case else "approximate")
    _without_checksums(tmp_path)
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    damage(index.folder)
    with pytest.raises(store.DamagedIndex) as caught:
        opened = StoredIndex.open(tmp_path, "pool5", "mean")
        assert opened is not None
        opened.search(normalise(clustered(1))[:1], 3)
    assert str(caught.value) == (
        f"{index.folder / name}: the search index is damaged ({why}); rebuild it with "
        f"`soundnet search index {tmp_path} --layer pool5 --pool mean --rebuild`"
    )


def test_an_edited_file_and_a_broken_description_are_named_in_full(tmp_path: Path) -> None:
    """Mutants of the checksum and description messages (see the test above)."""
    folder = Folder(tmp_path, clustered(20))
    folder.update(method="exact")
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    entries = index.folder / store.ENTRIES
    entries.write_text(entries.read_text().replace("clip0001", "clip9999"))
    rebuild = (
        f"rebuild it with `soundnet search index {tmp_path} --layer pool5 --pool mean --rebuild`"
    )
    with pytest.raises(store.DamagedIndex) as caught:
        StoredIndex.open(tmp_path, "pool5", "mean")
    assert str(caught.value) == (
        f"{entries}: the search index is damaged (its sha256 is not the one recorded when it was"
        f" written); {rebuild}"
    )
    description = tmp_path / store.SEARCH_DIR / "pool5-mean.json"
    description.write_text('{"version": 1}')
    with pytest.raises(store.DamagedIndex) as caught:
        StoredIndex.open(tmp_path, "pool5", "mean")
    assert str(caught.value) == (
        f"{description}: not a search index description ('layer'); {rebuild}"
    )
    description.write_text('{"version": 7}')
    with pytest.raises(SoundnetError) as refused:
        StoredIndex.open(tmp_path, "pool5", "mean")
    assert str(refused.value) == (
        "search index format 7 is not 1; rebuild it with `soundnet search index --rebuild`"
    )


def test_a_wrong_key_query_or_method_is_refused_in_full(tmp_path: Path) -> None:
    """Mutants of the usage messages of row_of, search and choose_kind."""
    Folder(tmp_path, clustered(5)).update(method="exact")
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    with pytest.raises(UsageProblem) as caught:
        index.row_of("nope")
    assert str(caught.value) == (
        "'nope' is not in the index (keys are the features' paths relative to the folder, "
        "without the layer and extension)"
    )
    with pytest.raises(UsageProblem) as caught:
        index.search(np.ones((1, 7), np.float32), 3)
    assert str(caught.value) == "the query has 7 channels, the index 32"
    with pytest.raises(UsageProblem) as caught:
        store.choose_kind("fast", 10)
    assert (
        str(caught.value) == "the index method must be one of auto, exact, approximate, not 'fast'"
    )
    assert caught.value.parameter == "method"


def test_an_unreadable_vectors_file_or_cells_file_is_named_with_its_cause(tmp_path: Path) -> None:
    """Mutants of the messages for files numpy or faiss cannot read (the file's name or the
    reason dropped, the reason's first line for its last) and for cells holding another count
    of vectors."""
    folder = Folder(tmp_path, clustered(300))
    folder.update(method="approximate")
    _without_checksums(tmp_path)
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None and index.description.ivf is not None
    rebuild = (
        f"rebuild it with `soundnet search index {tmp_path} --layer pool5 --pool mean --rebuild`"
    )

    def damaged(name: str, why: str) -> str:
        return f"{index.folder / name}: the search index is damaged ({why}); {rebuild}"

    cells = index.folder / store.IVF
    whole = cells.read_bytes()
    cells.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RuntimeError) as faiss_error:  # what faiss says, read here directly
        IvfIndex.load(cells, index.description.ivf)
    first_line = str(faiss_error.value).strip().splitlines()[0]
    with pytest.raises(store.DamagedIndex) as caught:
        index.load_ivf(index.description.ivf)
    assert str(caught.value) == damaged(store.IVF, first_line)

    other = Folder(tmp_path / "other", clustered(200, seed=3))
    other.update(method="approximate")
    other_index = StoredIndex.open(tmp_path / "other", "pool5", "mean")
    assert other_index is not None
    cells.write_bytes((other_index.folder / store.IVF).read_bytes())
    with pytest.raises(store.DamagedIndex) as caught:
        index.load_ivf(index.description.ivf)
    assert str(caught.value) == damaged(store.IVF, "200 vectors, the description says 300")

    (index.folder / store.VECTORS).write_bytes(b"garbage, not an .npy file")
    with pytest.raises(store.DamagedIndex) as caught:
        StoredIndex.open(tmp_path, "pool5", "mean")
    message = str(caught.value)
    assert message.startswith(f"{index.folder / store.VECTORS}: the search index is damaged (")
    assert message.endswith(f"); {rebuild}") and "(unreadable: " in message
    assert "magic string" in message  # numpy's reason, not None


def test_large_files_are_hashed_when_an_update_opens_them_not_for_a_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutants: ``>=`` for ``>`` at CHECKSUM_ON_OPEN (a file of exactly the limit is hashed)
    and ``thorough=True`` by default (every query hashing files of gigabytes)."""
    Folder(tmp_path, clustered(20)).update(method="exact")
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    vectors_file = index.folder / store.VECTORS
    data = np.load(vectors_file)
    data[3] = data[4]  # same size, another vector: only the sha256 tells
    np.save(vectors_file, data)
    size = vectors_file.stat().st_size
    monkeypatch.setattr(store, "CHECKSUM_ON_OPEN", size)  # at the limit: still hashed
    with pytest.raises(store.DamagedIndex, match="sha256"):
        StoredIndex.open(tmp_path, "pool5", "mean")
    monkeypatch.setattr(store, "CHECKSUM_ON_OPEN", size - 1)  # above it: a query does not hash
    assert StoredIndex.open(tmp_path, "pool5", "mean") is not None
    with pytest.raises(store.DamagedIndex, match="sha256"):  # an update does
        StoredIndex.open(tmp_path, "pool5", "mean", thorough=True)


def test_an_approximate_index_records_the_checksum_of_its_cells(tmp_path: Path) -> None:
    """Mutant: the cells file left out of the checksums (an edited cells file that faiss still
    reads would answer with wrong rows)."""
    Folder(tmp_path, clustered(300)).update(method="approximate")
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    assert set(index.description.checksums) == {store.VECTORS, store.ENTRIES, store.IVF}
    assert index.description.checksums[store.IVF] == store.file_digest(index.folder / store.IVF)


def test_entries_read_back_as_written_and_failures_are_reported_as_keys_and_errors(
    tmp_path: Path,
) -> None:
    """Mutants of _read_entries (the source read as None), of UpdateSummary.as_dict's failure
    fields and of _load_fresh's reasons: the NaN message, the channel count message, an
    exception without a message named by its type (not NoneType), a message for its type."""
    folder = Folder(tmp_path, clustered(6))
    folder.update(method="exact")
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    assert index.entries == folder.listing()

    folder.vectors["clip0001"], folder.stamps["clip0001"] = np.full(32, np.inf), 2
    folder.vectors["clip0002"], folder.stamps["clip0002"] = np.ones(16), 2
    folder.stamps["clip0003"] = 2
    original = folder.load

    def load(entry: Entry) -> np.ndarray:
        if entry.key == "clip0003":
            raise OSError()
        if entry.key == "clip0004":
            raise ValueError("cannot read clip0004.pool5.npy")
        return original(entry)

    folder.load = load  # type: ignore[method-assign]
    folder.stamps["clip0004"] = 2
    folder.stamps["clip0000"] = 2  # read first: the others are compared with its 32 channels
    summary = folder.update(method="exact")
    assert sorted(summary.failures) == [
        ("clip0001", "features contain NaN or infinite values"),
        ("clip0002", "16 channels where other files have 32"),
        ("clip0003", "OSError"),
        ("clip0004", "cannot read clip0004.pool5.npy"),
    ]
    assert sorted(summary.as_dict()["failures"], key=lambda f: f["key"]) == [
        {"key": key, "error": error} for key, error in sorted(summary.failures)
    ]


def test_a_vector_stored_as_one_row_is_indexed_by_its_channels(tmp_path: Path) -> None:
    """Mutant: ``reshape(None)`` for ``reshape(-1)`` in _load_fresh (a pooled vector saved as
    (1, channels) taken for one channel)."""
    data = clustered(5)
    folder = Folder(tmp_path, data)
    folder.vectors = {key: row[None, :] for key, row in folder.vectors.items()}
    assert folder.update(method="exact").count == 5
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None and index.description.channels == 32


def test_a_new_channel_count_with_a_failing_file_still_reports_it_under_the_indexs_name(
    tmp_path: Path,
) -> None:
    """Mutants of the re-plan after a channel change: its summary dropped (a failing file then
    crashed the update) and the index's name dropped from it."""
    folder = Folder(tmp_path, clustered(8, channels=32))
    folder.update()
    wider = clustered(8, channels=48, seed=1)
    folder.stamps = {key: 2 for key in folder.stamps}
    folder.vectors = {key: wider[i] for i, key in enumerate(sorted(folder.vectors))}
    folder.vectors["clip0005"] = np.full(48, np.nan)
    summary = folder.update()
    assert summary.rebuilt and summary.count == 7
    assert summary.failures == [("clip0005", "features contain NaN or infinite values")]
    assert summary.as_dict()["index"] == "pool5-mean"


def test_a_damaged_index_is_logged_in_one_line_and_built_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mutants of the two warnings (an update finding the index damaged; the cells damaged):
    the file and the damage, without the advice to rebuild that the update follows itself."""
    folder = Folder(tmp_path, clustered(300))
    folder.update(method="approximate")
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    _without_checksums(tmp_path)
    (index.folder / store.IVF).write_bytes((index.folder / store.IVF).read_bytes()[:-64])
    folder.stamps["clip0001"] = 2
    with caplog.at_level(logging.WARNING, logger="soundnet_cli.search.store"):
        folder.update(method="approximate")
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{index.folder / store.IVF}: the search index is damaged (")
    assert warning.endswith("); training it anew")
    caplog.clear()
    index = StoredIndex.open(tmp_path, "pool5", "mean")
    assert index is not None
    (index.folder / store.ENTRIES).unlink()
    with caplog.at_level(logging.WARNING, logger="soundnet_cli.search.store"):
        folder.update(method="approximate")
    assert [r.getMessage() for r in caplog.records] == [
        f"{index.folder / store.ENTRIES}: the search index is damaged (missing); building it anew"
    ]


def test_cells_are_reused_up_to_exactly_four_times_the_rows_they_were_trained_on(
    tmp_path: Path,
) -> None:
    """Mutant: ``<`` for ``<=`` at RETRAIN_GROWTH (cells retrained at exactly four times)."""
    data = clustered(1200)
    folder = Folder(tmp_path, data[:300])
    folder.update(method="approximate")
    trained = StoredIndex.open(tmp_path, "pool5", "mean").description.ivf.trained_rows  # type: ignore[union-attr]
    assert trained == 300
    for i in range(300, 1200):
        folder.vectors[f"clip{i:04d}"], folder.stamps[f"clip{i:04d}"] = data[i], 1
    folder.update(method="approximate")
    grown = StoredIndex.open(tmp_path, "pool5", "mean")
    assert grown is not None and grown.description.count == 4 * trained
    assert grown.description.ivf.trained_rows == trained  # type: ignore[union-attr]
