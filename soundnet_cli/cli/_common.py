"""What every command shares: consoles, the logging handler, the error funnel, JSON output."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from soundnet_cli.errors import SoundnetError, UsageProblem

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class _State:
    debug: bool = os.environ.get("SOUNDNET_DEBUG", "") not in {"", "0"}
    quiet: bool = False  # `soundnet -q`: errors only on stderr


state = _State()

log = logging.getLogger("soundnet_cli.cli")


class RichLineHandler(logging.Handler):
    """The CLI's one logging handler: each record is one line on stderr, styled by level
    (``Error: ...``, ``Warning: ...``, notes dimmed, ``debug: ...`` with ``-v``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.ERROR:
                text = Text.assemble(("Error: ", "bold red"), message)
            elif record.levelno >= logging.WARNING:
                text = Text.assemble(("Warning: ", "yellow"), message)
            elif record.levelno >= logging.INFO:
                text = Text(message, style="dim")
            else:
                text = Text.assemble(
                    ("debug: ", "dim"), (message, "dim"), (f" ({record.name})", "dim")
                )
            err.print(text, soft_wrap=True)
        except Exception:  # a handler never raises into the code that logged
            self.handleError(record)


def configure_logging(verbosity: int) -> None:
    """Send the library's log records (logger ``soundnet_cli``) to stderr through one
    :class:`RichLineHandler`: notes and warnings by default, errors only at ``verbosity < 0``
    (``-q``), debug records too at ``verbosity > 0`` (``-v``). Calling it again replaces the
    handler rather than adding a second one."""
    level = logging.ERROR if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logger = logging.getLogger("soundnet_cli")
    for handler in [h for h in logger.handlers if isinstance(h, RichLineHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(RichLineHandler())
    logger.setLevel(level)
    state.quiet = verbosity < 0
    # Engines the library may start (Ray) log their own notes; shown only with -v.
    for name in ("ray", "ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity > 0 else logging.ERROR)


def error(message: str) -> None:
    """Always shown, whatever the verbosity."""
    err.print(Text.assemble(("Error: ", "bold red"), message), soft_wrap=True)


def warn(message: str) -> None:
    log.warning(message)


def info(message: str) -> None:
    log.info(message)


def print_json(payload: Any) -> None:
    """Plain JSON on stdout (no colour codes), for scripts."""
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def handle_errors(func: F) -> F:
    """Turn library errors into one line on stderr and a meaningful exit code.

    Exit codes: 1 for errors (``Error: ...``), 2 for usage errors (unknown name, bad layer),
    130 when interrupted. ``--debug`` shows the traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except UsageProblem as exc:
            if state.debug:
                raise
            ctx, options = _options_for(exc.parameter)
            option = options[0] if options else None
            raise typer.BadParameter(str(exc), ctx=ctx, param=option) from exc
        except SoundnetError as exc:
            if state.debug:
                raise
            _, options = _options_for(exc.parameter)
            flags = ", ".join(_flag(option) for option in options)
            error(f"{exc} ({flags})" if flags else str(exc))
            raise typer.Exit(1) from exc
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None
        except OSError as exc:  # the machine said no (permissions, full disk): say what and where
            if state.debug:
                raise
            error(os_reason(exc))
            raise typer.Exit(1) from exc
        except Exception as exc:  # a bug: say so briefly, traceback only with --debug
            if state.debug:
                raise
            error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]


def _options_for(parameter: str | tuple[str, ...] | None) -> tuple[Any, list[Any]]:
    """The running command's context and its options for the setting names an error gives
    (:attr:`SoundnetError.parameter`: the command's parameters of those Python names), so the
    message names the flags the user types."""
    if parameter is None:
        return None, []
    names = (parameter,) if isinstance(parameter, str) else parameter
    try:  # typer >= 0.16 vendors click; older releases use click itself
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover
        from click import get_current_context  # type: ignore[no-redef]
    ctx = get_current_context(silent=True)
    if ctx is None:
        return None, []
    by_name = {param.name: param for param in ctx.command.params}
    return ctx, [by_name[name] for name in names if name in by_name]


def _flag(option: Any) -> str:
    """``--names FILE``: an option's long flag, with its metavar where it has one."""
    flags = [o for o in option.opts if o.startswith("--")] or list(option.opts)
    metavar = option.metavar if not getattr(option, "is_flag", False) else None
    return f"{flags[0]} {metavar}" if metavar else flags[0]


def torch_command(func: F) -> F:
    """:func:`handle_errors` for a command that runs torch: torch is imported first, with
    the cyclic garbage collector kept off its objects (``runtime.import_torch``; `soundnet
    extract one.flac` starts about 1 s sooner)."""
    handled = handle_errors(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from soundnet_cli.runtime import import_torch

        import_torch()
        return handled(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def os_reason(exc: OSError) -> str:
    """``path: Permission denied`` from an OSError, for one line on stderr."""
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {what}" if exc.filename else what
