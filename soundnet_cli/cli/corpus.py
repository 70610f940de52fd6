"""`soundnet corpus`: inspect a prepared corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from soundnet_cli.cli import _common, _options

corpus_app = typer.Typer(help="Inspect a prepared corpus.", no_args_is_help=True)


@corpus_app.command("info")
@_common.handle_errors
def info(
    corpus: Path = typer.Argument(..., help="A corpus directory written by `soundnet prepare`."),
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


def register(app: typer.Typer) -> None:
    app.add_typer(corpus_app, name="corpus")
