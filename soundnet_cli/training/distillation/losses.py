"""Losses of embedding heads: symmetric InfoNCE (CLIP's loss) over the whole global batch, and
cosine distance.

InfoNCE: every (clip, frame) pair of the global batch is one item; the student's unit vector
of item i should pick out the teacher's vector of item i among all items' (and the other way
round), at a learnable temperature. Under DDP every rank gathers every rank's vectors (the
student's through an all-gather that autograd differentiates: its backward sums each rank's
gradient for the vectors it contributed) and computes the same global loss, so the gradients
DDP averages are exactly those of one process seeing the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from soundnet_cli.errors import UsageProblem
from soundnet_cli.runtime import World

EMBEDDING_LOSSES = ("infonce", "cosine")
MAX_LOGIT_SCALE = 100.0  # as CLIP: the temperature never goes below 0.01


def initial_logit_scale(temperature: float) -> float:
    return math.log(1.0 / temperature)


def gather(vectors: torch.Tensor, world: World, *, grad: bool) -> torch.Tensor:
    """Every rank's ``vectors`` concatenated in rank order (the global batch's order)."""
    if not world.distributed:
        return vectors
    import torch.distributed as dist

    if grad:
        return _GatherWithGrad.apply(vectors, world.rank, world.size)
    parts = [torch.empty_like(vectors) for _ in range(world.size)]
    dist.all_gather(parts, vectors.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient of the whole and returns this
    rank's rows (an all-reduce: gloo has no reduce-scatter). Ranks hold equal row counts."""

    @staticmethod
    def forward(ctx, vectors: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.rows = rank, vectors.shape[0]
        parts = [torch.empty_like(vectors) for _ in range(size)]
        dist.all_gather(parts, vectors.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        import torch.distributed as dist

        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


def info_nce(
    student: torch.Tensor, teacher: torch.Tensor, logit_scale: torch.Tensor, world: World
) -> torch.Tensor:
    """Symmetric cross-entropy of the global batch's similarity matrix; ``student`` and
    ``teacher`` are this rank's unit vectors (items, size)."""
    every_student = gather(student, world, grad=True)
    every_teacher = gather(teacher.detach(), world, grad=False)
    scale = logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
    logits = scale * every_student @ every_teacher.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos over this rank's items (DDP averages it over ranks)."""
    return (1 - (student * teacher).sum(dim=-1)).mean()


def embedding_loss(
    kind: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    logit_scale: torch.Tensor,
    world: World,
) -> torch.Tensor:
    """``student`` (batch, frames, size) unit vectors against the teacher's, flattened to
    items in (clip, frame) order."""
    s = student.reshape(-1, student.shape[-1])
    t = teacher.reshape(-1, teacher.shape[-1]).to(s.dtype)
    if kind == "infonce":
        return info_nce(s, t, logit_scale, world)
    if kind == "cosine":
        return cosine_distance(s, t)
    raise UsageProblem(
        f"the embedding loss must be one of {', '.join(EMBEDDING_LOSSES)}",
        parameter="embedding_loss",
    )
