"""The acceptance path of issue 15, offline: `soundnet prepare videos/ -t vgg16-imagenet -t
vgg16-places ...` with the caffemodel given, then `soundnet distill videos/ --teacher
vgg16-places --out run/` with the converted caffemodel cached. The caffemodel is a narrow
synthetic VGG16 (tests/caffemodels.py); the ImageNet teacher is randomly initialised and, to keep
the test short, sees 32-pixel frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soundnet_cli.teachers import torchvision_teachers as tvt
from soundnet_cli.teachers.base import FrameTransform
from soundnet_cli.teachers.caffe_vgg16 import cache_path
from soundnet_cli.weights.caffemodel import file_sha256

from ..caffemodels import vgg16_blobs, vgg16_caffemodel
from ..unit.test_teachers import PLACES_LINES
from ..videos import make_video


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    for i in range(2):
        make_video(folder / f"v{i}.webm", 5.5, freq=300 + 200 * i)
    return folder


@pytest.fixture
def caffemodel(tmp_path):
    blobs = vgg16_blobs(seed=21)
    path = vgg16_caffemodel(tmp_path / "weights" / "vgg16_places365.caffemodel", blobs)
    (path.parent / "categories_places365.txt").write_text(PLACES_LINES)  # offline: beside it
    return path, blobs


def test_prepare_with_both_vgg16_teachers(run, tmp_path, videos, caffemodel, monkeypatch):
    monkeypatch.setattr(tvt, "IMAGENET_TRANSFORM", FrameTransform(resize=32, crop=32))
    path, _ = caffemodel
    out = tmp_path / "corpus"
    result = run(
        "prepare", str(videos), "-t", "vgg16-imagenet", "-t", "vgg16-places",
        "--teacher-weights", f"vgg16-places={path}", "--random-init", "-o", str(out),
        "--clip-seconds", "4", "--frame-interval", "1", "--workers", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prepared"] == 2
    from soundnet_cli.corpus.format import Corpus

    corpus = Corpus(out)
    assert [h.name for h in corpus.manifest.heads] == ["vgg16-imagenet", "vgg16-places"]
    places = corpus.manifest.teachers[1]
    assert places["provenance"]["caffemodel_sha256"] == file_sha256(path)
    assert places["transform"]["channel_order"] == "BGR"
    assert places["transform"]["value_range"] == 255
    assert cache_path().is_file()  # the given caffemodel was converted into the cache
    # the stored scene posteriors are the teacher's on the clip's frames
    from soundnet_cli.media import video
    from soundnet_cli.teachers import get_teacher

    sample = corpus[0]
    frames, _ = video.read_frames(sample.ref.video, list(sample.ref.frame_times))
    teacher = get_teacher("vgg16-places", weights=path)  # the cache: converted already
    expected = teacher.label(frames)["vgg16-places"]
    stored = sample.posteriors["vgg16-places"].astype(np.float32)
    assert np.max(np.abs(stored - expected)) < 1e-3 * np.max(expected)  # float16 storage


def test_distill_videos_with_the_cached_conversion(run, tmp_path, videos, caffemodel):
    path, _ = caffemodel
    assert run("weights", "convert-caffe", str(path)).exit_code == 0  # the cache, filled once
    (cache_path().parent / "categories_places365.txt").write_text(PLACES_LINES)
    out = tmp_path / "run"
    result = run(
        "distill", str(videos), "--teacher", "vgg16-places", "--out", str(out),
        "--steps", "2", "--batch-size", "2", "--workers", "0",
        "--device", "cpu", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and (out / "student.safetensors").is_file()
    from soundnet_cli.weights.checkpoints import read_info

    info = read_info(out / "student.safetensors")
    assert [(h.name, h.size) for h in info.heads] == [("vgg16-places", 365)]
