"""Training: what distillation and fine-tuning share, and the two of them.

Shared here: ``loop`` (steps, metrics, checkpoints, evaluation, a loss that is not finite
stops the run), ``sampler`` (batches as a pure function of the step: exact resume, ranks),
``ddp`` (torchrun), ``rundir`` (the run folder: config, metrics, checkpoints, resume state) and
``settings`` (applying given settings, what a resumed run may change, number checks).

``distillation/`` (a student learns the teachers' posteriors from a corpus) and ``finetune/``
(a classifier trained end to end on labelled clips) each hold ``config``, ``data`` and
``train``; they import the shared modules, never each other.
"""
