"""VGG16 from a Caffe model: the layout map, the conversion to safetensors, and the network.

CSAIL published VGG16-Places365 only as ``vgg16_places365.caffemodel``. Its 13 convolutions
and 3 inner products map one to one onto torchvision's ``vgg16`` (``features.{0,2,5,...,28}``,
``classifier.{0,3,6}``): Caffe stores convolution kernels as (out, in, kh, kw) and
inner-product weights as (out, in) like PyTorch, and flattens ``pool5`` in the same
channel-height-width order, so the numbers are copied unchanged. The network keeps Caffe's
input convention (BGR, 0-255, minus the mean), which the teacher's frame transform feeds it.

The conversion streams: the blobs go from the caffemodel to the safetensors file a few MiB at
a time, so it needs little memory whatever the file's size. The output records the sha256 of
the caffemodel it came from and its source; converting a different caffemodel over it is
refused unless forced.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import WeightsError
from soundnet_cli.teachers.weights import (
    HOW_TO_GET,
    WeightSource,
    fetch,
    read_state_dict,
    teachers_dir,
)
from soundnet_cli.weights.caffemodel import Blob, CaffeModelError, CaffeNet, file_sha256, iter_blob
from soundnet_cli.weights.caffemodel import scan as scan_caffemodel
from soundnet_cli.weights.home import ByteProgress

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import nn

CONV_KEYS = tuple(f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))
FC_KEYS = ("classifier.0", "classifier.3", "classifier.6")
POOL_AFTER = (1, 3, 6, 9, 12)  # the convolutions (0-based) that a 2x2 max pool follows
POOL5_CELLS = 7 * 7  # pool5 of a 224-pixel input, what fc6 reads

CACHE_NAME = "vgg16_places365.safetensors"  # the vgg16-places cache in $SOUNDNET_HOME/teachers
CONVERTED_BY = "soundnet-cli convert-caffe"
INPUT_CONVENTION = "caffe: BGR, 0-255, minus the per-channel mean"


@dataclass(frozen=True)
class Planned:
    """One tensor of the output: its torchvision key and shape, and the Caffe blob it holds."""

    key: str
    shape: tuple[int, ...]
    blob: Blob
    layer: str


@dataclass(frozen=True)
class Conversion:
    """The result of ``convert_caffemodel``."""

    path: Path
    sha256: str
    source: str
    layout: str
    converted: bool  # False: ``path`` already held this caffemodel's conversion

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "caffemodel_sha256": self.sha256,
            "source": self.source,
            "caffe_layout": self.layout,
            "converted": self.converted,
        }


def plan_vgg16(net: CaffeNet, classes: int) -> list[Planned]:
    """Map the weighted layers of ``net`` onto torchvision VGG16 keys, checking every shape."""
    where = f"{net.path}"
    weighted = net.weighted
    kinds = [layer.type for layer in weighted]
    convs = [layer for layer in weighted if layer.type == "Convolution"]
    fcs = [layer for layer in weighted if layer.type == "InnerProduct"]
    others = [f"{layer.name} ({layer.type})" for layer in weighted if layer not in convs + fcs]
    if others:
        raise WeightsError(f"{where}: not a VGG16: it has weighted layers {others}")
    if kinds != ["Convolution"] * len(CONV_KEYS) + ["InnerProduct"] * len(FC_KEYS):
        hint = " (is the file truncated?)" if len(weighted) < 16 else ""
        raise WeightsError(
            f"{where}: not a VGG16: it has {len(convs)} convolutions and {len(fcs)} inner "
            f"products with weights, VGG16 has 13 then 3{hint}"
        )
    planned: list[Planned] = []
    channels = 3
    for key, layer in zip(CONV_KEYS, convs, strict=True):
        weight, bias = _two_blobs(net, layer.name, layer.blobs)
        if len(weight.shape) != 4 or weight.shape[1:] != (channels, 3, 3):
            raise WeightsError(
                f"{where}: layer {layer.name!r} has a kernel of shape {list(weight.shape)}; VGG16 "
                f"needs [out, {channels}, 3, 3] here"
            )
        _check_convolution(net, layer.name, layer.convolution)
        channels = weight.shape[0]
        planned.append(Planned(f"{key}.weight", weight.shape, weight, layer.name))
        bias = _vector(net, layer.name, bias, channels)
        planned.append(Planned(f"{key}.bias", (channels,), bias, layer.name))
    inputs = channels * POOL5_CELLS
    for key, layer, last in zip(FC_KEYS, fcs, (False, False, True), strict=True):
        weight, bias = _two_blobs(net, layer.name, layer.blobs)
        matrix = _matrix(net, layer.name, weight)
        if matrix[1] != inputs:
            raise WeightsError(
                f"{where}: layer {layer.name!r} takes {matrix[1]} inputs; the layer before gives "
                f"{inputs}"
            )
        if last and matrix[0] != classes:
            raise WeightsError(
                f"{where}: the last layer {layer.name!r} has {matrix[0]} outputs, not the "
                f"{classes} Places365 categories"
            )
        planned.append(Planned(f"{key}.weight", matrix, weight, layer.name))
        bias = _vector(net, layer.name, bias, matrix[0])
        planned.append(Planned(f"{key}.bias", (matrix[0],), bias, layer.name))
        inputs = matrix[0]
    return planned


def _two_blobs(net: CaffeNet, layer: str, blobs: tuple[Blob, ...]) -> tuple[Blob, Blob]:
    if len(blobs) != 2:
        raise WeightsError(
            f"{net.path}: layer {layer!r} has {len(blobs)} blobs; VGG16 needs a weight and a bias"
        )
    return blobs[0], blobs[1]


def _vector(net: CaffeNet, layer: str, blob: Blob, size: int) -> Blob:
    if blob.count != size or sum(d != 1 for d in blob.shape) > 1:
        raise WeightsError(
            f"{net.path}: layer {layer!r} has a bias of shape {list(blob.shape)}; {size} values "
            "are needed"
        )
    return blob


def _matrix(net: CaffeNet, layer: str, blob: Blob) -> tuple[int, int]:
    """(out, in) of an inner-product weight: (out, in) today, (1, 1, out, in) in V1 files."""
    if len(blob.shape) < 2 or any(d != 1 for d in blob.shape[:-2]):
        raise WeightsError(
            f"{net.path}: layer {layer!r} has a weight of shape {list(blob.shape)}, not a matrix"
        )
    return blob.shape[-2], blob.shape[-1]


def _check_convolution(
    net: CaffeNet, layer: str, settings: dict[str, tuple[int, ...]] | None
) -> None:
    """VGG16's convolutions pad 1 and step 1. A file that records other settings is refused;
    one that records none (some converters drop them) is taken as VGG16's deploy settings."""
    if settings is None:
        return

    def given(*names: str) -> tuple[int, ...]:
        return tuple(v for name in names for v in settings.get(name, ()))

    wanted = {
        "pad": given("pad", "pad_h", "pad_w") or (0,),  # caffe.proto's default pad is 0
        "stride": given("stride", "stride_h", "stride_w") or (1,),
        "group": given("group") or (1,),
        "dilation": given("dilation") or (1,),
    }
    expected = {"pad": 1, "stride": 1, "group": 1, "dilation": 1}
    wrong = [f"{k} {list(v)}" for k, v in wanted.items() if set(v) != {expected[k]}]
    if wrong:
        raise WeightsError(
            f"{net.path}: layer {layer!r} has {', '.join(wrong)}; VGG16 convolutions pad 1 and "
            "step 1"
        )


def recorded(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a safetensors file (``{}`` when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read it as safetensors ({exc})") from exc


def convert_caffemodel(
    source_file: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    source: str | None = None,
    classes: int = 365,
    force: bool = False,
    sha256: str | None = None,
    progress: ByteProgress | None = None,
) -> Conversion:
    """Convert a VGG16 ``.caffemodel`` to torchvision-layout safetensors at ``out``.

    ``source`` (default: the file's path) and the caffemodel's sha256 go into the metadata. If
    ``out`` already holds the conversion of a caffemodel with the same sha256, nothing is
    written; one from another caffemodel (or any other file) is replaced only with ``force``.
    Nothing is left at ``out`` when the caffemodel cannot be read.
    """
    source_file, out = Path(source_file), Path(out)
    net = scan_caffemodel(source_file)
    planned = plan_vgg16(net, classes)
    digest = sha256 or file_sha256(source_file)
    origin = source or str(source_file.resolve())
    if out.exists():
        before = recorded(out).get("caffemodel_sha256")
        if before == digest:
            return Conversion(out, digest, origin, net.layout, converted=False)
        if not force:
            what = f"the conversion of a caffemodel with sha256 {before}" if before else "a file"
            raise WeightsError(
                f"{out} already holds {what}, not of {source_file.name} (sha256 {digest}); "
                f"`soundnet weights convert-caffe {source_file} --force` replaces it, "
                "`--out OTHER.safetensors` converts beside it"
            )
    metadata = {
        "format": "pt",
        "converted_by": CONVERTED_BY,
        "architecture": "torchvision.models.vgg16",
        "input": INPUT_CONVENTION,
        "classes": str(classes),
        "source": origin,
        "caffemodel_sha256": digest,
        "caffe_net": net.name,
        "caffe_layout": net.layout,
        "caffe_layers": json.dumps({p.key: p.layer for p in planned}),
    }
    with atomic_path(out) as tmp:
        _write_safetensors(tmp, source_file, planned, metadata, progress)
    return Conversion(out, digest, origin, net.layout, converted=True)


def _write_safetensors(
    target: Path,
    source_file: Path,
    planned: list[Planned],
    metadata: dict[str, str],
    progress: ByteProgress | None,
) -> None:
    """The safetensors format (8-byte header size, JSON header, raw little-endian data),
    written tensor by tensor as the blobs are read."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for p in planned:
        size = 4 * p.blob.count
        header[p.key] = {
            "dtype": "F32",
            "shape": list(p.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    total, done = offset, 0
    with open(source_file, "rb") as src, open(target, "wb") as dst:
        dst.write(len(text).to_bytes(8, "little"))
        dst.write(text)
        for p in planned:
            for chunk in iter_blob(src, p.blob):
                dst.write(chunk.astype("<f4", copy=False).tobytes())
                done += 4 * chunk.size
                if progress:
                    progress(done, total)
    if done != total:  # iter_blob reads exactly what scan found; this guards that promise
        raise CaffeModelError(f"{source_file}: wrote {done} of {total} bytes")


def cache_path() -> Path:
    """Where ``vgg16-places`` keeps its converted weights."""
    return teachers_dir() / CACHE_NAME


def caffe_weights(
    teacher: str,
    source: WeightSource | None,
    weights: Path | None,
    *,
    classes: int,
) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """The tensors of a Caffe-trained VGG16 teacher, where they came from, and provenance.

    ``weights`` may be a ``.caffemodel`` (converted into the cache), or an already converted
    file (used where it is). Without it: the cache, or else ``source`` downloaded once and
    converted (the caffemodel is not kept).
    """
    cache = cache_path()
    if weights is not None and weights.suffix.lower() != ".caffemodel":
        meta = recorded(weights) if weights.suffix == ".safetensors" else {}
        return read_state_dict(weights), str(weights), _provenance(meta, weights)
    if weights is not None:
        cache = _cache_for(weights, classes)
    elif not cache.is_file():
        if source is None:
            raise WeightsError(
                f"teacher {teacher!r} has no weights source; give local weights for it",
                parameter=HOW_TO_GET,
            )
        model = fetch(source, teacher)
        try:
            log.info("Converting %s to %s (once)", model.name, cache.name)
            convert_caffemodel(model, cache, source=source.url, classes=classes)
        finally:  # the converted file is the cache; a bad download is not kept either
            model.unlink(missing_ok=True)
    meta = recorded(cache)
    return read_state_dict(cache), meta.get("source", str(cache)), _provenance(meta, cache)


def _cache_for(caffemodel: Path, classes: int) -> Path:
    """The converted cache of an explicitly given caffemodel: the default cache when it is empty
    or already holds this file's conversion, else a file keyed by its sha256 beside it, so a
    second caffemodel just works and never replaces the default (that takes
    `weights convert-caffe --force`)."""
    digest = file_sha256(caffemodel)
    cache = cache_path()
    if cache.is_file():
        try:
            held = recorded(cache).get("caffemodel_sha256")
        except WeightsError:  # a damaged default is not this file's business
            held = None
        if held != digest:
            cache = keyed_cache_path(digest)
    convert_caffemodel(caffemodel, cache, classes=classes, sha256=digest)
    return cache


def keyed_cache_path(sha256: str) -> Path:
    """Where the conversion of a caffemodel other than the default's is cached."""
    return teachers_dir() / f"{Path(CACHE_NAME).stem}-{sha256[:16]}.safetensors"


def _provenance(meta: dict[str, str], path: Path) -> dict[str, Any]:
    found = {"weights_file": str(path)}
    if "caffemodel_sha256" in meta:
        found["caffemodel_sha256"] = meta["caffemodel_sha256"]
    return found


def vgg16_network(state: dict[str, torch.Tensor]) -> nn.Module:
    """A torchvision VGG whose widths come from ``state`` (torchvision ``vgg16`` for the real
    file; narrower test models keep the same keys), built on the meta device and given the
    tensors of ``state``."""
    import torch
    from torch import nn
    from torchvision.models.vgg import VGG, make_layers

    cfg: list[str | int] = []
    for i, key in enumerate(CONV_KEYS):
        weight = state.get(f"{key}.weight")
        if weight is None or weight.dim() != 4:
            raise WeightsError(f"the VGG16 weights have no 4-D {key}.weight")
        cfg.append(int(weight.shape[0]))
        if i in POOL_AFTER:
            cfg.append("M")
    sizes = []
    for key in FC_KEYS:
        weight = state.get(f"{key}.weight")
        if weight is None or weight.dim() != 2:
            raise WeightsError(f"the VGG16 weights have no 2-D {key}.weight")
        sizes.append((int(weight.shape[1]), int(weight.shape[0])))
    with torch.device("meta"):
        network = VGG(make_layers(cfg), num_classes=sizes[-1][1], init_weights=False)
        network.classifier = nn.Sequential(
            nn.Linear(*sizes[0]), nn.ReLU(True), nn.Dropout(),
            nn.Linear(*sizes[1]), nn.ReLU(True), nn.Dropout(),
            nn.Linear(*sizes[2]),
        )  # fmt: skip
    return network


__all__ = [
    "Conversion",
    "cache_path",
    "caffe_weights",
    "keyed_cache_path",
    "convert_caffemodel",
    "plan_vgg16",
    "recorded",
    "vgg16_network",
]
