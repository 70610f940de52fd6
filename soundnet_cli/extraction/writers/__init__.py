"""Output formats of a features folder: one module per format, registered here by name.

A format is a :class:`~soundnet_cli.extraction.writers.base.Writer`. To add one, write a module
beside ``npy.py`` with a ``Writer`` subclass and add its ``"name": "module:Class"`` entry to
:data:`WRITERS`; the features folder (``extraction/folder.py``) does the rest (names, resume,
mirroring, ``features.json``, reading). Modules are imported only when their format is used.
"""

from __future__ import annotations

import importlib

from soundnet_cli.errors import UsageProblem
from soundnet_cli.extraction.writers.base import Writer

WRITERS: dict[str, str] = {
    "npy": "soundnet_cli.extraction.writers.npy:NpyWriter",
    "npz": "soundnet_cli.extraction.writers.npz:NpzWriter",
}
FORMATS = tuple(WRITERS)

_made: dict[str, Writer] = {}


def writer_for(fmt: str) -> Writer:
    """The writer of format ``fmt``; a usage error naming the formats when there is none."""
    if fmt not in WRITERS:
        raise UsageProblem(f"format must be one of {', '.join(WRITERS)}, not {fmt!r}")
    if fmt not in _made:
        module, _, name = WRITERS[fmt].partition(":")
        _made[fmt] = getattr(importlib.import_module(module), name)()
    return _made[fmt]


def writer_of_file(name: str) -> Writer | None:
    """The writer whose files end like ``name`` (``x.pool5.npy`` -> npy), or None."""
    for fmt in WRITERS:
        writer = writer_for(fmt)
        if name.endswith(writer.suffix):
            return writer
    return None


__all__ = ["FORMATS", "WRITERS", "Writer", "writer_for", "writer_of_file"]
