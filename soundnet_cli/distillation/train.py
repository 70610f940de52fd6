"""Distillation: train a sound student to predict the vision teachers' posteriors (PAPER.md,
"Training"). One library function, :func:`distill`, runs on CPU, one GPU, or under ``torchrun``
(DDP, each rank its slice of every global batch, rank 0 logging and checkpointing).

Loss: for every head and student time step, KL(teacher || student) with the student's
log-softmax, averaged over batch, time steps and heads, times ``kl_scale`` (250, as the
release); ``loss="l2"`` is the ablation's squared error between the probabilities.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.atomic import atomic_path
from soundnet_cli.errors import SoundnetError, UsageProblem

if TYPE_CHECKING:
    import torch
    from torch import nn

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LAST = "checkpoints/last.pt"
STUDENT = "student.safetensors"
LOSSES = ("kl", "l2")


@dataclass(frozen=True)
class DistillConfig:
    """Every hyper-parameter of a run; recorded in RUN_DIR/config.json."""

    student: str = "soundnet8"
    teachers: tuple[str, ...] = ()  # heads of these teachers; () = every head of the corpus
    loss: str = "kl"
    kl_scale: float = 250.0
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    batch_size: int = 64
    steps: int = 100_000
    crop_seconds: float = 20.0
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    eval_every: int = 500
    held_out: float = 0.05
    workers: int = 2
    device: str = "auto"
    compile: bool = False

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise UsageProblem(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        for name in ("batch_size", "steps", "checkpoint_every", "log_every", "eval_every"):
            if getattr(self, name) < 1:
                raise UsageProblem(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.held_out < 1:
            raise UsageProblem("--held-out must be in [0, 1)")
        if self.lr <= 0 or self.workers < 0:
            raise UsageProblem("--lr must be positive and --workers >= 0")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["teachers"] = list(self.teachers)
        return data

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], base: DistillConfig | None = None
    ) -> DistillConfig:
        """``base`` updated with ``values`` (keys as in the dataclass, or with dashes)."""
        known = {f.name for f in fields(cls)}
        data = (base or cls()).as_dict()
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise UsageProblem(f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
            data[name] = value
        data["teachers"] = tuple(data["teachers"] or ())
        return cls(**data)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, ValueError) as exc:
        raise UsageProblem(f"{path}: cannot read the config ({exc})") from exc
    return dict(data.get("distill", data))


# -- the loss -------------------------------------------------------------------------------------
def distill_loss(
    log_probs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    *,
    kind: str = "kl",
    scale: float = 250.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``scale`` x the mean over heads of the per-head loss; the per-head values are returned too.

    ``log_probs[h]``: the student's (batch, categories, time); ``targets[h]``: the teacher's
    probabilities (batch, time, categories), already aligned to the student's time steps.
    """
    import torch

    per_head = {}
    for head, logp in log_probs.items():
        target = targets[head].transpose(1, 2).to(logp.dtype)  # (B, C, T)
        if kind == "kl":
            # sum_c t (log t - log s); xlogy makes 0 log 0 = 0
            per_step = (torch.special.xlogy(target, target) - target * logp).sum(dim=1)
        elif kind == "l2":
            per_step = (logp.exp() - target).pow(2).sum(dim=1)
        else:
            raise UsageProblem(f"unknown loss {kind!r}")
        per_head[head] = per_step.mean()
    total = scale * torch.stack(list(per_head.values())).mean()
    return total, per_head


def step_frames(
    student: Any, head_layer: str, crop_samples: int, frames: int, interval: float
) -> list[int]:
    """For each student output step, the target frame it learns: one to one when the counts
    match (20-s crops: 4 and 4, as the release), else the frame under the step's centre."""
    steps = student.output_length(head_layer, crop_samples)
    if steps < 1:
        raise UsageProblem(
            f"{crop_samples} samples are too short for the student's output layer {head_layer!r}"
        )
    if steps == frames:
        return list(range(frames))
    centres = student.feature(head_layer).step_centres(steps, student.sample_rate)
    return [min(frames - 1, max(0, int(c // interval))) for c in centres]


# -- batch norm across processes on CPU ------------------------------------------------------
class GlooSyncBatchNorm:
    """Replace BatchNorm1d's forward so that batch statistics are those of the global batch.

    torch's SyncBatchNorm runs on GPUs only; this does the same on any device with autograd-aware
    all-reduces of the per-channel sums (on a process group of its own, apart from DDP's).
    """

    @staticmethod
    def convert(model: nn.Module, group: Any) -> None:
        import torch

        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.forward = _synced_forward(module, group)  # type: ignore[method-assign,assignment]


def _all_reduce_sum(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """A sum over processes that autograd differentiates (the gradient is summed the same way)."""
    import torch
    import torch.distributed as dist

    class AllReduceSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, value: torch.Tensor) -> torch.Tensor:
            out = value.clone()
            dist.all_reduce(out, group=group)
            return out

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            out = grad.clone()
            dist.all_reduce(out, group=group)
            return out

    return AllReduceSum.apply(tensor)


def _synced_forward(bn: Any, group: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not bn.training:
            return torch.nn.functional.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        dims = [0, 2]
        count = torch.tensor([x.shape[0] * x.shape[2]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=dims), (x * x).sum(dim=dims), count])
        stats = _all_reduce_sum(stats, group)
        channels = x.shape[1]
        n = stats[-1]
        mean = stats[:channels] / n
        var = stats[channels : 2 * channels] / n - mean * mean
        with torch.no_grad():
            bn.num_batches_tracked += 1
            momentum = (
                bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            )
            bn.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            unbiased = var.detach() * n / max(float(n) - 1, 1.0)
            bn.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        shape = (1, channels, 1)
        normed = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
        return normed * bn.weight.view(shape) + bn.bias.view(shape)

    return forward


# -- distributed ---------------------------------------------------------------------------------
@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_world(device: str) -> World:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        world.initialised_here = True
    return world


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class StepMetrics:
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


@dataclass
class DistillResult:
    run_dir: Path
    student: Path | None
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    agreement: dict[str, float] | None = None
    chance: dict[str, float] | None = None


def _device(spec: str, world: World) -> str:
    from soundnet_cli.models import resolve_device

    device = resolve_device(spec)
    if device == "cuda" and world.size > 1:
        return f"cuda:{world.local_rank}"
    return device


def select_heads(manifest: Any, teachers: tuple[str, ...]) -> list[Any]:
    heads = list(manifest.heads)
    if not teachers:
        return heads
    known = sorted({h.teacher for h in heads})
    unknown = [t for t in teachers if t not in known]
    if unknown:
        raise UsageProblem(
            f"the corpus has no teacher {', '.join(map(repr, unknown))}; its teachers: "
            f"{', '.join(known)}"
        )
    return [h for h in heads if h.teacher in teachers]


def write_config(run_dir: Path, config: DistillConfig, corpus: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"corpus": str(Path(corpus).resolve()), "config": config.as_dict()}
    with atomic_path(run_dir / CONFIG) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def read_run(run_dir: Path) -> tuple[Path, DistillConfig]:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise SoundnetError(f"{run_dir}: not a distill run directory (no {CONFIG})")
    payload = json.loads(path.read_text())
    return Path(payload["corpus"]), DistillConfig.from_mapping(payload["config"])


def distill(
    corpus_path: Path,
    run_dir: Path,
    config: DistillConfig,
    *,
    resume: bool = False,
    on_step: Callable[[StepMetrics], None] | None = None,
) -> DistillResult:
    """Train (or, with ``resume``, continue training) a student on the corpus; export it."""
    import torch

    from soundnet_cli.corpus.format import Corpus
    from soundnet_cli.distillation.data import CropDataset, StepSampler, crop_plan, split_videos
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.students import HeadSpec

    config.check()
    run_dir = Path(run_dir)
    corpus = Corpus(corpus_path)
    heads = select_heads(corpus.manifest, config.teachers)
    plan = crop_plan(corpus, config.crop_seconds)
    train_idx, held_idx = split_videos(corpus, config.held_out)
    world = setup_world(config.device)
    device = _device(config.device, world)
    try:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        specs = [HeadSpec(h.name, h.size, h.categories) for h in heads]
        student = get_plugins().students.create(config.student, heads=specs)
        head_layer = student.head_spec.name
        aligned = step_frames(
            student, head_layer, plan.samples, plan.frames, corpus.manifest.frame_interval
        )
        student.to(device).train()
        optimizer = torch.optim.Adam(
            student.parameters(), lr=config.lr, betas=(config.beta1, config.beta2)
        )
        start = 0
        checkpoint = run_dir / LAST
        if resume:
            if not checkpoint.is_file():
                raise SoundnetError(f"{run_dir}: no checkpoint to resume from ({LAST})")
            start = _load_checkpoint(checkpoint, student, optimizer)
        elif checkpoint.is_file():
            raise UsageProblem(
                f"{run_dir} already holds a run; use --resume {run_dir} or a new --out"
            )
        if world.main:
            write_config(run_dir, config, corpus_path)
            _trim_metrics(run_dir / METRICS, start)
        model: Any = student
        if world.size > 1:
            import torch.distributed as dist

            if device.startswith("cuda"):
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                GlooSyncBatchNorm.convert(model, dist.new_group(backend="gloo"))
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[world.local_rank] if device.startswith("cuda") else None
            )
        forward = torch.compile(model) if config.compile else model
        names = [h.name for h in heads]
        dataset = CropDataset(corpus.root, names, plan)
        sampler = StepSampler(
            train_idx,
            config.batch_size,
            seed=config.seed,
            start_step=start,
            rank=world.rank,
            world_size=world.size,
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=config.workers,
            pin_memory=device.startswith("cuda"),
            persistent_workers=config.workers > 0,
            prefetch_factor=4 if config.workers > 0 else None,
        )
        index = torch.tensor(aligned)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
        result = DistillResult(run_dir, None, start)
        board = _tensorboard(run_dir) if world.main else None
        batches = iter(loader)
        window_wait = window_total = 0.0
        window_samples = 0
        step = start
        while step < config.steps:
            began = time.perf_counter()
            wave, targets = next(batches)
            wave = wave.to(device, non_blocking=True)
            targets = {k: v[:, index].to(device, non_blocking=True) for k, v in targets.items()}
            waited = time.perf_counter() - began
            with autocast:
                log_probs = forward(wave)
            loss, per_head = distill_loss(
                {k: v.float() for k, v in log_probs.items()},
                targets,
                kind=config.loss,
                scale=config.kl_scale,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = _global_mean(loss.detach(), world)
            head_values = {k: _global_mean(v.detach(), world) for k, v in per_head.items()}
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - began
            window_wait += waited
            window_total += elapsed
            window_samples += config.batch_size
            result.losses.append((step, loss_value))
            is_last = step == config.steps
            if step % config.log_every == 0 or is_last or step % config.eval_every == 0:
                agreement = None
                if (step % config.eval_every == 0 or is_last) and held_idx and world.main:
                    agreement = _agreement(student, dataset, held_idx, index, device, names)
                    result.agreement = agreement
                metrics = StepMetrics(
                    step,
                    loss_value,
                    head_values,
                    window_samples / window_total if window_total else 0.0,
                    window_wait / window_total if window_total else 0.0,
                    agreement,
                )
                window_wait = window_total = 0.0
                window_samples = 0
                if world.main:
                    _append_metrics(run_dir / METRICS, metrics)
                    if board is not None:
                        board.add_scalar("loss", loss_value, step)
                        for name, value in (agreement or {}).items():
                            board.add_scalar(f"agreement/{name}", value, step)
                if on_step and world.main:
                    on_step(metrics)
            if (step % config.checkpoint_every == 0 or is_last) and world.main:
                _save_checkpoint(checkpoint, student, optimizer, step, config)
        result.steps = step
        if world.main:
            from soundnet_cli.weights.checkpoints import save_checkpoint

            result.student = save_checkpoint(
                student,
                run_dir / STUDENT,
                provenance={
                    "source": "soundnet distill",
                    "corpus": str(Path(corpus_path).resolve()),
                    "teachers": sorted({h.teacher for h in heads}),
                    "steps": step,
                    "loss": config.loss,
                },
            )
            if held_idx:
                result.chance = {h.name: _chance(corpus, held_idx, h.name) for h in heads}
        if board is not None:
            board.close()
        if world.size > 1:
            import torch.distributed as dist

            dist.barrier()
        return result
    finally:
        if world.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _global_mean(value: torch.Tensor, world: World) -> float:
    if world.size > 1:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        value /= world.size
    return float(value)


def _agreement(
    student: Any, dataset: Any, held: list[int], index: torch.Tensor, device: str, names: list[str]
) -> dict[str, float]:
    """Top-1 agreement of student and teacher over the held-out clips' time steps (first crop,
    tiled as in training), in eval mode."""
    import torch

    hits = dict.fromkeys(names, 0)
    total = 0
    was_training = student.training
    student.eval()
    with torch.inference_mode():
        for start in range(0, len(held), 16):
            items = [dataset[(i, -1)] for i in held[start : start + 16]]
            wave = torch.stack([w for w, _ in items]).to(device)
            out = student(wave)
            for name in names:
                target = torch.stack([t[name] for _, t in items])[:, index].to(device)
                hits[name] += int((out[name].argmax(dim=1) == target.argmax(dim=2)).sum())
            total += len(items) * len(index)
    student.train(was_training)
    return {name: round(hits[name] / total, 4) for name in names} if total else {}


def _chance(corpus: Any, held: list[int], head: str) -> float:
    """Agreement of always answering the held-out frames' most frequent teacher category."""
    import numpy as np

    labels = np.concatenate([corpus[i].posteriors[head].argmax(axis=1) for i in held])
    return round(float(np.bincount(labels).max() / len(labels)), 4)


def _save_checkpoint(
    path: Path, student: Any, optimizer: Any, step: int, config: DistillConfig
) -> None:
    import torch

    state = {
        "model": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "python_rng": list(random.getstate()[1]),
        "config": json.dumps(config.as_dict()),
        "sampler": {"step": step, "seed": config.seed},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, student: Any, optimizer: Any) -> int:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as exc:
        raise SoundnetError(f"{path}: cannot resume from this checkpoint ({exc})") from exc
    torch.set_rng_state(state["torch_rng"])
    random.setstate((3, tuple(state["python_rng"]), None))
    return int(state["step"])


def _append_metrics(path: Path, metrics: StepMetrics) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(metrics.as_dict()) + "\n")


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint a run resumes from (they will be logged again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line)["step"] <= step:
                keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in keep))


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
