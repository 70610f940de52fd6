"""Choosing the model a command runs: --checkpoint, --student or the official SoundNet-8."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student


def load_model(checkpoint: Path | None, student: str | None, device: str) -> Student:
    """The model a command asked for, on ``device``: a checkpoint, a registered student with
    the weights its plugin publishes (its default pretrained tag; untrained when it publishes
    none), or the official SoundNet-8 (fetched if needed)."""
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.models import load_student, pretrained_tags
    from soundnet_cli.runtime import resolve_device

    target = resolve_device(device)
    if checkpoint is not None and student is not None:
        raise UsageProblem("give --checkpoint or --student, not both")
    if checkpoint is not None:
        return load_student(checkpoint, device=target)
    name = student if student is not None else "soundnet8"
    published = bool(pretrained_tags(name))
    return load_student(name, pretrained=published, device=target)
