"""`soundnet prepare`: videos in, corpus out; bad videos listed, resuming after a kill, ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.corpus.format import Corpus
from soundnet_cli.media import video
from soundnet_cli.plugins import get_plugins

from ..conftest import REPO
from ..videos import FPS, grey_level_teacher, make_video, truncate

FAST = ["--clip-seconds", "4", "--frame-interval", "1", "--workers", "2"]


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    make_video(folder / "a.mp4", 6.0, freq=300)
    make_video(folder / "b.webm", 9.0, freq=500)
    make_video(folder / "nested" / "c.mkv", 3.0, freq=700)
    make_video(folder / "silent.mp4", 3.0, audio=False)
    truncate(make_video(folder / "cut.mp4", 4.0))
    make_video(folder / "short.webm", 0.6)
    (folder / "empty.mkv").write_bytes(b"")
    return folder


GOOD = {"a.mp4": 6, "b.webm": 9, "c.mkv": 3}  # name -> whole 1-s intervals
BAD = {
    "silent.mp4": "no audio stream",
    "cut.mp4": "cannot open",
    "short.webm": "shorter than one frame interval",
    "empty.mkv": "empty",
}


@pytest.fixture
def grey_teacher():
    """A test teacher (see tests/videos.py) registered as 'grey-level'."""
    get_plugins().teachers.add(
        "grey-level", lambda **kw: grey_level_teacher(), description="test", plugin="test"
    )


def test_prepare_builds_a_corpus_and_lists_bad_videos(run, video_dir, tmp_path, grey_teacher):
    out = tmp_path / "corpus"
    result = run("prepare", str(video_dir), "-t", "grey-level", "-o", str(out), *FAST)
    assert result.exit_code == 1  # some videos were bad
    assert "3 videos prepared" in result.stdout and "4 failed" in result.stdout
    for name, reason in BAD.items():
        assert name in result.stderr and reason in result.stderr
    corpus = Corpus(out)
    assert sorted(Path(k).name for k in corpus.videos) == sorted(GOOD)
    assert {Path(k).name: f["reason"] for k, f in corpus.failures.items()}.keys() == BAD.keys()
    for key, failure in corpus.failures.items():
        assert BAD[Path(key).name] in failure["reason"]
    # clips of at most 4 intervals: a=4+2, b=4+4+1, c=3
    assert sorted(r.frames for r in corpus.clips) == [1, 2, 3, 4, 4, 4]
    assert corpus.seconds == pytest.approx(sum(GOOD.values()))


def test_frames_and_audio_line_up(run, video_dir, tmp_path, grey_teacher):
    """Each stored posterior row comes from the frame at the centre of its interval (the
    teacher's argmax is the frame number the picture's colour encodes), and each clip's audio
    is the video's soundtrack from the clip's start."""
    out = tmp_path / "corpus"
    run("prepare", str(video_dir), "-t", "grey-level", "-o", str(out), *FAST)
    corpus = Corpus(out)
    for sample in corpus:
        times = np.array(sample.ref.frame_times)
        start = sample.ref.start
        assert times.tolist() == pytest.approx(start + np.arange(sample.ref.frames) + 0.5)
        expected = np.floor(times * FPS + 1e-9).astype(int) % 63
        assert sample.posteriors["grey-level"].argmax(axis=1).tolist() == expected.tolist()
        soundtrack = video.read_audio(sample.ref.video)
        begin = int(round(start * 22050))
        assert np.array_equal(sample.audio, soundtrack[begin : begin + len(sample.audio)])
        assert len(sample.audio) == sample.ref.frames * 22050


def test_frame_at_start_and_json(run, video_dir, tmp_path, grey_teacher):
    out = tmp_path / "corpus"
    only = [str(video_dir / "a.mp4"), str(video_dir / "silent.mp4")]
    result = run(
        "prepare", *only, "-t", "grey-level", "-o", str(out), "--frame-at", "start", *FAST, "--json"
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["prepared"] == 1 and report["clips"] == 2 and report["hours"] > 0
    assert report["failed"] == [
        {"path": only[1], "reason": f"{only[1]}: the video has no audio stream"}
    ]
    sample = Corpus(out)[0]
    assert list(sample.ref.frame_times) == [0.0, 1.0, 2.0, 3.0]
    assert sample.posteriors["grey-level"].argmax(axis=1).tolist() == [0, 10, 20, 30]


def test_rerun_skips_finished_videos(run, video_dir, tmp_path, grey_teacher):
    out = tmp_path / "corpus"
    run("prepare", str(video_dir), "-t", "grey-level", "-o", str(out), *FAST)
    again = run("prepare", str(video_dir), "-t", "grey-level", "-o", str(out), *FAST, "--json")
    assert again.exit_code == 0
    report = json.loads(again.stdout)
    assert report["skipped"] == 7 and report["prepared"] == 0 and report["failed"] == []
    retry = run(
        "prepare", str(video_dir), "-t", "grey-level", "-o", str(out), *FAST, "--retry-failed"
    )
    assert retry.exit_code == 1 and "0 videos prepared" in retry.stdout
    assert "4 failed" in retry.stdout
    corpus = Corpus(out)
    assert len(corpus.videos) == 3 and len(corpus.failures) == 4


def test_other_settings_on_the_same_corpus_are_refused(run, video_dir, tmp_path, grey_teacher):
    out = tmp_path / "corpus"
    run("prepare", str(video_dir / "a.mp4"), "-t", "grey-level", "-o", str(out), *FAST)
    result = run("prepare", str(video_dir / "a.mp4"), "-t", "grey-level", "-o", str(out))
    assert result.exit_code == 2 and "other settings" in result.stderr


KILLABLE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from soundnet_cli.corpus.prepare import PrepareSettings, prepare_corpus
from tests.videos import grey_level_teacher

teacher = grey_level_teacher()
label = teacher.label_pixels
def slow(*args, **kwargs):
    time.sleep(0.4)
    return label(*args, **kwargs)
teacher.label_pixels = slow
videos = sorted(Path({folder!r}).glob("*.mp4"))
settings = PrepareSettings(clip_seconds=4, frame_interval=1, batch_size=1, workers=1, shard_mb=1e-6)
prepare_corpus(videos, Path({out!r}), [teacher], settings)
"""


def test_killed_part_way_then_rerun_has_every_video_once(run, tmp_path, grey_teacher):
    folder = tmp_path / "videos"
    for i in range(8):
        make_video(folder / f"v{i}.mp4", 2.0, freq=200 + 50 * i)
    out = tmp_path / "corpus"
    script = KILLABLE.format(repo=str(REPO), folder=str(folder), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        shards = out / "shards"
        while time.monotonic() < deadline and proc.poll() is None:
            if shards.is_dir() and len([p for p in shards.iterdir() if p.name[0] != "."]) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    partial = Corpus(out)
    assert 2 <= len(partial.videos) < 8
    result = run("prepare", str(folder), "-t", "grey-level", "-o", str(out), *FAST, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["skipped"] == len(partial.videos)
    assert report["prepared"] == 8 - len(partial.videos)
    corpus = Corpus(out)
    assert sorted(Path(k).name for k in corpus.videos) == [f"v{i}.mp4" for i in range(8)]
    keys = [(s.ref.video, s.ref.clip) for s in corpus]
    assert len(keys) == len(set(keys)) == 8  # every video once, one 2-s clip each
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]


def test_two_ranks_share_the_videos(run, video_dir, tmp_path, grey_teacher):
    out = tmp_path / "corpus"
    reports = []
    for rank in (0, 1):
        result = run(
            "prepare", str(video_dir), "-t", "grey-level", "-o", str(out), *FAST,
            "--rank", str(rank), "--world-size", "2", "--json",
        )  # fmt: skip
        reports.append(json.loads(result.stdout))
    assert [r["videos"] for r in reports] == [4, 3]
    corpus = Corpus(out)
    by_rank: dict[str, set[str]] = {}
    for shard in corpus.shards:
        index = json.loads((out / "shards" / shard / "index.json").read_text())
        names = {Path(v["key"]).name for v in index["videos"]}
        names |= {Path(f["video"]).name for f in index["failed"]}
        by_rank.setdefault(shard.split("-")[0], set()).update(names)
    assert set(by_rank) == {"rank00000", "rank00001"}
    assert not by_rank["rank00000"] & by_rank["rank00001"]
    assert by_rank["rank00000"] | by_rank["rank00001"] == set(GOOD) | set(BAD)
    assert sorted(Path(k).name for k in corpus.videos) == sorted(GOOD)


def test_torchrun_two_processes(video_dir, tmp_path):
    """The real launcher: torchrun sets RANK and WORLD_SIZE; each rank writes its own shards."""
    out = tmp_path / "corpus"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "soundnet_cli", "prepare", str(video_dir), "-t", "timm:test_resnet",
        "--random-init", "-o", str(out), *FAST, "--json",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-2000:]  # the bad videos
    corpus = Corpus(out)
    assert {s.split("-")[0] for s in corpus.shards} == {"rank00000", "rank00001"}
    assert sorted(Path(k).name for k in corpus.videos) == sorted(GOOD)
    assert sorted(Path(k).name for k in corpus.failures) == sorted(BAD)


def test_usage_errors(run, video_dir, tmp_path):
    out = str(tmp_path / "c")
    clip = str(video_dir / "a.mp4")
    result = run("prepare", clip, "-t", "vgg17-imagenet", "-o", out)
    assert result.exit_code == 2 and "vgg16-imagenet" in result.stderr
    result = run("prepare", clip, "-t", "timm:test_resnet", "--teacher-weights", "x", "-o", out)
    assert result.exit_code == 2 and "NAME=PATH" in result.stderr
    result = run("prepare", clip, "-t", "timm:test_resnet", "--clip-seconds", "7", "-o", out)
    assert result.exit_code == 2 and "multiple" in result.stderr
    result = run("prepare", str(tmp_path), "-t", "timm:test_resnet", "-o", out)
    assert result.exit_code == 2 and "no video files" in result.stderr


def test_offline_without_teacher_weights_is_one_line(run, video_dir, tmp_path):
    result = run("prepare", str(video_dir / "a.mp4"), "-t", "vgg16-imagenet", "-o", str(tmp_path))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "give local weights for vgg16-imagenet" in lines[0]
    assert lines[0].endswith("(--teacher-weights NAME=PATH, --random-init)")  # added by the CLI


def test_local_weights_through_the_cli(run, video_dir, tmp_path):
    import timm
    import torch

    torch.manual_seed(5)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "corpus"
    result = run(
        "prepare", str(video_dir / "nested"), "-t", "timm:test_resnet",
        "--teacher-weights", f"timm:test_resnet={tmp_path / 'w.pth'}", "-o", str(out), *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    corpus = Corpus(out)
    (head,) = corpus.manifest.heads
    assert head.name == "timm-test_resnet" and head.size == 4
    assert corpus.manifest.teachers[0]["provenance"]["weights"] == str(tmp_path / "w.pth")
    # the stored posteriors are the teacher's on those frames
    sample = corpus[0]
    frames, _ = video.read_frames(video_dir / "nested" / "c.mkv", list(sample.ref.frame_times))
    from soundnet_cli.teachers import get_teacher

    teacher = get_teacher("timm:test_resnet", weights=tmp_path / "w.pth")
    expected = teacher.label(frames)["timm-test_resnet"].astype(np.float16)
    assert np.abs(sample.posteriors["timm-test_resnet"].astype(np.float32) - expected).max() < 1e-3


def test_help_has_examples_and_skips_torch(run):
    result = run("prepare", "--help")
    assert result.exit_code == 0 and "Examples" in result.stdout
    code = (
        "import sys\nfrom soundnet_cli.cli.main import build_app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(build_app(), ['prepare', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print('torch' in sys.modules, 'av' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
