"""Inputs of `soundnet extract`: files under folders and URLs, their output stems, lists of
inputs (``--files-from``) and shares (torchrun ranks, ``--shard I/N``)."""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

from soundnet_cli.errors import UsageProblem
from soundnet_cli.media.files import MEDIA_EXTENSIONS, FoundFile, gc_paused, walk
from soundnet_cli.media.urls import check_url, expand, is_url, local_path, scheme_of, url_path


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
    def url(self) -> bool:
        """Whether the input is a URL (fetched, not opened)."""
        return is_url(self.file)

    @property
    def display(self) -> str:
        """The input as reported and recorded: the URL as given, or the path."""
        return self.file if self.url else str(self.path)

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
    texts = [os.fspath(p) for p in paths]
    for text in texts:
        if is_url(text):
            check_url(text)  # an unknown scheme: a usage error before any work
    local = [local_path(t) if scheme_of(t) == "file" else t for t in texts if not _remote(t)]
    remote = [t for t in texts if _remote(t)]
    found = walk(local, extensions=exts, globs=globs) if local else []
    with gc_paused():
        sources = _sources(found) if found else []
    if remote:
        sources.extend(_url_sources(remote, exts))
        sources.sort(key=lambda s: s.key)
    return sources


def _remote(text: str) -> bool:
    return is_url(text) and scheme_of(text) != "file"


def _url_sources(urls: Sequence[str], extensions: Sequence[str]) -> list[Source]:
    """URL inputs (folders of an object store expanded), keyed by their paths relative to the
    common folder of those paths, with the same stem rules as local files."""
    found = list(dict.fromkeys(u for url in urls for u in expand(url, extensions)))
    if not found:
        return []
    paths = {url: url_path(url) for url in found}
    folders = [posixpath.dirname(p) for p in paths.values()]
    common = posixpath.commonpath(folders) if all(folders) else ""
    routes = {url: posixpath.relpath(p, common) if common else p for url, p in paths.items()}
    stems = output_stems(list(dict.fromkeys(routes.values())))
    return [Source(url, stems[route]) for url, route in routes.items()]


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


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N): slice I (from 0) of N; a usage error unless 0 <= I < N."""
    index, slash, count = text.partition("/")
    try:
        if not slash:
            raise ValueError
        i, n = int(index), int(count)
    except ValueError:
        raise UsageProblem(f"shard must be I/N (slice I of N, from 0), not {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UsageProblem(f"shard {text}: I must be in 0..N-1 (slice I of N, from 0)")
    return i, n


def read_file_list(text: str, stdin: TextIO | None = None) -> list[str]:
    """The inputs listed in the file ``text`` (``-``: standard input): one path or URL a line;
    blank lines and lines starting with ``#`` are ignored."""
    import sys

    try:
        if text == "-":
            content = (stdin or sys.stdin).read()
        else:
            content = Path(text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageProblem(f"cannot read the list of inputs {text}: {exc}") from None
    return [
        line.strip()
        for line in content.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
