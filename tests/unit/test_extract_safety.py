"""extract loses nothing: distinct outputs, symlinked routes, one run per folder, trustworthy
resume, non-finite features, clear errors (issue 12, items 3, 4, 6, 7 and 13)."""

import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.extraction.engine import extract
from soundnet_cli.extraction.outputs import MANIFEST, FeatureManifest
from soundnet_cli.weights.checkpoints import load_checkpoint

from ..conftest import tone, write_wav


@pytest.fixture
def model(named_checkpoint: Path):
    return load_checkpoint(named_checkpoint)


def rows(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in (json.loads(x) for x in (out / MANIFEST).read_text().splitlines())}


def test_inputs_differing_only_by_extension_each_keep_their_features(model, tmp_path):
    src = tmp_path / "in"
    for name, freq in (("a.wav", 200.0), ("a.flac", 500.0), ("a.wav.flac", 900.0)):
        write_wav(src / name, tone(1.0, freq=freq))
    summary = extract([src], ["conv1"], tmp_path / "out", model=model, workers=1)
    assert summary.extracted == 3
    outputs = sorted(p.name for p in (tmp_path / "out").glob("*.npy"))
    assert outputs == ["a.flac.conv1.npy", "a.wav.conv1.npy", "a.wav.flac.conv1.npy"]
    arrays = [np.load(tmp_path / "out" / name) for name in outputs]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(arrays[i], arrays[j])  # three different tones, three outputs
    assert set(rows(tmp_path / "out")) == {"a.flac", "a.wav", "a.wav.flac"}


def test_every_symlinked_route_gets_outputs_and_a_row(model, tmp_path):
    data = tmp_path / "data"
    write_wav(data / "all" / "one.wav", tone(1.0))
    (data / "train").mkdir()
    (data / "test").mkdir()
    os.symlink(data / "all" / "one.wav", data / "train" / "one.wav")
    os.symlink(data / "all" / "one.wav", data / "test" / "one.wav")
    out = tmp_path / "out"
    summary = extract([data], ["conv1"], out, model=model, workers=1)
    assert (summary.total, summary.extracted) == (3, 3)
    first = np.load(out / "all" / "one.conv1.npy")
    for split in ("train", "test"):
        np.testing.assert_array_equal(np.load(out / split / "one.conv1.npy"), first)
    table = rows(out)
    assert set(table) == {"all/one", "train/one", "test/one"}
    assert all(r["status"] == "ok" for r in table.values())
    assert table["train/one"]["path"].endswith("train/one.wav")
    # Resume: a lost copy is restored from the finished file, not recomputed.
    (out / "test" / "one.conv1.npy").unlink()
    again = extract([data], ["conv1"], out, model=model, workers=1)
    assert (again.extracted, again.skipped) == (1, 2)
    np.testing.assert_array_equal(np.load(out / "test" / "one.conv1.npy"), first)


def test_a_second_run_into_a_busy_folder_stops_without_touching_the_first(model, tmp_path):
    write_wav(tmp_path / "in" / "x.wav", tone(1.0))
    out = tmp_path / "out"
    out.mkdir()
    part = out / ".x.conv1.npy.abc.part"  # the first run's output in progress
    part.write_bytes(b"in progress")
    with open(out / ".extract-rank0.lock", "a") as held:  # the first run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SoundnetError, match="in use by another `soundnet extract`"):
            extract([tmp_path / "in"], ["conv1"], out, model=model, workers=1)
        assert part.exists()
    assert extract([tmp_path / "in"], ["conv1"], out, model=model, workers=1).extracted == 1


def test_a_later_layer_keeps_the_earlier_layers_in_the_manifest(model, tmp_path):
    write_wav(tmp_path / "in" / "x.wav", tone(1.0))
    out = tmp_path / "out"
    extract([tmp_path / "in"], ["conv1"], out, model=model, workers=1)
    extract([tmp_path / "in"], ["conv2"], out, model=model, workers=1)
    row = rows(out)["x"]
    assert set(row["layers"]) == {"conv1", "conv2"}
    assert sorted(row["outputs"]) == ["x.conv1.npy", "x.conv2.npy"]
    assert set(FeatureManifest(out).rows()["x"]["layers"]) == {"conv1", "conv2"}


@pytest.mark.parametrize("damage", ["truncate", "replace"])
def test_resume_redoes_a_damaged_output_and_says_so(model, tmp_path, damage):
    write_wav(tmp_path / "in" / "x.wav", tone(1.0))
    out = tmp_path / "out"
    extract([tmp_path / "in"], ["conv1"], out, model=model, workers=1)
    target = out / "x.conv1.npy"
    good = np.load(target)
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    else:
        np.save(target, np.zeros((3, good.shape[1]), np.float32))
    summary = extract([tmp_path / "in"], ["conv1"], out, model=model, workers=1)
    assert (summary.extracted, summary.skipped) == (1, 0)
    assert len(summary.redone) == 1 and "x.conv1.npy" in summary.redone[0]
    assert summary.as_dict()["redone"] == summary.redone
    np.testing.assert_array_equal(np.load(target), good)


def test_non_finite_features_are_a_failure_not_an_output(model, tmp_path):
    write_wav(tmp_path / "in" / "huge.wav", np.full(22050, 1e38, np.float32), subtype="FLOAT")
    write_wav(tmp_path / "in" / "fine.wav", tone(1.0))
    out = tmp_path / "out"
    summary = extract([tmp_path / "in"], ["conv1"], out, model=model, workers=1)
    assert summary.extracted == 1 and len(summary.failures) == 1
    assert "not finite" in summary.failures[0].error
    assert not (out / "huge.conv1.npy").exists()
    assert rows(out)["huge"]["status"] == "failed"


def test_nan_weights_fail_streamed_inputs_too(model, tmp_path):
    with torch.no_grad():
        model.blocks.conv1.conv.weight.fill_(float("nan"))
    write_wav(tmp_path / "in" / "long.wav", tone(3.0))
    out = tmp_path / "out"
    summary = extract([tmp_path / "in"], ["conv1"], out, model=model, workers=1, chunk_seconds=1)
    assert len(summary.failures) == 1 and "not finite" in summary.failures[0].error
    assert not list(out.glob("*.npy")) and not list(out.glob(".*.part"))


def test_bad_output_folders_and_chunk_sizes_are_one_line_errors(model, tmp_path):
    write_wav(tmp_path / "in" / "x.wav", tone(1.0))
    with pytest.raises(UsageProblem, match="chunk seconds"):
        extract([tmp_path / "in"], ["conv1"], tmp_path / "o", model=model, chunk_seconds=np.inf)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageProblem, match="is a file"):
        extract([tmp_path / "in"], ["conv1"], tmp_path / "file", model=model)


def test_a_read_only_output_folder_is_a_one_line_error(model, tmp_path, monkeypatch):
    write_wav(tmp_path / "in" / "x.wav", tone(1.0))
    out = tmp_path / "ro"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(  # root ignores modes, so the check is simulated
        os, "access", lambda p, m: False if Path(p) == out else real_access(p, m)
    )
    with pytest.raises(SoundnetError, match="cannot write to the output folder"):
        extract([tmp_path / "in"], ["conv1"], out, model=model)
    shutil.rmtree(out)


def test_symlinked_routes_on_resume_record_nothing_twice_and_restore_each_copy(model, tmp_path):
    """Mutations killed in ``FeatureFolder.plan``'s routes loop: a finished route's row
    appended again on every resume (or a recovered one never written, or written as None); the
    count of restored copies (``mirrored = 1``); the routes' check given no plan to report
    damage in (it failed only when a copy was damaged)."""
    data = tmp_path / "data"
    write_wav(data / "all" / "one.wav", tone(1.0))
    for split in ("train", "test"):
        (data / split).mkdir()
        os.symlink(data / "all" / "one.wav", data / split / "one.wav")
    out = tmp_path / "out"
    extract([data], ["conv1"], out, model=model, workers=1)
    first = np.load(out / "all" / "one.conv1.npy")
    manifest = (out / MANIFEST).read_text()
    lines = [line for line in manifest.splitlines() if json.loads(line)["key"] != "train/one"]
    (out / MANIFEST).write_text("".join(f"{line}\n" for line in lines))
    again = extract([data], ["conv1"], out, model=model, workers=1)
    assert (again.extracted, again.skipped) == (0, 3)
    assert rows(out)["train/one"]["status"] == "ok"  # its row written again
    recorded = (out / MANIFEST).read_text()
    assert extract([data], ["conv1"], out, model=model, workers=1).skipped == 3
    assert (out / MANIFEST).read_text() == recorded  # nothing recorded twice
    (out / "test" / "one.conv1.npy").unlink()  # one copy lost
    train = out / "train" / "one.conv1.npy"
    damaged = train.read_bytes()[:-8]
    train.unlink()  # the copy may be a link to the finished file: damage the copy alone
    train.write_bytes(damaged)
    restored = extract([data], ["conv1"], out, model=model, workers=1)
    assert (restored.extracted, restored.skipped) == (2, 1)
    assert len(restored.redone) == 1 and "train/one.conv1.npy: truncated" in restored.redone[0]
    for split in ("train", "test"):
        np.testing.assert_array_equal(np.load(out / split / "one.conv1.npy"), first)
