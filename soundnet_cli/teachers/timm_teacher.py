"""``timm:<model>``: any timm image classifier as a teacher.

The frame transform comes from the model's own pretrained config (input size, crop fraction,
interpolation, mean and std); ImageNet category names ship with timm. Pretrained weights are
fetched by timm itself into ``$SOUNDNET_HOME/teachers/timm``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from soundnet_cli.errors import UsageProblem, WeightsError
from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead, head_name_for
from soundnet_cli.teachers.weights import (
    HOW_TO_GET,
    how_to_get,
    load_into,
    read_state_dict,
    teachers_dir,
)
from soundnet_cli.weights.home import OFFLINE_ENV, offline

log = logging.getLogger(__name__)


def transform_for(network: Any) -> FrameTransform:
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=network)
    crop = int(config["input_size"][-1])
    resize = int(math.floor(crop / float(config.get("crop_pct") or 1.0)))
    return FrameTransform(
        resize=resize,
        crop=crop,
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=str(config.get("interpolation", "bilinear")),
    )


def category_names(network: Any, classes: int) -> tuple[tuple[str, ...], str]:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(network)
    if subset:
        info = ImageNetInfo(subset)
        if info.num_classes() == classes:
            names = tuple(info.index_to_description(i) for i in range(classes))
            return names, f"timm ({subset})"
    return tuple(f"class-{i:0{len(str(classes - 1))}d}" for i in range(classes)), "placeholders"


def _classifier_size(network: Any, state: dict[str, Any]) -> int | None:
    key = f"{network.pretrained_cfg.get('classifier', '')}.weight"
    tensor = state.get(key)
    return int(tensor.shape[0]) if tensor is not None else None


def build_timm_teacher(
    variant: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    random_init: bool = False,
) -> Teacher:
    import timm
    import torch

    name = f"timm:{variant}"
    if variant.split(".")[0] not in timm.list_models():
        raise UsageProblem(f"timm has no model {variant!r}; see timm.list_models()")
    provenance: dict[str, Any] = {"architecture": f"timm {variant}"}
    network: Any
    if weights is not None:
        path = Path(weights).expanduser()
        state = read_state_dict(path)
        with torch.device("meta"):  # no init cost: the file's tensors are assigned
            network = timm.create_model(variant, pretrained=False)
            classes = _classifier_size(network, state)
            if classes is not None and classes != network.num_classes:
                network = timm.create_model(variant, pretrained=False, num_classes=classes)
        load_into(network, state, f"{name} from {path}", assign=True)
        if any(t.is_meta for t in (*network.parameters(), *network.buffers())):
            # non-persistent buffers (not in any file) need a normally built model
            network = timm.create_model(variant, pretrained=False, num_classes=network.num_classes)
            load_into(network, state, f"{name} from {path}")
        provenance["weights"] = str(path)
    elif random_init:
        network = timm.create_model(variant, pretrained=False)
        provenance["weights"] = "random init"
    else:
        if offline():
            raise WeightsError(
                f"teacher {name!r} needs timm's pretrained weights and {OFFLINE_ENV} is set; "
                f"{how_to_get(name)}",
                parameter=HOW_TO_GET,
            )
        log.info("Fetching the weights of teacher %r through timm (once)", name)
        try:
            network = timm.create_model(
                variant, pretrained=True, cache_dir=str(teachers_dir() / "timm")
            )
        except Exception as exc:
            raise WeightsError(
                f"timm could not fetch {variant!r} ({exc}); {how_to_get(name)}",
                parameter=HOW_TO_GET,
            ) from exc
        config: dict[str, Any] = dict(getattr(network, "pretrained_cfg", None) or {})
        provenance["weights"] = f"timm pretrained {config.get('hf_hub_id') or variant}"
    names, names_from = category_names(network, int(network.num_classes))
    provenance["categories"] = names_from
    head = TeacherHead(head_name_for(name), names)
    return Teacher(name, network, [head], transform_for(network), provenance)
