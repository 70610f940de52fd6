"""soundnet-mfcc: registers the student ``mfcc``, MFCC frames usable wherever a student is.

Importing this module is cheap: torch and torchaudio load when the factory runs.
"""

from __future__ import annotations

from typing import Any

import soundnet_cli
from soundnet_cli.hookspecs import Register

__version__ = "0.1.0"


def build_mfcc(**params: Any) -> Any:
    """The ``mfcc`` student; ``params`` are :class:`soundnet_mfcc.student.MfccStudent`'s."""
    from .student import MfccStudent

    return MfccStudent(**params)


@soundnet_cli.hookimpl
def register_students(register: Register) -> None:
    register(
        "mfcc",
        build_mfcc,
        description="MFCC frames and their per-second statistics (the paper's MFCC baseline)",
    )
