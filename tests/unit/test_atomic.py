"""Atomic writes: a target is replaced whole or left untouched, never half-written."""

import os

import pytest

from soundnet_cli.atomic import atomic_file, atomic_path


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.mark.parametrize("kind", ["path", "file"])
def test_a_write_replaces_the_target_in_one_rename(tmp_path, kind):
    target = tmp_path / "deep" / "er" / "x.npy"  # folders made when missing
    for content in (b"first", b"second"):
        if kind == "path":
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                handle.write(content)
        else:
            with atomic_file(target) as handle:
                handle.write(content)
        assert target.read_bytes() == content
    assert leftovers(target.parent) == []


@pytest.mark.parametrize("kind", ["path", "file"])
def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path, kind):
    target = tmp_path / "x.npy"
    target.write_bytes(b"finished")
    with pytest.raises(RuntimeError):
        if kind == "path":
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                handle.write(b"half")
                raise RuntimeError("disk gone")
        else:
            with atomic_file(target) as handle:
                handle.write(b"half")
                raise RuntimeError("disk gone")
    assert target.read_bytes() == b"finished"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["path", "file"])
def test_new_files_get_the_mode_the_umask_gives(tmp_path, kind):
    previous = os.umask(0o027)
    try:
        target = tmp_path / "x.npy"
        if kind == "path":
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"x")
        else:
            with atomic_file(target) as handle:
                handle.write(b"x")
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_temporary_never_follows_a_planted_link(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    names = iter(["aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr("soundnet_cli.atomic.secrets.token_hex", lambda n: next(names))
    (tmp_path / ".x.npy.aaaaaaaa.part").symlink_to(victim)  # the first name is taken
    with atomic_file(tmp_path / "x.npy") as handle:
        handle.write(b"new")
    assert victim.read_bytes() == b"keep"
    assert (tmp_path / "x.npy").read_bytes() == b"new"
