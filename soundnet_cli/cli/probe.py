"""`soundnet probe fit` and `soundnet probe predict`: a classifier on SoundNet features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from soundnet_cli.cli import _common, _options
from soundnet_cli.cli._progress import file_progress

MAX_MEMORY_HELP = (
    "Memory the probe fit may use, such as 4G or 512M (default: half the machine's memory). "
    "A fit planned beyond it is refused before any work, saying which windows would fit."
)

probe_app = typer.Typer(
    help="Train a probe classifier on features of labeled sounds, and apply it.",
    no_args_is_help=True,
)


@probe_app.command("fit")
@_common.handle_errors
def fit_command(
    audio: Path = typer.Argument(..., help="Folder the labels' paths are relative to."),
    labels: Path = typer.Option(
        ..., "--labels", help="CSV with path and label columns (optional group / src_file column)."
    ),
    out: Path = _options.output_file(..., "--out", help="Where to write the probe (.npz)."),
    probe: str = typer.Option("linear-svm", "--probe", help="A registered probe."),
    solver: str = _options.solver(
        "torch: all classes at once, on --device (default); liblinear: the reference."
    ),
    layer: str = typer.Option(
        None, "--layer", help="Feature layer (default: the model's, pool5 for SoundNet-8)."
    ),
    window: float = _options.number(
        1.0, "--window", at_least=0.01, help="Window length in seconds."
    ),
    c_value: str = _options.regularisation(
        "Regularisation, or 'auto' (grouped inner cross-validation over 1e-4..1)."
    ),
    repeat_to: float = _options.number(
        10.0,
        "--repeat-to",
        at_least=0.0,
        at_most=_options.MAX_REPEAT_SECONDS,
        help="Clips shorter than this many seconds are repeated circularly to it (0: never).",
    ),
    checkpoint: Path = _options.checkpoint("A student checkpoint."),
    student: str = _options.student(
        "A registered student or feature extractor; default: the official SoundNet-8."
    ),
    mix: str = _options.mix(help="first or mean channel."),
    device: str = _options.device(),
    precision: str = _options.precision(),
    max_memory: str = _options.max_memory(MAX_MEMORY_HELP),
    json_output: bool = _options.json_flag(),
) -> None:
    """Train a probe on labeled audio: windows of one layer, the paper's protocol.

    The saved probe is plain arrays and JSON (no pickle); it records the model and layer its
    features came from, and `probe predict` refuses other features.

    Examples:

    * `soundnet probe fit sounds/ --labels sounds/labels.csv --out dogs.probe.npz`

    * `soundnet probe fit sounds/ --labels labels.csv --C auto --layer conv6 --out p.npz`

    * `soundnet probe fit sounds/ --labels labels.csv --solver liblinear --out ref.npz`

    * `soundnet probe fit sounds/ --labels labels.csv --layer conv2 --window 0.1 --max-memory 4G
      --out p.npz`
    """
    import torch

    from soundnet_cli.cli._model import load_model
    from soundnet_cli.evaluation import probing
    from soundnet_cli.models import default_layer
    from soundnet_cli.probes import save_probe
    from soundnet_cli.runtime import resolve_device

    C = _options.regularisation_value(c_value)
    clips = probing.read_labels(labels, audio)
    torch.manual_seed(0)
    model = load_model(checkpoint, student, device)
    layer = layer or default_layer(model)
    with file_progress(enabled=not json_output) as bar:
        task = bar.add_task("features", total=len(clips))
        clip_probe, meta = probing.fit(
            clips,
            model,
            layer=layer,
            probe=probe,
            window_seconds=window,
            C=C,
            repeat_to=repeat_to or None,
            mix=mix,  # type: ignore[arg-type]
            device=resolve_device(device),
            source=probing.model_source(checkpoint, student),
            precision=precision,
            solver=solver,
            max_memory=_options.size_value(max_memory),
            on_clip=lambda: bar.advance(task),
        )
    fit = meta.get("solver")
    if fit is not None and not fit["converged"]:
        _common.warn(
            f"the {solver} solver stopped before converging ({fit['iterations']} iterations); "
            "the probe is saved but may be poor: check the features' scale or raise --C"
        )
    path = save_probe(out, clip_probe, meta)
    if json_output:
        _common.print_json({"path": str(path), **meta})
        return
    _common.out.print(
        f"probe {meta['probe']} (C={meta['params']['C']:g}) on {layer}, "
        f"{meta['trained_on']} clips, {len(meta['classes'])} classes -> {path}"
    )


@probe_app.command("predict")
@_common.handle_errors
def predict_command(
    probe_path: Path = typer.Argument(..., help="A probe written by `soundnet probe fit`."),
    paths: list[Path] = typer.Argument(..., help="Audio or video files, or folders (recursive)."),
    checkpoint: Path = _options.checkpoint(
        "The checkpoint the probe was trained on, if it has moved."
    ),
    device: str = _options.device(),
    precision: str = _options.precision(),
    json_output: bool = _options.json_flag(),
) -> None:
    """Label audio files with a trained probe.

    Uses the model the probe was trained on (recorded in the probe file); features of any other
    model or layer are refused.

    Examples:

    * `soundnet probe predict dogs.probe.npz new_sounds/`

    * `soundnet probe predict p.npz clip.wav --json | jq '.[0].label'`
    """
    import torch

    from soundnet_cli.cli._model import load_model
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.evaluation import probing
    from soundnet_cli.media.files import find_media
    from soundnet_cli.probes import load_probe
    from soundnet_cli.runtime import resolve_device

    probe_file = load_probe(probe_path)
    files = find_media(paths)
    if not files:
        raise UsageProblem("no audio files found in the given paths")
    source = probe_file.meta["features"].get("source", {})
    recorded = source.get("checkpoint")
    torch.manual_seed(0)
    model = load_model(
        checkpoint or (Path(recorded) if recorded else None), source.get("student"), device
    )
    with file_progress(enabled=not json_output and len(files) > 1) as bar:
        task = bar.add_task("predicting", total=len(files))
        results = probing.predict(
            probe_file,
            model,
            files,
            device=resolve_device(device),
            precision=precision,
            on_clip=lambda: bar.advance(task),
        )
    if json_output:
        _common.print_json([r.as_dict() for r in results])
        return
    _render([r.as_dict() for r in results])


def _render(results: list[dict[str, Any]]) -> None:
    table = Table()
    table.add_column("file")
    table.add_column("label")
    table.add_column("runner-up")
    for result in results:
        ranked = sorted(result["scores"].items(), key=lambda kv: -kv[1])
        second = f"{ranked[1][0]} ({ranked[1][1]:+.2f})" if len(ranked) > 1 else "-"
        table.add_row(
            Text(result["path"]), Text(f"{result['label']} ({ranked[0][1]:+.2f})"), Text(second)
        )
    _common.out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
