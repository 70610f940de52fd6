"""Errors a user can act on. The CLI prints their message on one line, without a traceback."""

from __future__ import annotations

from typing import Literal


class SoundnetError(Exception):
    """Base class: the message says what went wrong and what to do about it, in the library's
    terms. ``parameter`` optionally names the setting at fault as the library function calls it
    (``"pool"``, ``"fmt"``), or the settings that would fix it (``("teacher_weights",
    "random_init")``), so that a front end can name its own options for them: the CLI says
    ``Invalid value for '--pool': ...`` for a usage problem, and adds ``(--names FILE)`` to
    other errors.
    """

    def __init__(self, *args: object, parameter: str | tuple[str, ...] | None = None) -> None:
        super().__init__(*args)
        self.parameter = parameter


class UsageProblem(SoundnetError):
    """A bad value given by the user (unknown name, bad layer); the CLI exits with code 2."""


class UnknownNameError(UsageProblem):
    """A name that no plugin registered."""

    def __init__(self, kind: str, name: str, known: list[str], close: list[str]) -> None:
        self.kind, self.name, self.known, self.close = kind, name, known, close
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if known else "none registered"
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kind}s: {listing}.")


class DuplicateNameError(SoundnetError):
    """Two plugins registered the same name."""


class LayerError(UsageProblem):
    """A feature layer the model does not have."""


class AudioError(SoundnetError):
    """An audio file that cannot be used (unreadable, empty, non-finite, too short)."""


class WeightsError(SoundnetError):
    """Missing, corrupt or untrusted model weights."""


class CheckpointError(SoundnetError):
    """A checkpoint file that cannot be read or does not fit the model."""


class VideoError(SoundnetError):
    """A video file that cannot be used (no audio or video stream, corrupt, too short)."""


def reason(exc: BaseException, line: Literal["first", "last"] = "last") -> str:
    """One line saying why ``exc`` happened, for messages like ``"x.wav: cannot read audio
    (<reason>)"``: the last line of its message by default (decoders such as libsndfile and
    FFmpeg put the cause last), the first with ``line="first"`` (torch's exporters put it
    first), a network error's ``reason``, or the exception's type when it says nothing."""
    text = str(getattr(exc, "reason", None) or exc).strip()
    if not text:
        return type(exc).__name__
    lines = text.splitlines()
    return lines[-1] if line == "last" else lines[0]
