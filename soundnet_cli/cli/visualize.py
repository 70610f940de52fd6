"""`soundnet visualize`: conv1 filters, what units respond to, t-SNE maps, training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from soundnet_cli.cli import _common, _options
from soundnet_cli.cli._progress import file_progress

visualize_app = typer.Typer(
    help="Figures of what a model learned and how its training went (PNG and HTML).",
    no_args_is_help=True,
)

STUDENT_HELP = (
    "A registered student, freshly initialised (seed 0), e.g. soundnet5; soundnet8 is the official."
)


@visualize_app.command("filters")
@_common.handle_errors
def filters_command(
    out: Path = _options.output_file(..., help="The PNG to write."),
    checkpoint: Path = _options.checkpoint(),
    student: str = _options.student(STUDENT_HELP),
    title: str = typer.Option(None, "--title", help="Figure title (default: names the model)."),
    json_output: bool = _options.json_flag("Print a JSON summary."),
) -> None:
    """The first layer's filters as waveforms with their frequency responses.

    One cell per conv1 filter, sorted by the frequency where its response peaks: the 64 weights
    over milliseconds, and the magnitude response in dB (relative to the filter's peak) over
    kHz. A trained SoundNet learns band-pass, wavelet-like filters; a fresh one, noise.

    Examples:

    * `soundnet visualize filters --out filters.png`

    * `soundnet visualize filters --checkpoint run/student.safetensors -o student-filters.png`

    * `soundnet visualize filters --student soundnet5 -o untrained.png` (for contrast)
    """
    from soundnet_cli.cli._model import load_model
    from soundnet_cli.evaluation.features import model_key
    from soundnet_cli.visualize.figures import filters_png, first_layer_filters, peak_frequencies

    model = load_model(checkpoint, student, "cpu")
    filters = first_layer_filters(model)
    name = model_key(model)
    path = filters_png(
        filters, model.sample_rate, out, title or f"conv1 filters of {name} (sorted by peak)"
    )
    peaks = peak_frequencies(filters, model.sample_rate)
    if json_output:
        _common.print_json(
            {
                "out": str(path),
                "model": name,
                "filters": len(filters),
                "taps": filters.shape[1],
                "peak_hz": [round(float(p), 1) for p in peaks],
            }
        )
    else:
        _common.out.print(
            f"wrote {path} ({len(filters)} filters of {filters.shape[1]} taps)", soft_wrap=True
        )


def _parse_units(text: str | None) -> list[int] | None:
    from soundnet_cli.errors import UsageProblem

    if not text:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UsageProblem(
            f"--units takes unit numbers separated by commas, not {text!r}"
        ) from None


@visualize_app.command("units")
@_common.handle_errors
def units_command(
    paths: list[Path] = typer.Argument(
        ..., help="Audio files or folders (searched recursively) to scan."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for index.html and units.json."),
    layer: str = typer.Option(
        None, "--layer", "-l", help="The layer whose units to show (default: conv7 if present)."
    ),
    units: str = typer.Option(
        None, "--units", metavar="LIST", help="Units to show, e.g. 0,5,17 (default: --top-units)."
    ),
    top_units: int = typer.Option(
        12, "--top-units", min=1, help="Show the N most selective units (when --units is not set)."
    ),
    k: int = typer.Option(9, "--k", "-k", min=1, help="Top clips shown per unit."),
    labels: Path = typer.Option(
        None, "--labels", help="CSV of path,label to show each clip's label (paths relative)."
    ),
    excerpt_seconds: float = _options.number(
        None,
        "--excerpt-seconds",
        at_least=0.05,
        help="Excerpt length around each peak (default: the layer's receptive field, max 5 s).",
    ),
    checkpoint: Path = _options.checkpoint(),
    student: str = _options.student(STUDENT_HELP),
    mix: str = _options.mix(help="Channel handling: first or mean."),
    device: str = _options.device(),
    json_output: bool = _options.json_flag("Print unit -> top clips (times, activations) as JSON."),
) -> None:
    """What hidden units respond to: each unit's top clips, as an HTML page.

    One pass over the clips records, for every unit of the layer, the k clips whose peak
    activation is highest and the time of that peak. For each chosen unit the page shows those
    excerpts with a spectrogram, an audio player, and the model's top object and scene for the
    excerpt. Without --units, the most selective units are shown (top-k peaks far above the
    unit's typical peak). The page is self-contained (images and audio embedded). Clips that
    fail are reported and skipped; the exit code is then 1.

    Examples:

    * `soundnet visualize units ./esc10/audio --layer conv7 --top-units 12 --out report/`

    * `soundnet visualize units clips/ --units 0,5,17 --k 6 -o report/ --labels labels.csv`

    * `soundnet visualize units clips/ -o report/ --json | jq '.units[0].top[0]'`
    """
    import json

    from soundnet_cli.atomic import atomic_path
    from soundnet_cli.cli._model import load_model
    from soundnet_cli.datasets.labels import read_label_map
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.media.files import find_audio
    from soundnet_cli.visualize.report import write_units_page
    from soundnet_cli.visualize.units import visualize_units

    chosen_units = _parse_units(units)
    files = find_audio(paths)
    if not files:
        raise UsageProblem("no audio files found in the given paths")
    folders = [p for p in paths if p.is_dir()]
    label_map = read_label_map(labels, folders[0] if folders else None) if labels else None
    model = load_model(checkpoint, student, device)
    names = [info.name for info in model.feature_info]
    layer = layer or ("conv7" if "conv7" in names else names[-1])

    with file_progress(enabled=not json_output) as bar:
        scan_task = bar.add_task("scanning", total=len(files))
        excerpt_task = bar.add_task("excerpts", total=None)
        report = visualize_units(
            model,
            files,
            layer,
            roots=paths,
            units=chosen_units,
            top_units=top_units,
            k=k,
            excerpt_seconds=excerpt_seconds,
            labels=label_map,
            mix=mix,  # type: ignore[arg-type]
            device=str(model.device),
            on_clip=lambda: bar.advance(scan_task),
            on_hit=lambda: bar.advance(excerpt_task),
        )
    out.mkdir(parents=True, exist_ok=True)
    page = write_units_page(report, out / "index.html")
    summary = report.as_dict()
    with atomic_path(out / "units.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if json_output:
        _common.print_json({"out": str(page), **summary})
    else:
        for failure in report.failures:
            _common.error(failure.error)
        _render_units(report)
        _common.out.print(
            f"wrote {page} ({len(report.units)} units, {report.clips} clips)", soft_wrap=True
        )
    if report.failures:
        raise typer.Exit(1)


def _render_units(report: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{report.layer}: top units", title_justify="left")
    table.add_column("unit", justify="right")
    table.add_column("selectivity", justify="right")
    table.add_column("top clips (peak time s)")
    if any(u.label_counts() for u in report.units):
        table.add_column("labels")
    for unit in report.units:
        clips = ", ".join(f"{Path(h.name).name} ({h.time:.1f})" for h in unit.hits[:3])
        if len(unit.hits) > 3:
            clips += ", ..."
        row = [str(unit.unit), f"{unit.selectivity:.2f}", clips]
        if len(table.columns) == 4:
            row.append(", ".join(f"{name} x{n}" for name, n in unit.label_counts()[:3]))
        table.add_row(*row)
    _common.out.print(table)


@visualize_app.command("tsne")
@_common.handle_errors
def tsne_command(
    features: Path = typer.Argument(
        ..., help="A folder written by `soundnet extract` (.npy per file)."
    ),
    out: Path = _options.output_file(..., help="The PNG to write."),
    labels: Path = typer.Option(
        None, "--labels", help="CSV of path,label; labels only colour the points."
    ),
    layer: str = typer.Option(
        None, "--layer", "-l", help="Which layer's features (needed when the folder has several)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed of t-SNE (same seed, same map)."),
    perplexity: float = _options.number(
        30.0, "--perplexity", at_least=1.0, help="t-SNE perplexity (capped at (clips - 1) / 3)."
    ),
    title: str = typer.Option(None, "--title", help="Figure title."),
    json_output: bool = _options.json_flag("Print each clip's 2-D position and label as JSON."),
) -> None:
    """A t-SNE map of clip features; labels only colour the points, as in the paper.

    Reads the `.npy` (or `.npz`) files that `soundnet extract` writes, mean-pools each over
    time, standardises the channels, reduces them to 50 dimensions with PCA and embeds them in
    2-D with scikit-learn's t-SNE (exact up to 1,000 clips). The labels CSV has a path column
    (path, file or filename) and a label column (label, category or class); paths are matched
    with or without their audio extension.

    Examples:

    * `soundnet extract esc10/audio --layer pool5 --out feats/`
      then `soundnet visualize tsne feats/ --labels esc10/meta/esc50.csv --out tsne.png`

    * `soundnet visualize tsne feats/ --layer conv7 --seed 1 -o tsne-conv7.png`
    """
    from soundnet_cli.datasets.labels import read_label_map
    from soundnet_cli.visualize.figures import (
        assign_labels,
        load_feature_folder,
        tsne_embedding,
        tsne_png,
    )

    label_map = read_label_map(labels, features) if labels else None
    loaded = load_feature_folder(features, layer)
    point_labels = assign_labels(loaded, label_map)
    points = tsne_embedding(loaded.vectors, seed=seed, perplexity=perplexity)
    heading = title or f"t-SNE of {loaded.layer} features ({len(loaded.keys)} clips)"
    path = tsne_png(points, point_labels, out, heading)
    if json_output:
        _common.print_json(
            {
                "out": str(path),
                "layer": loaded.layer,
                "clips": len(loaded.keys),
                "seed": seed,
                "points": [
                    {"key": key, "label": label, "x": round(float(x), 4), "y": round(float(y), 4)}
                    for key, label, (x, y) in zip(loaded.keys, point_labels, points, strict=True)
                ],
            }
        )
    else:
        unlabelled = sum(label == "(no label)" for label in point_labels)
        note = f", {unlabelled} without a label" if label_map and unlabelled else ""
        _common.out.print(f"wrote {path} ({len(loaded.keys)} clips{note})", soft_wrap=True)


@visualize_app.command("curves")
@_common.handle_errors
def curves_command(
    run_dir: Path = typer.Argument(..., help="A `soundnet distill` run folder (metrics.jsonl)."),
    out: Path = _options.output_file(..., help="The PNG to write."),
    title: str = typer.Option(None, "--title", help="Figure title (default: the run folder)."),
    json_output: bool = _options.json_flag("Print first/last values as JSON."),
) -> None:
    """Training curves of a distillation or fine-tuning run: loss, loss per head, agreement
    with the teacher (fine-tuning: test accuracy), throughput.

    Reads RUN_DIR/metrics.jsonl (one JSON row per logged step); columns missing from a log are
    drawn as empty panels, and lines cut short by an interruption are skipped.

    Examples:

    * `soundnet visualize curves runs/esc10 --out curves.png`

    * `soundnet visualize curves runs/esc10/metrics.jsonl -o curves.png --json`
    """
    from soundnet_cli.visualize.figures import curves_png, read_curves

    curves = read_curves(run_dir)
    path = curves_png(curves, out, title or f"{curves.kind}: {run_dir.resolve().name}")
    if json_output:
        _common.print_json({"out": str(path), **curves.summary()})
    else:
        _common.out.print(f"wrote {path} ({len(curves.steps)} logged steps)", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(visualize_app, name="visualize")
