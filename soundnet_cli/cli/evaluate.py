"""`soundnet evaluate`: the paper's protocols on ESC-50, ESC-10 and DCASE 2013."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import TaskID
from rich.table import Table

from soundnet_cli.cli import _common, _options
from soundnet_cli.cli._progress import file_progress

if TYPE_CHECKING:
    from soundnet_cli.evaluation.protocol import EvaluationReport, SplitResult


def evaluate_command(
    dataset: str = typer.Argument(..., help="esc50, esc10, dcase2013, or a plugin's dataset."),
    root: Path = typer.Argument(..., help="The dataset folder (see docs/commands/evaluate.md)."),
    layers: list[str] = typer.Option(
        None,
        "--layer",
        "-l",
        help="Feature layer (default: the model's, pool5 for "
        "SoundNet-8); repeat for a sweep (features are computed once).",
    ),
    checkpoint: Path = _options.checkpoint("A student checkpoint."),
    student: str = _options.student(
        "A registered student (fresh, seed 0) or feature extractor such as mfcc; default: the "
        "official SoundNet-8."
    ),
    probe: str = typer.Option("linear-svm", "--probe", help="A registered probe."),
    solver: str = _options.solver(
        "torch: all classes at once, on --device (default); liblinear: the reference, "
        "one class at a time on the CPU (slow on conv4/conv5)."
    ),
    c_value: str = _options.regularisation(
        "Probe regularisation, or 'auto' (inner cross-validation over a grid)."
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Where report.json and the confusion "
        "matrices go (default: ./soundnet-evaluate-DATASET).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute features even if cached."),
    device: str = _options.device(),
    precision: str = _options.precision(),
    zero_shot: bool = typer.Option(
        False,
        "--zero-shot",
        help="Zero-shot accuracy of the --checkpoint's embedding head (class names as text, the "
        "default prompt and the ensemble) beside the linear probe on the same features.",
    ),
    json_output: bool = _options.json_flag("Print the report as JSON."),
    max_memory: str = _options.max_memory(
        "Memory each probe fit may use, such as 4G or 512M (default: half the machine's "
        "memory). A layer whose fit is planned beyond it is refused before any feature is "
        "computed."
    ),
) -> None:
    """Reproduce the paper's evaluations: a linear probe on frozen features.

    The protocol of PAPER.md: ESC clips repeated to 10 s, 1-s windows (5-s for DCASE), decision
    values averaged over a clip's windows; leave-one-fold-out over the folds present, or grouped
    stratified 5-fold cross-validation when only one fold is there. Prints accuracy per split
    and layer with mean and std, and writes report.json and a confusion-matrix PNG per layer.

    Examples:

    * `soundnet evaluate esc10 data/ESC-50`

    * `soundnet evaluate esc50 data/ESC-50 -l conv4 -l conv5 -l pool5 -l conv6 -l conv7 -l conv8`

    * `soundnet evaluate esc50 data/ESC-50 --checkpoint run/student.safetensors --json`

    * `soundnet evaluate dcase2013 data/dcase2013 --C auto`

    * `soundnet evaluate esc50 data/ESC-50 -l conv5 --device cuda` (probes fitted on the GPU)

    * `soundnet evaluate esc10 data/ESC-50 --solver liblinear` (the reference solver)

    * `soundnet evaluate esc10 data/ESC-50 --precision bf16`

    * `soundnet evaluate esc50 data/ESC-50 --zero-shot --checkpoint run/` (a student distilled
      from a CLIP teacher; see docs/clip.md)
    """
    from soundnet_cli.atomic import atomic_path
    from soundnet_cli.cli._model import load_model
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.evaluation.protocol import evaluate
    from soundnet_cli.models import default_layer
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.runtime import resolve_device
    from soundnet_cli.visualize.figures import confusion_matrix_png

    C = _options.regularisation_value(c_value)
    get_plugins().probes.get(probe)  # unknown names fail before any work
    data = get_plugins().datasets.create(dataset)
    if not root.is_dir():
        raise UsageProblem(f"{root} is not a folder")
    import torch

    torch.manual_seed(0)  # students without weights get the same features (and cache) each run
    if zero_shot:
        _zero_shot(
            data, dataset, root, checkpoint, probe, C, no_cache, device, solver, out, json_output,
            _options.size_value(max_memory),
        )  # fmt: skip
        return
    model = load_model(checkpoint, student, device)
    layers = layers or [default_layer(model)]
    out = out or Path(f"soundnet-evaluate-{dataset}")
    with file_progress(enabled=not json_output) as bar:
        progress = _stage_progress(bar)
        report = evaluate(
            data,
            root,
            model,
            layers,
            probe=probe,
            C=C,
            use_cache=not no_cache,
            device=resolve_device(device),
            precision=precision,
            solver=solver,
            max_memory=_options.size_value(max_memory),
            progress=progress,
        )
    _warn_unconverged(report)
    payload = report.as_dict()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=2))
    figures = {}
    for layer in report.layers:
        mean, _ = report.layer_summary(layer)
        figures[layer] = str(
            confusion_matrix_png(
                report.confusion(layer),
                report.classes,
                out / f"confusion-{layer}.png",
                f"{dataset} · {report.model} · {layer} · accuracy {mean:.1%}",
            )
        )
    payload["files"] = {"report": str(out / "report.json"), "confusion": figures}
    if json_output:
        _common.print_json(payload)
        return
    _render(report)
    _common.info(f"report: {out / 'report.json'}; confusion matrices: {out}/confusion-*.png")


def _zero_shot(
    data: object,
    dataset: str,
    root: Path,
    checkpoint: Path | None,
    probe: str,
    C: float | str,
    no_cache: bool,
    device: str,
    solver: str | None,
    out: Path | None,
    json_output: bool = False,
    max_memory: int | None = None,
) -> dict[str, object]:
    """`evaluate --zero-shot`: the report of :func:`evaluate_zero_shot`, written to
    OUT/zero-shot.json and shown as a table (or printed as JSON)."""
    from soundnet_cli.atomic import atomic_path
    from soundnet_cli.cli._model import load_model
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.evaluation.zeroshot import evaluate_zero_shot
    from soundnet_cli.runtime import resolve_device
    from soundnet_cli.students.embedding import embedding_head
    from soundnet_cli.teachers.text import TextEncoder

    head = embedding_head(checkpoint)
    if not head.spec.clip:
        raise UsageProblem(f"{checkpoint}: its embedding head records no CLIP text tower")
    encoder = TextEncoder(head.spec.clip)
    model = load_model(checkpoint, None, device)
    with file_progress(enabled=not json_output) as bar:
        progress = _stage_progress(bar)
        report = evaluate_zero_shot(
            data,
            root,
            model,
            head,
            encoder,
            probe=probe,
            C=C,
            use_cache=not no_cache,
            device=resolve_device(device),
            solver=solver,
            max_memory=max_memory,
            progress=progress,
        )
    out = out or Path(f"soundnet-evaluate-{dataset}")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "zero-shot.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    if json_output:
        _common.print_json(report)
        return report
    table = Table(title=f"{dataset}: zero-shot ({report['head']}, {report['layer']}) and probe")
    for name in ("split", "zero-shot", "ensemble", "probe"):
        table.add_column(name, justify="left" if name == "split" else "right")
    for row in report["splits"]:
        table.add_row(
            row["split"],
            f"{row['zero_shot']:.1%}",
            f"{row['zero_shot_ensemble']:.1%}",
            f"{row['probe']:.1%}",
        )
    mean = report["mean"]
    table.add_row(
        "mean",
        f"{mean['zero_shot']:.1%}",
        f"{mean['zero_shot_ensemble']:.1%}",
        f"{mean['probe']:.1%}",
        style="bold",
    )
    _common.out.print(table)
    _common.info(f"report: {out / 'zero-shot.json'}")
    return report


def _cell(result: SplitResult) -> str:
    return f"{result.accuracy:.1%}" + ("*" if result.converged is False else "")


def _warn_unconverged(report: EvaluationReport) -> None:
    stopped = report.unconverged()
    if stopped:
        names = ", ".join(f"{r.layer} {r.split}" for r in stopped)
        _common.warn(
            f"{len(stopped)} probe(s) stopped before the solver converged (marked * in the "
            f"table; 'converged': false in report.json): {names}"
        )


def _render(report: EvaluationReport) -> None:
    _common.out.print(
        f"{report.dataset}: clip accuracy of {report.probe} (C={report.C}) on "
        f"features of {report.model}"
    )
    table = Table()
    table.add_column("split")
    for layer in report.layers:
        table.add_column(layer, justify="right")
    for split in dict.fromkeys(r.split for r in report.results):
        row = {r.layer: r for r in report.results if r.split == split}
        table.add_row(split, *(_cell(row[layer]) for layer in report.layers))
    table.add_row(
        "mean ± std",
        *("{:.1%} ± {:.1%}".format(*report.layer_summary(layer)) for layer in report.layers),
        style="bold",
        end_section=True,
    )
    _common.out.print(table)
    _common.info(
        f"features {report.seconds['features']:.0f} s, probes {report.seconds['probes']:.0f} s"
    )


def register(app: typer.Typer) -> None:
    app.command("evaluate")(_common.torch_command(evaluate_command))


def _stage_progress(bar: Any) -> Callable[[str, int, int], None]:
    """``progress(stage, done, total)`` for the library: one bar task per stage."""
    tasks: dict[str, TaskID] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done)

    return progress
