"""Distillation: train a sound student to predict the vision teachers' posteriors (PAPER.md,
"Training"). One library function, :func:`distill`, runs on CPU, one GPU, or under ``torchrun``
(DDP, each rank its slice of every global batch, rank 0 logging and checkpointing); it is a few
readable steps: set up the run, build the data, run the shared loop
(:mod:`soundnet_cli.training.loop`), export.

Loss: for every head and student time step, KL(teacher || student) with the student's
log-softmax, averaged over batch, time steps and heads, times ``kl_scale`` (250, as the
release); ``loss="l2"`` is the ablation's squared error between the probabilities.

Embedding heads (teachers of kind ``embedding``, such as ``clip:``) add, per head, symmetric
InfoNCE over the global batch with a learnt temperature (or cosine distance), on a projection
of ``embedding_layer`` pooled per frame interval (:mod:`.heads`, :mod:`.losses`). The total is
``kl_scale`` x the mean over posterior heads of ``weight x KL`` plus the sum over embedding
heads of ``weight x loss`` (weights from ``head_weights``, default 1).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.runtime import World, device_for, join_process_group, leave_process_group
from soundnet_cli.training.ddp import barrier, data_parallel
from soundnet_cli.training.distillation.config import DistillConfig, resumed_config
from soundnet_cli.training.loop import Schedule, run_loop
from soundnet_cli.training.rundir import (
    LAST,
    StepMetrics,
    claim_run_dir,
    load_training_state,
    read_config,
    trim_metrics,
    write_config,
)

if TYPE_CHECKING:
    import torch

    from soundnet_cli.students.contract import Student

log = logging.getLogger(__name__)

STUDENT = "student.safetensors"


# -- the loss -------------------------------------------------------------------------------------
def distill_loss(
    log_probs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    *,
    kind: str = "kl",
    scale: float = 250.0,
    weights: Mapping[str, float] | None = None,
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
    weights = weights or {}
    weighted = [per_head[h] * weights[h] if h in weights else per_head[h] for h in per_head]
    total = scale * torch.stack(weighted).mean()
    return total, per_head


def step_frames(
    student: Student, head_layer: str, crop_samples: int, frames: int, interval: float
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
    from soundnet_cli.students.contract import feature_of

    centres = feature_of(student, head_layer).step_centres(steps, student.sample_rate)
    return [min(frames - 1, max(0, int(c // interval))) for c in centres]


# -- the run -------------------------------------------------------------------------------------
@dataclass
class DistillResult:
    run_dir: Path
    student: Path | None
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    agreement: dict[str, float] | None = None
    chance: dict[str, float] | None = None
    corpus: Path | str | None = None


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


def corpus_source(source: str | Path) -> Path | str:
    """A local corpus folder (a Path) or shard URLs to stream (the text as given)."""
    from soundnet_cli.training.distillation.streaming import is_stream_source

    if isinstance(source, Path) or not is_stream_source(source):
        return Path(source)
    return source


def _recorded(source: Path | str) -> str:
    return str(source.resolve()) if isinstance(source, Path) else source


def read_run(run_dir: Path) -> tuple[Path | str, DistillConfig]:
    """The corpus and the settings a distill run was started with."""
    payload = read_config(run_dir, "distill run")
    try:
        return corpus_source(payload["corpus"]), DistillConfig.from_mapping(payload["config"])
    except (KeyError, TypeError) as exc:
        raise SoundnetError(f"{run_dir}: its config.json is not a distill run's ({exc})") from exc


def resume_settings(run_dir: Path, given: Mapping[str, Any]) -> tuple[Path | str, DistillConfig]:
    """The corpus and settings to continue ``run_dir`` with: the recorded ones, with only the
    settings that do not change the computation (steps, workers, device, logging) updated."""
    corpus, recorded = read_run(run_dir)
    return corpus, resumed_config(recorded, given)


@dataclass
class _Setup:
    """Everything a run needs before its first step."""

    corpus: Any
    heads: list[Any]
    plan: Any
    train_idx: list[int]
    held_idx: list[int]
    world: World
    device: str
    student: Any
    aligned: list[int]
    optimizer: Any
    start: int
    model: Any = None  # what is trained and checkpointed: the student, or a DistillNet
    embedded: list[Any] = field(default_factory=list)  # the corpus's embedding heads


def _set_up(
    corpus_path: Path | str, run_dir: Path, config: DistillConfig, resume: bool, world: World
) -> _Setup:
    """Read the corpus, build the student and optimiser, and restore a checkpoint to resume."""
    import torch

    from soundnet_cli.corpus.format import Corpus
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.students import HeadSpec
    from soundnet_cli.training.distillation.data import crop_plan, split_videos

    if isinstance(corpus_path, Path):
        corpus: Any = Corpus(corpus_path)
    else:  # shard URLs: every shard's index, clips read by range (held-out ones)
        from soundnet_cli.corpus.shards import ShardSet

        corpus = ShardSet(corpus_path)
    heads = select_heads(corpus.manifest, config.teachers)
    plan = crop_plan(corpus, config.crop_seconds)
    train_idx, held_idx = split_videos(corpus, config.held_out)
    device = device_for(config.device, world)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    posterior = [h for h in heads if h.kind != "embedding"]
    embedded = [h for h in heads if h.kind == "embedding"]
    specs = [HeadSpec(h.name, h.size, h.categories) for h in posterior]
    students = get_plugins().students
    # a run of embedding heads alone keeps the student's own posterior heads, untrained
    student = students.create(config.student, heads=specs) if specs else _headless(students, config)
    if config.init:
        _initialise(student, config.init)
    if not specs:
        for parameter in getattr(student, "heads", torch.nn.Module()).parameters():
            parameter.requires_grad_(False)
    aligned = (  # a run of embedding heads alone needs no output steps (nor their length)
        step_frames(
            student,
            student.head_spec.name,
            plan.samples,
            plan.frames,
            corpus.manifest.frame_interval,
        )
        if specs
        else []
    )
    model = student
    if embedded:
        model = _distill_net(student, posterior, embedded, corpus, plan, config)
    model.to(device).train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2)
    )
    checkpoint = run_dir / LAST
    start = 0
    if resume:
        if not checkpoint.is_file():
            raise SoundnetError(f"{run_dir}: no checkpoint to resume from ({LAST})")
        start = load_training_state(checkpoint, model, optimizer)
    return _Setup(
        corpus,
        heads,
        plan,
        train_idx,
        held_idx,
        world,
        device,
        student,
        aligned,
        optimizer,
        start,
        model,
        embedded,
    )


def _headless(students: Any, config: DistillConfig) -> Any:
    """The student of a run with embedding heads only: its default posterior heads (SoundNet-8's
    objects and scenes, which ``init`` may fill), else one placeholder head; never trained."""
    from soundnet_cli.students import HeadSpec

    try:
        return students.create(config.student)
    except (SoundnetError, TypeError):
        return students.create(config.student, heads=[HeadSpec("unused", 1)])


def _distill_net(
    student: Any, posterior: list[Any], embedded: list[Any], corpus: Any, plan: Any, config: Any
) -> Any:
    from soundnet_cli.models import default_layer
    from soundnet_cli.students.embedding import spec_for
    from soundnet_cli.training.distillation.heads import DistillNet

    layer = config.embedding_layer or default_layer(student)
    teachers = {t.get("name"): t for t in corpus.manifest.teachers}
    specs = [
        spec_for(
            student,
            h.name,
            layer,
            h.size,
            teacher=h.teacher,
            clip=(teachers.get(h.teacher, {}).get("provenance") or {}).get("clip"),
        )
        for h in embedded
    ]
    net = DistillNet(
        student,
        [h.name for h in posterior],
        specs,
        crop_samples=plan.samples,
        frames=plan.frames,
        interval=corpus.manifest.frame_interval,
        temperature=config.temperature,
    )
    _freeze_unused(net, plan.samples)
    return net


def _freeze_unused(net: Any, samples: int) -> None:
    """Freeze the parameters no loss reaches (layers past the embedding layer when no posterior
    head is trained): DDP requires every trained parameter to get a gradient."""
    import torch

    was_training = net.training
    net.eval()  # no BatchNorm statistics move
    log_probs, vectors = net(torch.zeros(1, samples))
    total = sum(v.sum() for v in [*log_probs.values(), *vectors.values()])
    unused = [p for p in net.student.parameters() if p.requires_grad]  # not the temperatures
    grads = torch.autograd.grad(total, unused, allow_unused=True)
    for parameter, grad in zip(unused, grads, strict=True):
        if grad is None and parameter is not None:
            parameter.requires_grad_(False)
    net.train(was_training)


def _initialise(student: Any, init: str) -> None:
    """Start from other weights: ``official`` (SoundNet-8's) or a checkpoint; every tensor
    whose name and shape match is copied (the body, typically), the rest keep their init."""
    from safetensors.torch import load_file

    from soundnet_cli.students.embedding import split_state

    if init == "official":
        from soundnet_cli.weights.official import ensure_official

        path = ensure_official()
    else:
        path = Path(init).expanduser()
        if not path.is_file():
            raise UsageProblem(
                f"no such checkpoint to start from: {init!r} (or use 'official')", parameter="init"
            )
    state, _ = split_state(load_file(str(path)))
    own = student.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise UsageProblem(
            f"the checkpoint to start from, {path}, holds no tensor of {student.architecture}",
            parameter="init",
        )
    student.load_state_dict(matching, strict=False)
    log.info("initialised %d of %d tensors from %s", len(matching), len(own), path)


def _batches(setup: _Setup, config: DistillConfig, run_dir: Path) -> tuple[Any, Any]:
    """The crop dataset and an endless iterator of this rank's batches from the start step."""
    import torch

    from soundnet_cli.training.distillation.data import CropDataset
    from soundnet_cli.training.sampler import StepSampler

    names = [h.name for h in setup.heads]
    embedded = [h.name for h in setup.embedded]
    if not isinstance(setup.corpus.root, Path):  # shard URLs: streamed
        if embedded:
            raise UsageProblem(
                "embedding heads are not streamed from shards yet; convert the corpus to "
                "folders (soundnet corpus convert SRC DST --to dirs)"
            )
        from soundnet_cli.training.distillation import streaming

        held = {setup.corpus.clips[i].video for i in setup.held_idx}
        plan = streaming.make_plan(
            setup.corpus,
            held,
            names,
            setup.plan,
            seed=config.seed,
            rank=setup.world.rank,
            world=setup.world.size,
            workers=config.workers,
            batch_size=config.batch_size,
            start_step=setup.start,
        )
        streaming.check_layout(run_dir, plan, setup.world.main, resume=setup.start > 0)
        stream = streaming.stream_loader(plan, config.workers, setup.device.startswith("cuda"))
        return CropDataset(setup.corpus, names, setup.plan), stream
    dataset = CropDataset(setup.corpus.root, names, setup.plan, embedded)
    sampler = StepSampler(
        setup.train_idx,
        config.batch_size,
        seed=config.seed,
        start_step=setup.start,
        rank=setup.world.rank,
        world_size=setup.world.size,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.workers,
        pin_memory=setup.device.startswith("cuda"),
        persistent_workers=config.workers > 0,
        prefetch_factor=4 if config.workers > 0 else None,
    )
    return dataset, iter(loader)


def _export(setup: _Setup, run_dir: Path, corpus_path: Path | str, config: DistillConfig) -> Path:
    from soundnet_cli.weights.checkpoints import save_checkpoint

    heads = setup.model.heads_for_export() if setup.embedded else None
    return save_checkpoint(
        setup.student,
        run_dir / STUDENT,
        embedding_heads=heads,
        provenance={
            "source": "soundnet distill",
            "corpus": _recorded(corpus_path),
            "teachers": sorted({h.teacher for h in setup.heads}),
            "steps": config.steps,
            "loss": config.loss,
        },
    )


def distill(
    corpus_path: Path | str,
    run_dir: Path,
    config: DistillConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[StepMetrics], None] | None = None,
) -> DistillResult:
    """Train (or, with ``resume``, continue training) a student on the corpus; export it.

    A new run refuses a ``run_dir`` where an earlier run left metrics, a checkpoint or an
    exported student, unless ``overwrite`` (which deletes them first)."""
    if not resume:
        claim_run(run_dir, overwrite=overwrite)
    return _train(corpus_source(corpus_path), Path(run_dir), config, resume=resume, on_step=on_step)


def claim_run(run_dir: Path, *, overwrite: bool) -> None:
    """Claim ``run_dir`` for a new run (the one place that does): refused where a run left
    results unless ``overwrite``, which (on the main rank) deletes them."""
    from soundnet_cli.runtime import world_from_env

    claim_run_dir(Path(run_dir), STUDENT, overwrite=overwrite, remove=world_from_env().main)


def distill_source(
    source: Path | str,
    run_dir: Path,
    config: DistillConfig,
    *,
    overwrite: bool = False,
    weights: Mapping[str, str] | None = None,
    random_init: bool = False,
    on_failure: Callable[[str, str], None] | None = None,
    on_step: Callable[[StepMetrics], None] | None = None,
) -> DistillResult:
    """A new run from ``source``, a corpus (a folder or shard URLs) or a folder of videos:
    claim ``run_dir`` (before any preparing), prepare the videos into RUN_DIR/corpus if need
    be, then train."""
    run_dir = Path(run_dir)
    claim_run(run_dir, overwrite=overwrite)
    source = corpus_source(source)
    if not isinstance(source, Path):
        return _train(source, run_dir, config, resume=False, on_step=on_step)
    corpus = prepare_source(
        source,
        run_dir,
        config,
        weights=weights,
        random_init=random_init,
        on_failure=on_failure,
    )
    return _train(corpus, run_dir, config, resume=False, on_step=on_step)


def _train(
    corpus_path: Path | str,
    run_dir: Path,
    config: DistillConfig,
    *,
    resume: bool,
    on_step: Callable[[StepMetrics], None] | None,
) -> DistillResult:
    """Train in the run folder already claimed (or resumed)."""
    import torch

    from soundnet_cli.runtime import world_from_env
    from soundnet_cli.training.distillation.streaming import to_model_scale

    world = world_from_env()
    created = join_process_group(device_for(config.device, world), world)

    def run_in_group() -> DistillResult:  # its locals, DDP included, go before the group
        setup = _set_up(corpus_path, run_dir, config, resume, world)
        if world.main:
            write_config(run_dir, {"corpus": _recorded(corpus_path), "config": config.as_dict()})
            trim_metrics(run_dir, setup.start)
        wrapped = data_parallel(setup.model, setup.device, world)
        forward = torch.compile(wrapped) if config.compile else wrapped
        dataset, batches = _batches(setup, config, run_dir)
        names = [h.name for h in setup.heads if h.kind != "embedding"]
        embedded = [h.name for h in setup.embedded]
        index = torch.tensor(setup.aligned, dtype=torch.long)
        on_cuda = setup.device.startswith("cuda")
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda)

        def compute_loss(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            wave, targets = batch
            wave = to_model_scale(wave.to(setup.device, non_blocking=True))  # int16 streamed
            if embedded:
                return _mixed_loss(forward, setup, config, wave, targets, index, autocast)
            aligned = {
                k: v[:, index].to(setup.device, non_blocking=True) for k, v in targets.items()
            }
            with autocast:
                log_probs = forward(wave)
            return distill_loss(
                {k: v.float() for k, v in log_probs.items()},
                aligned,
                kind=config.loss,
                scale=config.kl_scale,
            )

        def evaluate() -> dict[str, float]:
            scores = (
                _agreement(setup.student, dataset, setup.held_idx, index, setup.device, names)
                if names
                else {}
            )
            if embedded:
                scores |= _cosine(setup.model, dataset, setup.held_idx, setup.device, embedded)
            return scores

        loop = run_loop(
            run_dir=run_dir,
            model=setup.model,
            optimizer=setup.optimizer,
            batches=batches,
            compute_loss=compute_loss,
            schedule=Schedule(
                config.steps,
                config.log_every,
                config.eval_every,
                config.checkpoint_every,
                config.batch_size,
            ),
            start=setup.start,
            world=world,
            device=setup.device,
            settings=config.as_dict(),
            evaluate=evaluate if setup.held_idx else None,
            on_step=on_step,
        )
        result = DistillResult(
            run_dir, None, loop.steps, loop.losses, loop.scores, corpus=corpus_path
        )
        if world.main:
            result.student = _export(setup, run_dir, corpus_path, config)
            if setup.held_idx:
                result.chance = {
                    h.name: _chance(setup.corpus, setup.held_idx, h.name)
                    for h in setup.heads
                    if h.kind != "embedding"
                }
        barrier(world)
        return result

    try:
        return run_in_group()
    finally:
        leave_process_group(created)


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


def _mixed_loss(
    forward: Any,
    setup: _Setup,
    config: DistillConfig,
    wave: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    index: torch.Tensor,
    autocast: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL over the posterior heads (as :func:`distill_loss`) plus each embedding head's loss."""
    import torch

    from soundnet_cli.training.distillation.losses import embedding_loss

    with autocast:
        log_probs, vectors = forward(wave)
    total = torch.zeros((), device=wave.device)
    parts: dict[str, torch.Tensor] = {}
    if log_probs:
        aligned = {k: targets[k][:, index].to(setup.device) for k in log_probs}
        kl, parts = distill_loss(
            {k: v.float() for k, v in log_probs.items()},
            aligned,
            kind=config.loss,
            scale=config.kl_scale,
            weights=config.head_weights,
        )
        total = total + kl
    model = setup.model
    for name, vector in vectors.items():
        value = embedding_loss(
            config.embedding_loss,
            vector.float(),
            targets[name].to(setup.device),
            model.logit_scale[name],
            setup.world,
        )
        parts[name] = value
        total = total + config.head_weights.get(name, 1.0) * value
    return total, parts


def _cosine(
    model: Any, dataset: Any, held: list[int], device: str, names: list[str]
) -> dict[str, float]:
    """Per embedding head, over the held-out clips' frames: ``<head>`` is top-1 retrieval (the
    teacher vector nearest a frame's student vector is that frame's own, or an identical one)
    and ``<head>-cosine`` the mean cosine of student and teacher vectors."""
    import torch

    students: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    teachers: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(held), 16):
            items = [dataset[(i, -1)] for i in held[start : start + 16]]
            wave = torch.stack([w for w, _ in items]).to(device)
            _, vectors = model(wave)
            for name in names:
                students[name].append(vectors[name].reshape(-1, vectors[name].shape[-1]).cpu())
                target = torch.stack([t[name] for _, t in items])
                teachers[name].append(target.reshape(-1, target.shape[-1]))
    model.train(was_training)
    scores: dict[str, float] = {}
    for name in names:
        if not students[name]:
            continue
        s, t = torch.cat(students[name]).float(), torch.cat(teachers[name]).float()
        nearest = (s @ t.T).argmax(dim=1)
        hits = (t[nearest] * t).sum(dim=1) > 0.999
        scores[name] = round(float(hits.float().mean()), 4)
        scores[f"{name}-cosine"] = round(float((s * t).sum(dim=1).mean()), 4)
    return scores


def _chance(corpus: Any, held: list[int], head: str) -> float:
    """Agreement of always answering the held-out frames' most frequent teacher category."""
    import numpy as np

    labels = np.concatenate([corpus[i].posteriors[head].argmax(axis=1) for i in held])
    return round(float(np.bincount(labels).max() / len(labels)), 4)


def prepare_source(
    source: Path,
    run_dir: Path,
    config: DistillConfig,
    *,
    weights: Mapping[str, str] | None = None,
    random_init: bool = False,
    on_failure: Callable[[str, str], None] | None = None,
) -> Path:
    """The corpus to train on: ``source`` itself when it is one, else a corpus prepared from
    the videos under ``source`` into RUN_DIR/corpus with the config's teachers."""
    from soundnet_cli.corpus.format import is_corpus
    from soundnet_cli.corpus.prepare import NoVideos, PrepareSettings, prepare_videos

    if is_corpus(source):
        return source
    if not config.teachers:
        raise UsageProblem(f"{source} is not a corpus; to prepare one, name the --teacher(s)")
    corpus = run_dir / "corpus"
    log.info("preparing the videos in %s into %s", source, corpus)
    try:
        prepare_videos(
            [source],
            corpus,
            list(config.teachers),
            PrepareSettings(),
            weights=weights,
            random_init=random_init,
            device=config.device,
            on_failure=on_failure,
        )
    except NoVideos as exc:
        raise UsageProblem(f"{source} is neither a corpus nor a folder with videos") from exc
    return corpus
