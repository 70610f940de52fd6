"""Where a process runs: its rank in a ``torchrun`` job, its device, its threads.

One place for every command (extract, prepare, distill, finetune): torchrun sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; a rank on a CUDA machine takes the GPU of its local rank.
The Ray engines (extract, prepare) join or start their cluster and size their actor pool here.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from soundnet_cli.errors import SoundnetError, UsageProblem, reason


@dataclass(frozen=True)
class World:
    """This process's place in a job: rank, world size and local rank (all 0/1 alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise UsageProblem(f"{name} must be an integer, not {value!r}") from exc


def world_from_env(rank: int | None = None, size: int | None = None) -> World:
    """The job's world from torchrun's variables; explicit ``rank``/``size`` win over them."""
    size = _env_int("WORLD_SIZE", 1) if size is None else size
    rank = _env_int("RANK", 0) if rank is None else rank
    local = _env_int("LOCAL_RANK", 0)
    if size < 1:
        raise UsageProblem(f"the world size must be at least 1 (got {size})")
    if not 0 <= rank < size:
        raise UsageProblem(f"rank {rank} is not within a world of size {size}")
    if local < 0:
        raise UsageProblem(f"LOCAL_RANK must not be negative (got {local})")
    return World(rank, size, local)


def resolve_device(spec: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return spec
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageProblem(f"device {spec!r} asked for, but CUDA is not available here")
        return spec
    raise UsageProblem(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")


def device_for(spec: str, world: World | None = None) -> str:
    """The device this rank uses: under torchrun, plain ``cuda`` means ``cuda:LOCAL_RANK``."""
    device = resolve_device(spec)
    world = world or world_from_env()
    if device == "cuda" and world.distributed:
        return f"cuda:{world.local_rank}"
    return device


def import_torch() -> None:
    """Import torch without the cyclic garbage collector walking it. The import makes
    hundreds of thousands of long-lived objects, which the collector would walk again and
    again while the import runs and after it: they are moved to the collector's permanent
    generation (``gc.freeze``) instead, as they would never be garbage."""
    if "torch" in sys.modules:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        import torch  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> None:
    """Intra-op threads for torch's CPU kernels; ``None`` leaves torch's default."""
    if threads is None:
        return
    if threads < 1:
        raise UsageProblem(f"threads must be at least 1, not {threads}", parameter="threads")
    import torch

    torch.set_num_threads(threads)


def join_process_group(device: str, world: World) -> bool:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) unless already in it or alone.

    Returns whether this call created the group (the caller then destroys it).
    """
    if not world.distributed:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def wait_for_ranks(world: World, timeout: float = 7 * 24 * 3600.0) -> None:
    """Under torchrun, return once every rank of the job has called this.

    torchrun tears the whole job down as soon as one rank exits non-zero, and a rank whose
    only problem is bad inputs exits 1: without this, a rank that finishes early with a bad
    file would kill the ranks still at work. A no-op alone, or without torchrun's rendezvous
    (``MASTER_ADDR``/``MASTER_PORT``, e.g. ``--rank``/``--world-size`` given by hand).
    """
    if not world.distributed or not {"MASTER_ADDR", "MASTER_PORT"} <= set(os.environ):
        return
    import datetime

    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
        created = True
    try:
        dist.barrier()
    finally:
        leave_process_group(created)


def leave_process_group(created: bool) -> None:
    """Destroy the group this process created, after whatever still refers to it: a DDP
    wrapper collected after its group aborts the process at exit."""
    if created:
        import gc

        import torch.distributed as dist

        gc.collect()
        dist.destroy_process_group()


# -- Ray (the optional `soundnet-cli[ray]` extra; imported only inside these functions) ---------
RAY_EXTRA = "pip install 'soundnet-cli[ray]'"


def require_ray() -> None:
    """A usage error naming the extra when ray is not installed (before any work)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UsageProblem(f"the ray engine needs ray: {RAY_EXTRA}", parameter="engine")


@contextmanager
def ray_cluster(address: str | None = None) -> Iterator[Any]:
    """Ray, connected: to ``address`` (``auto``, ``HOST:PORT``), to the cluster this process
    already joined, or to a local one started here and stopped on leaving. Ray Data's own
    progress bars and statistics are off (the CLI shows its own)."""
    require_ray()
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(
                address=address,
                log_to_driver=False,
                include_dashboard=False,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise SoundnetError(f"cannot join {where}: {reason(exc)}") from exc
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


@dataclass(frozen=True)
class RayActorPool:
    """How many model actors a Ray engine runs and what each asks of the cluster."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float


def ray_actor_pool(options: Mapping[str, Any]) -> RayActorPool:
    """The actor pool for the engine ``options`` on the connected cluster: ``actors`` when
    given, else one per ``gpus_per_actor`` GPUs, else one per two CPUs (decoding keeps the rest
    busy); ``gpus_per_actor`` 0 (CPU actors) and ``cpus_per_actor`` 1 by default."""
    import ray

    gpus = float(options.get("gpus_per_actor") or 0)
    cpus = float(options.get("cpus_per_actor") or 1)
    actors = options.get("actors")
    if not actors:
        resources = ray.cluster_resources()
        if gpus:
            actors = max(1, int(resources.get("GPU", 0) // gpus))
        else:
            actors = max(1, int(resources.get("CPU", 1) // (2 * max(cpus, 1e-3))))
    return RayActorPool(int(actors), gpus, cpus)
