"""Settings shared by distillation and fine-tuning: applying given values to recorded ones,
what a resumed run may change, and the checks every learning rate and scale passes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from soundnet_cli.errors import UsageProblem


def updated_settings(
    data: dict[str, Any], values: Mapping[str, Any], known: set[str]
) -> dict[str, Any]:
    """``data`` with ``values`` applied (keys as in the dataclass, or with dashes); an unknown
    key is a usage error listing the known ones."""
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UsageProblem(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
        data[name] = value
    return data


def refuse_changed_settings(given: Mapping[str, Any], resumable: frozenset[str]) -> None:
    """A resumed run keeps its recorded settings: refuse any given setting outside
    ``resumable``, naming the settings that may change."""
    changed = {key.replace("-", "_") for key in given} - resumable
    if changed:
        allowed = ", ".join(f"--{name.replace('_', '-')}" for name in sorted(resumable))
        raise UsageProblem(
            f"a resumed run keeps its settings; only {allowed} may change "
            f"(got {', '.join(sorted(changed))})"
        )


def check_positive(
    name: str, value: float, *, zero: bool = False, parameter: str | None = None
) -> None:
    """Refuse a setting that is not a finite number above 0 (at least 0 with ``zero``).
    ``parameter``: the setting's name when ``name`` says more (``head_weight objects``)."""
    setting = name.replace("_", " ")
    parameter = parameter or name
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageProblem(f"{setting} must be a number, not {value!r}", parameter=parameter)
    if not math.isfinite(value):
        raise UsageProblem(f"{setting} must be a finite number, not {value}", parameter=parameter)
    if value < 0 or (value == 0 and not zero):
        bound = "at least 0" if zero else "above 0"
        raise UsageProblem(f"{setting} must be {bound}, not {value:g}", parameter=parameter)
