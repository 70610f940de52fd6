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


def test_convert_info_and_verify_on_tar_shards(run, corpus_dir, tmp_path):
    tars, back = tmp_path / "tars", tmp_path / "back"
    result = run("corpus", "convert", str(corpus_dir), str(tars), "--to", "shards")
    assert result.exit_code == 0, result.output
    assert "2 shards written (2 clips), 0 already there" in result.stdout
    assert sorted(p.name for p in (tars / "shards").iterdir()) == [
        "rank00000-000001.json",
        "rank00000-000001.tar",
        "rank00001-000001.json",
        "rank00001-000001.tar",
    ]
    info = json.loads(run("corpus", "info", str(tars), "--json").stdout)
    reference = json.loads(run("corpus", "info", str(corpus_dir), "--json").stdout)
    assert {k: v for k, v in info.items() if k != "path"} == {
        k: v for k, v in reference.items() if k != "path"
    }
    verified = run("corpus", "verify", str(tars))
    assert verified.exit_code == 0 and "2 clips in 2 shards, all readable" in verified.stdout
    assert run("corpus", "convert", str(tars), str(back), "--to", "dirs").exit_code == 0
    for path in corpus_dir.rglob("*"):
        if path.is_file():
            assert (back / path.relative_to(corpus_dir)).read_bytes() == path.read_bytes()


def test_verify_names_a_damaged_shard(run, corpus_dir, tmp_path):
    tars = tmp_path / "tars"
    run("corpus", "convert", str(corpus_dir), str(tars), "--to", "shards")
    shard = tars / "shards" / "rank00001-000001.tar"
    data = bytearray(shard.read_bytes())
    data[512 + 10] ^= 0xFF  # a byte of the first member's JSON: not JSON any more
    shard.write_bytes(bytes(data))
    result = run("corpus", "verify", str(tars))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "rank00001-000001.tar" in lines[0] and "JSON" in lines[0]


def test_convert_usage(run, corpus_dir, tmp_path):
    result = run("corpus", "convert", str(corpus_dir), str(tmp_path / "x"), "--to", "zip")
    assert result.exit_code == 2 and "--to" in result.stderr
    assert "Examples" in run("corpus", "convert", "--help").stdout
