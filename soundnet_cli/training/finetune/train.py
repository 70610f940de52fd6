"""Fine-tuning: train a student end to end on labelled clips (the authors' ``main_finetune.lua``
idea, and the paper's from-scratch baseline).

The network is the student cut at ``layer`` with a linear classifier on every time step
(:mod:`soundnet_cli.students.classifier`); a training crop's logits are averaged over its time
steps (pooling over time) and scored by cross-entropy. Training runs in the loop distillation
uses (:mod:`.loop`): the same run folder, ``metrics.jsonl``, exact resume, CUDA and DDP under
``torchrun``. Crops are taken at a random offset around the clip read as a circle, so every
crop is a circular shift as well (the clip is tiled when the crop is longer). A test clip is
repeated to the dataset protocol's length (10 s for ESC) and classified by its logits averaged
over all time steps, like the probe protocol averages window decisions.

Pretrained layers learn with ``body_lr`` (30x lower than the classifier's ``lr``) and keep their
BatchNorm statistics (fine-tuning batches are small), and by default the first two conv layers
(generic filters, and the costliest to train on a CPU) stay fixed; a network from scratch learns
everything with ``lr`` and BatchNorm learns its statistics.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundnet_cli.distillation.config import refuse_changed_settings, updated_settings
from soundnet_cli.distillation.ddp import barrier, data_parallel
from soundnet_cli.distillation.loop import Schedule, run_loop
from soundnet_cli.distillation.rundir import (
    LAST,
    StepMetrics,
    load_training_state,
    read_config,
    trim_metrics,
    write_config,
)
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.runtime import (
    device_for,
    join_process_group,
    leave_process_group,
    set_threads,
    world_from_env,
)

MODEL = "model.safetensors"
INITS = ("pretrained", "scratch")
FOLD_COLUMNS = ("fold", "split")
# Settings a resumed run may change: they do not alter what the run computes.
RESUMABLE = frozenset({"device", "threads", "log_every", "eval_every", "workers"})


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tuning run; recorded in RUN_DIR/config.json."""

    init: str = "pretrained"
    student: str = "soundnet8"
    checkpoint: str | None = None  # --init pretrained from this file, not the official weights
    layer: str | None = None  # None: the student's default layer (pool5 for SoundNet-8)
    # layers before this one keep their weights; "auto": a pretrained network's first two conv
    # layers (and their pools), nothing from scratch; "none": train every layer
    freeze_below: str = "auto"
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-3  # the classifier, and every layer of a network from scratch
    body_lr: float = 1e-4  # pretrained layers
    weight_decay: float = 0.0
    crop_seconds: float = 3.0
    seed: int = 0
    eval_every: int = 0  # steps between test evaluations; 0: every 5 epochs and at the end
    log_every: int = 5
    workers: int = 2  # decoding threads
    threads: int | None = None
    device: str = "auto"
    mix: str = "first"

    def check(self) -> None:
        if self.init not in INITS:
            raise UsageProblem(f"--init must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.checkpoint is not None and self.init != "pretrained":
            raise UsageProblem(
                "--checkpoint gives the weights to start from: use --init pretrained"
            )
        for name in ("epochs", "batch_size", "log_every", "workers"):
            if getattr(self, name) < 1:
                raise UsageProblem(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.body_lr < 0 or self.weight_decay < 0:
            raise UsageProblem("--lr must be positive, --body-lr and --weight-decay not negative")
        if self.crop_seconds <= 0 or self.eval_every < 0:
            raise UsageProblem("--crop-seconds must be positive and --eval-every not negative")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], base: FinetuneConfig | None = None
    ) -> FinetuneConfig:
        """``base`` updated with ``values`` (keys as in the dataclass, or with dashes)."""
        known = {f.name for f in fields(cls)}
        return cls(**updated_settings((base or cls()).as_dict(), values, known))


# -- what to learn -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """Labelled clips split into training and test, and how test clips are presented."""

    head: str  # the classifier head's name
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]  # (path, class index)
    test: tuple[tuple[str, int], ...]
    repeat_to: float | None  # test clips shorter than this (seconds) are repeated to it
    source: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["train"] = [list(row) for row in self.train]
        data["test"] = [list(row) for row in self.test]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        return cls(
            str(data["head"]),
            tuple(data["classes"]),
            tuple((str(p), int(i)) for p, i in data["train"]),
            tuple((str(p), int(i)) for p, i in data["test"]),
            None if data["repeat_to"] is None else float(data["repeat_to"]),
            dict(data.get("source") or {}),
        )


def _task(
    head: str,
    rows: Sequence[tuple[Path, str, bool]],
    repeat_to: float | None,
    source: dict[str, Any],
) -> Task:
    classes = tuple(sorted({label for _, label, _ in rows}))
    if len(classes) < 2:
        raise UsageProblem("fine-tuning needs clips of at least two classes")
    index = {label: i for i, label in enumerate(classes)}
    train = tuple((str(p), index[label]) for p, label, is_test in rows if not is_test)
    test = tuple((str(p), index[label]) for p, label, is_test in rows if is_test)
    if not train:
        raise UsageProblem("no training clips are left once the test fold is held out")
    return Task(head, classes, train, test, repeat_to, source)


def dataset_task(name: str, root: Path, test_fold: str | None = None) -> Task:
    """A registered dataset's clips; ``test_fold`` is held out for testing. Without it, a
    dataset with one predefined split (DCASE 2013 with its test folder) uses that split, and
    any other trains on every clip (no test score)."""
    from soundnet_cli.plugins import get_plugins

    dataset = get_plugins().datasets.create(name)
    clips = dataset.clips(Path(root))
    if test_fold is not None:
        folds = sorted({c.fold for c in clips})
        if str(test_fold) not in folds:
            raise UsageProblem(f"{name} has no fold {test_fold!r}; its folds: {', '.join(folds)}")
        held = {i for i, c in enumerate(clips) if c.fold == str(test_fold)}
    else:
        splits = dataset.splits(clips)
        fixed = len(splits) == 1 and not splits[0].name.startswith(("fold", "split"))
        held = set(splits[0].test) if fixed else set()
    rows = [(c.path, c.label, i in held) for i, c in enumerate(clips)]
    source = {"dataset": name, "root": str(Path(root).resolve()), "test_fold": test_fold}
    return _task(name, rows, dataset.protocol.repeat_to, source)


def labels_task(
    audio_dir: Path, labels: Path, test_fold: str | None = None, repeat_to: float | None = None
) -> Task:
    """Clips listed in ``labels`` (the CSV `soundnet probe fit` reads: a path column relative to
    ``audio_dir`` and a label column), with an optional ``fold`` column for ``test_fold``."""
    from soundnet_cli.evaluation.labels import LABEL_COLUMNS, PATH_COLUMNS, pick_column, read_table

    header, table = read_table(labels)
    path_col = pick_column(header, PATH_COLUMNS, "path", labels)
    label_col = pick_column(header, LABEL_COLUMNS, "label", labels)
    fold_col = pick_column(header, FOLD_COLUMNS, "fold", labels, required=test_fold is not None)
    assert path_col is not None and label_col is not None
    base = Path(audio_dir)
    rows = []
    for row in table:
        path = base / row[path_col]
        if not path.is_file():
            raise SoundnetError(f"{labels} line {row.line}: {row[path_col]} not found under {base}")
        held = fold_col is not None and test_fold is not None and row[fold_col] == str(test_fold)
        rows.append((path, row[label_col], held))
    if test_fold is not None and not any(held for _, _, held in rows):
        raise UsageProblem(f"{labels}: no row has {fold_col} {test_fold!r}")
    source = {
        "audio": str(base.resolve()),
        "labels": str(Path(labels).resolve()),
        "test_fold": test_fold,
    }
    return _task("classes", rows, repeat_to, source)


# -- audio -------------------------------------------------------------------------------------
class ClipAudio:
    """Every clip decoded once into memory: model-ready float32 at 22,050 Hz, x256."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        mix: str = "first",
        workers: int = 2,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        from soundnet_cli.media.audio import load_audio

        self.waves: list[np.ndarray] = [np.zeros(0, np.float32)] * len(paths)
        done = 0
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = [pool.submit(load_audio, path, mix=mix) for path in paths]  # type: ignore[arg-type]
            for i, future in enumerate(futures):
                self.waves[i] = future.result().samples
                done += 1
                if progress is not None:
                    progress(done, len(paths))

    def crop(self, index: int, seed: int, samples: int) -> np.ndarray:
        """``samples`` samples from a random offset, wrapping around the clip's end."""
        wave = self.waves[index]
        start = int(np.random.default_rng(seed).integers(0, len(wave)))
        return wave[(start + np.arange(samples)) % len(wave)]

    def whole(self, index: int, at_least: int) -> np.ndarray:
        """The clip, repeated circularly to ``at_least`` samples if it is shorter."""
        from soundnet_cli.media.audio import tile

        wave = self.waves[index]
        return wave if len(wave) >= at_least else tile(wave, at_least)


def batches(
    audio: ClipAudio,
    labels: Sequence[int],
    indices: Sequence[int],
    config: FinetuneConfig,
    *,
    sample_rate: int,
    start_step: int,
    rank: int,
    world_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (waves, labels) for steps ``start_step, ...``: a pure function of the step
    (the distillation sampler), so a resumed run sees what an uninterrupted one would."""
    from soundnet_cli.distillation.data import StepSampler

    sampler = StepSampler(
        indices,
        config.batch_size,
        seed=config.seed,
        start_step=start_step,
        rank=rank,
        world_size=world_size,
    )
    samples = int(round(config.crop_seconds * sample_rate))
    for batch in sampler:
        waves = np.stack([audio.crop(clip, seed, samples) for clip, seed in batch])
        targets = np.array([labels[clip] for clip, _ in batch], dtype=np.int64)
        yield torch.from_numpy(waves), torch.from_numpy(targets)


# -- the network -------------------------------------------------------------------------------
def build_model(
    config: FinetuneConfig, task: Task, announce: Callable[[str], None] | None = None
) -> Any:
    """The classifier student (cut at the layer, named after the task's classes), with the
    pretrained body's weights unless ``init == "scratch"``."""
    from soundnet_cli.models import load_student
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.students import ConvStudent, HeadSpec
    from soundnet_cli.students.classifier import base_architecture, classifier_on

    base: Any = None
    if config.init == "pretrained":
        base = (
            load_student(config.checkpoint)
            if config.checkpoint is not None
            else load_student(config.student, pretrained=True, announce=announce)
        )
    architecture = base_architecture(str(base.architecture)) if base is not None else config.student
    template = get_plugins().students.create(architecture)
    if not isinstance(template, ConvStudent):
        raise UsageProblem(
            f"{architecture} is not a layer-table conv student; fine-tuning supports soundnet8, "
            "soundnet5 and students built like them"
        )
    layer = str(config.layer or (base or template).default_layer)
    heads = [HeadSpec(task.head, len(task.classes), task.classes)]
    model = classifier_on(template, layer, heads)
    body = [spec.name for spec in model.body_spec]
    if config.freeze_below not in ("auto", "none", *body):
        raise UsageProblem(
            f"--freeze-below must be auto, none or a layer of the network "
            f"({', '.join(body)}), not {config.freeze_below!r}"
        )
    if base is not None:
        state = {
            key: value
            for key, value in base.state_dict().items()
            if key.startswith("blocks.") and key.split(".")[1] in model.blocks
        }
        missing = [k for k in model.state_dict() if k.startswith("blocks.") and k not in state]
        if missing:
            raise SoundnetError(
                f"the pretrained {base.architecture} lacks {missing[0]} of the network to train"
            )
        model.load_state_dict(state, strict=False)
    return model


def resolve_freeze(model: Any, config: FinetuneConfig) -> str | None:
    """The first trained layer ``freeze_below`` names (None: every layer trains)."""
    from soundnet_cli.students import ConvLayer

    if config.freeze_below == "none":
        return None
    if config.freeze_below != "auto":
        return config.freeze_below
    if config.init != "pretrained":
        return None
    convs = [spec.name for spec in model.body_spec if isinstance(spec, ConvLayer)]
    return convs[2] if len(convs) > 2 else None


def frozen_layers(model: Any, config: FinetuneConfig) -> list[str]:
    """The body layers that keep their weights: those before the resolved ``freeze_below``."""
    first = resolve_freeze(model, config)
    names = [spec.name for spec in model.body_spec]
    return names[: names.index(first)] if first is not None else []


def set_training(model: Any, config: FinetuneConfig) -> None:
    """Train mode, except the BatchNorm layers that keep their statistics: every one of a
    pretrained network, and those of frozen layers."""
    model.train()
    frozen = set(frozen_layers(model, config))
    for name, block in model.blocks.items():
        if config.init == "pretrained" or name in frozen:
            for module in block.modules():
                if isinstance(module, torch.nn.BatchNorm1d | torch.nn.SyncBatchNorm):
                    module.eval()


def make_optimizer(model: Any, config: FinetuneConfig) -> Any:
    """Adam: the classifier at ``lr``; the body at ``body_lr`` when pretrained (``lr`` from
    scratch); frozen layers not at all."""
    frozen = set(frozen_layers(model, config))
    body = []
    for name, block in model.blocks.items():
        for parameter in block.parameters():
            parameter.requires_grad_(name not in frozen)
            if name not in frozen:
                body.append(parameter)
    body_lr = config.body_lr if config.init == "pretrained" else config.lr
    groups = [{"params": list(model.heads.parameters()), "lr": config.lr}]
    if body and body_lr > 0:
        groups.append({"params": body, "lr": body_lr})
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


class PooledLogits(torch.nn.Module):
    """What training calls: the classifier's logits averaged over time steps, (batch, classes).
    (A module of its own, so that DDP wraps the call that training makes.)"""

    def __init__(self, student: Any) -> None:
        super().__init__()
        self.student = student

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        tap = self.student.head_spec.name
        return self.student.forward_features(wave, [tap])[tap].mean(dim=-1)


def clip_logits(model: Any, audio: ClipAudio, indices: Sequence[int], samples: int) -> np.ndarray:
    """Each clip's logits averaged over all its time steps (clips repeated to ``samples``), in
    eval mode; clips of equal length run together."""
    tap = model.head_spec.name
    device = model.device
    out = np.zeros((len(indices), model.head_specs[0].size), np.float32)
    waves = [audio.whole(i, samples) for i in indices]
    by_length: dict[int, list[int]] = {}
    for position, wave in enumerate(waves):
        by_length.setdefault(len(wave), []).append(position)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for positions in by_length.values():
                for first in range(0, len(positions), 16):
                    chunk = positions[first : first + 16]
                    batch = torch.from_numpy(np.stack([waves[p] for p in chunk])).to(device)
                    logits = model.forward_features(batch, [tap])[tap].mean(dim=-1)
                    out[chunk] = logits.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


# -- the run -----------------------------------------------------------------------------------
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
    config = FinetuneConfig.from_mapping(given, recorded)
    config.check()
    return task, config


def finetune(
    task: Task,
    run_dir: Path,
    config: FinetuneConfig,
    *,
    resume: bool = False,
    on_step: Callable[[StepMetrics], None] | None = None,
    announce: Callable[[str], None] | None = None,
    on_decode: Callable[[int, int], None] | None = None,
) -> FinetuneResult:
    """Train (or, with ``resume``, continue) a classifier student on ``task``; write
    RUN_DIR/model.safetensors and score it on the test clips."""
    config.check()
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
        model = build_model(config, task, announce).to(device)
        layer = model.default_layer
        optimizer = make_optimizer(model, config)
        start = load_training_state(checkpoint, model, optimizer) if resume else 0
        if world.main:
            write_config(run_dir, {"task": task.as_dict(), "config": config.as_dict()})
            trim_metrics(run_dir, start)
        paths = [path for path, _ in task.train] + [path for path, _ in task.test]
        labels = [label for _, label in task.train] + [label for _, label in task.test]
        if announce is not None:
            announce(f"decoding {len(paths)} clips")
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
