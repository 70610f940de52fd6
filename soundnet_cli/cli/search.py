"""`soundnet search`: find the files that sound like one file, in a folder of extracted features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from soundnet_cli.cli import _common, _options
from soundnet_cli.cli._progress import file_progress

search_app = typer.Typer(
    help="Index a features folder and find the files most like a given one (cosine).",
    no_args_is_help=True,
)

LAYER_HELP = "Layer to index (default: the folder's only layer)."
POOL_HELP = "Reduce each file's features over time: mean (default) or max."


@search_app.command("index")
@_common.handle_errors
def index_command(
    features: Path = typer.Argument(..., help="A folder written by `soundnet extract`."),
    layer: str = typer.Option(None, "--layer", "-l", help=LAYER_HELP),
    pool: str = typer.Option(None, "--pool", help=POOL_HELP),
    method: str = typer.Option(
        "auto",
        "--method",
        help="auto: exact below 100,000 files, approximate (faiss IVF) above; or exact, "
        "approximate.",
    ),
    rebuild: bool = typer.Option(
        False,
        "--rebuild",
        help="Read every file again instead of only new or changed ones (repairs a damaged index).",
    ),
    json_output: bool = _options.json_flag(),
) -> None:
    """Build or update the search index of a features folder (one vector per file).

    The index is saved inside the folder (FEATURES/.search/). A rerun reads only the files
    extracted since the last one and drops files that are gone. Files whose features cannot
    be read are listed and left out; the exit code is then 1.

    Examples:

    * `soundnet extract ./sounds --out feats && soundnet search index feats`

    * `soundnet search index feats --layer conv7 --pool max`

    * `soundnet search index feats --json`
    """
    from soundnet_cli.search import index_features

    with file_progress(enabled=not json_output) as bar:
        task = bar.add_task("indexing", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = index_features(
            features, layer=layer, pool=pool, method=method, rebuild=rebuild, progress=advance
        )
    if json_output:
        _common.print_json(summary.as_dict())
    else:
        for key, reason in summary.failures:
            _common.error(f"{key}: {reason}")
        recall = (
            f", calibrated recall@10 {summary.recall_at_10:.3f}"
            if summary.recall_at_10 is not None
            else ""
        )
        _common.info(
            f"{summary.name}: {summary.count} files ({summary.kind}{recall}); "
            f"{summary.added} added, {summary.changed} changed, {summary.removed} removed, "
            f"{summary.unchanged} unchanged, {len(summary.failures)} failed "
            f"in {summary.seconds:.1f} s"
        )
    if summary.failures:
        raise typer.Exit(1)


@search_app.command("query")
@_common.handle_errors
def query_command(
    features: Path = typer.Argument(..., help="A folder written by `soundnet extract`."),
    audio: Path = typer.Argument(
        None, help="An audio file to find neighbours of (extracted with the folder's model)."
    ),
    key: str = typer.Option(
        None, "--key", help="An indexed file's key (its path in the folder without the layer)."
    ),
    k: int = typer.Option(10, "-k", "--top-k", min=1, help="How many neighbours."),
    layer: str = typer.Option(None, "--layer", "-l", help=LAYER_HELP),
    pool: str = typer.Option(None, "--pool", help=POOL_HELP),
    checkpoint: Path = _options.checkpoint(
        "Where the folder's checkpoint is now, if it moved (it must be the same model)."
    ),
    device: str = _options.device(),
    text: str = typer.Option(
        None,
        "--text",
        metavar='"A DOG BARKING"',
        help="Find the files that sound like this text (a checkpoint distilled from a CLIP "
        "teacher; the folder extracted at its embedding layer).",
    ),
    prompt: list[str] = typer.Option(
        [],
        "--prompt",
        metavar='"... {} ..."',
        help="With --text: prompt(s) around the text, {} for it [the text as given].",
    ),
    json_output: bool = _options.json_flag(),
) -> None:
    """The files most like an audio file or an indexed file, by cosine similarity.

    An audio query is extracted with the model recorded in FEATURES/features.json (any other
    model is refused) and pooled as the index was. Scores are cosines in [-1, 1]; an indexed
    file queried by its own key or audio comes first with 1.000.

    Examples:

    * `soundnet search query feats dog.wav`

    * `soundnet search query feats --key dogs/bark-01 -k 5`

    * `soundnet search query feats dog.wav --json | jq -r '.results[].path'`

    * `soundnet search query feats --text "a dog barking" -k 5` (text to audio: see
      docs/clip.md)
    """
    from soundnet_cli.errors import UsageProblem
    from soundnet_cli.search import open_index, query_audio, query_key

    if text is not None:
        if audio is not None or key is not None:
            raise UsageProblem("give --text, an AUDIO_FILE or --key KEY (one of them)")
        _text_query(features, text, k, prompt, checkpoint, json_output)
        return

    if (audio is None) == (key is None):
        raise UsageProblem("give an AUDIO_FILE or --key KEY (one of them)")
    index = open_index(features, layer=layer, pool=pool)
    if key is not None:
        result = query_key(index, key, k)
    else:
        result = query_audio(index, audio, k, checkpoint=checkpoint, device=device)
    if result.stale:
        _common.warn(
            f"{features} has features newer than its index; run `soundnet search index "
            f"{features}` to include them"
        )
    if json_output:
        _common.print_json(result.as_dict())
    else:
        _render(result.as_dict())


def _text_query(
    features: Path,
    text: str,
    k: int,
    prompts: list[str],
    checkpoint: Path | None,
    json_output: bool,
) -> None:
    from soundnet_cli.search.text import query_text
    from soundnet_cli.teachers.text import check_prompts

    result = query_text(
        features, text, k=k, prompts=check_prompts(prompts) or None, checkpoint=checkpoint
    )
    for key, reason in result.failures:
        _common.error(f"{key}: {reason}")
    if json_output:
        _common.print_json(result.as_dict())
    else:
        table = Table(title=Text(f"nearest to the text {text!r}"), title_justify="left")
        for name, justify in (("rank", "right"), ("score", "right"), ("time (s)", "right")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        table.add_column("key")
        table.add_column("path")
        for row in result.as_dict()["results"]:
            time = "" if row["time"] is None else f"{row['time']:.2f}"
            table.add_row(
                str(row["rank"]), f"{row['score']:.3f}", time, Text(row["key"]), Text(row["path"])
            )
        _common.out.print(table)
    if result.failures:
        raise typer.Exit(1)


def _render(result: dict[str, Any]) -> None:
    table = Table(
        title=Text(f"nearest to {result['query']}  ({result['index']}, {result['kind']})"),
        title_justify="left",
    )
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("key")
    table.add_column("path")
    for row in result["results"]:
        table.add_row(str(row["rank"]), f"{row['score']:.3f}", Text(row["key"]), Text(row["path"]))
    _common.out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(search_app, name="search")
