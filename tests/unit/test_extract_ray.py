"""`extract --engine ray` on a local Ray cluster started by the test: the same vectors as the
local engine, and every input exactly once after a worker process is killed mid-run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.extraction.engine import extract
from soundnet_cli.extraction.folder import list_feature_files, read_feature_file
from soundnet_cli.weights.checkpoints import load_checkpoint

from ..conftest import tone, write_wav

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def model(named_checkpoint: Path):
    return load_checkpoint(named_checkpoint)


def clips(folder: Path, count: int) -> Path:
    for i in range(count):
        write_wav(folder / f"clip{i:02d}.wav", tone(1.0 + 0.25 * (i % 2), freq=200.0 + 40 * i))
    write_wav(folder / "short.wav", tone(0.01))  # too short for pool5: a reported failure
    return folder


def vectors(out: Path) -> dict[str, np.ndarray]:
    _, files = list_feature_files(out, "pool5")
    return {f.key: read_feature_file(f) for f in files}


def test_ray_gives_the_local_engines_vectors(tmp_path: Path, model, local_cluster) -> None:
    audio = clips(tmp_path / "audio", 6)
    local = extract([audio], ["pool5"], tmp_path / "local", model=model, batch_size=1)
    on_ray = extract(
        [audio],
        ["pool5"],
        tmp_path / "ray",
        model=model,
        fmt="parquet",
        batch_size=1,  # one input a forward pass, as locally: bit-identical arithmetic
        engine="ray",
        engine_options={"actors": 1},
    )
    assert on_ray.extracted == local.extracted == 6
    assert [f.path for f in on_ray.failures] == [str(audio / "short.wav")]
    assert "too short" in on_ray.failures[0].error
    ours, theirs = vectors(tmp_path / "ray"), vectors(tmp_path / "local")
    assert sorted(ours) == sorted(theirs) == [f"clip{i:02d}" for i in range(6)]
    for key in theirs:
        assert np.array_equal(ours[key], theirs[key])
    again = extract([audio], ["pool5"], tmp_path / "ray", model=model, fmt="parquet", engine="ray")
    assert again.skipped == 6 and again.extracted == 0
    # inputs longer than a chunk run in chunks in the actor: the same features (to float32
    # rounding of the chunk seams, as the local engine's streaming)
    chunked = extract(
        [audio], ["pool5"], tmp_path / "chunked", model=model, fmt="parquet", engine="ray",
        chunk_seconds=1.1,
    )  # fmt: skip
    assert chunked.extracted == 6
    for key, values in vectors(tmp_path / "chunked").items():
        scale = float(np.abs(theirs[key]).max())
        assert values.shape == theirs[key].shape
        assert float(np.abs(values - theirs[key]).max()) <= 1e-4 * scale


def _ray_worker_pids(title: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if command.startswith(b"ray::") and title.encode() in command:
            found.append(int(entry))
    return found


def test_a_killed_worker_is_replaced_and_every_input_lands_once(
    tmp_path: Path, model, local_cluster
) -> None:
    audio = clips(tmp_path / "audio", 12)
    killed: list[int] = []

    def kill_a_model_worker(event) -> None:
        if killed or event.done < 2:
            return
        pids = _ray_worker_pids("_Model")
        assert pids, "no model actor process found"
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    summary = extract(
        [audio],
        ["pool5"],
        tmp_path / "ray",
        model=model,
        fmt="parquet",
        batch_size=1,
        part_size=4,
        engine="ray",
        engine_options={"actors": 1, "decode_batch": 1},
        progress=kill_a_model_worker,
    )
    assert killed, "the run ended before a worker could be killed"
    assert summary.extracted == 12 and len(summary.failures) == 1
    import pyarrow.parquet as pq

    table = pq.read_table(sorted((tmp_path / "ray").glob("*.parquet"))).to_pandas()
    assert sorted(table.key.unique()) == [f"clip{i:02d}" for i in range(12)]
    assert not table.duplicated(["key", "layer", "step"]).any()


KILLED_DRIVER = """
import sys, time
from soundnet_cli.extraction import engine
from soundnet_cli.extraction.writers import parquet
from soundnet_cli.weights.checkpoints import load_checkpoint

flush = parquet.ParquetWriter.flush
def slow_flush(self, out):
    flush(self, out)
    print("part", flush=True)
    time.sleep(120)  # killed here, after the first part, with more results on their way
parquet.ParquetWriter.flush = slow_flush
engine.extract([sys.argv[2]], ["pool5"], sys.argv[3], model=load_checkpoint(sys.argv[1]),
               fmt="parquet", part_size=2, batch_size=1, engine="ray",
               engine_options={"address": sys.argv[4], "actors": 1})
"""


def test_a_killed_driver_resumes_with_nothing_lost_or_doubled(
    tmp_path: Path, model, named_checkpoint: Path, local_cluster
) -> None:
    import subprocess
    import sys

    import pyarrow.parquet as pq

    audio = clips(tmp_path / "audio", 6)
    out = tmp_path / "ray"
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_DRIVER, str(named_checkpoint), str(audio), str(out), address],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "part"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(list(out.glob("*.parquet"))) == 1
    resumed = extract(
        [audio], ["pool5"], out, model=model, fmt="parquet", batch_size=1, engine="ray",
        engine_options={"actors": 1},
    )  # fmt: skip
    assert resumed.skipped == 2 and resumed.extracted == 4
    extract([audio], ["pool5"], tmp_path / "local", model=model, batch_size=1)
    ours, theirs = vectors(out), vectors(tmp_path / "local")
    assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    table = pq.read_table(sorted(out.glob("*.parquet"))).to_pandas()
    assert not table.duplicated(["key", "layer", "step"]).any()


def test_urls_on_ray_equal_local_files_and_a_404_is_a_failure(
    tmp_path: Path, model, local_cluster
) -> None:
    from ..cli.test_extract_inputs import serving

    audio = clips(tmp_path / "www" / "audio", 3)
    (audio / "short.wav").unlink()
    local = extract([audio], ["pool5"], tmp_path / "local", model=model, batch_size=1)
    with serving(tmp_path / "www") as base:
        urls = [f"{base}/audio/clip{i:02d}.wav" for i in range(3)] + [f"{base}/audio/gone.wav"]
        summary = extract(
            urls, ["pool5"], tmp_path / "ray", model=model, fmt="parquet", batch_size=1,
            engine="ray", engine_options={"actors": 1},
        )  # fmt: skip
    assert summary.extracted == local.extracted == 3
    assert [f.path for f in summary.failures] == [urls[-1]]
    assert "404" in summary.failures[0].error
    ours, theirs = vectors(tmp_path / "ray"), vectors(tmp_path / "local")
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
