"""`soundnet distill`: train a sound student from the vision teachers' posteriors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from soundnet_cli.cli import _common, _options


def distill_command(
    source: str = typer.Argument(
        None,
        metavar="CORPUS",
        help="A corpus folder (from `soundnet prepare`), shard URLs to stream (a brace pattern, "
        "URLs joined by ::, or @FILE listing them; https://, s3://, gs://, file://, pipe:), "
        "or a folder of videos to prepare first.",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="The run directory (new)."),
    resume: Path = typer.Option(
        None, "--resume", metavar="RUN_DIR", help="Continue the run in RUN_DIR from its checkpoint."
    ),
    student: str = typer.Option(None, "--student", help="Student architecture [soundnet8]."),
    teacher: list[str] = typer.Option(
        [],
        "--teacher",
        "-t",
        metavar="NAME",
        help="Learn this teacher's heads (repeatable; default: every head of the corpus). "
        "With a folder of videos: the teachers to prepare it with.",
    ),
    config_file: Path = typer.Option(
        None, "--config", metavar="FILE.toml", help="Hyper-parameters from a TOML file."
    ),
    loss: str = typer.Option(None, "--loss", help="kl (the paper) or l2 (the ablation) [kl]."),
    kl_scale: float = _options.number(
        None, "--kl-scale", above=0.0, help="Loss multiplier [250, the release]."
    ),
    lr: float = _options.number(None, "--lr", above=0.0, help="Adam learning rate [0.001]."),
    beta1: float = _options.number(
        None, "--beta1", at_least=0.0, below=1.0, help="Adam beta1 [0.9]."
    ),
    beta2: float = _options.number(
        None, "--beta2", at_least=0.0, below=1.0, help="Adam beta2 [0.999]."
    ),
    batch_size: int = typer.Option(None, "--batch-size", help="Global batch size [64]."),
    steps: int = typer.Option(None, "--steps", help="Training steps [100000]."),
    crop_seconds: float = _options.number(
        None, "--crop-seconds", above=0.0, help="Crop length [20]."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed for init, order and crops [0]."),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", help="Steps [1000]."),
    log_every: int = typer.Option(None, "--log-every", help="Steps between metrics lines [10]."),
    eval_every: int = typer.Option(
        None, "--eval-every", help="Steps between agreement checks [500]."
    ),
    held_out: float = _options.number(
        None, "--held-out", at_least=0.0, below=1.0, help="Fraction of videos held out [0.05]."
    ),
    workers: int = typer.Option(None, "--workers", help="DataLoader worker processes [2]."),
    device: str = _options.device(None, "auto, cpu, cuda or cuda:N [auto]."),
    compile_model: bool = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the student [off]."
    ),
    init: str = typer.Option(
        None,
        "--init",
        metavar="official|CHECKPOINT",
        help="Start from SoundNet-8's published weights (official) or a checkpoint's: every "
        "tensor whose name and shape match [the paper's random init].",
    ),
    embedding_layer: str = typer.Option(
        None,
        "--embedding-layer",
        metavar="LAYER",
        help="The student layer embedding heads project (embedding teachers such as clip:) "
        "[the student's default layer, pool5].",
    ),
    embedding_loss: str = typer.Option(
        None,
        "--embedding-loss",
        help="infonce (CLIP's symmetric loss over the global batch) or cosine [infonce].",
    ),
    temperature: float = _options.number(
        None, "--temperature", above=0.0, help="InfoNCE's initial temperature, learnt [0.07]."
    ),
    head_weight: list[str] = typer.Option(
        [],
        "--head-weight",
        metavar="HEAD=W",
        help="Weight of one head's loss in a mixed run (repeatable) [1 each].",
    ),
    teacher_weights: list[str] = _options.teacher_weights("When preparing: local teacher weights."),
    random_init: bool = _options.random_init("When preparing: random-init teachers (dry runs)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a finished run in --out (metrics, checkpoint, student)."
    ),
    json_output: bool = _options.json_flag("Print a JSON summary for scripts."),
) -> None:
    """Train a sound student to predict the vision teachers' posteriors (the paper's method).

    KL(teacher || student) per head and time step, Adam (lr 0.001, beta1 0.9), batch 64, 20-s
    crops, the paper's initialisation. Metrics go to RUN_DIR/metrics.jsonl, checkpoints to
    RUN_DIR/checkpoints/last.pt, and the student to RUN_DIR/student.safetensors, which
    `extract`, `predict` and `evaluate` accept. Given a folder of videos, it prepares a corpus
    in RUN_DIR/corpus first. Under `torchrun` it trains with DDP. An --out where a run left
    results is refused unless --overwrite (or continued with --resume).

    Examples:

    * `soundnet distill corpus/ --out run/`

    * `soundnet distill ./videos --teacher vgg16-places --out run/`

    * `soundnet distill corpus/ --teacher vgg16-imagenet --loss l2 --steps 20000 --out run-l2/`

    * `soundnet distill --resume run/`

    * `soundnet distill ./videos --teacher clip:ViT-B-32/openai --init official --out run/`
      (an embedding head: then `soundnet predict --labels ...`, `search query --text ...`)

    * `soundnet distill 'https://host/corpus/shards/rank00000-{000001..000400}.tar' --out run/`

    * `torchrun --nproc-per-node 8 -m soundnet_cli distill corpus/ --batch-size 512 --out run/`
    """
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.teachers import parse_weight_specs
    from soundnet_cli.training.distillation import (
        distill,
        distill_source,
        new_config,
        resume_settings,
    )

    flags = {
        "student": student,
        "loss": loss,
        "kl_scale": kl_scale,
        "lr": lr,
        "beta1": beta1,
        "beta2": beta2,
        "batch_size": batch_size,
        "steps": steps,
        "crop_seconds": crop_seconds,
        "seed": seed,
        "checkpoint_every": checkpoint_every,
        "log_every": log_every,
        "eval_every": eval_every,
        "held_out": held_out,
        "workers": workers,
        "device": device,
        "compile": compile_model,
        "init": init,
        "embedding_layer": embedding_layer,
        "embedding_loss": embedding_loss,
        "temperature": temperature,
        "head_weights": _head_weights(head_weight) if head_weight else None,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if resume is not None:
        if source is not None or out is not None:
            raise UsageProblem("--resume RUN_DIR continues a run: give no CORPUS or --out")
        corpus, config = resume_settings(resume, given)
        run_dir = resume

        def train(on_step: Callable[[Any], None]) -> Any:
            return distill(corpus, resume, config, resume=True, on_step=on_step)
    else:
        if source is None or out is None:
            raise UsageProblem("give a CORPUS (or a folder of videos) and --out RUN_DIR")
        config = new_config(given, tuple(teacher), config_file)
        weights = parse_weight_specs(teacher_weights)
        run_dir = out

        def train(on_step: Callable[[Any], None]) -> Any:
            return distill_source(
                source,
                out,
                config,
                overwrite=overwrite,
                weights=weights,
                random_init=random_init,
                on_failure=lambda path, reason: _common.warn(f"skipped: {reason}"),
                on_step=on_step,
            )

    summary = _train(train, config.steps, json_output)
    if json_output:
        _common.print_json(summary)
    else:
        agreement = summary["agreement"] or {}
        text = ", ".join(
            f"{h} {a:.1%} (chance {summary['chance'].get(h, float('nan')):.1%})"
            for h, a in agreement.items()
        )
        _common.out.print(
            f"{run_dir}: {summary['steps']} steps, final loss {summary['final_loss'] or 0:.4f}; "
            f"student: {summary['student']}" + (f"; held-out agreement: {text}" if text else ""),
            soft_wrap=True,
        )


def _head_weights(specs: list[str]) -> dict[str, float]:
    """``["vec=2"]`` -> ``{"vec": 2.0}``."""
    import math

    from soundnet_cli.errors import UsageProblem

    weights: dict[str, float] = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not name.strip() or not math.isfinite(weight) or weight < 0:
            raise UsageProblem(
                f"--head-weight is HEAD=W with W a number of at least 0, not {spec!r}"
            )
        weights[name.strip()] = weight
    return weights


def _train(
    train: Callable[[Callable[[Any], None]], Any], steps: int, json_output: bool
) -> dict[str, Any]:
    """Run ``train(on_step)`` under a progress bar; the summary of its result."""
    from soundnet_cli.cli._progress import file_progress

    bar = file_progress(enabled=not json_output)
    with bar:
        tasks: list[Any] = []  # the bar appears with the first step (after any preparing)

        def on_step(m: Any) -> None:
            if not tasks:
                tasks.append(bar.add_task("distilling", total=steps))
            bar.update(
                tasks[0],
                completed=m.step,
                status=f"loss {m.loss:.4f}, {m.samples_per_s:.1f} samples/s, "
                f"data wait {m.data_wait:.0%}",
            )

        result = train(on_step)
    return {
        "run_dir": str(result.run_dir),
        "corpus": str(result.corpus),
        "steps": result.steps,
        "final_loss": result.losses[-1][1] if result.losses else None,
        "student": str(result.student) if result.student else None,
        "agreement": result.agreement,
        "chance": result.chance or {},
    }


def register(app: typer.Typer) -> None:
    app.command("distill")(_common.torch_command(distill_command))
