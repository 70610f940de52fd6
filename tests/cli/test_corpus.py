"""`soundnet corpus info`: videos, hours, teachers and the most frequent categories per head."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soundnet_cli.corpus.format import (
    ClipData,
    CorpusManifest,
    HeadInfo,
    ShardWriter,
    VideoRecord,
    write_manifest,
)


@pytest.fixture
def corpus_dir(tmp_path):
    manifest = CorpusManifest(
        sample_rate=100,
        clip_seconds=4.0,
        frame_interval=1.0,
        frame_at="centre",
        mix="first",
        teachers=({"name": "vgg16-imagenet"}, {"name": "resnet50-places"}),
        heads=(
            HeadInfo("vgg16-imagenet", "vgg16-imagenet", ("cat", "dog", "bird")),
            HeadInfo("resnet50-places", "resnet50-places", ("beach", "forest")),
        ),
    )
    root = tmp_path / "corpus"
    write_manifest(root, manifest)
    for rank in (0, 1):
        writer = ShardWriter(root, manifest, rank)
        objects = np.eye(3, dtype=np.float32)[[1, 1, rank]]
        scenes = np.eye(2, dtype=np.float32)[[0, 1, 1]]
        clip = ClipData(
            0.0,
            np.zeros(300, np.int16),
            [0.5, 1.5, 2.5],
            {"vgg16-imagenet": objects, "resnet50-places": scenes},
        )
        writer.add_video(VideoRecord(f"/v/{rank}.mp4", f"{rank}.mp4", 3.0), [clip])
        writer.add_failure(
            f"/v/bad{rank}.mp4", f"bad{rank}.mp4", f"bad{rank}.mp4: the file is empty"
        )
        writer.flush()
    return root


def test_info_text(run, corpus_dir):
    result = run("corpus", "info", str(corpus_dir), "--top", "2", "--failures")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "2 videos, 2 clips" in out and "2 failed" in out and "2 rank(s)" in out
    assert "vgg16-imagenet, resnet50-places" in out
    assert "dog" in out and "cat" in out and "bird" not in out  # top 2 of 3
    assert "forest" in out and "66.7%" in out
    assert "bad0.mp4: the file is empty" in out


def test_info_json(run, corpus_dir):
    result = run("corpus", "info", str(corpus_dir), "--json")
    data = json.loads(result.stdout)
    assert (
        data["videos"] == 2
        and data["frames"] == 6
        and data["hours"] == pytest.approx(6 / 3600, abs=1e-4)
    )
    assert data["teachers"] == ["vgg16-imagenet", "resnet50-places"]
    objects = data["heads"][0]
    assert objects["top"][0] == {"category": "dog", "frames": 5, "fraction": 0.8333}
    assert sorted(f["path"] for f in data["failures"]) == ["bad0.mp4", "bad1.mp4"]


def test_not_a_corpus(run, tmp_path):
    result = run("corpus", "info", str(tmp_path))
    assert result.exit_code == 1
    assert "not a corpus" in result.stderr and "soundnet prepare" in result.stderr


def test_help_has_examples(run):
    result = run("corpus", "info", "--help")
    assert result.exit_code == 0 and "Examples" in result.stdout
