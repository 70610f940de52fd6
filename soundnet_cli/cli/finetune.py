"""`soundnet finetune`: train a student end to end on labelled clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from soundnet_cli.cli import _common, _options


def finetune_command(
    source: str = typer.Argument(
        None, help="A dataset name (esc10, esc50, dcase2013), or a folder of audio with --labels."
    ),
    root: Path = typer.Argument(None, help="The dataset's folder (with a dataset name)."),
    labels: Path = typer.Option(
        None, "--labels", help="CSV of path,label[,fold] rows (paths relative to SOURCE)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="The run directory (new)."),
    resume: Path = typer.Option(
        None, "--resume", metavar="RUN_DIR", help="Continue the run in RUN_DIR from its checkpoint."
    ),
    test_fold: str = typer.Option(
        None, "--test-fold", help="Hold out this fold and report accuracy on it."
    ),
    init: str = typer.Option(
        None, "--init", help="pretrained (the authors' SoundNet-8, or --checkpoint) or scratch."
    ),
    checkpoint: Path = _options.checkpoint("Start from this student checkpoint (.safetensors)."),
    student: str = typer.Option(None, "--student", help="Student architecture [soundnet8]."),
    layer: str = typer.Option(
        None, "--layer", "-l", help="Layer the classifier reads [the student's default: pool5]."
    ),
    freeze_below: str = typer.Option(
        None,
        "--freeze-below",
        metavar="LAYER",
        help="Keep the layers before LAYER fixed; auto: a pretrained net's first two convs, "
        "none: train all [auto].",
    ),
    epochs: int = typer.Option(None, "--epochs", help="Passes over the training clips [20]."),
    batch_size: int = typer.Option(None, "--batch-size", help="Global batch size [16]."),
    lr: float = _options.number(
        None,
        "--lr",
        above=0.0,
        help="Adam learning rate of the classifier (all layers from scratch) [0.003].",
    ),
    body_lr: float = _options.number(
        None, "--body-lr", at_least=0.0, help="Adam learning rate of pretrained layers [0.0001]."
    ),
    weight_decay: float = _options.number(
        None, "--weight-decay", at_least=0.0, help="Adam weight decay [0]."
    ),
    crop_seconds: float = _options.number(
        None,
        "--crop-seconds",
        above=0.0,
        help="Training crop length, at a random circular offset [3].",
    ),
    seed: int = typer.Option(None, "--seed", help="Seed for init, order and crops [0]."),
    eval_every: int = typer.Option(
        None, "--eval-every", help="Steps between test evaluations [every 5 epochs]."
    ),
    log_every: int = typer.Option(None, "--log-every", help="Steps between metrics lines [5]."),
    workers: int = typer.Option(None, "--workers", help="Decoding threads [2]."),
    threads: int = _options.threads("Model threads on CPU [torch's]."),
    device: str = _options.device(None, "auto, cpu, cuda or cuda:N [auto]."),
    mix: str = _options.mix(None, "Channel handling: first or mean [first]."),
    json_output: bool = _options.json_flag("Print a JSON summary for scripts."),
) -> None:
    """Fine-tune a student on labelled clips: a classifier on one layer, trained end to end.

    The network is the student up to `--layer` (pool5 by default) with a linear classifier on
    every time step; a crop's logits are averaged over time. `--init pretrained` starts from
    the authors' SoundNet-8 (or `--checkpoint`): its first two conv layers stay fixed and the
    others learn at `--body-lr`, 30x slower than the classifier; `--init scratch` (the paper's
    baseline) trains every layer at `--lr`. Test clips are repeated to the dataset's protocol
    length (10 s for ESC) and classified by their logits averaged over time. Writes
    RUN_DIR/model.safetensors (`predict`, `extract`, `evaluate` and `export` take it with
    `--checkpoint`; `predict` prints the dataset's classes), RUN_DIR/metrics.jsonl (`visualize
    curves`) and RUN_DIR/checkpoints/last.pt (`--resume`). Under `torchrun` it trains with DDP.

    Examples:

    * `soundnet finetune esc10 data/ESC-50 --test-fold 1 --out run/`

    * `soundnet finetune esc10 data/ESC-50 --test-fold 1 --init scratch --out scratch/`

    * `soundnet finetune ./sounds --labels labels.csv --out run/ --json`

    * `soundnet finetune --resume run/`
    """
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.training.finetune import (
        FinetuneConfig,
        dataset_task,
        labels_task,
        resume_settings,
    )

    flags = {
        "init": init,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "student": student,
        "layer": layer,
        "freeze_below": freeze_below,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "body_lr": body_lr,
        "weight_decay": weight_decay,
        "crop_seconds": crop_seconds,
        "seed": seed,
        "eval_every": eval_every,
        "log_every": log_every,
        "workers": workers,
        "threads": threads,
        "device": device,
        "mix": mix,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if resume is not None:
        if source is not None or out is not None or labels is not None or test_fold is not None:
            raise UsageProblem(
                "--resume RUN_DIR continues a run: give no SOURCE, --labels or --out"
            )
        task, config = resume_settings(resume, given)
        run_dir = resume
    else:
        if source is None or out is None:
            raise UsageProblem("give a DATASET and its ROOT (or AUDIO_DIR --labels CSV) and --out")
        config = FinetuneConfig.from_mapping(given)
        if labels is not None:
            if root is not None:
                raise UsageProblem("with --labels, give only the audio folder (no ROOT)")
            task = labels_task(Path(source), labels, test_fold)
        else:
            if root is None:
                raise UsageProblem(
                    f"give the folder of {source!r} (soundnet finetune DATASET ROOT), or "
                    f"--labels CSV when {source!r} is a folder of audio"
                )
            task = dataset_task(source, root, test_fold)
        run_dir = out
    summary = _train(task, run_dir, config, resume is not None, json_output)
    if json_output:
        _common.print_json(summary)
    else:
        _report(summary)


def _train(
    task: Any, run_dir: Path, config: Any, resume: bool, json_output: bool
) -> dict[str, Any]:
    from soundnet_cli.cli._progress import file_progress
    from soundnet_cli.training.finetune import finetune, steps_for

    bar = file_progress(enabled=not json_output)
    with bar:
        decoding = bar.add_task("decoding", total=len(task.train) + len(task.test))
        training = bar.add_task("fine-tuning", total=steps_for(config, len(task.train)))

        def on_decode(done: int, total: int) -> None:
            bar.update(decoding, completed=done, total=total)

        def on_step(m: Any) -> None:
            bar.update(training, completed=m.step)

        result = finetune(
            task,
            run_dir,
            config,
            resume=resume,
            on_step=on_step,
            on_decode=on_decode,
        )
    return result.as_dict()


def _report(summary: dict[str, Any]) -> None:
    accuracy = summary["test_accuracy"]
    tested = (
        f"test accuracy {accuracy:.1%} on {summary['test_clips']} clips"
        if accuracy is not None
        else "no test clips"
    )
    _common.out.print(
        f"{summary['run_dir']}: {summary['init']} {summary['layer']}, {summary['steps']} steps, "
        f"final loss {summary['final_loss'] or 0:.4f}; {tested}; model: {summary['model']}",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("finetune")(_common.torch_command(finetune_command))
