"""Inputs beyond a local folder: URLs served by a local HTTP server (127.0.0.1, started here),
`--files-from`, `--shard I/N`, and the usage errors of each."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from soundnet_cli.cli.main import build_app

from ..conftest import tone, write_wav


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; ``.../cut-NAME`` sends NAME's header with half its body, then hangs
    up."""

    def do_GET(self) -> None:  # noqa: N802  (the standard library's name)
        folder, _, name = self.path.rpartition("/")
        if name.startswith("cut-"):
            body = (Path(self.directory) / folder.lstrip("/") / name[4:]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    handler = lambda *a, **k: _Handler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_usage_error(stderr: str) -> bool:
    """One message, as every usage error of the CLI gives it (Typer's box), no traceback."""
    return stderr.count("Error") == 1 and "Traceback" not in stderr


def invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(build_app(), list(args), input=stdin, catch_exceptions=False)


def audio_tree(root: Path) -> list[str]:
    names = ["audio/a.wav", "audio/sub/b.wav", "audio/sub/c.flac"]
    for i, name in enumerate(names):
        write_wav(root / name, tone(1.0 + 0.5 * i, freq=300.0 + 100 * i))
    return names


def arrays(out: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(out).as_posix(): np.load(p) for p in sorted(out.rglob("*.npy"))}


def test_urls_from_a_list_equal_local_copies_and_failures_do_not_stop_the_run(
    tmp_path: Path, named_checkpoint: Path
) -> None:
    names = audio_tree(tmp_path / "www")
    local = tmp_path / "local"
    model = ["--checkpoint", str(named_checkpoint), "--batch-size", "1", "--json"]
    result = invoke("extract", str(tmp_path / "www" / "audio"), "-o", str(local), *model)
    assert result.exit_code == 0, result.stderr
    with serving(tmp_path / "www") as base:
        good = [f"{base}/{name}" for name in names]
        bad = [
            f"{base}/audio/missing.wav",  # 404
            f"http://127.0.0.1:{free_port()}/audio/refused.wav",  # nothing listens there
            f"{base}/audio/cut-a.wav",  # a body cut short
        ]
        listing = tmp_path / "inputs.txt"
        listing.write_text("# inputs\n" + "\n".join(good + bad) + "\n\n")
        out = tmp_path / "remote"
        result = invoke("extract", "--files-from", str(listing), "-o", str(out), *model)
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["extracted"] == 3 and summary["failed"] == 3
    errors = {f["path"]: f["error"] for f in summary["failures"]}
    assert set(errors) == set(bad)
    assert "404" in errors[bad[0]] and "refused" in errors[bad[1]].lower()
    assert "cut short" in errors[bad[2]]
    ours, theirs = arrays(out), arrays(local)
    # named from the URL path, relative to the common folder (as for local folders)
    assert sorted(ours) == sorted(theirs) == ["a.pool5.npy", "sub/b.pool5.npy", "sub/c.pool5.npy"]
    for name in theirs:
        assert np.array_equal(ours[name], theirs[name])
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["path"] for r in rows} == set(good + bad)


def test_files_from_stdin_and_file_urls(tmp_path: Path, named_checkpoint: Path) -> None:
    names = audio_tree(tmp_path / "www")
    listing = "\n".join([str(tmp_path / "www" / names[0]), (tmp_path / "www" / names[1]).as_uri()])
    out = tmp_path / "out"
    result = invoke(
        "extract", "--files-from", "-", "-o", str(out), "--checkpoint", str(named_checkpoint),
        "--json", stdin=listing,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert sorted(arrays(out)) == ["a.pool5.npy", "sub/b.pool5.npy"]


def test_shards_split_the_inputs_deterministically(tmp_path: Path, named_checkpoint: Path) -> None:
    for i in range(5):
        write_wav(tmp_path / "in" / f"clip{i}.wav", tone(1.0, freq=200.0 + 50 * i))
    out = tmp_path / "out"
    taken = []
    for index in range(2):
        result = invoke(
            "extract", str(tmp_path / "in"), "-o", str(out), "--shard", f"{index}/2",
            "--checkpoint", str(named_checkpoint), "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        taken.append(summary["total"])
    assert taken == [3, 2]
    assert sorted(p.name for p in out.glob("*.npy")) == [f"clip{i}.pool5.npy" for i in range(5)]
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    by_key = {r["key"]: r["rank"] for r in rows}
    assert by_key == {"clip0": 0, "clip1": 1, "clip2": 0, "clip3": 1, "clip4": 0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "3/2"], "shard 3/2"),
        (["--shard", "x"], "I/N"),
        (["foo://host/a.wav"], "unknown URL scheme 'foo'"),
        (["--dtype", "float16"], "float16 with --format parquet"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, named_checkpoint: Path, args: list[str], message: str
) -> None:
    clip = write_wav(tmp_path / "a.wav", tone(1.0))
    paths = [] if any("://" in a for a in args) else [str(clip)]
    out = tmp_path / "out"
    result = invoke("extract", *paths, *args, "-o", str(out), "--checkpoint", str(named_checkpoint))
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()) and one_usage_error(result.stderr)
    assert not out.exists()


def test_engine_ray_without_ray_is_one_line_and_exit_2(
    tmp_path: Path, named_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    clip = write_wav(tmp_path / "a.wav", tone(1.0))
    out = tmp_path / "out"
    result = invoke(
        "extract", str(clip), "--engine", "ray", "-o", str(out),
        "--checkpoint", str(named_checkpoint),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "soundnet-cli[ray]" in result.stderr and one_usage_error(result.stderr)
    assert not out.exists()


def test_parquet_without_pyarrow_is_one_line_and_exit_2(
    tmp_path: Path, named_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # an import of it fails, as when absent
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    clip = write_wav(tmp_path / "a.wav", tone(1.0))
    out = tmp_path / "out"
    result = invoke(
        "extract", str(clip), "--format", "parquet", "-o", str(out),
        "--checkpoint", str(named_checkpoint),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "soundnet-cli[parquet]" in result.stderr
    assert one_usage_error(result.stderr) and not out.exists()
