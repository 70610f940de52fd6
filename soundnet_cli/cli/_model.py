"""Choosing the model a command runs: --checkpoint, --student or the official SoundNet-8."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from soundnet_cli.cli import _common

if TYPE_CHECKING:
    from torch import nn


def load_model(checkpoint: Path | None, student: str | None, device: str) -> nn.Module:
    """The model a command asked for, on ``device``; fetches the official weights if needed."""
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.models import load_student
    from soundnet_cli.runtime import resolve_device

    target = resolve_device(device)
    if checkpoint is not None and student is not None:
        raise UsageProblem("give --checkpoint or --student, not both")
    if checkpoint is not None:
        return load_student(checkpoint, device=target)
    if student is not None and student != "soundnet8":
        return load_student(student, device=target)
    return load_student("soundnet8", pretrained=True, device=target, announce=_common.info)
