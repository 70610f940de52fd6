"""`soundnet plugins`: what is installed and what each plugin registers."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from soundnet_cli.cli import _common, _options
from soundnet_cli.plugins import get_plugins

STATUS_STYLE = {"loaded": "green", "blocked": "yellow", "failed": "red"}


def plugins_command(
    json_output: bool = _options.json_flag(),
) -> None:
    """List every plugin (builtins too): its distribution, version, status and what it registers.

    Examples:

    * `soundnet plugins`

    * `soundnet plugins --json | jq '.[] | select(.status != "loaded")'`

    * `SOUNDNET_DISABLE_PLUGINS=mfcc soundnet plugins`
    """
    infos = list(get_plugins().infos.values())
    if json_output:
        _common.print_json([i.as_dict() for i in infos])
        return
    table = Table(title="soundnet plugins")
    for column in ("plugin", "distribution", "version", "status", "registers"):
        table.add_column(column)
    for i in infos:
        registers = "; ".join(
            f"{kind}s: {', '.join(names)}" for kind, names in i.registered.items()
        )
        if i.adds_commands:
            registers = f"{registers}; commands" if registers else "commands"
        status = Text(i.status, style=STATUS_STYLE.get(i.status, ""))
        if i.errors:
            status.append(": " + "; ".join(i.errors))
        table.add_row(
            i.name, i.distribution or "-", i.version or "-", status, Text(registers or "-")
        )
    _common.out.print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(_common.handle_errors(plugins_command))
