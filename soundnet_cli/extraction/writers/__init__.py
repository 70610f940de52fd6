"""Output formats of a features folder: one module per format, registered here by name.

A format is a :class:`~soundnet_cli.extraction.writers.base.Writer`. To add one, write a module
beside ``npy.py`` (a file per input) or ``parquet.py`` (a table) with a ``Writer`` subclass and
add its ``"name": "module:Class"`` entry to :data:`WRITERS`; the features folder
(``extraction/folder.py``) does the rest (names, resume, mirroring, ``features.json``,
reading). Modules are imported only when their format is used.
"""

from __future__ import annotations

import importlib

from soundnet_cli.errors import UsageProblem
from soundnet_cli.extraction.writers.base import Writer

WRITERS: dict[str, str] = {
    "npy": "soundnet_cli.extraction.writers.npy:NpyWriter",
    "npz": "soundnet_cli.extraction.writers.npz:NpzWriter",
    "parquet": "soundnet_cli.extraction.writers.parquet:ParquetWriter",
}
FORMATS = tuple(WRITERS)
DTYPES = ("float32", "float16")  # of stored vectors: float16 in table formats only

_made: dict[str, Writer] = {}


def new_writer(fmt: str) -> Writer:
    """A writer of format ``fmt`` of its own (a table format buffers inputs: one per run);
    a usage error naming the formats when there is none."""
    if fmt not in WRITERS:
        raise UsageProblem(f"format must be one of {', '.join(WRITERS)}, not {fmt!r}")
    module, _, name = WRITERS[fmt].partition(":")
    writer: Writer = getattr(importlib.import_module(module), name)()
    return writer


def writer_for(fmt: str) -> Writer:
    """The shared writer of format ``fmt``, for reading; see :func:`new_writer`."""
    if fmt not in _made:
        _made[fmt] = new_writer(fmt)
    return _made[fmt]


def writer_of_file(name: str) -> Writer | None:
    """The writer whose files end like ``name`` (``x.pool5.npy`` -> npy), or None."""
    for fmt in WRITERS:
        writer = writer_for(fmt)
        if name.endswith(writer.suffix):
            return writer
    return None


__all__ = ["DTYPES", "FORMATS", "WRITERS", "Writer", "new_writer", "writer_for", "writer_of_file"]
