"""Distilling from streamed tar shards: URLs (file://, http:// on a local server, pipe:), shards
to ranks and workers, exact resume after kill -9 (1 and 2 DDP processes on gloo), the held-out
split by video, and bad input (unreachable, foreign, truncated shards) in one line."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.corpus.format import Corpus
from soundnet_cli.corpus.shards import ShardSet, convert
from soundnet_cli.corpus.tario import CorpusError
from soundnet_cli.training.distillation import DistillConfig, distill, read_metrics
from soundnet_cli.training.distillation.data import split_videos
from soundnet_cli.training.distillation.streaming import _Tape, lane_samples, make_plan

from ..conftest import REPO
from ..distill_helpers import register_tiny_student, tone_corpus

FAST = dict(
    student="tiny-student",
    crop_seconds=2.0,
    batch_size=4,
    workers=0,
    log_every=1,
    eval_every=100,
    held_out=0.2,
    device="cpu",
)
CLIP_BYTES = 4 * 22050 * 2


@pytest.fixture(autouse=True)
def _tiny_student():
    register_tiny_student()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """20 videos of 4-s clips in 5 tar shards of 4 clips."""
    root = tmp_path_factory.mktemp("stream")
    tone_corpus(root / "dirs", videos=20, shard_bytes=4 * CLIP_BYTES)
    convert(root / "dirs", root / "tars", "shards")
    return root


def urls(shards: Path) -> str:
    return f"file://{shards}/tars/shards/rank00000-{{000001..000005}}.tar"


@contextlib.contextmanager
def http_server(folder: Path):
    """A web server for ``folder`` on 127.0.0.1 (a free port), in a thread."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_shards_go_to_lanes_by_seed_epoch_rank_world(shards):
    data = ShardSet(urls(shards))
    held = {data.clips[i].video for i in split_videos(data, 0.2)[1]}
    from soundnet_cli.training.distillation.data import crop_plan

    plan = crop_plan(data, 2.0)

    def tape(world, lanes, rank, lane, seed=0):
        p = make_plan(data, held, ["tones"], plan, seed=seed, rank=rank, world=world,
                      workers=lanes, batch_size=4, start_step=0)  # fmt: skip
        return [_Tape(p, rank * lanes + lane).shard(k) for k in range(5)]

    # 2 ranks x 2 workers: the 4 lanes read one epoch's permutation in turn, then the next
    lanes = [tape(2, 2, r, w) for r in (0, 1) for w in (0, 1)]
    first_epoch = [lanes[g % 4][g // 4] for g in range(5)]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]
    assert lanes == [tape(2, 2, r, w) for r in (0, 1) for w in (0, 1)]  # deterministic
    assert tape(2, 2, 0, 0, seed=1) != lanes[0] or tape(2, 2, 0, 1, seed=1) != lanes[1]
    # a lane's clips: training clips only, each block of the buffer a permutation
    p = make_plan(data, held, ["tones"], plan, seed=0, rank=0, world=1, workers=1,
                  batch_size=4, start_step=0)  # fmt: skip
    p = type(p)(**{**p.__dict__, "block": 4})
    stream = lane_samples(p, 0, 0)
    seen = [next(stream)[1].info["video"] for _ in range(16)]
    assert not set(seen) & held and len(set(seen)) == 16  # one epoch: 16 training videos
    # resuming at position 6 gives what the stream gives from 6
    again = lane_samples(p, 0, 6)
    assert [next(again)[1].info["video"] for _ in range(10)] == seen[6:]


def test_held_out_split_is_by_video_not_shard_layout(shards, tmp_path):
    folder = Corpus(shards / "dirs")
    held_folder = {folder.clips[i].video for i in split_videos(folder, 0.2)[1]}
    # the same videos in another layout: shards of 3 clips, listed in another order
    tone_corpus(tmp_path / "dirs", videos=20, shard_bytes=3 * CLIP_BYTES)
    convert(tmp_path / "dirs", tmp_path / "tars", "shards")
    names = sorted((tmp_path / "tars" / "shards").glob("*.tar"), reverse=True)
    relaid = ShardSet("::".join(f"file://{p}" for p in names))
    assert len(relaid.shards) == 7
    assert {relaid.clips[i].video for i in split_videos(relaid, 0.2)[1]} == held_folder
    assert len(held_folder) == 4


def test_streamed_run_learns_and_http_equals_file(shards):
    config = DistillConfig(steps=4, checkpoint_every=4, **FAST)
    local = distill(urls(shards), shards / "run-file", config)
    with http_server(shards / "tars") as base:
        spec = f"{base}/shards/rank00000-{{000001..000005}}.tar"
        remote = distill(spec, shards / "run-http", config)
    assert remote.losses == local.losses
    assert remote.agreement == local.agreement and remote.agreement is not None
    recorded = json.loads((shards / "run-http" / "config.json").read_text())
    assert recorded["corpus"] == spec  # the URLs, as given
    piped = distill(
        f"pipe:cat {shards}/tars/shards/rank00000-{{000001..000005}}.tar",
        shards / "run-pipe",
        config,
    )
    assert piped.losses == local.losses


def test_workers_read_lanes_in_turn_and_resume_exactly(shards):
    config = DistillConfig(steps=6, checkpoint_every=3, **dict(FAST, workers=2))
    whole = distill(urls(shards), shards / "w-a", config)
    distill(urls(shards), shards / "w-b", DistillConfig(**{**config.as_dict(), "steps": 3,
            "teachers": ()}))  # fmt: skip
    resumed = distill(urls(shards), shards / "w-b", config, resume=True)
    assert resumed.losses == whole.losses[3:]


KILL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from soundnet_cli.training.distillation import DistillConfig, distill
from tests.distill_helpers import register_tiny_student
register_tiny_student()
config = DistillConfig(steps=10, checkpoint_every=4, **{fast!r})
hang = sys.argv[2] == "hang"

def on_step(metrics):
    if hang and metrics.step == 6:  # mid-epoch, after the step-4 checkpoint: wait to be killed
        Path(sys.argv[1], "at-6").write_text("")
        time.sleep(600)

distill({spec!r}, Path(sys.argv[1]), config, resume=sys.argv[3] == "resume", on_step=on_step)
"""


def _launch(script: Path, run: Path, mode: str, again: str, processes: int):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, str(script), str(run), mode, again]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(processes)] + command[1:]  # fmt: skip
    return subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(shards, tmp_path, processes):
    """20 videos, 16 for training, 4 a step: an epoch is 4 steps; the kill comes in step 6."""
    fast = dict(FAST)
    with http_server(shards / "tars") as base:
        spec = f"{base}/shards/rank00000-{{000001..000005}}.tar"
        script = tmp_path / "train.py"
        script.write_text(KILL_SCRIPT.format(repo=str(REPO), fast=fast, spec=spec))
        whole = _launch(script, tmp_path / "whole", "run", "new", processes)
        killed = _launch(script, tmp_path / "killed", "hang", "new", processes)
        try:
            assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()[-3000:]
            deadline = time.monotonic() + 300
            while not (tmp_path / "killed" / "at-6").exists():
                assert killed.poll() is None, killed.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            os.killpg(killed.pid, signal.SIGKILL)  # kill -9, every process of the run
            killed.wait()
        resumed = _launch(script, tmp_path / "killed", "run", "resume", processes)
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-3000:]
    a = read_metrics(tmp_path / "whole")
    b = read_metrics(tmp_path / "killed")
    assert [m["step"] for m in b] == list(range(1, 11))
    assert [m["loss"] for m in b] == [m["loss"] for m in a]  # exactly
    assert b[-1]["agreement"] == a[-1]["agreement"]


def test_an_unreachable_url_is_one_line(shards):
    with http_server(shards / "tars") as base:
        pass  # the server is gone: its port refuses
    with pytest.raises(CorpusError, match="cannot read") as caught:
        distill(
            f"{base}/shards/rank00000-000001.tar", shards / "gone", DistillConfig(steps=4, **FAST)
        )
    assert "\n" not in str(caught.value)
    with http_server(shards / "tars") as base, pytest.raises(CorpusError, match="404"):
        distill(
            f"{base}/shards/rank00000-000009.tar", shards / "gone", DistillConfig(steps=4, **FAST)
        )


def test_a_shard_of_another_corpus_is_refused(shards, tmp_path):
    tone_corpus(tmp_path / "other", videos=4)
    manifest = tmp_path / "other" / "manifest.json"  # another channel mix: another corpus
    manifest.write_text(manifest.read_text().replace('"mix": "first"', '"mix": "mean"'))
    convert(tmp_path / "other", tmp_path / "other-tar", "shards")
    stray = tmp_path / "mixed"
    shutil.copytree(shards / "tars", stray)
    for ext in ("tar", "json"):
        shutil.copy(
            tmp_path / "other-tar" / "shards" / f"rank00000-000001.{ext}",
            stray / "shards" / f"rank00000-000005.{ext}",
        )
    spec = f"file://{stray}/shards/rank00000-{{000001..000005}}.tar"
    with pytest.raises(CorpusError, match="another corpus") as caught:
        distill(spec, tmp_path / "run", DistillConfig(steps=4, **FAST))
    assert "rank00000-000005.tar" in str(caught.value)


def test_a_truncated_shard_stops_the_run_in_one_line(shards, tmp_path, run_cli):
    damaged = tmp_path / "damaged"
    shutil.copytree(shards / "tars", damaged)
    shard = damaged / "shards" / "rank00000-000003.tar"
    shard.write_bytes(shard.read_bytes()[: 3 * CLIP_BYTES // 2])
    spec = f"file://{damaged}/shards/rank00000-{{000001..000005}}.tar"
    with pytest.raises(CorpusError, match="truncated"):
        distill(spec, tmp_path / "run", DistillConfig(steps=8, **FAST))
    result = run_cli(
        "distill", spec, "--out", str(tmp_path / "run2"), "--student", "tiny-student",
        "--crop-seconds", "2", "--batch-size", "4", "--steps", "8", "--workers", "1",
        "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "rank00000-000003.tar" in lines[-1]
    assert "truncated" in lines[-1] and "Traceback" not in result.stderr


@pytest.fixture
def run_cli(tmp_path_factory, monkeypatch):
    from typer.testing import CliRunner

    from soundnet_cli.cli.main import build_app

    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))

    def invoke(*args: str):
        return CliRunner().invoke(build_app(), list(args), catch_exceptions=False)

    return invoke


def test_folder_and_streamed_batches_hold_the_same_clips(shards):
    """One reader, two storages: every training clip of the folder is in the stream once per
    epoch, with the same samples."""
    folder = Corpus(shards / "tars")
    data = ShardSet(urls(shards))
    train, held = split_videos(data, 0.2)
    from soundnet_cli.training.distillation.data import crop_plan

    plan = make_plan(data, {data.clips[i].video for i in held}, ["tones"], crop_plan(data, 2.0),
                     seed=3, rank=0, world=1, workers=1, batch_size=4, start_step=0)  # fmt: skip
    plan = type(plan)(**{**plan.__dict__, "block": 4})  # blocks within the epoch
    stream = lane_samples(plan, 0, 0)
    by_video = {folder.clips[i].video: folder[i] for i in range(len(folder))}
    got = [next(stream)[1] for _ in range(len(train))]
    assert sorted(s.info["video"] for s in got) == sorted(data.clips[i].video for i in train)
    for sample in got:
        assert np.array_equal(sample.audio, by_video[sample.info["video"]].audio)


class RangeHandler(QuietHandler):
    """Serves ``Range: bytes=a-b`` as a 206 (http.server alone ignores ranges)."""

    def do_GET(self):
        wanted = self.headers.get("Range")
        if not wanted:
            return super().do_GET()
        first, last = (int(x) for x in wanted.split("=")[1].split("-"))
        data = Path(self.translate_path(self.path)).read_bytes()[first : last + 1]
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_held_out_clips_are_read_by_range_or_whole(shards):
    """A clip of a remote shard is one range request; a server that ignores ranges sends the
    whole shard once, kept for the shard's other clips."""
    from soundnet_cli.corpus.tario import read_range

    folder = Corpus(shards / "tars")
    shard = shards / "tars" / "shards" / "rank00000-000002.tar"
    handler = functools.partial(RangeHandler, directory=str(shards / "tars"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        data, whole = read_range(f"{base}/shards/rank00000-000002.tar", 1000, 300)
        assert data == shard.read_bytes()[1000:1300] and whole is None
        ranged = ShardSet(f"{base}/shards/rank00000-{{000001..000005}}.tar")
        assert all(np.array_equal(ranged[i].audio, folder[i].audio) for i in range(len(folder)))
        assert all(s._whole is None for s in ranged.shard_list)
    finally:
        server.shutdown()
        server.server_close()
    with http_server(shards / "tars") as base:
        data, whole = read_range(f"{base}/shards/rank00000-000002.tar", 1000, 300)
        assert data == shard.read_bytes()[1000:1300] and whole == shard.read_bytes()
        plain = ShardSet(f"{base}/shards/rank00000-{{000001..000005}}.tar")
        for i in range(len(folder)):
            assert np.array_equal(plain[i].posteriors["tones"], folder[i].posteriors["tones"])
        assert all(s._whole is not None for s in plain.shard_list)
