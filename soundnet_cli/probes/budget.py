"""How much memory fitting a probe takes, planned before any of it is allocated.

A window of ``steps`` feature steps of ``channels`` channels gives a probe of
``steps * channels + 1`` weights. The torch solver keeps a dense Gram matrix of that dimension
for its preconditioner (float64, plus float32 copies and the eigendecomposition's workspace),
and a few float64 values per window and class; the reference solver (liblinear) and probes
without ``fit_clips`` materialise every window. conv2 with 1-s windows is 689 steps x 32
channels = 22,049 weights, whose Gram matrix alone is 3.9 GB: such a fit is planned here and
refused in one line that says what would fit, instead of being found out by the kernel.

The figures are upper estimates of the solver's working set (measured on CPU, see
``benchmarks/hostile.py``); the model's own memory and the features already computed are not
counted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from soundnet_cli.errors import SoundnetError, UsageProblem

DEFAULT_FRACTION = 0.5  # of the machine's physical memory, when --max-memory is not given
GRAM_BYTES = 28  # per squared weight: the float64 Gram matrix, float32 copies, eigh workspace
STEP_BYTES = 4 * 4 + 20  # per feature step and channel (copies of the features, spectra) + masks
WINDOW_CLASS_BYTES = 6 * 8  # per window and class: scores, residuals, curvature (float64)
WINDOW_RANK_BYTES = 2 * 4 * 64  # per window: its projection on the preconditioner's 64 directions
MATERIALISED_BYTES = 4 + 4 + 8  # per window and weight: cut, stacked, and liblinear's float64

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


class ProbeMemoryError(SoundnetError):
    """A probe whose fit would not fit in the memory budget."""


def physical_memory() -> int:
    """The machine's physical memory in bytes (8 GiB when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX systems
        return 8 * 2**30


def default_budget() -> int:
    """The memory a probe fit may use when no budget is given: half the physical memory."""
    return int(physical_memory() * DEFAULT_FRACTION)


def parse_size(text: str) -> int:
    """Bytes from ``4G``, ``512M``, ``1.5GiB``, ``2gb`` or a plain number of bytes (binary
    units); a usage error otherwise."""
    match = _SIZE.match(str(text))
    if not match:
        raise UsageProblem(
            f"the memory budget must be a size such as 4G or 512M, not {text!r}",
            parameter="max_memory",
        )
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not value >= 1:
        raise UsageProblem(
            f"the memory budget must be at least one byte, not {text!r}", parameter="max_memory"
        )
    return int(value)


def format_size(size: float) -> str:
    for unit, scale in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def fit_bytes(solver: str, steps: int, channels: int, lengths: Sequence[int], classes: int) -> int:
    """The planned working set of fitting a probe on windows of ``steps`` steps of clips of
    ``lengths`` steps (each padded to one window at least), ``channels`` channels each."""
    padded = [max(int(n), steps) for n in lengths]
    total_steps = sum(padded)
    windows = sum(n - steps + 1 for n in padded)
    dim = steps * channels + 1
    columns = 1 if classes == 2 else classes
    if solver == "torch":
        return (
            GRAM_BYTES * dim * dim
            + STEP_BYTES * total_steps * channels
            + (WINDOW_CLASS_BYTES * columns + WINDOW_RANK_BYTES) * total_steps
        )
    # the reference solver, and estimators that are given materialised windows
    return MATERIALISED_BYTES * windows * dim + STEP_BYTES * total_steps * channels


@dataclass(frozen=True)
class FitPlan:
    """What a fit was planned to take, and whether it fits ``budget``."""

    solver: str
    steps: int
    channels: int
    windows: int
    needed: int
    budget: int

    @property
    def fits(self) -> bool:
        return self.needed <= self.budget


def plan_fit(
    solver: str,
    steps: int,
    channels: int,
    lengths: Sequence[int],
    classes: int,
    budget: int | None = None,
) -> FitPlan:
    budget = default_budget() if budget is None else int(budget)
    windows = sum(max(int(n), steps) - steps + 1 for n in lengths)
    needed = fit_bytes(solver, steps, channels, lengths, classes)
    return FitPlan(solver, steps, channels, windows, needed, budget)


def check_fit(
    solver: str,
    steps: int,
    channels: int,
    lengths: Sequence[int],
    classes: int,
    budget: int | None = None,
    *,
    step_seconds: float | None = None,
    layer: str | None = None,
) -> FitPlan:
    """Refuse, in one line that says what would fit, a fit planned beyond ``budget`` bytes
    (default: :func:`default_budget`). ``step_seconds`` (the layer's stride in seconds) words
    the longest window that fits in seconds."""
    plan = plan_fit(solver, steps, channels, lengths, classes, budget)
    if plan.fits:
        return plan
    where = f" on {layer}" if layer else ""
    fitting = _longest_window(solver, steps, channels, lengths, classes, plan.budget)
    if fitting:
        length = f" ({fitting * step_seconds:.3g} s)" if step_seconds else ""
        advice = f"windows of at most {fitting} steps{length} fit"
    else:
        advice = "not even 1-step windows fit; use fewer or shorter clips"
    raise ProbeMemoryError(
        f"a {solver} probe fit{where} with {steps}-step windows ({steps * channels + 1:,} "
        f"weights, {plan.windows:,} windows) needs about {format_size(plan.needed)}, over the "
        f"{format_size(plan.budget)} budget (--max-memory); {advice}, or choose a coarser "
        "layer or a larger --max-memory"
    )


def _longest_window(
    solver: str, steps: int, channels: int, lengths: Sequence[int], classes: int, budget: int
) -> int:
    """The most steps below ``steps`` whose fit is planned within ``budget`` (0: none)."""
    low, high = 0, steps - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fit_bytes(solver, middle, channels, lengths, classes) <= budget:
            low = middle
        else:
            high = middle - 1
    return low
