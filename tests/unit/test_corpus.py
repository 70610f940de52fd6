"""The corpus format: exact round trips, shards committed whole, resuming, several ranks."""

from __future__ import annotations

import json
import pickle

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
    frame_boundary,
    write_manifest,
)
from soundnet_cli.errors import UsageProblem

HEADS = (
    HeadInfo("objects", "t1", ("cat", "dog", "bird")),
    HeadInfo("scenes", "t2", ("beach", "forest")),
)


def manifest(**changes) -> CorpusManifest:
    base = dict(
        sample_rate=100,
        clip_seconds=4.0,
        frame_interval=1.0,
        frame_at="centre",
        mix="first",
        teachers=({"name": "t1", "provenance": {"weights": "a"}}, {"name": "t2"}),
        heads=HEADS,
    )
    return CorpusManifest(**(base | changes))


def random_clip(rng, frames: int, start: float = 0.0) -> ClipData:
    posteriors = {}
    for head in HEADS:
        p = rng.random((frames, head.size)).astype(np.float32)
        posteriors[head.name] = p / p.sum(axis=1, keepdims=True)
    return ClipData(
        start,
        rng.integers(-32768, 32767, frames * 100, dtype=np.int16),
        [start + k + 0.5 for k in range(frames)],
        posteriors,
    )


def write_videos(root, m, rank, videos, shard_bytes=1 << 30, seed=0):
    rng = np.random.default_rng(seed)
    writer = ShardWriter(root, m, rank, shard_bytes)
    written = {}
    for key, frames_per_clip in videos:
        clips = [random_clip(rng, f, 4.0 * i) for i, f in enumerate(frames_per_clip)]
        writer.add_video(VideoRecord(key, key, float(sum(frames_per_clip))), clips)
        written[key] = clips
    writer.flush()
    return written


def test_round_trip_is_exact(tmp_path):
    m = manifest()
    write_manifest(tmp_path, m)
    written = write_videos(tmp_path, m, 0, [("/v/a", [4, 4, 2]), ("/v/b", [3])], shard_bytes=2000)
    corpus = Corpus(tmp_path)
    assert corpus.manifest == m
    assert len(corpus.shards) > 1  # small shards: the video set spans several
    assert len(corpus) == 4 and set(corpus.videos) == {"/v/a", "/v/b"}
    seen = {}
    for sample in corpus:
        seen.setdefault(sample.ref.video, []).append(sample)
    for key, clips in written.items():
        for clip, sample in zip(clips, seen[key], strict=True):
            assert sample.audio.dtype == np.int16 and np.array_equal(sample.audio, clip.audio)
            assert list(sample.ref.frame_times) == clip.frame_times
            assert sample.ref.start == clip.start
            for head in HEADS:
                got = sample.posteriors[head.name]
                assert got.dtype == np.float16
                assert np.array_equal(got, clip.posteriors[head.name].astype(np.float16))
    assert corpus.seconds == pytest.approx(13.0)
    # the arrays are memory maps, and a corpus pickles (for DataLoader workers) without them
    assert isinstance(corpus[0].audio.base, np.memmap) or isinstance(corpus[0].audio, np.memmap)
    clone = pickle.loads(pickle.dumps(corpus))
    assert np.array_equal(clone[3].audio, corpus[3].audio)


def test_failures_are_recorded_and_superseded(tmp_path):
    m = manifest()
    write_manifest(tmp_path, m)
    writer = ShardWriter(tmp_path, m, 0)
    writer.add_failure("/v/bad", "bad.mp4", "bad.mp4: the video has no audio stream")
    writer.add_failure("/v/flaky", "flaky.mp4", "flaky.mp4: cannot open")
    writer.flush()
    write_videos(tmp_path, m, 0, [("/v/flaky", [2])])  # a later retry succeeded
    corpus = Corpus(tmp_path)
    assert list(corpus.failures) == ["/v/bad"]
    assert corpus.failures["/v/bad"]["reason"].endswith("no audio stream")
    assert corpus.finished() == {"/v/bad", "/v/flaky"}


def test_uncommitted_shards_are_invisible_and_cleaned(tmp_path):
    m = manifest()
    write_manifest(tmp_path, m)
    write_videos(tmp_path, m, 0, [("/v/a", [1])])
    stale = tmp_path / "shards" / ".rank00000-000002.abcd1234.tmp"
    stale.mkdir()
    (stale / "audio.npy").write_bytes(b"partial")
    other_rank = tmp_path / "shards" / ".rank00001-000001.abcd1234.tmp"
    other_rank.mkdir()
    assert len(Corpus(tmp_path)) == 1
    ShardWriter(tmp_path, m, 0)  # a restarted rank 0 removes only its own leftovers
    assert not stale.exists() and other_rank.exists()


def test_shard_numbers_continue_after_a_restart(tmp_path):
    m = manifest()
    write_manifest(tmp_path, m)
    write_videos(tmp_path, m, 3, [("/v/a", [1])])
    write_videos(tmp_path, m, 3, [("/v/b", [1])])
    assert Corpus(tmp_path).shards == ["rank00003-000001", "rank00003-000002"]


def test_two_ranks_write_disjoint_shards_that_the_reader_unites(tmp_path):
    m = manifest()
    write_manifest(tmp_path, m)
    write_manifest(tmp_path, m)  # the second rank finds the same manifest: fine
    a = write_videos(tmp_path, m, 0, [("/v/a", [2]), ("/v/c", [1])], seed=1)
    b = write_videos(tmp_path, m, 1, [("/v/b", [3])], seed=2)
    corpus = Corpus(tmp_path)
    assert corpus.shards == ["rank00000-000001", "rank00001-000001"]
    assert set(corpus.videos) == set(a) | set(b)
    by_video = {s.ref.video: s for s in corpus}
    assert np.array_equal(by_video["/v/b"].audio, b["/v/b"][0].audio)
    assert corpus.summary()["ranks"] == 2


def test_settings_must_match_to_resume(tmp_path):
    write_manifest(tmp_path, manifest())
    # provenance (where weights came from) may differ; settings may not
    write_manifest(tmp_path, manifest(teachers=({"name": "t1"}, {"name": "t2"})))
    with pytest.raises(UsageProblem, match="frame_interval"):
        write_manifest(tmp_path, manifest(frame_interval=2.0))


def test_writer_checks_shapes(tmp_path):
    m = manifest()
    write_manifest(tmp_path, m)
    rng = np.random.default_rng(0)
    clip = random_clip(rng, 2)
    clip.audio = clip.audio[:-1]
    with pytest.raises(CorpusError, match="expected \\(200,\\) int16"):
        ShardWriter(tmp_path, m).add_video(VideoRecord("/a", "a", 2.0), [clip])
    clip = random_clip(rng, 2)
    clip.posteriors["scenes"] = clip.posteriors["scenes"][:1]
    with pytest.raises(CorpusError, match="scenes"):
        ShardWriter(tmp_path, m).add_video(VideoRecord("/a", "a", 2.0), [clip])


def test_not_a_corpus(tmp_path):
    with pytest.raises(CorpusError, match="soundnet prepare"):
        Corpus(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CorpusError, match="not a soundnet corpus"):
        Corpus(tmp_path)


def test_summary_counts_argmax_categories(tmp_path):
    m = manifest()
    write_manifest(tmp_path, m)
    writer = ShardWriter(tmp_path, m)
    objects = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.6, 0.3]], np.float32)
    scenes = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6]], np.float32)
    clip = ClipData(
        0.0, np.zeros(300, np.int16), [0.5, 1.5, 2.5], {"objects": objects, "scenes": scenes}
    )
    writer.add_video(VideoRecord("/a", "a", 3.0), [clip])
    writer.flush()
    summary = Corpus(tmp_path).summary(top=2)
    objects_top = summary["heads"][0]["top"]
    assert [(r["category"], r["frames"]) for r in objects_top] == [("dog", 2), ("cat", 1)]
    assert summary["heads"][1]["top"][0] == {"category": "beach", "frames": 2, "fraction": 0.6667}
    assert summary["videos"] == 1 and summary["frames"] == 3


def test_frame_boundaries_round_fractional_intervals():
    m = manifest(sample_rate=22050, frame_interval=0.3, clip_seconds=0.9)
    assert [frame_boundary(k, m) for k in range(4)] == [0, 6615, 13230, 19845]


# -- a tampered corpus is one line where it is read (issue 25) -----------------------------------
@pytest.fixture
def one_video(tmp_path):
    m = manifest()
    write_manifest(tmp_path, m)
    write_videos(tmp_path, m, 0, [("/v/a.mp4", [4, 4])])
    return tmp_path


def shard_of(root):
    return next((root / "shards").iterdir())


def edit_index(root, change):
    path = shard_of(root) / "index.json"
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_a_clip_with_no_frames_is_refused(one_video):
    edit_index(one_video, lambda index: index["clips"][0].update(frames=0))
    with pytest.raises(CorpusError) as caught:
        Corpus(one_video)
    assert "has 0 frames" in one_line(caught) and "damaged" in one_line(caught)


def test_a_clip_whose_samples_do_not_match_its_frames_is_refused(one_video):
    edit_index(one_video, lambda index: index["clips"][1].update(samples=10))
    with pytest.raises(CorpusError, match="has 4 frames and 10 samples"):
        Corpus(one_video)


def test_a_head_with_the_wrong_category_count_is_refused(one_video):
    path = shard_of(one_video) / "scenes.npy"
    frames = len(np.load(path))
    np.save(path, np.full((frames, 3), 1 / 3, np.float16))  # the manifest says 2 scenes
    with pytest.raises(CorpusError) as caught:
        Corpus(one_video)
    assert "expected (frames, 2)" in one_line(caught) and "scenes" in one_line(caught)


@pytest.mark.parametrize("payload", [[], "text", 3, None])
def test_a_manifest_that_is_not_an_object_is_refused(tmp_path, payload):
    (tmp_path / "manifest.json").write_text(json.dumps(payload))
    with pytest.raises(CorpusError) as caught:
        Corpus(tmp_path)
    assert "not a soundnet corpus manifest" in one_line(caught)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frame_interval": 0}, "frame_interval is 0"),
        ({"sample_rate": -1}, "sample_rate is -1"),
        ({"heads": []}, "no heads"),
    ],
)
def test_a_manifest_with_impossible_settings_is_refused(one_video, change, message):
    path = one_video / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | change))
    with pytest.raises(CorpusError, match=message):
        Corpus(one_video)


def test_float_audio_is_refused(one_video):
    path = shard_of(one_video) / "audio.npy"
    np.save(path, np.load(path).astype(np.float32))
    with pytest.raises(CorpusError) as caught:
        Corpus(one_video)
    assert "float32 audio" in one_line(caught) and "expected int16" in one_line(caught)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_posteriors_are_refused_where_they_are_read(one_video, bad):
    path = shard_of(one_video) / "objects.npy"
    values = np.load(path)
    values[5, 1] = bad  # frame 1 of the second clip
    np.save(path, values)
    corpus = Corpus(one_video)
    assert np.isfinite(corpus[0].posteriors["objects"]).all()
    with pytest.raises(CorpusError) as caught:
        corpus[1]
    assert "head objects of clip 1 of /v/a.mp4 holds NaN or infinite" in one_line(caught)
