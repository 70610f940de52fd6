"""A training run's folder: its settings, metrics log, resumable checkpoint and exported model.

``RUN_DIR/config.json``        what the run trains on and with (written before the first step)
``RUN_DIR/metrics.jsonl``      one JSON object per logged step (:class:`StepMetrics`), the
                               format ``soundnet visualize curves`` reads
``RUN_DIR/checkpoints/last.pt`` model, optimiser, step and random states (exact resume)
``RUN_DIR/<model>.safetensors`` the exported model, written when the run ends

Distillation and fine-tuning both keep their runs this way.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import SoundnetError, UsageProblem, reason

if TYPE_CHECKING:
    from torch import nn

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LAST = "checkpoints/last.pt"


@dataclass
class StepMetrics:
    """One line of ``metrics.jsonl``."""

    step: int
    loss: float
    heads: dict[str, float]
    samples_per_s: float
    data_wait: float  # fraction of the step spent waiting for data
    agreement: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "step": self.step,
            "loss": self.loss,
            "heads": self.heads,
            "samples_per_s": round(self.samples_per_s, 3),
            "data_wait": round(self.data_wait, 4),
        }
        if self.agreement is not None:
            data["agreement"] = self.agreement
        return data


def run_results(run_dir: Path, exported: str) -> list[str]:
    """What a started run left in ``run_dir``: its metrics, checkpoint, exported model (the
    settings alone, written before the first step, do not count)."""
    return [name for name in (METRICS, LAST, exported) if (Path(run_dir) / name).exists()]


def claim_run_dir(run_dir: Path, exported: str, *, overwrite: bool, remove: bool) -> None:
    """Refuse to start a new run where one has left results, unless ``overwrite``; then (with
    ``remove``: the main process) delete them, so nothing of the old run is mixed in."""
    found = run_results(run_dir, exported)
    if not found:
        return
    if not overwrite:
        hint = f"continue it with --resume {run_dir}, " if LAST in found else ""
        raise UsageProblem(
            f"{run_dir} already holds a run ({', '.join(found)}); {hint}choose another --out, "
            "or pass --overwrite to replace it"
        )
    if remove:
        for name in found:
            with contextlib.suppress(FileNotFoundError):
                (Path(run_dir) / name).unlink()


def write_config(run_dir: Path, payload: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / CONFIG) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def read_config(run_dir: Path, what: str = "training run") -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise SoundnetError(f"{run_dir}: not a {what} directory (no {CONFIG})")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SoundnetError(f"{path}: cannot read the run's settings ({exc})") from exc
    if not isinstance(payload, dict):
        raise SoundnetError(f"{path}: not a run's settings (expected a JSON object)")
    return payload


def append_metrics(run_dir: Path, metrics: StepMetrics) -> None:
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(metrics.as_dict()) + "\n")


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint a run resumes from (they will be logged again)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if json.loads(line)["step"] <= step:
                keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in keep))


def metrics_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a metrics file, in order; lines that are not one (a torn last line
    after a kill, stray text) are left out."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if isinstance(row, dict):
                rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every logged step of a run, in order ([] before the first is logged)."""
    path = Path(run_dir) / METRICS
    return metrics_rows(path) if path.is_file() else []


def save_training_state(
    path: Path, model: nn.Module, optimizer: Any, step: int, config: dict[str, Any]
) -> None:
    """Everything an exact resume needs, written atomically."""
    import torch

    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "python_rng": list(random.getstate()[1]),
        "config": json.dumps(config),
        "sampler": {"step": step, "seed": config.get("seed", 0)},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: Path, model: nn.Module, optimizer: Any) -> int:
    """Restore model, optimiser and random states; returns the step to continue from."""
    import torch

    if path.is_file() and path.stat().st_size == 0:
        raise SoundnetError(f"{path}: cannot resume from this checkpoint (the file is empty)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own advice (weights_only=False) is unsafe
        raise SoundnetError(
            f"{path}: not a soundnet training checkpoint (it is not tensors and plain values; "
            "nothing in it was loaded or run)"
        ) from exc
    except Exception as exc:
        raise SoundnetError(
            f"{path}: cannot resume from this checkpoint ({reason(exc, 'first')})"
        ) from exc
    needed = ("model", "optimizer", "step", "torch_rng", "python_rng")
    missing = [k for k in needed if k not in state] if isinstance(state, dict) else list(needed)
    if missing:
        raise SoundnetError(
            f"{path}: cannot resume from this checkpoint (it lacks {', '.join(missing)}); "
            "it is damaged or not a training checkpoint"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate((3, tuple(state["python_rng"]), None))
        return int(state["step"])
    except Exception as exc:
        raise SoundnetError(
            f"{path}: cannot resume from this checkpoint ({reason(exc, 'first')})"
        ) from exc


def tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer in RUN_DIR/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(Path(run_dir) / "tensorboard"))
