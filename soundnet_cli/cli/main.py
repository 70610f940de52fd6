"""The `soundnet` app: global options, builtin commands, plugin commands, and the entry point."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from typing import Any

import typer

from soundnet_cli._version import __version__
from soundnet_cli.cli import _common, evaluate, extract, plugins, predict, probe, weights
from soundnet_cli.cli import corpus as corpus_cmd
from soundnet_cli.cli import devices as devices_cmd
from soundnet_cli.cli import distill as distill_cmd
from soundnet_cli.cli import export as export_cmd
from soundnet_cli.cli import finetune as finetune_cmd
from soundnet_cli.cli import prepare as prepare_cmd
from soundnet_cli.cli import search as search_cmd
from soundnet_cli.cli import visualize as visualize_cmd
from soundnet_cli.plugins import disable, get_plugins

HELP = """SoundNet: sound representations learned from unlabeled video.

Examples:

* `soundnet predict clip.wav` (top objects and scenes in the sound)

* `soundnet weights fetch` (the authors' pretrained SoundNet-8)

* `soundnet plugins --json` (what is installed and what it registers)

* `soundnet -q extract ./audio --out feats` (errors only on stderr; `-v` adds debug lines)
"""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"soundnet-cli {__version__}")
        raise typer.Exit()


def _flags_show_no_type() -> None:
    """Typer's help shows a type for every option, ``--debug <bool>`` for a flag too, though
    a flag takes no value: show nothing there, for every command (plugins' too)."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "flags_show_no_type", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag and not self.count:
            return None
        return shown(self, ctx)

    display_type_rich.flags_show_no_type = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def _usage_errors_on_one_line() -> None:
    """Typer draws a usage error in a box over several lines (the message wrapped inside it),
    which a script cannot grep and a log splits: print ``Error: <message> (see 'soundnet CMD
    -h')`` on one line instead, like every other error. Exit code 2 is unchanged."""
    from typer import rich_utils

    if getattr(rich_utils.rich_format_error, "one_line", False):
        return

    def one_line(exc: Any) -> None:
        if type(exc).__name__ == "NoArgsIsHelpError":  # help was shown instead
            return
        ctx = getattr(exc, "ctx", None)
        hint = ""
        if ctx is not None and ctx.command.get_help_option(ctx) is not None:
            hint = f" (see '{ctx.command_path} {ctx.help_option_names[0]}')"
        _common.error(" ".join(exc.format_message().split()) + hint)

    one_line.one_line = True  # type: ignore[attr-defined]
    rich_utils.rich_format_error = one_line  # type: ignore[assignment]


def build_app() -> typer.Typer:
    _flags_show_no_type()
    _usage_errors_on_one_line()
    app = typer.Typer(
        name="soundnet",
        help=HELP,
        no_args_is_help=True,
        rich_markup_mode="markdown",
        context_settings={"help_option_names": ["-h", "--help"]},
        pretty_exceptions_show_locals=False,
    )

    @app.callback()
    def root(
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
        verbose: bool = typer.Option(
            False, "--verbose", "-v", help="Also show debug messages on stderr."
        ),
        quiet: bool = typer.Option(
            False, "--quiet", "-q", help="Only errors on stderr: no notes, warnings or progress."
        ),
        disable_plugin: list[str] = typer.Option(
            [],
            "--disable-plugin",
            metavar="NAME",
            help="Block a plugin by name (repeatable); also SOUNDNET_DISABLE_PLUGINS=a,b.",
        ),
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ) -> None:
        if verbose and quiet:
            raise typer.BadParameter("--verbose and --quiet contradict each other: give one")
        _common.configure_logging(1 if verbose else -1 if quiet else 0)
        _common.state.debug = debug or _common.state.debug
        if disable_plugin:
            disable(disable_plugin)
        for failed in get_plugins().failures():
            _common.warn(
                f"plugin {failed.name!r} skipped: {'; '.join(failed.errors)} (disable it with "
                f"--disable-plugin {failed.name} or SOUNDNET_DISABLE_PLUGINS={failed.name})"
            )

    predict.register(app)
    extract.register(app)
    export_cmd.register(app)
    weights.register(app)
    plugins.register(app)
    devices_cmd.register(app)
    probe.register(app)
    evaluate.register(app)
    prepare_cmd.register(app)
    corpus_cmd.register(app)
    distill_cmd.register(app)
    finetune_cmd.register(app)
    visualize_cmd.register(app)
    search_cmd.register(app)
    get_plugins().add_commands(app)
    return app


def _disabled_in(argv: list[str]) -> list[str]:
    """--disable-plugin values, read before the app is built so that blocked plugins add no
    commands."""
    names = []
    for i, arg in enumerate(argv):
        if arg == "--disable-plugin" and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif arg.startswith("--disable-plugin="):
            names.append(arg.split("=", 1)[1])
    return names


INTERRUPTED = 130


def main() -> None:
    disable(_disabled_in(sys.argv[1:]))
    try:
        build_app()(prog_name="soundnet")
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            exit_after_interrupt()
        raise


def exit_after_interrupt() -> None:
    """Exit 130 without native teardown. The command has already flushed its outputs; after a
    Ctrl-C that landed mid-computation, a native library's static destructors can abort the
    process at exit ("terminate called without an active exception", exit -6; seen about one
    time in five under load), which would hide the exit code scripts rely on."""
    atexit._run_exitfuncs()  # temporary folders, thread pools: what a normal exit runs
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(INTERRUPTED)
