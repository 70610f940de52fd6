"""Read Caffe's binary ``.caffemodel`` (a protobuf ``NetParameter``) with plain Python and NumPy.

No Caffe, no protobuf library and no code execution: the file is walked field by field in the
protobuf wire format. ``scan`` reads only the small fields (layer names, types, blob shapes,
convolution settings) and records where each blob's numbers lie in the file, seeking over them;
``iter_blob``/``read_blob`` then read those numbers on demand, in chunks. So the memory a
conversion needs does not grow with the file.

Both layouts Caffe has written are read:

- current: ``NetParameter.layer`` (field 100) of ``LayerParameter`` (``name`` 1, ``type`` 2 as
  a string, ``blobs`` 7, ``convolution_param`` 106);
- legacy: ``NetParameter.layers`` (field 2) of ``V1LayerParameter`` (``name`` 4, ``type`` 5 as
  an enum, ``blobs`` 6, ``convolution_param`` 10).

A ``BlobProto`` gives its shape in ``shape`` (7, a ``BlobShape`` of ``dim`` 1) or the legacy
``num``/``channels``/``height``/``width`` (1-4), and its numbers in ``data`` (5, float32) or
``double_data`` (8, float64), packed or one value per field. Unknown fields are skipped; a
blob whose declared size disagrees with its data, a truncated file and a file that is not a
protobuf message are refused with one-line errors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from soundnet_cli.errors import WeightsError

# wire types
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5

# V1LayerParameter.LayerType, named as the current layout names its types
V1_LAYER_TYPES = {
    0: "None", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data",
    6: "Dropout", 7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output",
    11: "Im2col", 12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid", 20: "Softmax",
    21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData", 25: "Eltwise",
    26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss", 29: "MemoryData",
    30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN", 35: "AbsVal",
    36: "Silence", 37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}  # fmt: skip

# ConvolutionParameter fields kept (repeated or not, all unsigned varints)
_CONV_FIELDS = {
    1: "num_output", 3: "pad", 4: "kernel_size", 5: "group", 6: "stride", 9: "pad_h",
    10: "pad_w", 11: "kernel_h", 12: "kernel_w", 13: "stride_h", 14: "stride_w", 18: "dilation",
}  # fmt: skip

_CHUNK_BYTES = 1 << 22  # 4 MiB: the largest piece of blob data held at once while streaming


class CaffeModelError(WeightsError):
    """A file that is not a readable Caffe model (truncated, corrupt, inconsistent)."""


@dataclass(frozen=True)
class Segment:
    """A run of numbers in the file: ``count`` values of ``dtype`` starting at ``offset``,
    ``stride`` bytes apart (the value's size when packed; one more byte when every value carries
    its own field tag)."""

    offset: int
    count: int
    dtype: str  # "<f4" | "<f8"
    stride: int


@dataclass(frozen=True)
class Blob:
    """One parameter blob of a layer: its declared shape and where its numbers lie."""

    shape: tuple[int, ...]
    segments: tuple[Segment, ...]

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def source_dtype(self) -> str:
        return self.segments[0].dtype if self.segments else "<f4"


@dataclass(frozen=True)
class Layer:
    """A layer's name, type (``"Convolution"``, ``"InnerProduct"``...), blobs and, for
    convolutions, the settings the file records (``{"pad": (1,), "kernel_size": (3,)}``)."""

    name: str
    type: str
    blobs: tuple[Blob, ...]
    convolution: dict[str, tuple[int, ...]] | None = None


@dataclass(frozen=True)
class CaffeNet:
    """What ``scan`` found: the net's name, which layout the file uses, and its layers."""

    path: Path
    name: str
    layout: str  # "layer" (current) | "layers" (legacy V1)
    layers: tuple[Layer, ...] = field(default=())

    @property
    def weighted(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.blobs)


class _Walker:
    """Reads protobuf fields from a binary file, always within the bounds of the enclosing
    message, turning every inconsistency into a CaffeModelError that says where it was."""

    def __init__(self, handle: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size = handle, path, size

    def fail(self, what: str, at: int | None = None) -> CaffeModelError:
        where = self.f.tell() if at is None else at
        return CaffeModelError(f"{self.path}: {what} (at byte {where} of {self.size})")

    def truncated(self, end: int) -> CaffeModelError:
        return CaffeModelError(
            f"{self.path}: the file is truncated: a field ends at byte {end} but the file has "
            f"{self.size} bytes; download it again"
        )

    def not_caffe(self, why: str, at: int | None = None) -> CaffeModelError:
        return self.fail(f"not a Caffe model ({why})", at)

    def varint(self, end: int) -> int:
        value, shift = 0, 0
        while True:
            if self.f.tell() >= end:
                if end >= self.size:
                    raise self.truncated(self.size + 1)
                raise self.not_caffe("a number runs past its message")
            byte = self.f.read(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise self.not_caffe("a number longer than 10 bytes")

    def key(self, end: int) -> tuple[int, int, int]:
        """(field number, wire type, position of the key)."""
        at = self.f.tell()
        key = self.varint(end)
        number, wire = key >> 3, key & 7
        if number == 0 or wire not in (_VARINT, _FIXED64, _BYTES, _FIXED32):
            raise self.not_caffe(f"no protobuf field starts here: byte value {key & 0xFF:#04x}", at)
        return number, wire, at

    def length(self, end: int) -> int:
        """The length of a length-delimited field, checked against the file and the message."""
        n = self.varint(end)
        stop = self.f.tell() + n
        if stop > self.size:
            raise self.truncated(stop)
        if stop > end:
            raise self.not_caffe("a field runs past its message")
        return n

    def skip(self, wire: int, end: int) -> None:
        if wire == _VARINT:
            self.varint(end)
            return
        n = {_FIXED64: 8, _FIXED32: 4}.get(wire)
        if n is None:
            n = self.length(end)
        stop = self.f.tell() + n
        if stop > self.size:
            raise self.truncated(stop)
        if stop > end:
            raise self.not_caffe("a field runs past its message")
        self.f.seek(stop)

    def expect(self, wire: int, wanted: int, what: str, at: int) -> None:
        if wire != wanted:
            raise self.not_caffe(f"{what} has the wrong wire type {wire}", at)

    def text(self, end: int) -> str:
        n = self.length(end)
        return self.f.read(n).decode("utf-8", "replace")

    def varints(self, wire: int, end: int) -> list[int]:
        """A repeated unsigned integer field, packed or not."""
        if wire == _VARINT:
            return [self.varint(end)]
        if wire != _BYTES:
            raise self.not_caffe(f"an integer field has the wrong wire type {wire}")
        size = self.length(end)
        stop = self.f.tell() + size
        values = []
        while self.f.tell() < stop:
            values.append(self.varint(stop))
        return values

    def tagged_run(self, tag: int, width: int, end: int) -> Segment:
        """Values written one per field (a one-byte ``tag``, then ``width`` bytes), starting at
        the value the walker stands on; consecutive ones become one segment, found a chunk at a
        time."""
        start = self.f.tell() - 1  # the tag byte just read
        stride = width + 1
        count = 0
        while start + (count + 1) * stride <= end:
            rows = min(_CHUNK_BYTES // stride, (end - start) // stride - count)
            self.f.seek(start + count * stride)
            tags = np.frombuffer(self.f.read(rows * stride), np.uint8).reshape(rows, stride)[:, 0]
            other = np.flatnonzero(tags != tag)
            if other.size:
                count += int(other[0])
                break
            count += rows
        if count == 0:
            raise self.not_caffe("a field runs past its message", start)
        self.f.seek(start + count * stride)
        return Segment(start + 1, count, "<f4" if width == 4 else "<f8", stride)


def scan(path: str | os.PathLike[str]) -> CaffeNet:
    """The layers of a ``.caffemodel`` and where their blobs lie, reading only small fields."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise CaffeModelError(f"{path}: not a Caffe model (the file is empty)")
    with open(path, "rb", buffering=1 << 16) as handle:
        walker = _Walker(handle, path, size)
        name = ""
        current: list[Layer] = []
        legacy: list[Layer] = []
        while handle.tell() < size:
            number, wire, at = walker.key(size)
            if number == 1 and wire == _BYTES:
                name = walker.text(size)
            elif number == 100:
                walker.expect(wire, _BYTES, "a layer", at)
                current.append(_layer(walker, legacy=False))
            elif number == 2:
                walker.expect(wire, _BYTES, "a legacy layer", at)
                legacy.append(_layer(walker, legacy=True))
            else:
                walker.skip(wire, size)
    if current and legacy:
        raise CaffeModelError(f"{path}: the file mixes current and legacy (V1) layers")
    if not current and not legacy:
        raise CaffeModelError(f"{path}: not a Caffe model (no layers found)")
    layout = "layer" if current else "layers"
    return CaffeNet(path, name, layout, tuple(current or legacy))


def _layer(walker: _Walker, *, legacy: bool) -> Layer:
    size = walker.length(walker.size)
    end = walker.f.tell() + size
    name_field, type_field, blobs_field, conv_field = (4, 5, 6, 10) if legacy else (1, 2, 7, 106)
    name, kind = "", ""
    blobs: list[Blob] = []
    convolution: dict[str, tuple[int, ...]] | None = None
    while walker.f.tell() < end:
        number, wire, at = walker.key(end)
        if number == name_field and wire == _BYTES:
            name = walker.text(end)
        elif number == type_field and legacy and wire == _VARINT:
            code = walker.varint(end)
            kind = V1_LAYER_TYPES.get(code, f"V1 type {code}")
        elif number == type_field and not legacy and wire == _BYTES:
            kind = walker.text(end)
        elif number == blobs_field:
            walker.expect(wire, _BYTES, "a blob", at)
            blobs.append(_blob(walker, name or f"#{at}", len(blobs)))
        elif number == conv_field and wire == _BYTES:
            convolution = _convolution(walker, end)
        else:
            walker.skip(wire, end)
    return Layer(name, kind, tuple(blobs), convolution)


def _convolution(walker: _Walker, outer: int) -> dict[str, tuple[int, ...]]:
    size = walker.length(outer)
    end = walker.f.tell() + size
    found: dict[str, list[int]] = {}
    while walker.f.tell() < end:
        number, wire, _ = walker.key(end)
        if number in _CONV_FIELDS and wire in (_VARINT, _BYTES):
            found.setdefault(_CONV_FIELDS[number], []).extend(walker.varints(wire, end))
        else:
            walker.skip(wire, end)
    return {k: tuple(v) for k, v in found.items()}


def _blob(walker: _Walker, layer: str, index: int) -> Blob:
    size = walker.length(walker.size)
    end = walker.f.tell() + size
    shape: tuple[int, ...] | None = None
    legacy_dims: dict[int, int] = {}
    floats: list[Segment] = []
    doubles: list[Segment] = []
    while walker.f.tell() < end:
        number, wire, at = walker.key(end)
        if number == 7 and wire == _BYTES:
            shape = _blob_shape(walker, end)
        elif number in (1, 2, 3, 4) and wire == _VARINT:
            legacy_dims[number] = walker.varint(end)
        elif number in (5, 8) and wire == _BYTES:  # packed
            width = 4 if number == 5 else 8
            n = walker.length(end)
            if n % width:
                raise walker.not_caffe(f"a blob's data is {n} bytes, not whole numbers", at)
            target = floats if number == 5 else doubles
            target.append(Segment(walker.f.tell(), n // width, f"<f{width}", width))
            walker.f.seek(walker.f.tell() + n)
        elif number == 5 and wire == _FIXED32:
            floats.append(walker.tagged_run(0x2D, 4, end))
        elif number == 8 and wire == _FIXED64:
            doubles.append(walker.tagged_run(0x41, 8, end))
        else:
            walker.skip(wire, end)
    if floats and doubles:
        raise walker.fail(f"layer {layer!r} blob {index} holds both float and double data")
    if shape is None:
        # the legacy 4-D shape; absent dimensions default to 0 as in caffe.proto
        shape = tuple(legacy_dims.get(i, 0) for i in (1, 2, 3, 4)) if legacy_dims else ()
    blob = Blob(shape, tuple(floats or doubles))
    held = sum(s.count for s in blob.segments)
    if held != blob.count:
        raise CaffeModelError(
            f"{walker.path}: layer {layer!r} blob {index} declares shape {list(shape)} "
            f"({blob.count} values) but holds {held} values; the file is corrupt"
        )
    return blob


def _blob_shape(walker: _Walker, outer: int) -> tuple[int, ...]:
    size = walker.length(outer)
    end = walker.f.tell() + size
    dims: list[int] = []
    while walker.f.tell() < end:
        number, wire, _ = walker.key(end)
        if number == 1 and wire in (_VARINT, _BYTES):
            dims.extend(walker.varints(wire, end))
        else:
            walker.skip(wire, end)
    if any(d >= 1 << 40 for d in dims):
        raise walker.not_caffe(f"a blob dimension of {max(dims)}")
    return tuple(dims)


def iter_blob(
    handle: BinaryIO, blob: Blob, chunk_bytes: int = _CHUNK_BYTES
) -> Iterator[np.ndarray]:
    """The blob's numbers as float32 1-D arrays of at most about ``chunk_bytes`` each."""
    for segment in blob.segments:
        width = 4 if segment.dtype == "<f4" else 8
        per_chunk = max(1, chunk_bytes // segment.stride)
        for first in range(0, segment.count, per_chunk):
            rows = min(per_chunk, segment.count - first)
            # a tagged value's row is [tag, value]: start one byte before the value
            handle.seek(segment.offset - (segment.stride - width) + first * segment.stride)
            raw = handle.read(rows * segment.stride)
            if len(raw) < rows * segment.stride:
                raise CaffeModelError(f"{getattr(handle, 'name', 'caffemodel')}: truncated")
            if segment.stride == width:
                values = np.frombuffer(raw, segment.dtype)
            else:  # drop the tag byte in front of every value
                table = np.frombuffer(raw, np.uint8).reshape(rows, segment.stride)
                values = np.ascontiguousarray(table[:, 1:]).view(segment.dtype).reshape(-1)
            yield values.astype(np.float32, copy=False)


def read_blob(path: str | os.PathLike[str], blob: Blob) -> np.ndarray:
    """The whole blob as a float32 array of its declared shape."""
    out = np.empty(blob.count, np.float32)
    done = 0
    with open(path, "rb") as handle:
        for chunk in iter_blob(handle, blob):
            out[done : done + chunk.size] = chunk
            done += chunk.size
    return out.reshape(blob.shape)


def file_sha256(
    path: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None
) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_CHUNK_BYTES)
        view = memoryview(buffer)
        while n := handle.readinto(view):
            digest.update(view[:n])
            done += n
            if progress:
                progress(done, total)
    return digest.hexdigest()
