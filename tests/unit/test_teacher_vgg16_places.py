"""`vgg16-places` from CSAIL's Caffe model: conversion on first use, the cache, exact Caffe
preprocessing, downloads from a local server only. The caffemodels are narrow synthetic VGG16s
written by the tests (tests/caffemodels.py)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from soundnet_cli.errors import SoundnetError, WeightsError
from soundnet_cli.teachers import get_teacher
from soundnet_cli.teachers import torchvision_teachers as tvt
from soundnet_cli.teachers.base import FrameTransform
from soundnet_cli.teachers.caffe_vgg16 import keyed_cache_path
from soundnet_cli.teachers.weights import WeightSource, teachers_dir
from soundnet_cli.weights.caffemodel import file_sha256

from ..caffemodels import PLACES_MEAN_BGR, BlobStyle, caffe_forward, vgg16_blobs, vgg16_caffemodel
from .test_teachers import PLACES_LINES, serve

CACHE = "vgg16_places365.safetensors"


@pytest.fixture(scope="module")
def blobs():
    return vgg16_blobs(seed=7)


@pytest.fixture
def names(tmp_path_factory) -> None:
    """The category names in the cache, as a first run would have left them."""
    teachers_dir().mkdir(parents=True, exist_ok=True)
    (teachers_dir() / "categories_places365.txt").write_text(PLACES_LINES)


def frames(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "layout",
    [
        dict(legacy=False),
        dict(legacy=True, style=BlobStyle(legacy_shape=True, packed=False)),
        dict(legacy=False, style=BlobStyle(double=True), record_conv=False),
    ],
    ids=["current", "legacy-unpacked", "current-double-no-conv-settings"],
)
def test_posteriors_equal_a_caffe_forward_pass(tmp_path, blobs, names, layout):
    model = vgg16_caffemodel(tmp_path / "vgg16_places365.caffemodel", blobs, **layout)
    teacher = get_teacher("vgg16-places", weights=model)
    pictures = frames(3)  # 256 x 256: the resize keeps them, the crop takes the middle 224
    got = teacher.label(pictures)["vgg16-places"]
    expected = caffe_forward(blobs, pictures[:, 16:240, 16:240])
    assert got.shape == (3, 365)
    assert np.max(np.abs(got - expected) / expected) < 1e-5
    assert expected.max() < 0.5 and expected.min() > 1e-7  # the comparison is not saturated


def test_frame_transform_is_caffes(blobs):
    transform = tvt.SPECS["vgg16-places"].transform
    pictures = frames(2, size=300, seed=3)[:, :, :280]  # 300 x 280: resized, then cropped
    got = transform(pictures)
    import torchvision.transforms.functional as TF

    resized = TF.resize(torch.from_numpy(pictures).permute(0, 3, 1, 2), [256, 256], antialias=True)
    crop = resized[:, :, 16:240, 16:240].double()
    expected = crop.flip(1) - torch.tensor(PLACES_MEAN_BGR, dtype=torch.float64).view(1, 3, 1, 1)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 224, 224)
    assert torch.max(torch.abs(got.double() - expected)) < 1e-4 * 255
    described = transform.as_dict()
    assert described["channel_order"] == "BGR" and described["value_range"] == 255
    assert described["mean"] == list(PLACES_MEAN_BGR) and described["std"] == [1.0, 1.0, 1.0]


def test_other_teachers_keep_their_transform_record():
    described = tvt.SPECS["vgg16-imagenet"].transform.as_dict()
    assert "channel_order" not in described and "value_range" not in described
    with pytest.raises(SoundnetError, match="RGB or BGR"):
        FrameTransform(channel_order="GBR")


def test_converted_once_then_read_from_the_cache(tmp_path, blobs, names):
    model = vgg16_caffemodel(tmp_path / "vgg16_places365.caffemodel", blobs)
    first = get_teacher("vgg16-places", weights=model)
    cache = teachers_dir() / CACHE
    assert cache.is_file()
    assert first.provenance["caffemodel_sha256"] == file_sha256(model)
    assert first.provenance["weights"] == str(model.resolve())
    stamp = cache.stat().st_mtime_ns
    # without --teacher-weights, offline: the cache answers, and it is not rewritten
    again = get_teacher("vgg16-places")
    assert cache.stat().st_mtime_ns == stamp
    assert again.provenance["caffemodel_sha256"] == file_sha256(model)
    for key, value in first.network.state_dict().items():
        assert torch.equal(value, again.network.state_dict()[key])
    # the same caffemodel again: no new conversion
    get_teacher("vgg16-places", weights=model)
    assert cache.stat().st_mtime_ns == stamp


def test_another_caffemodel_just_works_and_does_not_replace_the_cache(tmp_path, blobs, names):
    """A second caffemodel given explicitly is converted into a cache entry keyed by its
    sha256 and used; the default cache keeps the first (issue 25: it used to need --force)."""
    first = vgg16_caffemodel(tmp_path / "a.caffemodel", blobs)
    get_teacher("vgg16-places", weights=first)
    cache = teachers_dir() / CACHE
    stamp = cache.stat().st_mtime_ns
    other = vgg16_caffemodel(tmp_path / "b.caffemodel", vgg16_blobs(seed=8))
    teacher = get_teacher("vgg16-places", weights=other)
    assert teacher.provenance["caffemodel_sha256"] == file_sha256(other)
    keyed = keyed_cache_path(file_sha256(other))
    assert keyed.is_file() and keyed.parent == cache.parent
    assert cache.stat().st_mtime_ns == stamp  # the default is untouched
    assert get_teacher("vgg16-places").provenance["caffemodel_sha256"] == file_sha256(first)
    keyed_stamp = keyed.stat().st_mtime_ns
    again = get_teacher("vgg16-places", weights=other)  # converted once
    assert keyed.stat().st_mtime_ns == keyed_stamp
    for key, value in teacher.network.state_dict().items():
        assert torch.equal(value, again.network.state_dict()[key])
    assert not torch.equal(
        teacher.network.state_dict()["features.0.weight"],
        get_teacher("vgg16-places").network.state_dict()["features.0.weight"],
    )


@pytest.mark.parametrize("case", ["truncated", "wrong size", "not a caffemodel"])
def test_bad_caffemodels_leave_no_cache_entry(tmp_path, blobs, names, case):
    path = tmp_path / "bad.caffemodel"
    if case == "truncated":
        vgg16_caffemodel(path, blobs)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "wrong size":
        vgg16_caffemodel(path, blobs, wrong_size="fc6")
    else:
        path.write_text('name: "VGG-Places365"\n')
    with pytest.raises(WeightsError) as info:
        get_teacher("vgg16-places", weights=path)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in teachers_dir().iterdir()) == ["categories_places365.txt"]


def test_offline_without_the_cache_says_what_to_do():
    with pytest.raises(WeightsError) as info:
        get_teacher("vgg16-places")
    message = str(info.value)
    assert "\n" not in message
    assert "vgg16_places365.caffemodel" in message and "give local weights" in message


def test_random_init_needs_no_file():
    teacher = get_teacher("vgg16-places", random_init=True)
    assert teacher.heads[0].size == 365 and teacher.provenance["weights"] == "random init"
    assert teacher.describe()["transform"]["channel_order"] == "BGR"


def test_download_converts_and_caches(tmp_path, blobs, monkeypatch, caplog):
    monkeypatch.delenv("SOUNDNET_OFFLINE")
    site = tmp_path / "site"
    model = vgg16_caffemodel(site / "vgg16_places365.caffemodel", blobs, legacy=True)
    vgg16_caffemodel(site / "cut.caffemodel", blobs)
    (site / "cut.caffemodel").write_bytes((site / "cut.caffemodel").read_bytes()[:5000])
    (site / "categories_places365.txt").write_text(PLACES_LINES)
    spec = tvt.SPECS["vgg16-places"]

    def use(name: str, base: str) -> None:
        monkeypatch.setitem(
            tvt.SPECS, "vgg16-places", replace(spec, source=WeightSource(f"{base}/{name}"))
        )

    with serve(site) as base, caplog.at_level(logging.INFO, logger="soundnet_cli"):
        monkeypatch.setattr(tvt, "PLACES_NAMES", WeightSource(f"{base}/categories_places365.txt"))
        use("cut.caffemodel", base)
        with pytest.raises(WeightsError, match="truncated"):
            get_teacher("vgg16-places")
        assert not (teachers_dir() / CACHE).exists()
        use("vgg16_places365.caffemodel", base)
        teacher = get_teacher("vgg16-places")
    assert any(base in line for line in caplog.messages)
    assert teacher.provenance["weights"] == f"{base}/vgg16_places365.caffemodel"
    assert teacher.provenance["caffemodel_sha256"] == file_sha256(model)
    assert teacher.heads[0].categories[1] == "scene_1/indoor"
    # the caffemodel itself is not kept: the converted file is the cache
    assert sorted(p.name for p in teachers_dir().iterdir()) == sorted(
        [CACHE, "categories_places365.txt"]
    )
    # the server is gone and we are offline: the cache answers
    monkeypatch.setenv("SOUNDNET_OFFLINE", "1")
    pictures = frames(2)
    expected = caffe_forward(blobs, pictures[:, 16:240, 16:240])
    got = get_teacher("vgg16-places").label(pictures)["vgg16-places"]
    assert np.max(np.abs(got - expected) / expected) < 1e-5


def test_converted_safetensors_can_be_given(tmp_path, blobs, names):
    from soundnet_cli.teachers.caffe_vgg16 import convert_caffemodel

    model = vgg16_caffemodel(tmp_path / "m.caffemodel", blobs)
    out = convert_caffemodel(model, tmp_path / "vgg16.safetensors").path
    teacher = get_teacher("vgg16-places", weights=out)
    assert teacher.provenance["caffemodel_sha256"] == file_sha256(model)
    assert not (teachers_dir() / CACHE).exists()  # a converted file is used where it is
    pictures = frames(1, seed=4)
    expected = caffe_forward(blobs, pictures[:, 16:240, 16:240])
    got = teacher.label(pictures)["vgg16-places"]
    assert np.max(np.abs(got - expected) / expected) < 1e-5


def test_the_official_url():
    assert tvt.SPECS["vgg16-places"].source is not None
    assert tvt.SPECS["vgg16-places"].source.url == (
        "http://places2.csail.mit.edu/models_places365/vgg16_places365.caffemodel"
    )
