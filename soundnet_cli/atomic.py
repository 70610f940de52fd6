"""Atomic file writes: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def _open_temporary(target: str) -> tuple[str, int]:
    """A new empty file beside ``target`` (its folder made when missing), open for writing:
    its path and descriptor. Created with mode 0666, so the kernel applies the umask as it is
    now (reading the umask otherwise costs a read of /proc/self/status, about 1 ms in a busy
    process, on every write)."""
    folder, name = os.path.split(target)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
        try:
            return tmp, os.open(tmp, _FLAGS, 0o666)
        except FileExistsError:
            continue
        except FileNotFoundError:
            os.makedirs(folder or ".", exist_ok=True)
    raise FileExistsError(f"no free temporary name beside {target}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` in one rename.

    An exception or interruption leaves ``target`` untouched and removes the temporary file.
    """
    name, fd = _open_temporary(os.fspath(target))
    try:  # at once: a Ctrl-C before this point would leave the temporary file behind
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        yield Path(name)
        # Some writers (safetensors) replace the file with a private one: give the result the
        # mode a new file gets.
        if stat.S_IMODE(os.stat(name).st_mode) != mode:
            os.chmod(name, mode)
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """:func:`atomic_path` for a writer that takes a binary file object, made for many small
    files: one open and the mode any new file gets (no writer here can change it). 1,600 small
    .npy files on ext4: 0.2-0.35 ms each, against 0.5-0.6 ms with ``atomic_path`` and a second
    ``open``.
    """
    tmp, fd = _open_temporary(os.fspath(target))
    try:
        with open(fd, "wb") as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
