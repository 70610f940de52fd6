"""Hand a student to another runtime: ONNX (onnxruntime and others) or TorchScript (libtorch).

``export_model(model, "soundnet8.onnx", fmt="onnx", layers=["pool5"])`` writes a file whose
input is ``waveform``, float32 (batch, samples) in [-1, 1] at 22,050 Hz (the x256 scaling is
inside) with free batch and length, and whose outputs are named after the requested layers and
heads, each (batch, channels, time). The file is run in its own runtime on test signals and
compared with PyTorch before it is moved into place.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import UsageProblem
from soundnet_cli.export.module import ExportError, ExportModule, ExportPlan, plan_export
from soundnet_cli.export.verify import read_metadata, verify
from soundnet_cli.export.writers import write_onnx, write_torchscript
from soundnet_cli.students.contract import describe

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pth": "torchscript"}
DEFAULT_TOLERANCE = 1e-4

__all__ = [
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "ExportError",
    "ExportResult",
    "export_model",
    "format_for",
    "read_metadata",
]


@dataclass
class ExportResult:
    path: Path
    format: str
    plan: ExportPlan
    errors: dict[str, float] = field(default_factory=dict)  # empty when not verified
    seconds: float = 0.0

    @property
    def max_error(self) -> float | None:
        return max(self.errors.values()) if self.errors else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "architecture": self.plan.architecture,
            "input": self.plan.metadata()["input"],
            # category names are in the file's metadata; here they would drown the summary
            "outputs": [
                {k: v for k, v in o.as_dict().items() if k != "categories"}
                for o in self.plan.outputs
            ],
            "verified": bool(self.errors),
            "relative_error": {name: float(f"{e:.3g}") for name, e in self.errors.items()},
            "max_relative_error": self.max_error,
            "size_bytes": self.path.stat().st_size,
            "seconds": round(self.seconds, 2),
        }


def format_for(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``fmt`` if given, else the one the file name's suffix implies."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageProblem(
                f"the export format must be one of {', '.join(FORMATS)}, not {fmt!r}",
                parameter="fmt",
            )
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageProblem(
            f"cannot tell the export format from {Path(path).name!r}; name it (onnx or "
            f"torchscript), or end the file name in {', '.join(SUFFIXES)}",
            parameter="fmt",
        )
    return SUFFIXES[suffix]


def _example(plan: ExportPlan) -> torch.Tensor:
    # Any valid input traces the same graph; batch 2 and an odd length keep both free.
    samples = max(plan.min_samples, 2 * plan.sample_rate) + 7
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(2, samples, generator=generator) * 2 - 1).float()


def export_model(
    model: Student,
    out: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    layers: Sequence[str] = (),
    heads: bool = False,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export ``model`` to ``out`` and (with ``check``) verify it against PyTorch.

    Raises :class:`ExportError` when the exported file's outputs differ from PyTorch's by more
    than ``tolerance`` (relative to each output's largest magnitude); ``out`` is then left as it
    was. With neither ``layers`` nor ``heads``, the model's default layer is exported.
    """
    fmt = format_for(out, fmt)
    started = time.perf_counter()
    if not isinstance(model, torch.nn.Module):
        raise UsageProblem(
            f"{describe(model)} is not a torch.nn.Module; only modules can be exported"
        )
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    model = model.eval()
    plan = plan_export(model, layers, heads)
    module = ExportModule(model, plan)
    writer = write_onnx if fmt == "onnx" else write_torchscript
    path = Path(out)
    errors: dict[str, float] = {}
    with atomic_path(path) as tmp:
        log.info("exporting %s (%s) to %s", plan.architecture, ", ".join(plan.names), fmt)
        writer(module, _example(plan), tmp)
        if check:
            errors = verify(model, plan, tmp, fmt)
            worst = max(errors, key=lambda name: errors[name])
            if errors[worst] > tolerance:
                raise ExportError(
                    f"the exported {fmt} model differs from PyTorch: {worst} has a relative "
                    f"error of {errors[worst]:.2e}, above the tolerance {tolerance:.0e}; "
                    f"{path} was not written"
                )
    return ExportResult(path, fmt, plan, errors, time.perf_counter() - started)
