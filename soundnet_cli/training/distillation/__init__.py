"""Distillation: a sound student learns the vision teachers' posteriors from a prepared corpus.

``config`` (settings), ``data`` (crops of corpus clips) and ``train`` (:func:`distill`, its
steps); the loop, run folder and DDP are :mod:`soundnet_cli.training`'s.
"""

from soundnet_cli.training.distillation.config import (
    DistillConfig,
    new_config,
    read_toml,
    resumed_config,
)
from soundnet_cli.training.distillation.train import (
    DistillResult,
    distill,
    distill_loss,
    distill_source,
    prepare_source,
    read_run,
    resume_settings,
)
from soundnet_cli.training.rundir import StepMetrics, read_metrics

__all__ = [
    "DistillConfig",
    "DistillResult",
    "StepMetrics",
    "distill",
    "distill_loss",
    "distill_source",
    "new_config",
    "prepare_source",
    "read_metrics",
    "read_run",
    "read_toml",
    "resume_settings",
    "resumed_config",
]
