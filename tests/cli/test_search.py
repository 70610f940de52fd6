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
        (("--key", "tone1", "--pool", "median"), "--pool must be one of"),
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
