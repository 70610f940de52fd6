"""Registers the builtin students. Imports nothing heavy: torch loads when a factory runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from soundnet_cli.hookspecs import Register, hookimpl


def _soundnet8(**kwargs: Any) -> Any:
    from soundnet_cli.students import soundnet8

    return soundnet8(**kwargs)


def _soundnet5(**kwargs: Any) -> Any:
    from soundnet_cli.students import soundnet5

    return soundnet5(**kwargs)


def _official() -> Path:
    """The authors' SoundNet-8 checkpoint, fetched and verified on first use."""
    from soundnet_cli.weights.official import ensure_official

    return ensure_official()


def _classifier(variant: str = "", **kwargs: Any) -> Any:
    from soundnet_cli.students.classifier import classifier_student

    return classifier_student(variant or "soundnet8@pool5", **kwargs)


@hookimpl
def register_students(register: Register) -> None:
    register(
        "soundnet8",
        _soundnet8,
        description="SoundNet-8 (the paper's main student; official weights available)",
        pretrained={"official": _official},
    )
    register("soundnet5", _soundnet5, description="SoundNet-5 (the paper's Table 2)")
    register(
        "classifier:",
        _classifier,
        description="a student cut at a layer with a classifier per time step "
        "(classifier:soundnet8@pool5; what `soundnet finetune` trains)",
    )
