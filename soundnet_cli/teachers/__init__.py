"""Vision teachers: image classifiers whose posteriors on video frames the student learns.

``get_teacher(name, weights=..., random_init=...)`` builds any registered teacher; the builtins
are ``vgg16-imagenet``, ``vgg16-places``, ``alexnet-imagenet``, ``alexnet-places``,
``resnet50-places`` and the family ``timm:<model>`` (see docs/teachers.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from soundnet_cli.errors import UsageProblem

if TYPE_CHECKING:
    from soundnet_cli.teachers.base import FrameTransform, Teacher, TeacherHead

__all__ = [
    "FrameTransform",
    "Teacher",
    "TeacherHead",
    "get_teacher",
    "get_teachers",
    "parse_weight_specs",
]


def __getattr__(name: str) -> Any:
    if name in {"FrameTransform", "Teacher", "TeacherHead"}:
        from soundnet_cli.teachers import base

        return getattr(base, name)
    raise AttributeError(name)


def parse_weight_specs(specs: Sequence[str]) -> dict[str, str]:
    """``["vgg16-places=/w/vgg16.pth"]`` -> ``{"vgg16-places": "/w/vgg16.pth"}``."""
    found: dict[str, str] = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq or not name.strip() or not path.strip():
            raise UsageProblem(
                f"teacher weights are given as NAME=PATH, not {spec!r}", parameter="teacher_weights"
            )
        if name.strip() in found:
            raise UsageProblem(
                f"weights for teacher {name.strip()!r} are given twice", parameter="teacher_weights"
            )
        found[name.strip()] = path.strip()
    return found


def get_teacher(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    random_init: bool = False,
) -> Teacher:
    """Build a registered teacher (on the CPU, in eval mode)."""
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.teachers.base import Teacher

    teacher = get_plugins().teachers.create(name, weights=weights, random_init=random_init)
    if not isinstance(teacher, Teacher):
        raise UsageProblem(f"teacher {name!r} did not build a soundnet_cli.teachers.Teacher")
    return teacher.eval()


def get_teachers(
    names: Sequence[str],
    *,
    weights: Mapping[str, str] | None = None,
    random_init: bool = False,
) -> list[Teacher]:
    """Several teachers, each its own heads; head names must not collide."""
    weights = dict(weights or {})
    if len(set(names)) != len(names):
        raise UsageProblem(f"a teacher is named twice in {list(names)}")
    unused = set(weights) - set(names)
    if unused:
        raise UsageProblem(
            f"weights are given for {sorted(unused)}, which are not among the teachers",
            parameter="teacher_weights",
        )
    teachers = [get_teacher(n, weights=weights.get(n), random_init=random_init) for n in names]
    heads = [h.name for t in teachers for h in t.heads]
    if len(set(heads)) != len(heads):
        raise UsageProblem(f"these teachers' head names collide: {heads}")
    return teachers
