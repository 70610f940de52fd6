"""Build students by name or from a checkpoint: the library's entry point to models."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.errors import WeightsError
from soundnet_cli.plugins import get_plugins
from soundnet_cli.registry import Entry

if TYPE_CHECKING:
    import torch

    from soundnet_cli.students import HeadSpec
    from soundnet_cli.students.contract import Student

log = logging.getLogger(__name__)


def load_student(
    name_or_checkpoint: str | os.PathLike[str] = "soundnet8",
    *,
    pretrained: bool | str = False,
    heads: Sequence[HeadSpec] | None = None,
    device: str | torch.device = "cpu",
) -> Student:
    """A student in eval mode.

    ``load_student("run/student.safetensors")`` loads a checkpoint; ``load_student(NAME,
    pretrained=True)`` loads the weights NAME's plugin published under its default tag (for
    ``soundnet8``, ``"official"``: the authors' model, fetched once and cached), and
    ``pretrained="TAG"`` another tag; any other registered name builds that architecture
    freshly initialised, with ``heads`` if given.
    """
    from soundnet_cli.weights.checkpoints import load_checkpoint

    text = os.fspath(name_or_checkpoint)
    if text.endswith(".safetensors") or Path(text).is_file():
        return load_checkpoint(text, device=device)
    registry = get_plugins().students
    entry = registry.get(text)
    if pretrained is not False:
        return _load_pretrained(
            entry, text, None if pretrained is True else str(pretrained), device
        )
    kwargs: dict[str, Any] = {"heads": tuple(heads)} if heads is not None else {}
    model: Student = entry.factory(**kwargs).to(device).eval()
    return model


def _load_pretrained(
    entry: Entry, name: str, tag: str | None, device: str | torch.device
) -> Student:
    """The checkpoint ``entry`` publishes under ``tag`` (its default tag when None), loaded."""
    from soundnet_cli.weights.checkpoints import load_checkpoint, read_info

    if not entry.pretrained:
        published = [e.name for e in get_plugins().students if e.pretrained]
        raise WeightsError(
            f"no pretrained weights are published for {name!r}; "
            f"pretrained students: {', '.join(published) or 'none'}"
        )
    path = entry.weights_path(tag)
    info = read_info(path)
    if info.architecture != name:
        raise WeightsError(
            f"{path}: the pretrained weights of {name!r} hold a {info.architecture!r} model"
        )
    log.debug("loading %s pretrained %r from %s", name, tag or entry.default_tag, path)
    return load_checkpoint(path, device=device)


def pretrained_tags(name: str) -> list[str]:
    """The pretrained tags the student ``name`` publishes (the default first)."""
    return list(get_plugins().students.get(name).pretrained)


def list_students() -> list[str]:
    return get_plugins().students.names()


def default_layer(model: Student) -> str:
    """The layer to use when none is given: the model's ``default_layer``, else ``pool5`` (the
    paper's best for SoundNet-8) when it has one, else its last feature tap."""
    chosen = getattr(model, "default_layer", None)
    if chosen:
        return str(chosen)
    names = [info.name for info in model.feature_info]
    return "pool5" if "pool5" in names else names[-1]


def for_inference(
    model: Student,
    layers: Sequence[str],
    *,
    precision: str = "fp32",
    compile: bool = False,
) -> Student:
    """``model``'s fast inference twin for ``layers`` (``students.inference.optimise``) in
    ``precision``, its half-precision check remembered per weights and device; ``model`` itself
    where the rewrite would not equal its own forward (notes are logged)."""
    from soundnet_cli.students.inference import optimise
    from soundnet_cli.weights.identity import precision_cache

    cache = precision_cache(model) if precision != "fp32" else None
    return optimise(
        model,
        layers=layers,
        precision=precision,
        compile=compile,
        cache=cache,
    )


def running_precision(model: Student) -> str:
    """``fp32``, ``bf16`` or ``fp16``: what ``model`` (as :func:`for_inference` left it) runs in."""
    import torch

    dtype = getattr(model, "dtype", torch.float32)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
