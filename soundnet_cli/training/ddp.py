"""Data-parallel training under torchrun: DDP wrapping and BatchNorm over the global batch.

torch's SyncBatchNorm runs on GPUs only; :class:`GlooSyncBatchNorm` does the same on CPU with
autograd-aware all-reduces of the per-channel sums, on a process group of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from soundnet_cli.runtime import World

if TYPE_CHECKING:
    import torch
    from torch import nn


def data_parallel(model: nn.Module, device: str, world: World) -> nn.Module:
    """``model`` itself alone; under torchrun, DDP with BatchNorm over the global batch."""
    if not world.distributed:
        return model
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        GlooSyncBatchNorm.convert(model, dist.new_group(backend="gloo"))
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[world.local_rank] if device.startswith("cuda") else None
    )


def global_mean(value: torch.Tensor, world: World) -> float:
    """The mean of a scalar over all ranks (the value itself alone)."""
    if world.distributed:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        value /= world.size
    return float(value)


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


class GlooSyncBatchNorm:
    """Replace BatchNorm1d's forward so that batch statistics are those of the global batch."""

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
