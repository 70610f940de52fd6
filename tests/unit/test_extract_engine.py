"""The extraction engine: outputs, manifest, resume, bad inputs, formats, pooling, sharding."""

import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import soundnet_cli
from soundnet_cli.errors import LayerError, UsageProblem
from soundnet_cli.extraction.engine import extract
from soundnet_cli.extraction.outputs import MANIFEST
from soundnet_cli.media.audio import load_audio
from soundnet_cli.weights.checkpoints import load_checkpoint

from ..conftest import tone, write_wav
from ..numeric import assert_close_to_scale

TOLERANCE = 1e-4  # relative to the largest magnitude, as the acceptance criterion


@pytest.fixture
def model(named_checkpoint: Path):
    return load_checkpoint(named_checkpoint)


def manifest_rows(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert len({r["key"] for r in rows}) == len(rows), "one row per input"
    return {r["key"]: r for r in rows}


def expected_features(model, path: Path, layer: str, mix: str = "first") -> np.ndarray:
    wave = torch.from_numpy(load_audio(path, mix=mix).samples)
    with torch.inference_mode():
        return model.forward_features(wave, [layer])[layer][0].T.numpy()


def assert_close(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-12)
    assert float(np.abs(ours - expected).max()) / scale <= TOLERANCE


def noise(seconds: float, rate: int, channels: int = 1, amp: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = amp * rng.uniform(-1, 1, (int(seconds * rate), channels))
    return (data[:, 0] if channels == 1 else data).astype(np.float32)


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, dict[str, str], list[str]]:
    """The acceptance mix: good files (some odd) and bad ones, with the reason each must give."""
    root = tmp_path / "in"
    good = []

    def add_good(rel: str, data, rate=22050, subtype="PCM_16"):
        write_wav(root / rel, data, rate, subtype)
        good.append(rel)

    add_good("plain.wav", tone(3.0))
    add_good("nested/deeper/eight bit.wav", noise(2.5, 22050, seed=1), subtype="PCM_U8")
    add_good("nested/24 bit.wav", noise(2.0, 44100, seed=2), 44100, "PCM_24")
    add_good("loud float.wav", noise(2.0, 16000, amp=3.0, seed=3), 16000, "FLOAT")
    add_good("six channels 96k.wav", noise(1.5, 96000, channels=6, seed=4), 96000, "PCM_24")
    add_good("silent.wav", np.zeros(22050 * 2, np.float32))
    add_good("ünïcødé 音 name.flac", noise(2.0, 44100, seed=5), 44100)
    add_good("a/same.wav", tone(1.0, freq=300))
    add_good("b/same.wav", tone(1.0, freq=600))
    sf.write(str(root / "clip.mp3"), noise(3.0, 22050, seed=6), 22050)
    good.append("clip.mp3")

    bad: dict[str, str] = {}
    (root / "empty.wav").write_bytes(b"")
    bad["empty.wav"] = "empty file"
    (root / "text.wav").write_text("this is not audio\n")
    bad["text.wav"] = "cannot read audio"
    truncate(write_wav(root / "truncated.wav", tone(3.0)))
    bad["truncated.wav"] = "truncated"
    sf.write(str(root / "truncated.flac"), noise(3.0, 44100, seed=7), 44100)
    truncate(root / "truncated.flac")
    bad["truncated.flac"] = "cannot read audio"
    sf.write(str(root / "truncated.mp3"), noise(3.0, 22050, seed=8), 22050)
    truncate(root / "truncated.mp3")
    bad["truncated.mp3"] = "truncated"
    nan = noise(1.0, 22050)
    nan[100] = np.nan
    write_wav(root / "nan.wav", nan, subtype="FLOAT")
    bad["nan.wav"] = "NaN"
    write_wav(root / "tiny.wav", tone(0.1))
    bad["tiny.wav"] = "too short"
    os.symlink(root / "nested", root / "nested" / "deeper" / "loop")
    return root, bad, good


def test_messy_folder_good_files_correct_bad_files_explained(model, messy, tmp_path):
    root, bad, good = messy
    out = tmp_path / "out"
    summary = extract([root], ["pool5", "conv2"], out, model=model, batch_size=4, workers=2)
    rows = {row["path"]: row for row in manifest_rows(out).values()}
    assert summary.total == len(good) + len(bad) == len(rows)
    assert summary.extracted == len(good)
    failed = {Path(f.path).relative_to(root).as_posix(): f.error for f in summary.failures}
    assert set(failed) == set(bad)
    for rel, reason in bad.items():
        assert reason in failed[rel], (rel, failed[rel])
        assert rel in failed[rel]  # the message names the file
        row = rows[str(root / rel)]
        assert row["status"] == "failed" and reason in row["error"] and row["outputs"] == []
    for rel in good:
        row = rows[str(root / rel)]
        assert row["status"] == "ok"
        assert row["key"] == str(Path(rel).with_suffix(""))  # no clash among the good ones
        for layer in ("pool5", "conv2"):
            ours = np.load(out / f"{row['key']}.{layer}.npy")
            assert_close(ours, expected_features(model, root / rel, layer))
            assert row["layers"][layer]["shape"] == list(ours.shape)
    assert not list(out.rglob("*.part"))


def test_outputs_mirror_the_tree_and_record_provenance(model, wav_factory, tmp_path):
    first = wav_factory("x/clip.wav", seconds=2.0)
    wav_factory("y/clip.wav", seconds=2.5, freq=880)
    out = tmp_path / "out"
    summary = extract([first.parent.parent], ["pool5"], out, model=model)
    assert summary.extracted == 2 and not summary.failures
    assert np.load(out / "x/clip.pool5.npy").shape[1] == 256
    assert not np.array_equal(
        np.load(out / "x/clip.pool5.npy")[:2], np.load(out / "y/clip.pool5.npy")[:2]
    )
    setup = json.loads((out / "features.json").read_text())
    assert setup["architecture"] == "soundnet8"
    assert len(setup["checkpoint_sha256"]) == 64
    assert setup["layers"]["pool5"] == {
        "channels": 256,
        "stride": 8192,
        "receptive_field": 17438,
        "offset": -6432,
    }
    row = manifest_rows(out)["x/clip"]
    assert row["duration"] == pytest.approx(2.0)
    assert row["outputs"] == ["x/clip.pool5.npy"]
    info = model.feature("pool5")
    assert row["layers"]["pool5"]["first_time"] == pytest.approx(info.step_centres(1)[0])
    assert row["layers"]["pool5"]["step_seconds"] == pytest.approx(8192 / 22050)


def test_rerun_skips_finished_inputs_and_overwrite_redoes_them(model, wav_factory, tmp_path):
    clip = wav_factory("in/a.wav")
    wav_factory("in/b.wav", freq=500)
    out = tmp_path / "out"
    extract([clip.parent], ["pool5"], out, model=model)
    stamp = (out / "a.pool5.npy").stat().st_mtime_ns
    again = extract([clip.parent], ["pool5"], out, model=model)
    assert (again.extracted, again.skipped) == (0, 2)
    assert (out / "a.pool5.npy").stat().st_mtime_ns == stamp
    (out / "b.pool5.npy").unlink()
    partly = extract([clip.parent], ["pool5"], out, model=model)
    assert (partly.extracted, partly.skipped) == (1, 1)
    redo = extract([clip.parent], ["pool5"], out, model=model, overwrite=True)
    assert (redo.extracted, redo.skipped) == (2, 0)
    assert set(manifest_rows(out)) == {"a", "b"}
    # A new layer into the same folder is work to do; the old layer's files stay.
    more = extract([clip.parent], ["conv6"], out, model=model)
    assert more.extracted == 2 and (out / "a.pool5.npy").is_file()


def test_a_different_setup_in_the_same_folder_is_refused(model, wav_factory, tmp_path):
    clip = wav_factory("in/a.wav")
    out = tmp_path / "out"
    extract([clip], ["pool5"], out, model=model)
    with pytest.raises(UsageProblem, match="different setup"):
        extract([clip], ["pool5"], out, model=model, pool="mean")


def test_npz_holds_every_layer_times_and_provenance(model, wav_factory, tmp_path):
    clip = wav_factory("a.wav", seconds=3.0)
    out = tmp_path / "out"
    extract([clip], ["pool5", "conv7"], out, model=model, fmt="npz")
    with np.load(out / "a.npz") as data:
        assert set(data.files) == {"pool5", "pool5_times", "conv7", "conv7_times", "provenance"}
        assert_close(data["pool5"], expected_features(model, clip, "pool5"))
        steps = len(data["conv7"])
        assert np.allclose(data["conv7_times"], model.feature("conv7").step_centres(steps))
        assert json.loads(str(data["provenance"]))["layers"]["conv7"]["stride"] == 32768


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooling_reduces_over_time(model, wav_factory, tmp_path, pool):
    clip = wav_factory("a.wav", seconds=3.0)
    out = tmp_path / "out"
    extract([clip], ["pool5"], out, model=model, pool=pool)
    full = expected_features(model, clip, "pool5")
    reduced = full.mean(axis=0) if pool == "mean" else full.max(axis=0)
    ours = np.load(out / "a.pool5.npy")
    assert ours.shape == (256,)
    assert np.allclose(ours, reduced, rtol=1e-4, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("fmt", ["npy", "npz"])
@pytest.mark.parametrize("pool", [None, "max"])
def test_long_files_are_streamed_to_the_same_features(model, tmp_path, fmt, pool):
    """Streamed and whole-file features are both float32 from the same kernels: they agree to
    float32 rounding (1e-6 of their scale). A chunk plan one sample short of a step's receptive
    field is off by 1-2e-5, which a looser tolerance (1e-4) would accept."""
    path = write_wav(tmp_path / "in" / "long.wav", noise(50.0, 32000, seed=9), 32000)
    short = extract([path], ["pool5", "conv4"], tmp_path / "whole", model=model, fmt=fmt, pool=pool)
    streamed = extract(
        [path],
        ["pool5", "conv4"],
        tmp_path / "chunked",
        model=model,
        fmt=fmt,
        pool=pool,
        chunk_seconds=12.0,
    )
    assert short.extracted == streamed.extracted == 1
    for layer in ("pool5", "conv4"):
        if fmt == "npz":
            a = np.load(tmp_path / "whole" / "long.npz")[layer]
            b = np.load(tmp_path / "chunked" / "long.npz")[layer]
        else:
            a = np.load(tmp_path / "whole" / f"long.{layer}.npy")
            b = np.load(tmp_path / "chunked" / f"long.{layer}.npy")
        assert b.dtype == a.dtype == np.float32 and b.shape == a.shape
        assert_close_to_scale(b, a, 1e-6, f"streamed {layer}")
    assert not (tmp_path / "chunked" / ".scratch-rank0").exists()


def test_unknown_layer_is_a_usage_error(model, wav_factory, tmp_path):
    with pytest.raises(LayerError):
        extract([wav_factory()], ["pool9"], tmp_path / "out", model=model)


def test_stale_temporaries_from_a_killed_run_are_removed(model, wav_factory, tmp_path):
    clip = wav_factory("in/a.wav")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a.pool5.npy.abc123.part"
    stale.write_bytes(b"half")
    unrelated = out / ".other.part"
    unrelated.write_bytes(b"not ours")
    scratch = out / ".scratch-rank0"
    scratch.mkdir()
    (scratch / "pool5.npy").write_bytes(b"half")
    extract([clip.parent], ["pool5"], out, model=model)
    assert not stale.exists() and unrelated.exists() and not scratch.exists()


def test_ranks_split_the_work_and_merge_one_manifest(model, wav_factory, tmp_path):
    for i in range(5):
        wav_factory(f"in/c{i}.wav", freq=300 + 50 * i)
    out = tmp_path / "out"
    first = extract([tmp_path / "in"], ["pool5"], out, model=model, rank=0, world_size=2)
    second = extract([tmp_path / "in"], ["pool5"], out, model=model, rank=1, world_size=2)
    assert (first.total, second.total) == (3, 2)
    rows = manifest_rows(out)
    assert sorted(rows) == [f"c{i}" for i in range(5)]
    assert {r["rank"] for r in rows.values()} == {0, 1}


def test_library_api_is_exported_lazily_and_callable(model, wav_factory, tmp_path):
    clip = wav_factory("a.wav")
    summary = soundnet_cli.extract([clip], ["pool5"], tmp_path / "out", model=model)
    assert summary.extracted == 1
    import soundnet_cli.extraction.engine as module

    assert soundnet_cli.extract([clip], ["pool5"], tmp_path / "out", model=model).skipped == 1
    assert soundnet_cli.extract is module.extract  # the public name is the function itself
    assert type(module) is types.ModuleType  # no module swaps its class or sys.modules entry
    feats = soundnet_cli.extract_array(tone(2.0, 44100), 44100, ["pool5"], model=model)
    assert feats["pool5"].shape[1] == 256


def test_manifest_survives_a_torn_journal_line(model, wav_factory, tmp_path):
    clip = wav_factory("in/a.wav")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".manifest.journal.jsonl").write_text('\n{"key": "half-writ')
    extract([clip.parent], ["pool5"], out, model=model)
    assert list(manifest_rows(out)) == ["a"]
    shutil.rmtree(out)


def test_the_model_thread_decodes_while_the_workers_lag(model, wav_factory, tmp_path, monkeypatch):
    """When the next input is not decoded yet, the model's thread decodes one no worker has
    started rather than wait; every output is still right and listed once."""
    import threading
    import time

    from soundnet_cli.extraction import engine

    paths = [
        wav_factory(f"clip{i}.wav", seconds=1.0 + i % 3 * 0.25, freq=200.0 + 50 * i)
        for i in range(12)
    ]
    where: dict[str, str] = {}
    original = engine._Extractor._decode

    def slow_in_workers(self, source):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.2)  # a worker far slower than the model
        where[source.path.name] = threading.current_thread().name
        return original(self, source)

    monkeypatch.setattr(engine._Extractor, "_decode", slow_in_workers)
    out = tmp_path / "out"
    summary = extract(paths, ["pool5"], out, model=model, workers=1, batch_size=4)
    assert summary.extracted == 12 and not summary.failures
    assert sorted(where) == sorted(p.name for p in paths)
    assert "MainThread" in where.values() and any(w != "MainThread" for w in where.values())
    rows = manifest_rows(out)
    assert len(rows) == 12
    for path in paths:
        ours = np.load(out / f"{path.stem}.pool5.npy")
        assert_close(ours, expected_features(model, path, "pool5"))
