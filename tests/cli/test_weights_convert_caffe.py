"""`soundnet weights convert-caffe`: a VGG16 caffemodel in, torchvision safetensors out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from soundnet_cli.teachers.caffe_vgg16 import cache_path, recorded
from soundnet_cli.weights.caffemodel import file_sha256

from ..caffemodels import vgg16_blobs, vgg16_caffemodel


@pytest.fixture(scope="module")
def blobs():
    return vgg16_blobs(seed=11)


def test_convert_to_a_file_then_again(run, tmp_path, blobs):
    from safetensors.numpy import load_file

    model = vgg16_caffemodel(tmp_path / "vgg16_places365.caffemodel", blobs, legacy=True)
    out = tmp_path / "vgg16.safetensors"
    result = run("weights", "convert-caffe", str(model), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {
        "path": str(out),
        "caffemodel_sha256": file_sha256(model),
        "source": str(model.resolve()),
        "caffe_layout": "layers",
        "converted": True,
    }
    np.testing.assert_array_equal(load_file(str(out))["classifier.3.weight"], blobs["fc7"][0])
    again = run("weights", "convert-caffe", str(model), "-o", str(out))
    assert again.exit_code == 0 and "already converted" in again.stdout
    assert file_sha256(model) in again.stdout


def test_default_output_is_the_teacher_cache(run, tmp_path, blobs):
    model = vgg16_caffemodel(tmp_path / "m.caffemodel", blobs)
    result = run("weights", "convert-caffe", str(model))
    assert result.exit_code == 0, result.output
    assert cache_path().is_file() and str(cache_path()) in result.stdout
    assert recorded(cache_path())["caffemodel_sha256"] == file_sha256(model)


def test_another_caffemodel_needs_force(run, tmp_path, blobs):
    first = vgg16_caffemodel(tmp_path / "a.caffemodel", blobs)
    other = vgg16_caffemodel(tmp_path / "b.caffemodel", vgg16_blobs(seed=12))
    assert run("weights", "convert-caffe", str(first)).exit_code == 0
    refused = run("weights", "convert-caffe", str(other))
    assert refused.exit_code == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--force" in lines[0]
    assert recorded(cache_path())["caffemodel_sha256"] == file_sha256(first)
    forced = run("weights", "convert-caffe", str(other), "--force", "--json")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["converted"] is True
    assert recorded(cache_path())["caffemodel_sha256"] == file_sha256(other)


@pytest.mark.parametrize("case", ["truncated", "wrong size", "not a caffemodel", "missing"])
def test_bad_files_are_one_line_errors_and_write_nothing(run, tmp_path, blobs, case):
    path = tmp_path / "in" / "x.caffemodel"
    if case == "truncated":
        vgg16_caffemodel(path, blobs)
        path.write_bytes(path.read_bytes()[:-7])
    elif case == "wrong size":
        vgg16_caffemodel(path, blobs, wrong_size="conv5_3")
    elif case == "not a caffemodel":
        path.parent.mkdir()
        path.write_bytes(b"PK\x03\x04 this is a zip archive, not a caffemodel")
    out = tmp_path / "out" / "vgg16.safetensors"
    result = run("weights", "convert-caffe", str(path), "--out", str(out))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    expected = {
        "truncated": "truncated",
        "wrong size": "'conv5_3'",
        "not a caffemodel": "not a Caffe model",
        "missing": "no such file",
    }[case]
    assert expected in lines[0]
    assert not out.exists() and not cache_path().exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_help_has_examples(run):
    result = run("weights", "convert-caffe", "--help")
    assert result.exit_code == 0
    assert "soundnet weights convert-caffe vgg16_places365.caffemodel" in result.stdout
    assert "--force" in result.stdout and "--out" in result.stdout
