"""`prepare --engine ray` on a local Ray cluster started by the test: the local engine's corpus
(same clips, audio bit-equal, teacher outputs within float16 rounding), written as whole tar
shards; a worker that dies mid-run loses and doubles nothing; a killed job resumes from the
shards it wrote."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from soundnet_cli.cli.main import build_app
from soundnet_cli.corpus.format import Corpus
from soundnet_cli.corpus.prepare import PrepareSettings, prepare_corpus
from soundnet_cli.corpus.shards import verify
from soundnet_cli.plugins import get_plugins

from ..conftest import REPO
from ..videos import grey_level_teacher, make_video, tiny_random_teacher

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

SETTINGS = dict(clip_seconds=2.0, frame_interval=1.0, batch_size=4, workers=1, shard_mb=0.1)
FAST = ["--clip-seconds", "2", "--frame-interval", "1", "--batch-size", "4", "--workers", "1"]


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Five short videos (2, 3, 4, 2, 3 s: 8 clips of up to 2 s) and an empty file."""
    folder = tmp_path_factory.mktemp("videos")
    for i in range(5):
        make_video(folder / f"v{i}.mp4", 2.0 + (i % 3), freq=200.0 + 60 * i)
    (folder / "empty.mp4").write_bytes(b"")
    return folder


def teachers() -> list:
    """The frame-number teacher (which frame each row came from) and a random one (arithmetic)."""
    return [grey_level_teacher(), tiny_random_teacher()]


def contents(root: Path) -> tuple[dict, set[str], set[str]]:
    corpus = Corpus(root)
    clips: dict = {}
    for sample in corpus:
        key = (sample.ref.video, sample.ref.clip)
        assert key not in clips, f"clip {key} stored twice"
        heads = {name: np.asarray(p, np.float32) for name, p in sample.posteriors.items()}
        clips[key] = (np.array(sample.audio), sample.ref.start, sample.ref.frame_times, heads)
    return clips, set(corpus.videos), set(corpus.failures)


def assert_same_corpus(ours: Path, theirs: Path) -> None:
    """The same videos, failures and clips; audio bit-equal; posteriors within one float16
    rounding step (frames batched with other videos may round the other way)."""
    mine, my_videos, my_failures = contents(ours)
    other, their_videos, their_failures = contents(theirs)
    assert my_videos == their_videos and my_failures == their_failures
    assert sorted(mine) == sorted(other)
    for key, (audio, start, times, heads) in other.items():
        assert np.array_equal(mine[key][0], audio) and mine[key][0].dtype == np.int16
        assert mine[key][1] == start and mine[key][2] == times
        assert sorted(mine[key][3]) == sorted(heads)
        for name, values in heads.items():
            tolerance = 2**-10 * np.maximum(np.abs(values), 2**-14)  # a float16 step
            assert np.all(np.abs(mine[key][3][name] - values) <= tolerance), (key, name)
    assert verify(Corpus(ours)) == []


def shard_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "shards").iterdir())


def test_ray_makes_the_local_engines_corpus_as_tar_shards(tmp_path, videos, local_cluster):
    settings = PrepareSettings(**SETTINGS)
    local = prepare_corpus(sorted(videos.iterdir()), tmp_path / "local", teachers(), settings)
    report = prepare_corpus(
        sorted(videos.iterdir()), tmp_path / "ray", teachers(), settings,
        engine="ray", engine_options={"actors": 1},
    )  # fmt: skip
    assert (report.prepared, report.clips, len(report.failed)) == (5, 8, 1)
    assert (local.prepared, local.clips, len(local.failed)) == (5, 8, 1)
    assert "empty" in report.failed[0]["reason"]
    assert_same_corpus(tmp_path / "ray", tmp_path / "local")
    names = shard_files(tmp_path / "ray")
    tars = [n for n in names if n.endswith(".tar")]
    assert len(tars) >= 2 and names == sorted(tars + [n[:-4] + ".json" for n in tars])
    again = prepare_corpus(
        sorted(videos.iterdir()), tmp_path / "ray", teachers(), settings, engine="ray"
    )
    assert (again.skipped, again.prepared, again.failed) == (6, 0, [])
    assert shard_files(tmp_path / "ray") == names


def crashing_once(teacher, marker: Path):
    """``teacher`` whose process exits (as a killed worker) the first time it labels a batch,
    anywhere on the machine: ``marker`` records that it happened."""
    from torch import nn

    from soundnet_cli.teachers.base import Teacher

    class ExitOnce(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixels):
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return self.inner(pixels)

    net = ExitOnce(teacher.network)
    return Teacher(teacher.name, net, teacher.heads, teacher.transform, teacher.provenance)


def test_a_worker_lost_mid_run_loses_and_doubles_nothing(tmp_path, videos, local_cluster):
    settings = PrepareSettings(**SETTINGS)
    marker = tmp_path / "exited"
    grey, tiny = teachers()
    report = prepare_corpus(
        sorted(videos.iterdir()), tmp_path / "ray", [grey, crashing_once(tiny, marker)], settings,
        engine="ray", engine_options={"actors": 1},
    )  # fmt: skip
    assert marker.exists(), "no worker exited: the test proved nothing"
    assert (report.prepared, report.clips, len(report.failed)) == (5, 8, 1)
    prepare_corpus(sorted(videos.iterdir()), tmp_path / "local", teachers(), settings)
    assert_same_corpus(tmp_path / "ray", tmp_path / "local")
    result = CliRunner().invoke(build_app(), ["corpus", "verify", str(tmp_path / "ray")])
    assert result.exit_code == 0, result.output


KILLED_DRIVER = """
import sys, time
from pathlib import Path
from soundnet_cli.corpus import shards
from soundnet_cli.corpus.prepare import PrepareSettings, prepare_corpus
from tests.videos import grey_level_teacher, tiny_random_teacher

write = shards.write_tar_shard
def write_then_stall(*args, **kwargs):
    path = write(*args, **kwargs)
    print("shard", flush=True)
    time.sleep(120)  # killed here, one whole shard written, more results on their way
    return path
shards.write_tar_shard = write_then_stall
prepare_corpus(sorted(Path(sys.argv[1]).iterdir()), Path(sys.argv[2]),
               [grey_level_teacher(), tiny_random_teacher()], PrepareSettings(**{settings}),
               engine="ray", engine_options={{"address": sys.argv[3], "actors": 1}})
"""


def test_a_killed_job_resumes_from_the_shards_written(tmp_path, videos, local_cluster):
    out = tmp_path / "ray"
    script = KILLED_DRIVER.format(settings=repr(SETTINGS))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(videos), str(out), local_cluster],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "shard"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    partial = Corpus(out)  # whole shards only: readable, each tar with its index
    done = partial.finished()
    assert 1 <= len(done) < 6
    assert [p.name for p in (out / "shards").glob("*.tar")] == ["rank00000-000001.tar"]
    settings = PrepareSettings(**SETTINGS)
    resumed = prepare_corpus(
        sorted(videos.iterdir()), out, teachers(), settings,
        engine="ray", engine_options={"actors": 1},
    )  # fmt: skip
    assert resumed.skipped == len(done)
    assert resumed.prepared + len(resumed.failed) == 6 - len(done)
    prepare_corpus(sorted(videos.iterdir()), tmp_path / "local", teachers(), settings)
    assert_same_corpus(out, tmp_path / "local")


@pytest.fixture
def grey_and_tiny():
    teachers = get_plugins().teachers
    teachers.add("grey-level", lambda **kw: grey_level_teacher(), description="t", plugin="test")
    teachers.add("tiny", lambda **kw: tiny_random_teacher(), description="t", plugin="test")


def test_the_cli_prepares_urls_on_both_engines_and_a_404_is_one_line(
    tmp_path, videos, local_cluster, grey_and_tiny, monkeypatch
):
    from ..cli.test_extract_inputs import serving

    monkeypatch.setenv("COLUMNS", "1000")
    args = ["-t", "grey-level", "-t", "tiny", *FAST, "--json"]
    with serving(videos) as base:
        urls = [f"{base}/v{i}.mp4" for i in range(3)] + [f"{base}/gone.mp4"]
        results = {
            engine: CliRunner().invoke(
                build_app(),
                ["prepare", *urls, "-o", str(tmp_path / engine), *args, "--engine", engine],
            )
            for engine in ("ray", "local")
        }
    for result in results.values():
        assert result.exit_code == 1, result.output  # the 404 is a failed video
        report = json.loads(result.stdout)
        assert report["prepared"] == 3 and [f["path"] for f in report["failed"]] == [urls[-1]]
        assert "404" in report["failed"][0]["reason"]
        assert "\n" not in report["failed"][0]["reason"]
    corpus = Corpus(tmp_path / "ray")
    assert sorted(corpus.videos) == urls[:3] and list(corpus.failures) == [urls[-1]]
    assert_same_corpus(tmp_path / "ray", tmp_path / "local")


def test_engine_ray_without_ray_is_one_line_and_exit_2(tmp_path, videos, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    monkeypatch.setenv("COLUMNS", "1000")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        build_app(),
        ["prepare", str(videos), "-t", "vgg16-imagenet", "-o", str(out), "--engine", "ray"],
    )
    assert result.exit_code == 2
    assert "soundnet-cli[ray]" in result.stderr and result.stderr.count("Error") == 1
    assert "Traceback" not in result.stderr and not out.exists()


def test_no_videos_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        build_app(),
        ["prepare", str(tmp_path / "empty"), "-t", "vgg16-imagenet", "-o", str(tmp_path / "o")],
    )
    assert result.exit_code == 2 and "no video files" in result.stderr
    assert result.stderr.count("Error") == 1


NOT_IMPORTED = """
import sys
from pathlib import Path
from soundnet_cli.corpus.prepare import PrepareSettings, prepare_corpus
from tests.videos import tiny_random_teacher

prepare_corpus([sys.argv[1]], Path(sys.argv[2]), [tiny_random_teacher()],
               PrepareSettings(clip_seconds=2, frame_interval=1, workers=0))
print("ray" in sys.modules)
"""


def test_the_local_engine_never_imports_ray(tmp_path, videos):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", NOT_IMPORTED, str(videos / "v0.mp4"), str(tmp_path / "c")],
        capture_output=True, text=True, env=env, cwd=REPO, check=True,
    )  # fmt: skip
    assert done.stdout.split() == ["False"]


def test_a_cluster_that_cannot_be_joined_leaves_no_corpus_folder(tmp_path, videos, monkeypatch):
    """The Ray engine fails before any clip (here: joining the cluster, stood in for by a
    replacement of the engine, since Ray retries an unreachable address for minutes): the
    corpus folder this run made is removed; one that existed before is kept."""
    import soundnet_cli.corpus.ray as ray_engine
    from soundnet_cli.errors import SoundnetError

    def cannot_join(*args, **kwargs):
        raise SoundnetError("cannot join the Ray cluster at 10.0.0.1:6379")
        yield  # a generator, as the engine is

    monkeypatch.setattr(ray_engine, "labelled_on_ray", cannot_join)
    settings = PrepareSettings(clip_seconds=2, frame_interval=1, workers=0)
    out = tmp_path / "new"
    with pytest.raises(SoundnetError, match="cannot join"):
        prepare_corpus([videos / "v0.mp4"], out, teachers(), settings, engine="ray")
    assert not out.exists()

    kept = tmp_path / "kept"
    prepare_corpus([videos / "v0.mp4"], kept, teachers(), settings)
    with pytest.raises(SoundnetError, match="cannot join"):
        prepare_corpus([videos / "v1.mp4"], kept, teachers(), settings, engine="ray")
    assert len(Corpus(kept)) > 0
