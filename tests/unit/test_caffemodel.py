"""The Caffe model reader and the VGG16 conversion, on synthetic caffemodels that the tests
write in the protobuf wire format (tests/caffemodels.py), in both layouts."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from soundnet_cli.errors import WeightsError
from soundnet_cli.teachers.caffe_vgg16 import convert_caffemodel, recorded
from soundnet_cli.weights.caffemodel import CaffeModelError, file_sha256, read_blob, scan

from ..caffemodels import (
    CONV_NAMES,
    BlobStyle,
    blob,
    key,
    submessage,
    text,
    vgg16_blobs,
    vgg16_caffemodel,
)

STYLES = {
    "current, packed": dict(legacy=False, style=BlobStyle()),
    "current, one field per value": dict(legacy=False, style=BlobStyle(packed=False)),
    "current, double_data": dict(legacy=False, style=BlobStyle(double=True)),
    "legacy V1, 4-D shapes": dict(legacy=True, style=BlobStyle(legacy_shape=True)),
    "legacy V1, one field per value": dict(
        legacy=True, style=BlobStyle(legacy_shape=True, packed=False)
    ),
}


@pytest.fixture(scope="module")
def blobs():
    return vgg16_blobs(seed=1)


@pytest.mark.parametrize("style", list(STYLES))
def test_scan_and_read_both_layouts(tmp_path, blobs, style):
    options = STYLES[style]
    path = vgg16_caffemodel(tmp_path / "net.caffemodel", blobs, **options)
    net = scan(path)
    assert net.name == "VGG-Places365"
    assert net.layout == ("layers" if options["legacy"] else "layer")
    names = [lay.name for lay in net.layers]
    assert names[:4] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2"] and names[-1] == "prob"
    assert [lay.name for lay in net.weighted] == [*CONV_NAMES, "fc6", "fc7", "fc8a"]
    kinds = {lay.name: lay.type for lay in net.layers}
    assert (
        kinds["pool1"] == "Pooling"
        and kinds["drop6"] == "Dropout"
        and kinds["fc6"] == "InnerProduct"
    )
    conv = net.weighted[0]
    assert conv.convolution == {"num_output": (4,), "pad": (1,), "kernel_size": (3,)}
    for lay in net.weighted:
        weight, bias = blobs[lay.name]
        got_w, got_b = (read_blob(path, b) for b in lay.blobs)
        assert got_w.dtype == np.float32
        # legacy files pad shapes to 4-D; the numbers are the same either way
        np.testing.assert_array_equal(got_w.reshape(weight.shape), weight)
        np.testing.assert_array_equal(got_b.reshape(-1), bias)
        if options["legacy"]:
            assert len(lay.blobs[0].shape) == 4 and lay.blobs[1].shape == (1, 1, 1, bias.size)
        else:
            assert lay.blobs[0].shape == weight.shape and lay.blobs[1].shape == bias.shape


def test_unknown_fields_are_skipped(tmp_path):
    values = np.arange(6, dtype=np.float32)
    body = text(1, "only") + text(2, "InnerProduct")
    body += key(101, 0) + b"\x07"  # unknown fields of every wire type: not read
    body += key(99, 1) + b"\x00" * 8 + key(98, 5) + b"\x00" * 4 + submessage(97, b"xyz")

    raw = submessage(100, body + submessage(7, blob(values.reshape(2, 3), BlobStyle())))
    raw += submessage(6, text(3, "stage"))  # NetParameter.state
    path = tmp_path / "one.caffemodel"
    path.write_bytes(raw)
    (only,) = scan(path).layers
    assert only.name == "only" and only.blobs[0].shape == (2, 3)
    np.testing.assert_array_equal(read_blob(path, only.blobs[0]), values.reshape(2, 3))


# -- errors: one line, nothing cached ---------------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("cut", [0.5, 0.999, 0.0001])
def test_truncated_file(tmp_path, blobs, cut):
    path = vgg16_caffemodel(tmp_path / "net.caffemodel", blobs)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * cut))])
    with pytest.raises(CaffeModelError) as info:
        scan(path)
    assert "truncated" in _one_line(info)


def test_blob_with_the_wrong_size(tmp_path, blobs):
    path = vgg16_caffemodel(tmp_path / "net.caffemodel", blobs, wrong_size="conv3_1")
    with pytest.raises(CaffeModelError) as info:
        scan(path)
    message = _one_line(info)
    assert "'conv3_1'" in message and "[9, 6, 3, 3]" in message and "holds 432 values" in message


@pytest.mark.parametrize(
    "content",
    [
        b'name: "VGG-Places365"\nlayer {\n  name: "conv1_1"\n}\n',  # a prototxt
        bytes(range(256)) * 4,
        b"",
        b"\x08\x96\x01",  # a valid protobuf message without layers
    ],
    ids=["prototxt", "bytes", "empty", "no-layers"],
)
def test_not_a_caffemodel(tmp_path, content):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CaffeModelError) as info:
        scan(path)
    assert "not a Caffe model" in _one_line(info)


def test_a_zip_pytorch_checkpoint_is_not_a_caffemodel(tmp_path):
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(CaffeModelError, match="not a Caffe model"):
        scan(path)


def test_missing_file():
    with pytest.raises(WeightsError, match="no such file"):
        scan("/nonexistent/vgg.caffemodel")


# -- conversion -------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["current, packed", "legacy V1, one field per value"])
def test_conversion_to_torchvision_keys(tmp_path, blobs, style):
    from safetensors.numpy import load_file

    path = vgg16_caffemodel(tmp_path / "net.caffemodel", blobs, **STYLES[style])
    out = tmp_path / "cache" / "vgg16.safetensors"
    result = convert_caffemodel(path, out, source="http://example.test/vgg.caffemodel")
    assert result.converted and result.path == out
    state = load_file(str(out))
    assert len(state) == 32
    np.testing.assert_array_equal(state["features.0.weight"], blobs["conv1_1"][0])
    np.testing.assert_array_equal(state["features.28.bias"], blobs["conv5_3"][1])
    np.testing.assert_array_equal(state["classifier.0.weight"], blobs["fc6"][0])
    np.testing.assert_array_equal(state["classifier.6.weight"], blobs["fc8a"][0])
    assert state["classifier.6.bias"].shape == (365,)
    meta = recorded(out)
    assert meta["caffemodel_sha256"] == file_sha256(path)
    assert meta["source"] == "http://example.test/vgg.caffemodel"
    layers = json.loads(meta["caffe_layers"])
    assert layers["features.0.weight"] == "conv1_1" and layers["classifier.6.bias"] == "fc8a"


def test_same_caffemodel_again_is_a_no_op_and_another_is_refused(tmp_path, blobs):
    first = vgg16_caffemodel(tmp_path / "a.caffemodel", blobs)
    other = vgg16_caffemodel(tmp_path / "b.caffemodel", vgg16_blobs(seed=2))
    out = tmp_path / "vgg16.safetensors"
    convert_caffemodel(first, out)
    stamp = out.stat().st_mtime_ns
    assert not convert_caffemodel(first, out).converted
    assert out.stat().st_mtime_ns == stamp
    with pytest.raises(WeightsError) as info:
        convert_caffemodel(other, out)
    assert "--force" in _one_line(info) and file_sha256(first) in str(info.value)
    assert recorded(out)["caffemodel_sha256"] == file_sha256(first)
    assert convert_caffemodel(other, out, force=True).converted
    assert recorded(out)["caffemodel_sha256"] == file_sha256(other)


@pytest.mark.parametrize("case", ["truncated", "wrong size", "not a caffemodel", "pad 0",
                                  "hybrid1365", "too few layers"])  # fmt: skip
def test_failed_conversions_leave_nothing(tmp_path, blobs, case):
    path = tmp_path / "bad.caffemodel"
    if case == "truncated":
        vgg16_caffemodel(path, blobs)
        path.write_bytes(path.read_bytes()[:-1000])
    elif case == "wrong size":
        vgg16_caffemodel(path, blobs, wrong_size="fc7")
    elif case == "not a caffemodel":
        path.write_text("layer {\n}\n")
    elif case == "pad 0":
        vgg16_caffemodel(path, blobs, pad=0)
    elif case == "hybrid1365":
        vgg16_caffemodel(path, vgg16_blobs(classes=1365))
    else:  # a file cut exactly between layers: protobuf cannot tell, the layer count can
        vgg16_caffemodel(path, blobs, drop=("fc7", "fc8a"))
    out = tmp_path / "out" / "vgg16.safetensors"
    with pytest.raises(WeightsError) as info:
        convert_caffemodel(path, out)
    message = _one_line(info)
    expected = {
        "truncated": "truncated",
        "wrong size": "'fc7'",
        "not a caffemodel": "not a Caffe model",
        "pad 0": "pad [0]",
        "hybrid1365": "1365 outputs",
        "too few layers": "truncated?",
    }[case]
    assert expected in message
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())
