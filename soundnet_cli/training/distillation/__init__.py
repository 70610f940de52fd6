"""Distillation: a sound student learns the vision teachers' posteriors from a prepared corpus.

``config`` (settings), ``data`` (crops and the step sampler), ``loop`` (the training loop, shared
with fine-tuning), ``ddp`` (torchrun), ``rundir`` (the run folder: config, metrics, checkpoints)
and ``train`` (:func:`distill`, its steps).
"""

from soundnet_cli.distillation.config import (
    DistillConfig,
    new_config,
    read_toml,
    resumed_config,
)
from soundnet_cli.distillation.rundir import StepMetrics, read_metrics
from soundnet_cli.distillation.train import (
    DistillResult,
    distill,
    distill_loss,
    prepare_source,
    read_run,
    resume_settings,
)

__all__ = [
    "DistillConfig",
    "DistillResult",
    "StepMetrics",
    "distill",
    "distill_loss",
    "new_config",
    "prepare_source",
    "read_metrics",
    "read_run",
    "read_toml",
    "resume_settings",
    "resumed_config",
]
