"""Registers the builtin vision teachers. Imports nothing heavy: torch loads when one is built."""

from __future__ import annotations

from typing import Any

from soundnet_cli.hookspecs import Register, hookimpl

DESCRIPTIONS = {
    "vgg16-imagenet": "VGG16 on ImageNet (1000 objects), the paper's object teacher",
    "vgg16-places": "VGG16 on Places365 (365 scenes), the paper's scene teacher; "
    "CSAIL's Caffe model, converted on first use",
    "alexnet-imagenet": "AlexNet on ImageNet (1000 objects)",
    "alexnet-places": "AlexNet on Places365 (365 scenes)",
    "resnet50-places": "ResNet-50 on Places365 (365 scenes)",
}


def _builtin(name: str) -> Any:
    def make(**kwargs: Any) -> Any:
        from soundnet_cli.teachers.torchvision_teachers import SPECS, build_teacher

        return build_teacher(SPECS[name], **kwargs)

    return make


def _timm(variant: str, **kwargs: Any) -> Any:
    from soundnet_cli.teachers.timm_teacher import build_timm_teacher

    return build_timm_teacher(variant, **kwargs)


def _clip(variant: str, **kwargs: Any) -> Any:
    from soundnet_cli.teachers.clip import build_clip_teacher

    return build_clip_teacher(variant, **kwargs)


@hookimpl
def register_teachers(register: Register) -> None:
    for name, description in DESCRIPTIONS.items():
        register(name, _builtin(name), description=description)
    register("timm:", _timm, description="any timm image classifier: timm:<model>")
    register(
        "clip:",
        _clip,
        description="a CLIP image encoder through open_clip (embedding head): clip:<model>/<tag>",
    )
