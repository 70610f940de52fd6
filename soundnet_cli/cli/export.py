"""`soundnet export`: write a student as ONNX or TorchScript and check it against PyTorch."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from soundnet_cli.cli import _common


def export_command(
    out: Path = typer.Option(
        ..., "--out", "-o", help="File to write (.onnx, or .pt / .ts for TorchScript)."
    ),
    fmt: str = typer.Option(
        None, "--format", "-f", help="onnx or torchscript [default: from the --out suffix]."
    ),
    layer: list[str] = typer.Option(
        None,
        "--layer",
        "-l",
        help="Layer to output (repeatable; default: the model's, pool5 for SoundNet-8).",
    ),
    heads: bool = typer.Option(
        False, "--heads", help="Also output each head's probabilities (objects, scenes, ...)."
    ),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="A student checkpoint (.safetensors) instead of SoundNet-8."
    ),
    student: str = typer.Option(
        None, "--student", help="A registered student by name (untrained unless soundnet8)."
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Run the written file and compare it with PyTorch."
    ),
    tolerance: float = typer.Option(
        1e-4, "--tolerance", min=0.0, help="Largest relative error --verify accepts."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Export a student for another runtime: ONNX (onnxruntime, ...) or TorchScript (libtorch).

    The exported model takes `waveform`: float32, (batch, samples), in [-1, 1] at 22,050 Hz
    (the x256 input scaling is inside), any batch size and length; it returns one output per
    `--layer` and, with `--heads`, one per head (probabilities over its categories), each
    named after it and shaped (batch, channels, time) like `soundnet extract`'s features
    (which are saved time x channels). A description of the outputs (geometry, category names)
    is stored in the file.

    The written file is then run in its own runtime (onnxruntime, torch.jit.load) on test
    signals and the largest relative error against PyTorch is printed; above `--tolerance` the
    export fails and nothing is written. ONNX needs `pip install 'soundnet-cli[onnx]'`.

    Examples:

    * `soundnet export --format onnx --layer pool5 --layer conv7 --out soundnet8.onnx`

    * `soundnet export --out soundnet8.pt --heads` (TorchScript, pool5 plus objects and scenes)

    * `soundnet export --checkpoint run/model.safetensors --heads --out model.onnx --json`
    """
    from soundnet_cli.cli._model import load_model
    from soundnet_cli.export import export_model, format_for

    chosen = format_for(out, fmt)  # a bad --format fails before the model is loaded
    model = load_model(checkpoint, student, "cpu")
    spinner = (
        _common.err.status(f"exporting to {chosen}" + (" and checking it" if verify else ""))
        if _common.err.is_terminal and not json_output
        else contextlib.nullcontext()
    )
    with spinner:
        result = export_model(
            model,
            out,
            fmt=chosen,
            layers=layer or (),
            heads=heads,
            check=verify,
            tolerance=tolerance,
        )
    summary = result.as_dict()
    if json_output:
        _common.print_json(summary)
    else:
        _render(summary)


def _render(summary: dict[str, Any]) -> None:
    table = Table(
        title=Text(f"{summary['path']} ({summary['format']}, {summary['architecture']})"),
        title_justify="left",
    )
    for column, justify in (("output", "left"), ("shape", "left"), ("max rel. error", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for output in summary["outputs"]:
        error = summary["relative_error"].get(output["name"])
        table.add_row(
            output["name"],
            "(batch, {}, time)".format(output["shape"][1]),
            "not checked" if error is None else f"{error:.1e}",
        )
    _common.out.print(table)
    size = summary["size_bytes"] / 1e6
    if summary["verified"]:
        _common.out.print(
            f"largest relative error against PyTorch: {summary['max_relative_error']:.1e} "
            f"({size:.1f} MB, {summary['seconds']:.1f} s)"
        )
    else:
        _common.out.print(f"not verified (--no-verify); {size:.1f} MB")


def register(app: typer.Typer) -> None:
    app.command("export")(_common.torch_command(export_command))
