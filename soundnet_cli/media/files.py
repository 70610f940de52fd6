"""Finding media files: one walker for audio and video, used by every command.

The walker expands the paths a user gives (files and folders, recursively) into every route to
every matching file. Each route carries the file's real path, so callers that compute once per
file can group the routes; a tree of file links (train/test splits) is listed path by path.

Directory symlinks are followed once each: a link into a folder the walk is already inside (a
loop) is never followed, and a second link to a real folder that the walk already entered
through a link is not followed again (logged once per given folder). Without that rule, 15
levels of folders each holding two links to the next would list 2^14 = 16,384 routes to one
file (30 levels: about 10^9). A folder reached both as itself and through one link is listed
under both routes (a linked folder is mirrored). The cost is one directory scan per folder
visited and one ``realpath`` per symlink.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import logging
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from soundnet_cli.errors import UsageProblem

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".w64")
VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".flv",
    ".mpg",
    ".mpeg",
    ".ogv",
    ".3gp",
    ".ts",
    ".wmv",
)
# What commands read by default: audio files, and videos by their first audio stream.
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read as a video (by its extension, as the file walker chooses)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class FoundFile(NamedTuple):
    """One route to one file.

    ``root`` is the folder the user gave (or a named file's parent) as given, made absolute but
    not resolved; ``rel`` is the route below it (posix); ``identity`` is the file's real path,
    the same for every route to one file.
    """

    root: str
    rel: str
    identity: str
    explicit: bool

    @property
    def file(self) -> str:
        """The file as the user reaches it (relative when the given path was)."""
        return self.rel if self.root == "." else f"{self.root.rstrip(os.sep)}{os.sep}{self.rel}"

    @property
    def path(self) -> Path:
        return Path(self.file)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a million small objects are built: each of its
    full collections would scan them all again (a third of the time at a million paths)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    """``["WAV", ".flac"]`` -> ``(".wav", ".flac")``."""
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def walk(
    paths: Sequence[str | os.PathLike[str]],
    *,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    globs: Sequence[str] | None = None,
    missing: Literal["error", "keep"] = "error",
) -> list[FoundFile]:
    """Every route to a matching file under ``paths``, each root's files sorted by route.

    In folders a file is kept when its extension (any case) is one of ``extensions`` and, if
    ``globs`` are given, its route below the folder or its name matches one (case-sensitive).
    ``extensions=()`` with ``globs`` keeps any extension. Files named explicitly are always
    kept, so that a bad one is reported; a path that does not exist raises
    :class:`UsageProblem`, or with ``missing="keep"`` is kept for the caller to report.
    """
    exts = frozenset(normalise_extensions(extensions))
    patterns = [re.compile(fnmatch.translate(g)) for g in globs or ()]
    found: list[FoundFile] = []
    with gc_paused():
        for given in paths:
            _add_routes(found, os.fspath(given), exts, patterns, missing)
    return found


def _add_routes(
    found: list[FoundFile],
    name: str,
    exts: frozenset[str],
    patterns: list[re.Pattern[str]],
    missing: str,
) -> None:
    """Append the routes under ``name`` (a folder, sorted; or a file) to ``found``."""
    if os.path.isdir(name):
        files = _scan(os.path.abspath(name), exts, patterns)
        files.sort(key=lambda f: f[0])
        found.extend(FoundFile(name, rel, real, False) for rel, real in files)
    elif os.path.lexists(name) or missing == "keep":
        parent, base = os.path.split(name)
        found.append(FoundFile(parent or ".", base, os.path.realpath(name), True))
    else:
        raise UsageProblem(f"{name}: no such file or folder")


def _scan(
    root: str, exts: frozenset[str], patterns: list[re.Pattern[str]]
) -> list[tuple[str, str]]:
    """(route below ``root``, real path) of every matching file; symlink loops are cut and each
    real folder is entered through a link once (see the module doc)."""
    real_root = os.path.realpath(root)
    out: list[tuple[str, str]] = []
    linked: set[str] = set()  # real folders already entered through a link
    skipped = 0
    # (folder on disk, its route below root, its real path, the real paths of the folders
    # the walk is inside, this one included)
    stack: list[tuple[str, str, str, frozenset[str]]] = [
        (root, "", real_root, frozenset([real_root]))
    ]
    while stack:
        folder, rel, real, inside = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # unreadable folder: nothing under it can be listed
            continue
        below: list[tuple[str, str, str, frozenset[str]]] = []
        for entry in entries:
            route = f"{rel}{entry.name}"
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if target in inside:  # a link back up: following it never ends
                        continue
                    if target in linked:  # another link to a folder listed through one
                        skipped += 1
                        continue
                    linked.add(target)
                else:
                    target = f"{real}{os.sep}{entry.name}"
                below.append((entry.path, f"{route}/", target, inside | {target}))
                continue
            if exts and posixpath.splitext(entry.name)[1].lower() not in exts:
                continue
            if patterns and not any(p.match(route) or p.match(entry.name) for p in patterns):
                continue
            identity = (
                os.path.realpath(entry.path)
                if entry.is_symlink()
                else f"{real}{os.sep}{entry.name}"
            )
            out.append((route, identity))
        stack.extend(reversed(below))  # depth first, in name order: the same routes every run
    if skipped:
        log.info(
            "%s: %d more link%s to folders already listed through a link %s not followed "
            "(each linked folder is listed once)",
            root,
            skipped,
            "" if skipped == 1 else "s",
            "was" if skipped == 1 else "were",
        )
    return out


def find_files(paths: Sequence[str | os.PathLike[str]], extensions: Sequence[str]) -> list[Path]:
    """Files under ``paths`` with one of ``extensions`` (folders recursively, each sorted);
    files named explicitly are kept whatever their extension, and missing ones too, so that
    the caller reports them as it reports any bad file."""
    return [f.path for f in walk(paths, extensions=extensions, missing="keep")]


def find_audio(
    paths: Sequence[str | os.PathLike[str]], extensions: Sequence[str] = AUDIO_EXTENSIONS
) -> list[Path]:
    """Audio files under ``paths``; see :func:`find_files`."""
    return find_files(paths, extensions)


def find_media(
    paths: Sequence[str | os.PathLike[str]], extensions: Sequence[str] = MEDIA_EXTENSIONS
) -> list[Path]:
    """Audio and video files under ``paths`` (videos are read by their soundtrack); see
    :func:`find_files`."""
    return find_files(paths, extensions)


def find_videos(
    paths: Sequence[str | os.PathLike[str]], extensions: Sequence[str] = VIDEO_EXTENSIONS
) -> list[Path]:
    """Video files under ``paths``; see :func:`find_files`."""
    return find_files(paths, extensions)
