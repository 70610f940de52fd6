"""Inputs of `soundnet extract`: files under folders, their output stems, and rank shares."""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from soundnet_cli.media.files import MEDIA_EXTENSIONS, FoundFile, gc_paused, walk


class Source(NamedTuple):
    """One input file and the output stem it maps to (posix, relative to OUT).

    ``aliases`` are the other routes the user gave to the same file (symlinks): it is computed
    once, and each alias gets its own outputs under its own stem.
    """

    file: str
    key: str
    aliases: tuple[Source, ...] = ()

    @property
    def path(self) -> Path:
        return Path(self.file)

    @property
    def routes(self) -> tuple[Source, ...]:
        """This source and its aliases, each with its own path and output stem."""
        return (Source(self.file, self.key), *self.aliases)


def discover(
    paths: Sequence[str | os.PathLike[str]],
    *,
    extensions: Sequence[str] | None = None,
    globs: Sequence[str] | None = None,
) -> list[Source]:
    """Expand files and folders (recursively) into inputs with collision-free output stems.

    In folders a file is kept when its extension is one of ``extensions`` (default: the audio
    and video extensions) and, if ``globs`` are given, its path relative to the folder or its
    name matches one. Files named explicitly are always kept, so that a bad one is reported.

    Every route is kept: routes to one file (symlinks) become one :class:`Source` (the shortest
    route) with the others as ``aliases``. Stems follow :func:`output_stems`.
    """
    if extensions is not None:
        exts: Sequence[str] = extensions
    else:
        exts = () if globs else MEDIA_EXTENSIONS
    found = walk(paths, extensions=exts, globs=globs)
    if not found:
        return []
    with gc_paused():
        return _sources(found)


def _sources(found: list[FoundFile]) -> list[Source]:
    # Routes relative to the common folder of the roots (the mirror's top).
    roots = {root: os.path.abspath(root) for root in {f.root for f in found}}
    common = os.path.commonpath(list(roots.values()))
    prefixes = {
        root: ("" if rel == "." else rel + "/")
        for root, absolute in roots.items()
        for rel in [Path(os.path.relpath(absolute, common)).as_posix()]
    }
    routes: dict[str, FoundFile] = {}  # a route given twice (a file and its folder) counts once
    for f in found:
        routes.setdefault(prefixes[f.root] + f.rel, f)
    stems = output_stems(list(routes))
    first: dict[str, Source] = {}  # identity -> its first route; most files have only one
    more: dict[str, list[Source]] = {}
    for route, f in routes.items():
        source = Source(f.file, stems[route])
        if first.setdefault(f.identity, source) is not source:
            more.setdefault(f.identity, []).append(source)
    for identity, others in more.items():
        group = sorted([first[identity], *others], key=lambda s: (s.key.count("/"), s.key))
        first[identity] = Source(group[0].file, group[0].key, tuple(group[1:]))  # shortest route
    sources = list(first.values())
    sources.sort(key=lambda s: s.key)
    return sources


def output_stems(routes: Sequence[str]) -> dict[str, str]:
    """Route -> output stem: the route without its extension, unless another route has the
    same stem or is named like that stem (``a.wav`` next to ``a.wav.flac``); then the route
    keeps its extension. Distinct routes always get distinct stems."""
    given = set(routes)
    stripped = {route: posixpath.splitext(route)[0] for route in routes}
    counts = Counter(stripped.values())
    return {
        route: route if counts[stem] > 1 or (stem != route and stem in given) else stem
        for route, stem in stripped.items()
    }


def shard(sources: Sequence[Source], rank: int, world_size: int) -> list[Source]:
    """This rank's share: every ``world_size``-th input, starting at ``rank``."""
    return list(sources[rank::world_size])
