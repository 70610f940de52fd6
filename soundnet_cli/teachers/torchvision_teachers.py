"""VGG16, AlexNet and ResNet-50 teachers built from torchvision architectures.

ImageNet weights and category names come from torchvision (its download URLs, with the sha256
prefix in the file name); Places365 weights and names come from the CSAIL Places365 release
(the PyTorch ``.pth.tar`` checkpoints and ``categories_places365.txt``). CSAIL published VGG16
Places365 only as a Caffe model: ``vgg16-places`` converts it once (caffe_vgg16.py) and feeds
the network as Caffe did (BGR, 0-255, minus the Places365 mean).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundnet_cli.errors import WeightsError
from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead, head_name_for
from soundnet_cli.teachers.caffe_vgg16 import caffe_weights, vgg16_network
from soundnet_cli.teachers.weights import (
    HOW_TO_GET,
    WeightSource,
    fetch,
    from_torchvision_url,
    how_to_get,
    load_into,
    read_state_dict,
    teachers_dir,
)

PLACES_BASE = "http://places2.csail.mit.edu/models_places365/"
PLACES_NAMES = WeightSource(
    "https://raw.githubusercontent.com/csailvision/places365/master/categories_places365.txt"
)
PLACES_CLASSES = 365
# The Places365 demo scripts resize to 256 x 256 (no aspect kept), then centre crop 224.
PLACES_TRANSFORM = FrameTransform(resize=(256, 256), crop=224)
IMAGENET_TRANSFORM = FrameTransform(resize=256, crop=224)
# VGG16-Places365 was trained in Caffe: BGR pixels in 0-255 minus the per-channel mean of
# places365CNN_mean.binaryproto (docs/teachers.md gives the source), no division.
PLACES_CAFFE_MEAN_BGR = (104.051, 112.514, 116.676)
PLACES_CAFFE_TRANSFORM = FrameTransform(
    resize=(256, 256),
    crop=224,
    mean=PLACES_CAFFE_MEAN_BGR,
    std=(1.0, 1.0, 1.0),
    channel_order="BGR",
    value_range=255.0,
)


@dataclass(frozen=True)
class TorchvisionTeacherSpec:
    """A builtin teacher: torchvision architecture, dataset and where its weights live."""

    name: str
    architecture: str  # a torchvision.models builder: vgg16, alexnet, resnet50
    dataset: str  # imagenet | places365
    source: WeightSource | None  # None: no published weights (local weights are needed)
    caffe: bool = False  # the source is a VGG16 .caffemodel, converted on first use

    @property
    def num_classes(self) -> int:
        return 1000 if self.dataset == "imagenet" else PLACES_CLASSES

    @property
    def transform(self) -> FrameTransform:
        if self.caffe:
            return PLACES_CAFFE_TRANSFORM
        return IMAGENET_TRANSFORM if self.dataset == "imagenet" else PLACES_TRANSFORM


def _torchvision_source(weights_enum: str) -> WeightSource:
    import torchvision.models as tvm

    enum_name, member = weights_enum.split(".")
    return from_torchvision_url(getattr(tvm, enum_name)[member].url)


SPECS: dict[str, TorchvisionTeacherSpec] = {
    spec.name: spec
    for spec in (
        TorchvisionTeacherSpec(
            "vgg16-imagenet",
            "vgg16",
            "imagenet",
            WeightSource("torchvision:VGG16_Weights.IMAGENET1K_V1"),
        ),
        TorchvisionTeacherSpec(
            "alexnet-imagenet",
            "alexnet",
            "imagenet",
            WeightSource("torchvision:AlexNet_Weights.IMAGENET1K_V1"),
        ),
        TorchvisionTeacherSpec(
            "vgg16-places",
            "vgg16",
            "places365",
            WeightSource(PLACES_BASE + "vgg16_places365.caffemodel"),
            caffe=True,
        ),
        TorchvisionTeacherSpec(
            "alexnet-places",
            "alexnet",
            "places365",
            WeightSource(PLACES_BASE + "alexnet_places365.pth.tar"),
        ),
        TorchvisionTeacherSpec(
            "resnet50-places",
            "resnet50",
            "places365",
            WeightSource(PLACES_BASE + "resnet50_places365.pth.tar"),
        ),
    )
}


def resolve_source(spec: TorchvisionTeacherSpec) -> WeightSource | None:
    """The spec's source, with torchvision's URL looked up from its weights enum."""
    if spec.source is not None and spec.source.url.startswith("torchvision:"):
        return _torchvision_source(spec.source.url.split(":", 1)[1])
    return spec.source


def imagenet_names() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(tvm.VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def parse_places_names(text: str) -> tuple[str, ...]:
    """``categories_places365.txt`` lines (``/a/airfield 0``) -> names in index order."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            continue
        path = parts[0]
        name = path[3:] if len(path) > 3 and path[0] == "/" and path[2] == "/" else path
        rows.append((int(parts[1]), name))
    rows.sort()
    if [i for i, _ in rows] != list(range(PLACES_CLASSES)):
        raise WeightsError(f"the Places365 category file lists {len(rows)} of 365 categories")
    return tuple(name for _, name in rows)


def places_names(weights: Path | None, random_init: bool) -> tuple[tuple[str, ...], str]:
    """Places365 names and where they came from: beside the weights, the cache, or download."""
    candidates = [weights.parent / PLACES_NAMES.filename] if weights else []
    candidates.append(teachers_dir() / PLACES_NAMES.filename)
    for candidate in candidates:
        if candidate.is_file():
            return parse_places_names(candidate.read_text(encoding="utf-8")), str(candidate)
    if random_init:
        return tuple(f"place-{i:03d}" for i in range(PLACES_CLASSES)), "placeholders"
    try:
        path = fetch(PLACES_NAMES, "places365 category names")
    except WeightsError as exc:
        raise WeightsError(
            f"the Places365 category names ({PLACES_NAMES.filename}) are needed: put it beside "
            f"the weights or in {teachers_dir()} ({exc})"
        ) from exc
    return parse_places_names(path.read_text(encoding="utf-8")), PLACES_NAMES.url


def build_network(spec: TorchvisionTeacherSpec, *, initialise: bool = True) -> Any:
    """The torchvision architecture; on the meta device (no init cost) when weights will be
    assigned."""
    import torch
    import torchvision.models as tvm

    builder = getattr(tvm, spec.architecture)
    if initialise:
        return builder(weights=None, num_classes=spec.num_classes)
    with torch.device("meta"):
        return builder(weights=None, num_classes=spec.num_classes)


def build_teacher(
    spec: TorchvisionTeacherSpec,
    *,
    weights: str | os.PathLike[str] | None = None,
    random_init: bool = False,
) -> Teacher:
    """The teacher of ``spec`` with local, cached/downloaded or random weights."""
    weights_path = Path(weights).expanduser() if weights is not None else None
    provenance: dict[str, Any] = {"architecture": f"torchvision.models.{spec.architecture}"}
    state = None
    if spec.caffe and not (random_init and weights_path is None):
        state, origin, found = caffe_weights(
            spec.name, spec.source, weights_path, classes=spec.num_classes
        )
        provenance.update(found)
    elif weights_path is not None:
        state, origin = read_state_dict(weights_path), str(weights_path)
    elif random_init:
        origin = "random init"
    else:
        source = resolve_source(spec)
        if source is None:
            raise WeightsError(
                f"teacher {spec.name!r} has no published PyTorch weights; give converted "
                "weights for it (docs/teachers.md), or use random initialisation",
                parameter=HOW_TO_GET,
            )
        state, origin = read_state_dict(fetch(source, spec.name)), source.url
    if spec.dataset == "imagenet":
        names, names_from = imagenet_names(), "torchvision"
    else:
        names, names_from = places_names(weights_path, random_init)
    if spec.caffe and state is not None:
        network = vgg16_network(state)  # widths from the file: torchvision's for CSAIL's
    else:
        network = build_network(spec, initialise=state is None)
    if state is not None:
        load_into(network, state, f"{spec.name} from {origin}", assign=True)
    provenance["weights"] = origin
    provenance["categories"] = names_from
    head = TeacherHead(head_name_for(spec.name), names)
    return Teacher(spec.name, network, [head], spec.transform, provenance)


__all__ = ["SPECS", "build_teacher", "how_to_get", "parse_places_names"]
