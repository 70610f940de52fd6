"""`soundnet corpus`: inspect a prepared corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from soundnet_cli.cli import _common, _options

corpus_app = typer.Typer(
    help="Inspect, verify and convert a prepared corpus.", no_args_is_help=True
)


@corpus_app.command("info")
@_common.handle_errors
def info(
    corpus: Path = typer.Argument(
        ..., help="A corpus folder (shard directories or tar shards) from `soundnet prepare`."
    ),
    top: int = typer.Option(5, "--top", "-k", min=1, help="Most frequent categories per head."),
    failures: bool = typer.Option(False, "--failures", help="List the bad videos and reasons."),
    json_output: bool = _options.json_flag(),
) -> None:
    """Videos, hours, teachers and the most frequent teacher categories of a corpus.

    The categories are counted over frames: for each head, how often each category is the
    teacher's top-1 (argmax).

    Examples:

    * `soundnet corpus info corpus/`

    * `soundnet corpus info corpus/ --top 10 --failures`

    * `soundnet corpus info corpus/ --json | jq .hours`
    """
    from soundnet_cli.corpus.format import Corpus

    data = Corpus(corpus)
    summary = data.summary(top)
    summary["failures"] = list(data.failures.values()) if failures or json_output else []
    if json_output:
        _common.print_json(summary)
        return
    _render(summary)


def _render(summary: dict[str, Any]) -> None:
    out = _common.out
    out.print(
        f"{summary['path']}: {summary['videos']} videos, {summary['clips']} clips, "
        f"{summary['hours']:.3f} h, {summary['failed']} failed; {summary['shards']} shards from "
        f"{summary['ranks']} rank(s)"
    )
    out.print(
        f"clips of {summary['clip_seconds']:g} s, one frame every {summary['frame_interval']:g} s "
        f"(at the {summary['frame_at']}), {summary['sample_rate']} Hz; teachers: "
        f"{', '.join(summary['teachers'])}"
    )
    for head in summary["heads"]:
        if head.get("kind") == "embedding":
            out.print(
                f"{head['name']}: embedding head of size {head['size']} ({head['teacher']}), "
                f"{head['frames']} frames",
                soft_wrap=True,
            )
            continue
        table = Table(
            title=f"{head['name']} ({head['categories']} categories)", title_justify="left"
        )
        table.add_column("category")
        table.add_column("frames", justify="right")
        table.add_column("share", justify="right")
        for row in head["top"]:
            table.add_row(row["category"], str(row["frames"]), f"{row['fraction']:.1%}")
        out.print(table)
    for failure in summary["failures"]:
        out.print(f"failed: {failure['reason']}", soft_wrap=True)


@corpus_app.command("verify")
@_common.handle_errors
def verify(
    corpus: Path = typer.Argument(..., help="A corpus folder (shard directories or tar shards)."),
) -> None:
    """Read every clip of every shard whole and check it; exit 1 on any problem.

    Tar shards are read member by member and compared with their index (names, corpus id,
    shapes); posteriors must be finite numbers.

    Examples:

    * `soundnet corpus verify corpus/`
    """
    from soundnet_cli.corpus.format import Corpus
    from soundnet_cli.corpus.shards import verify as verify_corpus

    data = Corpus(corpus)
    problems = verify_corpus(data)
    for problem in problems:
        _common.error(problem)
    if problems:
        raise typer.Exit(1)
    _common.out.print(
        f"{corpus}: {len(data)} clips in {len(data.shards)} shards, all readable", soft_wrap=True
    )


@corpus_app.command("convert")
@_common.handle_errors
def convert(
    source: Path = typer.Argument(..., help="The corpus folder to convert."),
    target: Path = typer.Argument(..., help="The new corpus folder."),
    to: str = typer.Option(..., "--to", help="shards (tar, WebDataset) or dirs (memory maps)."),
) -> None:
    """Rewrite a corpus as tar shards (to stream from a web server or object storage) or as
    shard directories, without loss: converting back gives the same files byte for byte.

    Shards already in TARGET are kept, so an interrupted conversion resumes.

    Examples:

    * `soundnet corpus convert corpus/ corpus-tar/ --to shards`

    * `soundnet corpus convert corpus-tar/ corpus/ --to dirs`
    """
    from soundnet_cli.corpus.shards import convert as convert_corpus

    if to not in ("shards", "dirs"):
        raise typer.BadParameter(f"must be shards or dirs, not {to!r}", param_hint="--to")
    result = convert_corpus(source, target, to)
    _common.out.print(
        f"{target}: {result.shards} shards written ({result.clips} clips), "
        f"{result.skipped} already there",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(corpus_app, name="corpus")
