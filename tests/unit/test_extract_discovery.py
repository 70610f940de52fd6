"""Finding inputs: recursion, filters, collision-free output stems, symlink loops, sharding."""

import os
from pathlib import Path

import pytest

from soundnet_cli.errors import UsageProblem
from soundnet_cli.extraction.inputs import discover, shard
from soundnet_cli.extraction.outputs import output_names


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for rel in [
        "a/x.wav",
        "b/x.wav",
        "b/deep/er/y.flac",
        "song with spaces.mp3",
        "ünïcødé 音.ogg",
        "same.wav",
        "same.flac",
        "notes.txt",
        "UPPER.WAV",
    ]:
        touch(root / rel)
    os.symlink(root, root / "a" / "loop")  # a symlink loop back to the top
    return root


def keys(sources):
    return [s.key for s in sources]


def test_recursive_mirror_with_no_collisions(tree: Path):
    found = discover([tree])
    assert keys(found) == [
        "UPPER",
        "a/x",
        "b/deep/er/y",
        "b/x",
        "same.flac",
        "same.wav",
        "song with spaces",
        "ünïcødé 音",
    ]
    assert len({s.key for s in found}) == len(found)
    stems = [n for s in found for n in output_names(s.key, ["pool5"], "npy")]
    assert "a/x.pool5.npy" in stems and "b/x.pool5.npy" in stems


def test_extension_and_glob_filters(tree: Path):
    assert keys(discover([tree], extensions=["flac"])) == ["b/deep/er/y", "same"]
    assert keys(discover([tree], extensions=[".txt"])) == ["notes"]
    assert keys(discover([tree], globs=["b/*"])) == ["b/deep/er/y", "b/x"]
    # Extensions ignore case; glob patterns do not.
    assert keys(discover([tree], globs=["*.wav"], extensions=["wav"])) == ["a/x", "b/x", "same"]


def test_several_roots_share_their_common_folder(tree: Path):
    found = discover([tree / "b", tree / "same.wav", tree / "b" / "x.wav"])
    assert keys(found) == ["b/deep/er/y", "b/x", "same"]


def test_files_reached_through_links_are_read_once_by_the_shortest_route(tree: Path):
    found = discover([tree / "a", tree / "b"])
    assert "b/x" in keys(found) and "a/loop/b/x" not in keys(found)
    assert "a/loop/UPPER" in keys(found)  # only reachable through the link: kept


def test_a_single_file_maps_to_its_stem_and_is_kept_whatever_its_extension(tree: Path):
    assert keys(discover([tree / "notes.txt"])) == ["notes"]


def test_missing_path_is_a_usage_error(tmp_path: Path):
    with pytest.raises(UsageProblem, match="no such file"):
        discover([tmp_path / "nope"])


def test_sharding_is_a_deterministic_partition(tree: Path):
    found = discover([tree])
    parts = [shard(found, r, 3) for r in range(3)]
    assert sorted(keys([s for p in parts for s in p])) == sorted(keys(found))
    assert parts == [shard(discover([tree]), r, 3) for r in range(3)]
