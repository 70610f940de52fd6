"""The names of the first layout, kept for code that imports them from here.

The features folder has one owner, :mod:`soundnet_cli.extraction.folder` (names, settings,
resume, reading); its manifest is :mod:`soundnet_cli.extraction.manifest` and its formats are
:mod:`soundnet_cli.extraction.writers`. New code imports from those.
"""

from __future__ import annotations

from collections.abc import Sequence

from soundnet_cli.extraction.folder import (
    SETUP,
    FeatureFile,
    list_feature_files,
    output_stem,
    read_feature_file,
)
from soundnet_cli.extraction.manifest import JOURNAL, LOCK, MANIFEST, FeatureManifest
from soundnet_cli.extraction.writers import writer_for


def output_names(key: str, layers: Sequence[str], fmt: str) -> list[str]:
    """The outputs of the input ``key`` in a folder of format ``fmt`` holding ``layers``."""
    writer = writer_for(fmt)
    suffix = max(len(n.encode()) for n in writer.names("", layers))
    return writer.names(output_stem(key, suffix), layers)


__all__ = [
    "JOURNAL",
    "LOCK",
    "MANIFEST",
    "SETUP",
    "FeatureFile",
    "FeatureManifest",
    "list_feature_files",
    "output_names",
    "read_feature_file",
]
