"""Build students by name or from a checkpoint: the library's entry point to models."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.errors import WeightsError
from soundnet_cli.plugins import get_plugins

if TYPE_CHECKING:
    import torch
    from torch import nn

    from soundnet_cli.students import HeadSpec

# Pretrained tags are separate from architectures: a tag names weights for one architecture.
PRETRAINED_TAGS = {"soundnet8": "official"}


def load_student(
    name_or_checkpoint: str | os.PathLike[str] = "soundnet8",
    *,
    pretrained: bool = False,
    heads: Sequence[HeadSpec] | None = None,
    device: str | torch.device = "cpu",
    announce: Callable[[str], None] | None = None,
) -> nn.Module:
    """A student in eval mode.

    ``load_student("soundnet8", pretrained=True)`` gives the authors' model (fetched once and
    cached); ``load_student("run/student.safetensors")`` loads a checkpoint; any other registered
    name builds that architecture freshly initialised, with ``heads`` if given.
    """
    from soundnet_cli.weights.checkpoints import load_checkpoint

    text = os.fspath(name_or_checkpoint)
    if text.endswith(".safetensors") or Path(text).is_file():
        return load_checkpoint(text, device=device)
    registry = get_plugins().students
    entry = registry.get(text)
    if pretrained:
        if text not in PRETRAINED_TAGS:
            raise WeightsError(
                f"no pretrained weights are published for {text!r}; "
                f"pretrained students: {', '.join(PRETRAINED_TAGS)}"
            )
        from soundnet_cli.weights.official import ensure_official

        return load_checkpoint(ensure_official(), device=device)
    kwargs: dict[str, Any] = {"heads": tuple(heads)} if heads is not None else {}
    return entry.factory(**kwargs).to(device).eval()


def list_students() -> list[str]:
    return get_plugins().students.names()


def default_layer(model: Any) -> str:
    """The layer to use when none is given: the model's ``default_layer``, else ``pool5`` (the
    paper's best for SoundNet-8) when it has one, else its last feature tap."""
    chosen = getattr(model, "default_layer", None)
    if chosen:
        return str(chosen)
    names = [info.name for info in model.feature_info]
    return "pool5" if "pool5" in names else names[-1]


def for_inference(
    model: Any,
    layers: Sequence[str],
    *,
    precision: str = "fp32",
    compile: bool = False,
    announce: Callable[[str], None] | None = None,
) -> Any:
    """``model``'s fast inference twin for ``layers`` (``students.inference.optimise``) in
    ``precision``, its half-precision check remembered per weights and device."""
    from soundnet_cli.students.inference import optimise
    from soundnet_cli.weights.identity import precision_cache

    cache = precision_cache(model) if precision != "fp32" else None
    return optimise(
        model,
        layers=layers,
        precision=precision,
        compile=compile,
        announce=announce,
        cache=cache,
    )


def running_precision(model: Any) -> str:
    """``fp32``, ``bf16`` or ``fp16``: what ``model`` (as :func:`for_inference` left it) runs in."""
    import torch

    dtype = getattr(model, "dtype", torch.float32)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
