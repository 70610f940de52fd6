"""Killing a run (SIGKILL) leaves no partial output; a rerun completes it identically. Two
processes sharing a folder as torchrun ranks do split the work and leave one manifest."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..conftest import tone, write_wav
from ..numeric import assert_close_to_scale


def command(inputs: Path, out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "soundnet_cli", "extract", str(inputs), "--out", str(out),
        "--checkpoint", str(checkpoint), "--layer", "pool5", "--layer", "conv3",
        "--quiet", "--chunk-seconds", "20", "--batch-size", "2", *extra,
    ]  # fmt: skip


def make_inputs(root: Path) -> None:
    for i in range(6):
        write_wav(root / f"clip{i}.wav", tone(3.0, freq=200 + 40 * i))
    rng = np.random.default_rng(0)
    write_wav(root / "z_long.wav", (0.2 * rng.standard_normal(22050 * 240)).astype(np.float32))


def outputs(out: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(out).as_posix(): np.load(p) for p in sorted(out.rglob("*.npy"))}


def test_sigkill_mid_run_then_resume_gives_complete_identical_outputs(named_checkpoint, tmp_path):
    inputs, out, clean = tmp_path / "in", tmp_path / "out", tmp_path / "clean"
    make_inputs(inputs)
    run = subprocess.Popen(command(inputs, out, named_checkpoint), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Kill while the long file's outputs are being written (temporary files exist).
    while time.monotonic() < deadline and run.poll() is None:
        if out.is_dir() and any(p.name.startswith(".z_long") for p in out.iterdir()):
            break
        time.sleep(0.01)
    assert run.poll() is None, "the run ended before it could be killed"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert (
        not (out / "manifest.jsonl").exists()
        or "z_long" not in (out / "manifest.jsonl").read_text()
    )
    for path, array in outputs(out).items():  # whatever exists under a final name is whole
        assert array.dtype == np.float32 and array.ndim == 2, path
    assert not (out / "z_long.pool5.npy").exists() or not (out / "z_long.conv3.npy").exists()

    resumed = subprocess.run(
        command(inputs, out, named_checkpoint, "--json"), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] >= 1 and summary["extracted"] >= 1
    assert summary["skipped"] + summary["extracted"] == 7
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]

    subprocess.run(command(inputs, clean, named_checkpoint), check=True)
    ours, reference = outputs(out), outputs(clean)
    assert sorted(ours) == sorted(reference) and len(ours) == 14
    for name in reference:
        assert_close_to_scale(ours[name], reference[name], 1e-5, name)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == [*(f"clip{i}" for i in range(6)), "z_long"]
    assert all(r["status"] == "ok" for r in rows)


def test_two_ranks_as_under_torchrun_share_the_work(named_checkpoint, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    for i in range(6):
        write_wav(inputs / f"clip{i}.wav", tone(3.0, freq=200 + 40 * i))
    runs = [
        subprocess.Popen(
            command(inputs, out, named_checkpoint, "--json"),
            env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for rank in range(2)
    ]
    summaries = [json.loads(run.communicate(timeout=180)[0]) for run in runs]
    assert [s["total"] for s in summaries] == [3, 3]
    assert [s["rank"] for s in summaries] == [0, 1]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == [f"clip{i}" for i in range(6)]
    assert {r["rank"] for r in rows} == {0, 1}
    assert len(list(out.glob("*.pool5.npy"))) == 6


def test_ctrl_c_mid_run_exits_130_and_leaves_no_temporary_files(named_checkpoint, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    make_inputs(inputs)
    run = subprocess.Popen(command(inputs, out, named_checkpoint), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if out.is_dir() and any(p.name.startswith(".z_long") for p in out.iterdir()):
            break
        time.sleep(0.01)
    assert run.poll() is None, "the run ended before it could be interrupted"
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert b"interrupted" in stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    assert not (out / "z_long.pool5.npy").exists()
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["key"] for r in rows} == {f"clip{i}" for i in range(6)}  # folded in on the way out


def test_under_torchrun_a_rank_failing_early_does_not_stop_the_others(named_checkpoint, tmp_path):
    """torchrun stops the whole job when one rank exits non-zero: rank 0 (one bad file, done at
    once) must wait for rank 1 (a long file) before it exits 1."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "a-bad.wav").write_text("not audio")  # rank 0's share
    write_wav(inputs / "b-long.wav", tone(240.0))  # rank 1's share: several seconds of work
    launcher = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        *command(inputs, out, named_checkpoint)[1:],
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-2000:]  # the bad file
    assert (out / "b-long.pool5.npy").is_file(), done.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["key"]: r["status"] for r in rows} == {"a-bad": "failed", "b-long": "ok"}
