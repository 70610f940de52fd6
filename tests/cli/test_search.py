"""`soundnet search index / query` over a folder written by `soundnet extract`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ..conftest import tone, write_wav


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def features(run, named_checkpoint, tmp_path):
    """Five tones extracted with a (random, but fixed) checkpoint, pool5."""
    for i, freq in enumerate((220.0, 330.0, 440.0, 660.0, 880.0)):
        write_wav(tmp_path / "audio" / f"tone{i}.wav", tone(2.0, freq=freq))
    out = tmp_path / "feats"
    result = run(
        "extract", str(tmp_path / "audio"), "--out", str(out),
        "--checkpoint", str(named_checkpoint), "--layer", "pool5",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return out


def test_index_then_query_by_key_and_by_audio(run, features, named_checkpoint, tmp_path):
    result = run("search", "index", str(features), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["index"], summary["kind"], summary["count"], summary["added"]) == (
        "pool5-mean", "exact", 5, 5
    )  # fmt: skip
    result = run("search", "query", str(features), "--key", "tone2", "-k", "3", "--json")
    assert result.exit_code == 0, result.stderr
    hits = json.loads(result.stdout)["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["key"] == "tone2" and hits[0]["score"] == pytest.approx(1.0, abs=1e-6)
    assert hits[0]["path"] == str(tmp_path / "audio" / "tone2.wav")
    assert hits[1]["score"] <= hits[0]["score"] and hits[2]["score"] <= hits[1]["score"]

    audio = tmp_path / "audio" / "tone3.wav"
    result = run("search", "query", str(features), str(audio), "--json")
    assert result.exit_code == 0, result.stderr
    hits = json.loads(result.stdout)["results"]
    assert len(hits) == 5
    assert hits[0]["key"] == "tone3" and hits[0]["score"] == pytest.approx(1.0, abs=1e-6)

    table = run("search", "query", str(features), "--key", "tone0")
    assert table.exit_code == 0 and "tone0" in table.stdout and "1.000" in table.stdout


def test_index_is_incremental(run, features, named_checkpoint, tmp_path):
    assert run("search", "index", str(features)).exit_code == 0
    extract = (
        "extract", str(tmp_path / "audio"), "--out", str(features),
        "--checkpoint", str(named_checkpoint), "--layer", "pool5",
    )  # fmt: skip
    assert run(*extract).exit_code == 0  # nothing new: the manifest is rewritten, that is all
    fresh = run("search", "query", str(features), "--key", "tone0")
    assert fresh.exit_code == 0 and "newer than its index" not in flat(fresh.stderr)
    write_wav(tmp_path / "audio" / "tone5.wav", tone(2.0, freq=990.0))
    assert run(*extract).exit_code == 0
    stale = run("search", "query", str(features), "--key", "tone0")
    assert "newer than its index" in flat(stale.stderr)
    summary = json.loads(run("search", "index", str(features), "--json").stdout)
    assert (summary["added"], summary["unchanged"], summary["count"]) == (1, 5, 6)
    hits = json.loads(run("search", "query", str(features), "--key", "tone5", "--json").stdout)
    assert hits["results"][0]["key"] == "tone5" and not hits["stale"]


def test_a_different_model_is_refused(run, features, tmp_path):
    import torch

    from soundnet_cli.students import soundnet8
    from soundnet_cli.weights.checkpoints import save_checkpoint

    assert run("search", "index", str(features)).exit_code == 0
    torch.manual_seed(1)
    other = save_checkpoint(soundnet8(), tmp_path / "other.safetensors")
    audio = str(tmp_path / "audio" / "tone1.wav")
    result = run("search", "query", str(features), audio, "--checkpoint", str(other))
    assert result.exit_code == 2
    assert "is not the model these features were extracted with" in flat(result.stderr)


def test_usage_errors(run, features, tmp_path):
    result = run("search", "query", str(features), "--key", "tone1")
    assert result.exit_code == 2 and "search index" in flat(result.stderr)  # no index yet
    assert run("search", "index", str(features)).exit_code == 0
    audio = str(tmp_path / "audio" / "tone1.wav")
    for args, message in [
        ((), "give an AUDIO_FILE or --key"),
        ((audio, "--key", "tone1"), "give an AUDIO_FILE or --key"),
        (("--key", "nope"), "not in the index"),
        (("--key", "tone1", "--pool", "median"), "'--pool': pooling must be one of"),
    ]:
        result = run("search", "query", str(features), *args)
        assert result.exit_code == 2, args
        assert message in flat(result.stderr), (args, result.stderr)
    result = run("search", "index", str(tmp_path / "audio"))
    assert result.exit_code == 2 and "features.json" in flat(result.stderr)
    result = run("search", "index", str(features), "--method", "fast")
    assert result.exit_code == 2 and "--method" in flat(result.stderr)


def test_unreadable_features_file_is_reported(run, features):
    (features / "tone4.pool5.npy").write_bytes(b"not numpy")
    result = run("search", "index", str(features), "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["count"] == 4 and [f["key"] for f in summary["failures"]] == ["tone4"]


def test_bad_files_are_listed_as_failed_and_the_run_goes_on(run, features):
    """A 1 KB .npy declaring (2**28, 256) and a text file named .npz: failed, not fatal."""
    import io

    import numpy as np

    header = io.BytesIO()
    np.lib.format.write_array(header, np.zeros((1, 256), np.float32))
    head = header.getvalue()[:128].replace(b"(1, 256)", b"(268435456, 256)")
    (features / "huge.pool5.npy").write_bytes(head[: head.index(b"\n") + 1] + b"\0" * 1024)
    (features / "text.npz").write_text("this is not a zip archive\n")
    np.save(features / "tone4.pool5.npy", np.ones((500, 256), np.float32))  # not as extracted
    # A folder that records no format (an older one) is read in every format, .npz included;
    # one that records npy ignores stray archives.
    settings = json.loads((features / "features.json").read_text())
    settings.pop("format")
    (features / "features.json").write_text(json.dumps(settings))
    result = run("search", "index", str(features), "--json")
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["count"] == 4
    failures = {f["key"]: f["error"] for f in summary["failures"]}
    assert sorted(failures) == ["huge", "text", "tone4"]
    assert "the manifest recorded" in failures["tone4"]
    assert "unexpected" not in result.stderr


def test_a_compressed_bomb_is_pooled_in_bounded_memory_or_refused(run, features, monkeypatch):
    """An .npz member that inflates far beyond its file is read a block at a time, and one
    that disagrees with the manifest's shape is refused before it is inflated."""
    import tracemalloc
    import zipfile

    import numpy as np

    from soundnet_cli.search import folder as search_folder

    monkeypatch.setattr(search_folder, "POOL_BLOCK_BYTES", 64 * 1024)
    bomb = features / "bomb.npz"
    with (
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("pool5.npy", "w", force_zip64=True) as member,
    ):
        np.lib.format.write_array_header_1_0(
            member, {"descr": "<f4", "fortran_order": False, "shape": (16384, 1024)}
        )
        zeros = bytes(1024 * 1024)
        for _ in range(64):  # 64 MiB of zeros, a few hundred KB on disk
            member.write(zeros)
    assert bomb.stat().st_size < 2_000_000
    tracemalloc.start()
    vector = search_folder.pool_file(bomb, "pool5", "mean")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert vector.shape == (1024,) and peak < 8 * 2**20  # not the 64 MiB it inflates to
    with __import__("pytest").raises(Exception, match="manifest recorded"):
        search_folder.pool_file(bomb, "pool5", "mean", shape=[3, 1024])


def _index_folder(features):
    from soundnet_cli.search.store import SEARCH_DIR

    description = json.loads((features / SEARCH_DIR / "pool5-mean.json").read_text())
    return features / SEARCH_DIR / description["generation"]


@pytest.mark.parametrize(
    "damage, file",
    [
        ("truncate", "vectors.npy"),
        ("float64", "vectors.npy"),
        ("short", "vectors.npy"),
        ("nan", "vectors.npy"),
        ("json", "entries.jsonl"),
        ("key", "entries.jsonl"),
    ],
)
def test_a_damaged_index_is_refused_naming_the_file_and_rebuilt(
    run, features, damage, file, caplog
):
    import numpy as np

    assert run("search", "index", str(features)).exit_code == 0
    folder = _index_folder(features)
    vectors = folder / "vectors.npy"
    entries = folder / "entries.jsonl"
    if damage == "truncate":
        vectors.write_bytes(vectors.read_bytes()[:-100])
    elif damage == "float64":
        np.save(vectors, np.load(vectors).astype(np.float64))
    elif damage == "short":
        np.save(vectors, np.load(vectors)[:, :100])
    elif damage == "nan":
        data = np.load(vectors)
        data[1] = np.nan
        np.save(vectors, data)
    elif damage == "json":
        entries.write_text(entries.read_text()[:-20] + "\n{broken\n")
    else:
        lines = entries.read_text().splitlines()
        lines[0] = json.dumps({"name": "x"})
        entries.write_text("\n".join(lines) + "\n")
    result = run("search", "query", str(features), "--key", "tone1", "--json")
    assert result.exit_code == 1, result.stdout
    message = flat(result.stderr)
    assert file in message and "damaged" in message and "--rebuild" in message
    assert "unexpected" not in message and "nan" not in result.stdout
    again = run("search", "index", str(features), "--json")  # updating rebuilds it
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["rebuilt"] is True
    assert any("damaged" in r.getMessage() and file in r.getMessage() for r in caplog.records)
    hits = json.loads(run("search", "query", str(features), "--key", "tone1", "--json").stdout)
    assert hits["results"][0]["key"] == "tone1"
    assert hits["results"][0]["score"] == pytest.approx(1.0, abs=1e-6)


def test_max_pooled_index_scores_are_cosines_of_the_max_over_time(run, features):
    """Mutation guarded: `search --pool max` computing the mean over time. The scores must be
    the cosines of each file's maximum over time, computed here from the .npy files."""
    result = run("search", "index", str(features), "--pool", "max", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["index"] == "pool5-max"

    def unit(vector: np.ndarray) -> np.ndarray:
        return vector / np.linalg.norm(vector)

    steps = {f"tone{i}": np.load(features / f"tone{i}.pool5.npy") for i in range(5)}
    assert all(a.ndim == 2 and a.shape[1] == 256 and a.shape[0] > 1 for a in steps.values())
    maxima = {key: unit(a.max(axis=0).astype(np.float64)) for key, a in steps.items()}
    means = {key: unit(a.mean(axis=0, dtype=np.float64)) for key, a in steps.items()}
    result = run("search", "query", str(features), "--key", "tone2", "--pool", "max", "--json")
    assert result.exit_code == 0, result.stderr
    hits = json.loads(result.stdout)["results"]
    assert len(hits) == 5
    for hit in hits:
        assert hit["score"] == pytest.approx(maxima["tone2"] @ maxima[hit["key"]], rel=1e-5)
    # The two poolings give these files different scores, so the check above can tell them apart.
    assert any(
        abs(means["tone2"] @ means[key] - maxima["tone2"] @ maxima[key]) > 1e-3 for key in steps
    )


def test_query_by_audio_mixes_channels_as_the_folder_was_extracted(run, named_checkpoint, tmp_path):
    """Mutation guarded: query-by-audio ignoring the folder's `--mix` (extracting the query's
    first channel where the folder averaged both). A stereo file whose channels differ must find
    itself at cosine 1."""
    for i, (left, right) in enumerate([(220.0, 3000.0), (440.0, 1500.0), (880.0, 660.0)]):
        stereo = np.stack([tone(2.0, freq=left), tone(2.0, freq=right, amp=0.4)], axis=1)
        write_wav(tmp_path / "audio" / f"stereo{i}.wav", stereo)
    out = tmp_path / "feats"
    result = run(
        "extract", str(tmp_path / "audio"), "--out", str(out), "--mix", "mean",
        "--checkpoint", str(named_checkpoint), "--layer", "pool5",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert run("search", "index", str(out)).exit_code == 0
    audio = tmp_path / "audio" / "stereo1.wav"
    result = run("search", "query", str(out), str(audio), "--json")
    assert result.exit_code == 0, result.stderr
    hits = json.loads(result.stdout)["results"]
    assert hits[0]["key"] == "stereo1" and hits[0]["score"] == pytest.approx(1.0, abs=1e-6)
