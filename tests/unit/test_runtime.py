"""runtime: one place for rank, world size, device per rank and threads."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from soundnet_cli.errors import UsageProblem
from soundnet_cli.runtime import World, device_for, set_threads, wait_for_ranks, world_from_env


@pytest.fixture(autouse=True)
def no_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_alone_outside_torchrun():
    assert world_from_env() == World(0, 1, 0)
    assert world_from_env().main and not world_from_env().distributed


def test_rank_comes_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == World(2, 4, 1)
    assert world_from_env(rank=0, size=1) == World(0, 1, 1)  # explicit options win


@pytest.mark.parametrize(
    "env",
    [
        {"RANK": "4", "WORLD_SIZE": "4"},
        {"RANK": "-1", "WORLD_SIZE": "2"},
        {"RANK": "x", "WORLD_SIZE": "2"},
        {"WORLD_SIZE": "0"},
        {"LOCAL_RANK": "-2"},
    ],
)
def test_bad_environment_is_a_usage_error(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UsageProblem):
        world_from_env()


def test_cpu_stays_cpu_under_torchrun():
    assert device_for("cpu", World(1, 2, 1)) == "cpu"
    with pytest.raises(UsageProblem, match="unknown device"):
        device_for("tpu")


def test_each_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only the name is resolved
    assert device_for("cuda", World(3, 4, 1)) == "cuda:1"
    assert device_for("cuda", World(0, 1, 0)) == "cuda"


def test_set_threads():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)
        assert torch.get_num_threads() == 1
        with pytest.raises(UsageProblem):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


COUNT_COLLECTIONS = """
import gc, sys
from soundnet_cli.runtime import import_torch
runs = []
gc.callbacks.append(lambda phase, info: phase == "start" and runs.append(info["generation"]))
{importer}
print(len(runs), gc.isenabled(), "torch" in sys.modules)
"""


def test_torch_is_imported_without_garbage_collections():
    """A plain `import torch` runs the cyclic collector many times (over a heap that keeps
    growing); import_torch pauses it for the import and turns it back on."""
    import subprocess
    import sys

    def collections(importer: str) -> list[str]:
        code = COUNT_COLLECTIONS.format(importer=importer)
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    plain = collections("import torch")
    ours = collections("import_torch()")
    assert int(plain[0]) > 10 and plain[1:] == ["True", "True"]
    assert ours == ["0", "True", "True"]


WAIT_FOR_RANKS = """
import sys, time
from soundnet_cli.runtime import wait_for_ranks, world_from_env
time.sleep(float(sys.argv[1]))
called = time.time()
wait_for_ranks(world_from_env())
print(called, time.time())
"""


def test_ranks_wait_for_each_other_under_torchrun_rendezvous():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", WAIT_FOR_RANKS, str(delay)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank, delay in ((0, 0.0), (1, 3.0))
    ]
    (_, first_left), (late_called, _) = (
        map(float, rank.communicate(timeout=120)[0].split()) for rank in ranks
    )
    assert first_left >= late_called  # rank 0 waited for rank 1


def test_waiting_for_ranks_is_a_no_op_without_a_rendezvous(monkeypatch):
    """Alone, or with ranks given by hand (no MASTER_ADDR), no process group is made: its
    rendezvous would wait for ranks that never come. With torchrun's variables it is."""
    import torch.distributed as dist

    calls: list[str] = []
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: calls.append("init"))
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29500")
    wait_for_ranks(World(rank=0, size=2))  # a process group would need the rendezvous
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    wait_for_ranks(World())  # one process: nobody to wait for
    assert calls == [] and not dist.is_initialized()
    wait_for_ranks(World(rank=0, size=2))  # the same fakes see a real wait
    assert calls == ["init", "barrier", "destroy"]
