"""`soundnet devices`: the sound cards `predict mic:NAME` / `--device-input` can record from."""

from __future__ import annotations

import typer
from rich.table import Table

from soundnet_cli.cli import _common


def devices_command(
    json_output: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List the sound cards (through the optional sounddevice package: pip install
    'soundnet-cli[live]'): number, name, input and output channels, default rate.

    Examples:

    * `soundnet devices`

    * `soundnet predict mic:0 --follow --format csv`
    """
    from soundnet_cli.media.live import list_devices

    devices = list_devices()
    if json_output:
        _common.print_json(devices)
        return
    table = Table(title="sound cards (record with: soundnet predict mic:NAME --follow)")
    for column in ("#", "name", "inputs", "outputs", "rate (Hz)"):
        table.add_column(column, justify="right" if column != "name" else "left")
    for d in devices:
        name = f"{d['name']} (default input)" if d["default_input"] else d["name"]
        table.add_row(str(d["index"]), name, str(d["inputs"]), str(d["outputs"]), f"{d['rate']:g}")
    _common.out.print(table)


def register(app: typer.Typer) -> None:
    app.command("devices")(_common.handle_errors(devices_command))
