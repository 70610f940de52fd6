"""Fine-tuning: a classifier trained end to end on labelled clips.

``config`` (settings), ``data`` (the task: labelled clips, decoded once; batches), ``model``
(the classifier network, which layers learn) and ``train`` (:func:`finetune`: the loop,
evaluation, resume, export).
"""

from soundnet_cli.training.finetune.config import FinetuneConfig
from soundnet_cli.training.finetune.data import Task, dataset_task, labels_task
from soundnet_cli.training.finetune.train import (
    FinetuneResult,
    finetune,
    read_run,
    resume_settings,
    steps_for,
)

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "Task",
    "dataset_task",
    "finetune",
    "labels_task",
    "read_run",
    "resume_settings",
    "steps_for",
]
