"""Synthetic Caffe models written byte by byte in the protobuf wire format (no Caffe, no
protobuf library), in the current (``layer``) and legacy (``layers``, V1) layouts, and an
independent Caffe-convention forward pass of a VGG16 over the raw blobs."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# a narrow VGG16: the real one's 13 + 3 layers and keys, with few channels
NARROW_WIDTHS = (4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8)
NARROW_HIDDEN = 16
CLASSES = 365
CONV_NAMES = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)  # fmt: skip
POOL_AFTER = {"conv1_2": "pool1", "conv2_2": "pool2", "conv3_3": "pool3", "conv4_3": "pool4",
              "conv5_3": "pool5"}  # fmt: skip
PLACES_MEAN_BGR = (104.051, 112.514, 116.676)
V1 = {"Convolution": 4, "InnerProduct": 14, "Pooling": 17, "ReLU": 18, "Dropout": 6,
      "Softmax": 20}  # fmt: skip


# -- wire format ------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def submessage(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def text(number: int, value: str) -> bytes:
    return submessage(number, value.encode())


def integer(number: int, value: int) -> bytes:
    return key(number, 0) + varint(value)


# -- blobs and layers -------------------------------------------------------------------------
@dataclass
class BlobStyle:
    """How a blob is written: its shape field and how its numbers are stored."""

    legacy_shape: bool = False  # num/channels/height/width instead of BlobShape
    packed: bool = True  # one packed field, or a tagged field per value
    double: bool = False  # double_data instead of data


def blob(array: np.ndarray, style: BlobStyle, declared: tuple[int, ...] | None = None) -> bytes:
    shape = declared if declared is not None else array.shape
    if style.legacy_shape:
        dims = (1,) * (4 - len(shape)) + tuple(shape)
        head = b"".join(integer(i + 1, d) for i, d in enumerate(dims))
    else:
        head = submessage(7, submessage(1, b"".join(varint(d) for d in shape)))
    flat = array.reshape(-1)
    number, fmt, wire = (8, "<d", 1) if style.double else (5, "<f", 5)
    if style.packed:
        body = submessage(number, flat.astype(fmt).tobytes())
    else:
        body = b"".join(key(number, wire) + struct.pack(fmt, float(v)) for v in flat)
    # a diff field (skipped by readers) after the data, as Caffe snapshots can carry one
    return head + body + submessage(6, np.zeros(2, "<f4").tobytes())


def layer(
    name: str,
    kind: str,
    blobs: list[bytes],
    *,
    legacy: bool,
    conv: dict[str, int] | None = None,
) -> bytes:
    conv_fields = {"num_output": 1, "pad": 3, "kernel_size": 4, "stride": 6}
    body = b""
    if legacy:
        body += text(2, "bottom") + text(3, "top") + text(4, name) + integer(5, V1[kind])
        body += b"".join(submessage(6, b) for b in blobs)
        body += key(7, 5) + struct.pack("<f", 1.0)  # blobs_lr: skipped
        if conv:
            body += submessage(10, b"".join(integer(conv_fields[k], v) for k, v in conv.items()))
        return submessage(2, body)
    body += text(1, name) + text(2, kind) + text(3, "bottom") + text(4, "top")
    body += submessage(6, integer(3, 1))  # a ParamSpec: skipped
    body += b"".join(submessage(7, b) for b in blobs)
    if conv:
        body += submessage(106, b"".join(integer(conv_fields[k], v) for k, v in conv.items()))
    return submessage(100, body)


def vgg16_blobs(
    seed: int = 0,
    widths: tuple[int, ...] = NARROW_WIDTHS,
    hidden: int = NARROW_HIDDEN,
    classes: int = CLASSES,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random weights for a VGG16 of these widths, {caffe layer: (weight, bias)}, scaled so
    that activations neither vanish nor explode on 0-255 inputs."""
    rng = np.random.default_rng(seed)
    blobs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    channels = 3
    for name, width in zip(CONV_NAMES, widths, strict=True):
        fan_in = channels * 9
        weight = rng.normal(0, np.sqrt(2.0 / fan_in), (width, channels, 3, 3)).astype(np.float32)
        if name == "conv1_1":
            weight /= 60.0  # inputs are pixels minus the mean, about +-100
        blobs[name] = (weight, rng.normal(0, 0.1, width).astype(np.float32))
        channels = width
    inputs = channels * 49
    for name, outputs in (("fc6", hidden), ("fc7", hidden), ("fc8a", classes)):
        scale = np.sqrt(1.0 / inputs) * (0.25 if name == "fc8a" else 1.0)  # logits std ~1.5
        weight = rng.normal(0, scale, (outputs, inputs)).astype(np.float32)
        blobs[name] = (weight, rng.normal(0, 0.1, outputs).astype(np.float32))
        inputs = outputs
    return blobs


def vgg16_caffemodel(
    path: Path,
    blobs: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    legacy: bool = False,
    style: BlobStyle | None = None,
    record_conv: bool = True,
    pad: int = 1,
    wrong_size: str | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """Write a VGG16 caffemodel with the layers of CSAIL's deploy file (ReLU, pooling, dropout
    and softmax without blobs between the weighted ones). ``wrong_size`` names a layer whose
    weight blob declares one more output than its data holds."""
    style = style or BlobStyle(legacy_shape=legacy)
    out = text(1, "VGG-Places365") + text(3, "data") + integer(4, 10)  # input, input_dim

    def weighted(name: str, kind: str) -> bytes:
        if name in drop:
            return b""
        weight, bias = blobs[name]
        declared = None
        if name == wrong_size:
            declared = (weight.shape[0] + 1, *weight.shape[1:])
        if kind == "InnerProduct" and legacy:
            declared = (1, 1, *(declared or weight.shape))
        conv = None
        if kind == "Convolution" and record_conv:
            conv = {"num_output": weight.shape[0], "pad": pad, "kernel_size": 3}
        return layer(name, kind, [blob(weight, style, declared), blob(bias, style)],
                     legacy=legacy, conv=conv)  # fmt: skip

    for name in CONV_NAMES:
        out += weighted(name, "Convolution")
        out += layer(name.replace("conv", "relu"), "ReLU", [], legacy=legacy)
        if name in POOL_AFTER:
            out += layer(POOL_AFTER[name], "Pooling", [], legacy=legacy)
    for i, name in enumerate(("fc6", "fc7", "fc8a")):
        out += weighted(name, "InnerProduct")
        if i < 2:
            out += layer(f"relu{6 + i}", "ReLU", [], legacy=legacy)
            out += layer(f"drop{6 + i}", "Dropout", [], legacy=legacy)
    out += layer("prob", "Softmax", [], legacy=legacy)
    out += integer(5, 0)  # force_backward, after the layers: skipped
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return path


# -- the independent forward pass -------------------------------------------------------------
def caffe_forward(
    blobs: dict[str, tuple[np.ndarray, np.ndarray]], frames_rgb: np.ndarray
) -> np.ndarray:
    """Softmax outputs of the Caffe net for 224 x 224 uint8 RGB frames (N, 224, 224, 3), as
    Caffe computes them: BGR, 0-255, minus the mean, 3x3 convolutions padded by 1, 2x2 max
    pools, inner products on the flattened (C, H, W) pool5. In float64, with torch only for the
    elementary operations."""
    import torch
    import torch.nn.functional as F

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, np.float64))

    bgr = frames_rgb[..., ::-1].astype(np.float64) - np.array(PLACES_MEAN_BGR)
    x = t(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))
    for name in CONV_NAMES:
        weight, bias = blobs[name]
        x = F.relu(F.conv2d(x, t(weight), t(bias), padding=1))
        if name in POOL_AFTER:
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = x.reshape(len(x), -1)
    for name in ("fc6", "fc7"):
        weight, bias = blobs[name]
        x = F.relu(F.linear(x, t(weight), t(bias)))
    weight, bias = blobs["fc8a"]
    return F.softmax(F.linear(x, t(weight), t(bias)), dim=1).numpy()
