"""Fine-tuning: train a student end to end on labelled clips (the authors' ``main_finetune.lua``
idea, and the paper's from-scratch baseline).

The network is the student cut at ``layer`` with a linear classifier on every time step
(:mod:`soundnet_cli.students.classifier`); a training crop's logits are averaged over its time
steps (pooling over time) and scored by cross-entropy. Training runs in the loop distillation
uses (:mod:`soundnet_cli.training.loop`): the same run folder, ``metrics.jsonl``, exact resume,
CUDA and DDP under ``torchrun``. A test clip is classified by its logits averaged over all time
steps, like the probe protocol averages window decisions.

Settings in :mod:`.config`, the clips in :mod:`.data`, the network and which layers learn in
:mod:`.model`; this module runs it: the loop, evaluation, resume and export.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.runtime import (
    device_for,
    join_process_group,
    leave_process_group,
    set_threads,
    world_from_env,
)
from soundnet_cli.training.ddp import barrier, data_parallel
from soundnet_cli.training.finetune.config import RESUMABLE, FinetuneConfig
from soundnet_cli.training.finetune.data import ClipAudio, Task, batches
from soundnet_cli.training.finetune.model import (
    PooledLogits,
    build_model,
    clip_logits,
    frozen_layers,
    make_optimizer,
    set_training,
)
from soundnet_cli.training.loop import Schedule, run_loop
from soundnet_cli.training.rundir import (
    LAST,
    StepMetrics,
    load_training_state,
    read_config,
    trim_metrics,
    write_config,
)
from soundnet_cli.training.settings import refuse_changed_settings

log = logging.getLogger(__name__)

MODEL = "model.safetensors"


@dataclass
class FinetuneResult:
    run_dir: Path
    model: Path | None
    task: Task
    config: FinetuneConfig
    steps: int
    layer: str
    losses: list[tuple[int, float]] = field(default_factory=list)
    accuracy: float | None = None  # on the test clips; None without any
    train_accuracy: float | None = None
    frozen: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        fold = self.task.source.get("test_fold")
        return {
            "run_dir": str(self.run_dir),
            "model": str(self.model) if self.model else None,
            "source": self.task.source,
            "head": self.task.head,
            "classes": list(self.task.classes),
            "init": self.config.init,
            "layer": self.layer,
            "frozen": self.frozen,
            "epochs": self.config.epochs,
            "steps": self.steps,
            "train_clips": len(self.task.train),
            "test_clips": len(self.task.test),
            "final_loss": round(self.losses[-1][1], 5) if self.losses else None,
            "train_accuracy": self.train_accuracy,
            "folds": [{"fold": fold, "test_accuracy": self.accuracy, "clips": len(self.task.test)}]
            if self.task.test
            else [],
            "test_accuracy": self.accuracy,
            "seconds": round(self.seconds, 1),
        }


def steps_for(config: FinetuneConfig, train_clips: int) -> int:
    """Steps in ``epochs`` passes over the training clips."""
    return config.epochs * math.ceil(train_clips / config.batch_size)


def read_run(run_dir: Path) -> tuple[Task, FinetuneConfig]:
    """The task and settings a fine-tuning run was started with."""
    payload = read_config(run_dir, "fine-tuning run")
    try:
        return Task.from_dict(payload["task"]), FinetuneConfig.from_mapping(payload["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SoundnetError(
            f"{run_dir}: its config.json is not a fine-tuning run's ({exc})"
        ) from exc


def resume_settings(run_dir: Path, given: Mapping[str, Any]) -> tuple[Task, FinetuneConfig]:
    """What a resumed run continues with: its recorded task and settings; only settings that do
    not change the computation (device, threads, logging) may be given again."""
    task, recorded = read_run(run_dir)
    refuse_changed_settings(given, RESUMABLE)
    return task, FinetuneConfig.from_mapping(given, recorded)


def finetune(
    task: Task,
    run_dir: Path,
    config: FinetuneConfig,
    *,
    resume: bool = False,
    on_step: Callable[[StepMetrics], None] | None = None,
    on_decode: Callable[[int, int], None] | None = None,
) -> FinetuneResult:
    """Train (or, with ``resume``, continue) a classifier student on ``task``; write
    RUN_DIR/model.safetensors and score it on the test clips."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    checkpoint = run_dir / LAST
    if resume and not checkpoint.is_file():
        raise SoundnetError(f"{run_dir}: no checkpoint to resume from ({LAST})")
    if not resume and checkpoint.is_file():
        raise UsageProblem(f"{run_dir} already holds a run; use --resume {run_dir} or a new --out")
    world = world_from_env()
    device = device_for(config.device, world)
    set_threads(config.threads)
    created = join_process_group(device, world)

    def run_in_group() -> FinetuneResult:  # its locals, DDP included, go before the group
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        model = build_model(config, task).to(device)
        layer = model.default_layer
        optimizer = make_optimizer(model, config)
        start = load_training_state(checkpoint, model, optimizer) if resume else 0
        if world.main:
            write_config(run_dir, {"task": task.as_dict(), "config": config.as_dict()})
            trim_metrics(run_dir, start)
        paths = [path for path, _ in task.train] + [path for path, _ in task.test]
        labels = [label for _, label in task.train] + [label for _, label in task.test]
        log.info("decoding %d clips", len(paths))
        audio = ClipAudio(paths, mix=config.mix, workers=config.workers, progress=on_decode)
        train_idx = list(range(len(task.train)))
        test_idx = list(range(len(task.train), len(paths)))
        steps = steps_for(config, len(train_idx))
        per_epoch = math.ceil(len(train_idx) / config.batch_size)
        forward = data_parallel(PooledLogits(model), device, world)
        set_training(model, config)  # after DDP, which may swap in synced BatchNorm layers
        repeat = int(round((task.repeat_to or 0) * model.sample_rate))
        labels_t = np.asarray(labels)

        def compute_loss(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            waves, targets = batch
            logits = forward(waves.to(device, non_blocking=True))
            loss = torch.nn.functional.cross_entropy(logits.float(), targets.to(device))
            return loss, {task.head: loss}

        def accuracy(indices: Sequence[int]) -> float:
            predicted = clip_logits(model, audio, indices, repeat).argmax(axis=1)
            return round(float((predicted == labels_t[list(indices)]).mean()), 4)

        def evaluate() -> dict[str, float]:
            score = {"test": accuracy(test_idx)}
            set_training(model, config)  # clip_logits leaves train mode on, BatchNorm too
            return score

        loop = run_loop(
            run_dir=run_dir,
            model=model,
            optimizer=optimizer,
            batches=batches(
                audio,
                labels,
                train_idx,
                config,
                sample_rate=model.sample_rate,
                start_step=start,
                rank=world.rank,
                world_size=world.size,
            ),
            compute_loss=compute_loss,
            schedule=Schedule(
                steps,
                config.log_every,
                config.eval_every or 5 * per_epoch,
                per_epoch,
                config.batch_size,
            ),
            start=start,
            world=world,
            device=device,
            settings=config.as_dict(),
            evaluate=evaluate if test_idx else None,
            on_step=on_step,
        )
        result = FinetuneResult(run_dir, None, task, config, loop.steps, layer, loop.losses)
        result.frozen = frozen_layers(model, config)
        if world.main:
            result.accuracy = accuracy(test_idx) if test_idx else None
            result.train_accuracy = accuracy(train_idx)
            result.model = _export(model, run_dir, task, config, result)
        barrier(world)
        result.seconds = time.perf_counter() - started
        return result

    try:
        return run_in_group()
    finally:
        leave_process_group(created)


def _export(
    model: Any, run_dir: Path, task: Task, config: FinetuneConfig, result: FinetuneResult
) -> Path:
    from soundnet_cli.weights.checkpoints import save_checkpoint

    return save_checkpoint(
        model,
        run_dir / MODEL,
        provenance={
            "source": "soundnet finetune",
            "task": task.source,
            "init": config.init,
            "from": config.checkpoint or (config.student if config.init == "pretrained" else None),
            "layer": result.layer,
            "frozen": result.frozen,
            "epochs": config.epochs,
            "steps": result.steps,
            "test_accuracy": result.accuracy,
        },
    )
