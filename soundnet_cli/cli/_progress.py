"""Progress bars on stderr; silent when stderr is not a terminal, output is JSON, or with
`soundnet -q`.

Every command's bar comes from here: :func:`file_progress` for work counted in items (files,
videos, steps), with an optional ``status`` field for rates and losses, and
:func:`download_progress` for bytes."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from soundnet_cli.cli import _common


class _Status(ProgressColumn):
    """A task's ``status`` field (speed, loss ...), empty when the task has none."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("status", "")))


def file_progress(enabled: bool = True) -> Progress:
    """Items done of a total (files, videos, steps); ``bar.update(task, status=...)`` adds a
    free text such as a rate."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Status(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_common.err,
        transient=True,
        disable=not (enabled and _common.err.is_terminal) or _common.state.quiet,
    )


def download_progress(enabled: bool = True) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_common.err,
        transient=True,
        disable=not (enabled and _common.err.is_terminal) or _common.state.quiet,
    )
