"""The training loop that distillation and fine-tuning share: steps, timing, metrics,
checkpoints, evaluation, all ranks in step.

The loop knows nothing of what it trains: ``compute_loss(batch)`` returns the loss to minimise
and named parts of it to log; ``evaluate()`` returns named scores (rank 0 only). Batches must
be a pure function of the step (as :class:`~soundnet_cli.training.sampler.StepSampler`
makes them), so that a resumed run continues exactly. A loss that is not a finite number stops
the run before anything of that step is saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.errors import SoundnetError
from soundnet_cli.runtime import World
from soundnet_cli.training.ddp import global_mean
from soundnet_cli.training.rundir import (
    LAST,
    StepMetrics,
    append_metrics,
    save_training_state,
    tensorboard,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Schedule:
    """When to stop, log, evaluate and checkpoint (in steps)."""

    steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    batch_size: int  # global, for the samples/s figure


class TrainingError(SoundnetError):
    """Training cannot go on (a loss that is not a finite number)."""


@dataclass
class LoopResult:
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    scores: dict[str, float] | None = None  # the last evaluation


def run_loop(
    *,
    run_dir: Path,
    model: nn.Module,
    optimizer: Any,
    batches: Iterator[Any],
    compute_loss: Callable[[Any], tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
    schedule: Schedule,
    start: int,
    world: World,
    device: str,
    settings: dict[str, Any],
    evaluate: Callable[[], dict[str, float]] | None = None,
    on_step: Callable[[StepMetrics], None] | None = None,
) -> LoopResult:
    """Train from step ``start`` to ``schedule.steps``; ``model`` is what checkpoints save
    (the plain module, not its DDP or compiled wrapper)."""
    import torch

    result = LoopResult(start)
    board = tensorboard(run_dir) if world.main else None
    window_wait = window_total = 0.0
    window_samples = 0
    step = start
    saved = start if start else None  # the step of the checkpoint on disk
    try:
        while step < schedule.steps:
            began = time.perf_counter()
            batch = _next_batch(batches)
            waited = time.perf_counter() - began
            loss, parts = compute_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = global_mean(loss.detach(), world)  # the same on every rank
            if not math.isfinite(loss_value):
                _stop_on(loss_value, step, run_dir, saved)
            part_values = {k: global_mean(v.detach(), world) for k, v in parts.items()}
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - began
            window_wait += waited
            window_total += elapsed
            window_samples += schedule.batch_size
            result.losses.append((step, loss_value))
            is_last = step == schedule.steps
            evaluating = step % schedule.eval_every == 0 or is_last
            if step % schedule.log_every == 0 or evaluating:
                scores = None
                if evaluating and evaluate is not None and world.main:
                    scores = evaluate()
                    result.scores = scores or result.scores
                metrics = StepMetrics(
                    step,
                    loss_value,
                    part_values,
                    window_samples / window_total if window_total else 0.0,
                    window_wait / window_total if window_total else 0.0,
                    scores or None,
                )
                window_wait = window_total = 0.0
                window_samples = 0
                if world.main:
                    append_metrics(run_dir, metrics)
                    if board is not None:
                        board.add_scalar("loss", loss_value, step)
                        for name, value in (scores or {}).items():
                            board.add_scalar(f"agreement/{name}", value, step)
                    if on_step:
                        on_step(metrics)
            if (step % schedule.checkpoint_every == 0 or is_last) and world.main:
                save_training_state(run_dir / LAST, model, optimizer, step, settings)
            if step % schedule.checkpoint_every == 0 or is_last:
                saved = step
    finally:
        if board is not None:
            board.close()
    result.steps = step
    return result


def _stop_on(loss: float, step: int, run_dir: Path, saved: int | None) -> None:
    """Stop the run on a loss that is not a finite number, naming the step and what to resume."""
    good = (
        f"the last good checkpoint is {Path(run_dir) / LAST} (step {saved})"
        if saved is not None
        else "no checkpoint was saved yet"
    )
    raise TrainingError(
        f"the loss is {loss} at step {step}; training stopped, {good} (check the data and "
        "lower the learning rate)"
    )


def _next_batch(batches: Iterator[Any]) -> Any:
    """The next batch; a SoundnetError raised in a DataLoader worker keeps its one-line message
    (torch re-raises it with the worker's whole traceback)."""
    try:
        return next(batches)
    except SoundnetError as exc:
        text = str(exc)
        if "\nOriginal Traceback" not in text:
            raise
        last = text.rstrip().splitlines()[-1].split(": ", 1)[-1]  # "module.Error: message"
        try:
            one_line = type(exc)(last)
        except TypeError:  # an error class built from other arguments
            one_line = SoundnetError(last)
        raise one_line from None
