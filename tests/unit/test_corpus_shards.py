"""Tar shards (corpus/shards.py): the WebDataset layout, one reader over directories and tars,
lossless conversion both ways, and bad shards (truncated, foreign, unsafe member names)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.corpus.format import (
    ClipData,
    Corpus,
    CorpusError,
    CorpusManifest,
    HeadInfo,
    ShardWriter,
    VideoRecord,
    write_manifest,
)
from soundnet_cli.corpus.shards import (
    convert,
    expand_braces,
    open_shard,
    shard_samples,
    verify,
)

from ..distill_helpers import tone_corpus


def two_rank_corpus(root: Path, teacher: str = "vgg16-imagenet") -> Path:
    """Two ranks, two heads, a failure per rank and clips of different lengths."""
    manifest = CorpusManifest(
        sample_rate=100,
        clip_seconds=4.0,
        frame_interval=1.0,
        frame_at="centre",
        mix="first",
        teachers=({"name": teacher}, {"name": "resnet50-places"}),
        heads=(
            HeadInfo("objects", teacher, ("cat", "dog", "bird")),
            HeadInfo("scenes", "resnet50-places", ("beach", "forest")),
        ),
    )
    write_manifest(root, manifest)
    rng = np.random.default_rng(1)
    for rank in (0, 1):
        writer = ShardWriter(root, manifest, rank)
        for v in range(3):
            clips = []
            for c, frames in enumerate((4, 2)):
                objects = rng.dirichlet(np.ones(3), frames).astype(np.float32)
                scenes = rng.dirichlet(np.ones(2), frames).astype(np.float32)
                audio = rng.integers(-32768, 32767, frames * 100, dtype=np.int16)
                times = [c * 4 + k + 0.5 for k in range(frames)]
                clips.append(
                    ClipData(c * 4.0, audio, times, {"objects": objects, "scenes": scenes})
                )
            writer.add_video(VideoRecord(f"/v/{rank}-{v}.mp4", f"{rank}-{v}.mp4", 6.0), clips)
            if v == 1:
                writer.flush()
        writer.add_failure(f"/v/bad{rank}.mp4", f"bad{rank}.mp4", f"bad{rank}.mp4: empty")
        writer.flush()
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def dirs(tmp_path) -> Path:
    return two_rank_corpus(tmp_path / "dirs")


@pytest.fixture
def tars(tmp_path, dirs) -> Path:
    convert(dirs, tmp_path / "tars", "shards")
    return tmp_path / "tars"


def test_round_trip_is_equal_bit_for_bit(tmp_path, dirs, tars):
    names = sorted(os.listdir(tars / "shards"))
    assert names == [
        f"rank0000{r}-00000{n}.{ext}" for r in (0, 1) for n in (1, 2) for ext in ("json", "tar")
    ]
    back = convert(tars, tmp_path / "back", "dirs")
    assert back.shards == 4 and back.clips == 12
    assert files_of(tmp_path / "back") == files_of(dirs)
    # the tone corpus too (one head, 22,050 Hz)
    tone = tone_corpus(tmp_path / "tone")
    convert(tone, tmp_path / "tone-tar", "shards")
    convert(tmp_path / "tone-tar", tmp_path / "tone-back", "dirs")
    assert files_of(tmp_path / "tone-back") == files_of(tone)


def test_one_reader_over_both_storages(dirs, tars):
    a, b = Corpus(dirs), Corpus(tars)
    assert len(a) == len(b) == 12
    assert a.videos.keys() == b.videos.keys() and a.failures.keys() == b.failures.keys()
    for i in range(len(a)):
        assert a.clips[i].video == b.clips[i].video
        assert a.clips[i].frame_times == b.clips[i].frame_times
        assert np.array_equal(a[i].audio, b[i].audio) and b[i].audio.dtype == np.int16
        for head in ("objects", "scenes"):
            assert np.array_equal(a[i].posteriors[head], b[i].posteriors[head])
    summary_a, summary_b = a.summary(), b.summary()
    summary_a.pop("path"), summary_b.pop("path")
    assert summary_a == summary_b
    assert verify(a) == [] and verify(b) == []


def test_conversion_resumes_and_refuses_another_corpus(tmp_path, dirs, tars):
    again = convert(dirs, tars, "shards")
    assert again.shards == 0 and again.skipped == 4
    (tars / "shards" / ".rank00000-000009.abcd.tar.tmp").write_bytes(b"partial")
    convert(dirs, tars, "shards")
    assert not list((tars / "shards").glob(".*"))  # a stale temporary file is removed
    other = two_rank_corpus(tmp_path / "other", teacher="alexnet-imagenet")
    with pytest.raises(Exception, match="another corpus"):
        convert(other, tars, "shards")


def test_a_shard_reads_with_tar_and_webdataset(tars):
    shard = tars / "shards" / "rank00000-000001.tar"
    with tarfile.open(shard) as tar:
        names = tar.getnames()
    key = "rank00000-000001-000000"
    assert names[:4] == [
        f"{key}.json",
        f"{key}.audio.npy",
        f"{key}.objects.npy",
        f"{key}.scenes.npy",
    ]
    if shutil.which("tar"):
        listed = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True)
        assert listed.returncode == 0 and listed.stdout.split() == names
    wds = pytest.importorskip("webdataset", reason="webdataset is not installed (optional)")
    samples = list(wds.WebDataset(str(shard), shardshuffle=False).decode())
    reference = Corpus(tars)
    assert len(samples) == 4
    for i, sample in enumerate(samples):
        assert sample["__key__"] == f"rank00000-000001-{i:06d}"
        assert np.array_equal(sample["audio.npy"], reference[i].audio)
        assert np.array_equal(sample["objects.npy"], reference[i].posteriors["objects"])
        assert sample["json"]["video"] == reference.clips[i].video
        assert sample["json"]["frame_times"] == list(reference.clips[i].frame_times)


def test_sequential_reader_matches_the_index(tars):
    corpus = Corpus(tars)
    samples = list(
        shard_samples(
            open_shard(str(tars / "shards" / "rank00001-000002.tar")), "x", corpus.manifest
        )
    )
    first = corpus.clips.index(next(c for c in corpus.clips if c.shard == "rank00001-000002.tar"))
    for n, sample in enumerate(samples):
        assert np.array_equal(sample.audio, corpus[first + n].audio)
        assert sample.info["start"] == corpus.clips[first + n].start


def test_truncated_shard_is_one_line(tars):
    shard = tars / "shards" / "rank00000-000002.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match="truncated") as caught:
        Corpus(tars)
    assert "\n" not in str(caught.value)
    with pytest.raises(CorpusError, match="truncated"):
        list(shard_samples(open_shard(str(shard)), str(shard), manifest_of(tars)))


def manifest_of(root: Path):
    from soundnet_cli.corpus.format import read_manifest

    return read_manifest(root)


def test_corrupt_header_is_one_line(tars):
    shard = tars / "shards" / "rank00000-000001.tar"
    data = bytearray(shard.read_bytes())
    data[2 * 512 + 10] ^= 0xFF  # a byte of the second member's name: its checksum fails
    shard.write_bytes(bytes(data))
    problems = verify(Corpus(tars))
    assert len(problems) == 1 and "rank00000-000001.tar" in problems[0]
    assert "corrupt" in problems[0] or "damaged" in problems[0]


def test_a_shard_of_another_corpus_is_refused(tmp_path, tars):
    other = two_rank_corpus(tmp_path / "other", teacher="alexnet-imagenet")
    convert(other, tmp_path / "other-tar", "shards")
    stray = tmp_path / "other-tar" / "shards"
    for ext in ("tar", "json"):
        shutil.copy(stray / f"rank00000-000001.{ext}", tars / "shards" / f"rank00005-000001.{ext}")
    with pytest.raises(CorpusError, match="another corpus"):
        Corpus(tars)


def evil_shard(path: Path, member: str) -> None:
    """Rename the shard's second member (its first clip's audio) to ``member``: every offset
    stays where the index says."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for n, (info, data) in enumerate(members):
            if n == 1:
                info.name = member
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("member", ["../x.audio.npy", "/tmp/x.audio.npy", "sub/x.audio.npy"])
def test_a_member_path_is_never_written_outside(tmp_path, tars, member):
    """Member names are never paths: a shard naming ``../x`` is refused before any write."""
    shard = tars / "shards" / "rank00000-000001.tar"
    evil_shard(shard, member)
    with pytest.raises(CorpusError, match="not KEY.EXT") as caught:
        convert(tars, tmp_path / "out" / "corpus", "dirs")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out" / "x.audio.npy").exists() and not Path("/tmp/x.audio.npy").exists()
    assert not (tmp_path / "out" / "corpus" / "shards" / "rank00000-000001").exists()
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == sorted(
        ["corpus", "manifest.json", "shards"]
    )
    with pytest.raises(CorpusError, match="not KEY.EXT"):
        list(shard_samples(open_shard(str(shard)), "x", manifest_of(tars)))


def test_brace_patterns():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/r{1..2}.tar") == ["a/r1.tar", "a/r2.tar", "b/r1.tar", "b/r2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_index_is_written_before_the_tar(tmp_path, dirs, monkeypatch):
    """A crash between the two renames leaves an index without a tar, which readers ignore."""
    real = os.rename
    calls = []

    def rename(a, b):
        calls.append(Path(b).name)
        if str(b).endswith(".tar"):
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        convert(dirs, tmp_path / "t", "shards")
    monkeypatch.setattr(os, "rename", real)
    assert calls[-2:] == ["rank00000-000001.json", "rank00000-000001.tar"]
    assert len(Corpus(tmp_path / "t")) == 0
    assert json.loads((tmp_path / "t" / "shards" / "rank00000-000001.json").read_text())
    assert convert(dirs, tmp_path / "t", "shards").shards == 4


def test_the_shard_writer_commits_tar_shards_and_numbers_after_either_form(tmp_path):
    """What `prepare --engine ray` writes: whole tar shards through the rank's ShardWriter; a
    later writer of either form continues the numbering (no `rankR-N` and `rankR-N.tar` pair),
    and a killed tar writer's temporary file is removed by the next writer of that rank."""
    from soundnet_cli.corpus.format import ShardWriter, VideoRecord, write_manifest
    from soundnet_cli.corpus.shards import tar_committer

    from .test_corpus import manifest, random_clip

    m = manifest()
    write_manifest(tmp_path, m)
    rng = np.random.default_rng(0)
    clips = {key: [random_clip(rng, 2)] for key in ("/v/a", "/v/b", "/v/c")}
    tars = ShardWriter(tmp_path, m, 0, 1, tar_committer(m))  # a shard a video
    for key in ("/v/a", "/v/b"):
        tars.add_video(VideoRecord(key, key, 2.0), clips[key])
    stale = tmp_path / "shards" / ".rank00000-000003.abcd1234.tar.tmp"
    stale.write_bytes(b"partial")
    dirs = ShardWriter(tmp_path, m, 0, 1)
    assert not stale.exists()
    dirs.add_video(VideoRecord("/v/c", "/v/c", 2.0), clips["/v/c"])
    corpus = Corpus(tmp_path)
    assert corpus.shards == ["rank00000-000001.tar", "rank00000-000002.tar", "rank00000-000003"]
    assert verify(corpus) == []
    for sample in corpus:
        written = clips[sample.ref.video][0]
        assert np.array_equal(sample.audio, written.audio)
        for head, values in written.posteriors.items():
            assert np.array_equal(sample.posteriors[head], values.astype(np.float16))
