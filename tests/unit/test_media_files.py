"""The one file walker (media/files.py) and extract's output stems built on it."""

import os
import time
from pathlib import Path

import pytest

from soundnet_cli.errors import UsageProblem
from soundnet_cli.extraction import inputs
from soundnet_cli.extraction.inputs import discover, output_stems
from soundnet_cli.media import files
from soundnet_cli.media.files import FoundFile, find_audio, find_videos, walk


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_every_input_gets_its_own_stem_when_names_differ_only_by_extension(tmp_path):
    for name in ("a.wav", "a.flac", "a.wav.flac", "b.wav", "b.wav.flac"):
        touch(tmp_path / name)
    found = discover([tmp_path])
    keys = {s.path.name: s.key for s in found}
    assert keys == {
        "a.wav": "a.wav",
        "a.flac": "a.flac",
        "a.wav.flac": "a.wav.flac",
        "b.wav": "b",
        "b.wav.flac": "b.wav.flac",  # stripped it would be named like the input b.wav
    }


def test_output_stems_are_distinct_for_any_routes():
    routes = ["x", "x.wav", "x.wav.wav", "x.flac", "y.ogg", "d/x.wav", "d.wav", "d"]
    stems = output_stems(routes)
    assert len(set(stems.values())) == len(routes)
    assert stems["y.ogg"] == "y" and stems["d/x.wav"] == "d/x"


def test_symlinked_duplicates_keep_every_route(tmp_path):
    data = tmp_path / "data"
    for name in ("one.wav", "two.wav"):
        touch(data / "all" / name)
    for split in ("train", "test"):
        (data / split).mkdir()
    os.symlink(data / "all" / "one.wav", data / "train" / "one.wav")
    os.symlink(data / "all" / "two.wav", data / "test" / "two.wav")
    os.symlink(data / "all" / "one.wav", data / "test" / "again.wav")
    found = discover([data])
    assert sorted(s.key for s in found) == ["all/one", "all/two"]  # each file computed once
    routes = sorted(r.key for s in found for r in s.routes)
    assert routes == ["all/one", "all/two", "test/again", "test/two", "train/one"]
    one = next(s for s in found if s.key == "all/one")
    assert sorted(a.key for a in one.aliases) == ["test/again", "train/one"]
    assert {a.path for a in one.aliases} == {
        data / "train" / "one.wav",
        data / "test" / "again.wav",
    }


def test_linked_folders_are_mirrored_but_loops_are_cut(tmp_path):
    touch(tmp_path / "real" / "x.wav")
    os.symlink(tmp_path / "real", tmp_path / "linked")
    os.symlink(tmp_path, tmp_path / "real" / "up")  # a loop back to the top
    routes = sorted(f.rel for f in walk([tmp_path]))
    assert routes == ["linked/x.wav", "real/x.wav"]
    assert len({f.identity for f in walk([tmp_path])}) == 1


def test_walk_filters_and_explicit_files(tmp_path):
    for name in ("b/x.mp4", "a.webm", "c.MKV", "notes.txt", "d.wav"):
        touch(tmp_path / name)
    assert [f.rel for f in walk([tmp_path], extensions=files.VIDEO_EXTENSIONS)] == [
        "a.webm",
        "b/x.mp4",
        "c.MKV",
    ]
    assert [f.rel for f in walk([tmp_path], extensions=(), globs=["*.txt"])] == ["notes.txt"]
    explicit = walk([tmp_path / "notes.txt"])
    assert explicit == [
        FoundFile(str(tmp_path), "notes.txt", str((tmp_path / "notes.txt").resolve()), True)
    ]


def test_missing_paths_are_kept_or_refused(tmp_path):
    with pytest.raises(UsageProblem, match="no such file"):
        walk([tmp_path / "nope.wav"])
    assert find_audio([tmp_path / "nope.wav"]) == [tmp_path / "nope.wav"]


def test_find_audio_and_find_videos_share_the_walker(tmp_path):
    for name in ("b/x.mp4", "a.wav", "b/c.flac"):
        touch(tmp_path / name)
    assert find_audio([tmp_path]) == [tmp_path / "a.wav", tmp_path / "b" / "c.flac"]
    assert find_videos([tmp_path]) == [tmp_path / "b" / "x.mp4"]


def test_discovery_is_linear_in_the_number_of_paths(monkeypatch):
    """100,000 routes: the quadratic stem count took minutes; linear takes well under a second
    (the bound leaves room for a loaded machine)."""
    n = 100_000
    fake = [
        FoundFile("/data", f"d{i % 100}/clip{i}.wav", f"/data/d{i % 100}/clip{i}.wav", False)
        for i in range(n)
    ]
    monkeypatch.setattr(inputs, "walk", lambda *a, **k: fake)
    started = time.perf_counter()
    found = discover(["/data"])
    elapsed = time.perf_counter() - started
    assert len(found) == n and len({s.key for s in found}) == n
    assert elapsed < 10.0, f"{n} paths took {elapsed:.1f} s"
