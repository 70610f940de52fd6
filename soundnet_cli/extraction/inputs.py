"""Inputs of `soundnet extract`: files under folders, their output stems, and rank shares."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from soundnet_cli.errors import UsageProblem
from soundnet_cli.media.audio import AUDIO_EXTENSIONS


@dataclass(frozen=True)
class Source:
    """One input file and the output stem it maps to (posix, relative to OUT)."""

    path: Path
    key: str


def _normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _walk(root: Path) -> Iterator[Path]:
    """Every file under ``root``, sorted, following directory symlinks but never twice."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop or a second link to one folder
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def discover(
    paths: Sequence[str | os.PathLike[str]],
    *,
    extensions: Sequence[str] | None = None,
    globs: Sequence[str] | None = None,
) -> list[Source]:
    """Expand files and folders (recursively) into inputs with collision-free output stems.

    In folders a file is kept when its extension is one of ``extensions`` (default: the audio
    extensions) and, if ``globs`` are given, its path relative to the folder or its name matches
    one. Files named explicitly are always kept, so that a bad one is reported.
    """
    exts = _normalise_extensions(extensions) if extensions else AUDIO_EXTENSIONS
    candidates: list[tuple[Path, Path]] = []  # (file, the folder given that holds it)
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for file in _walk(path):
                rel = file.relative_to(path).as_posix()
                if (extensions is not None or not globs) and file.suffix.lower() not in exts:
                    continue
                if globs and not any(
                    fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(file.name, g) for g in globs
                ):
                    continue
                candidates.append((file, path))
        elif path.exists() or path.is_symlink():
            candidates.append((path, path.parent))
        else:
            raise UsageProblem(f"{path}: no such file or folder")
    # One file reached by several routes (links) is read once, by its shortest route.
    found: dict[str, tuple[Path, Path]] = {}
    for file, base in sorted(candidates, key=lambda c: (len(c[0].parts), str(c[0]))):
        found.setdefault(os.path.realpath(file), (file, base))
    if not found:
        return []
    bases = [os.path.abspath(base) for _, base in found.values()]
    common = Path(os.path.commonpath(bases))
    rels = {
        real: Path(os.path.relpath(os.path.abspath(file), common)).as_posix()
        for real, (file, _) in found.items()
    }
    stems = [str(Path(r).with_suffix("")) if Path(r).suffix else r for r in rels.values()]
    clash = {s for s in stems if stems.count(s) > 1}
    sources = []
    for (real, (path, _)), stem in zip(found.items(), stems, strict=True):
        sources.append(Source(path, rels[real] if stem in clash else stem))
    return sorted(sources, key=lambda s: s.key)


def shard(sources: Sequence[Source], rank: int, world_size: int) -> list[Source]:
    """This rank's share: every ``world_size``-th input, starting at ``rank``."""
    return list(sources[rank::world_size])


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise UsageProblem(f"RANK and WORLD_SIZE must be integers ({exc})") from exc
    if world < 1 or not 0 <= rank < world:
        raise UsageProblem(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world


# -- decoding ----------------------------------------------------------------------------------
