"""Untrusted checkpoints: metadata checked before allocation, tensors named when they do not
fit, and files that other users can read (issue 12, items 9, 10 and 13)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from soundnet_cli.errors import CheckpointError
from soundnet_cli.students import HeadSpec, soundnet8
from soundnet_cli.weights.checkpoints import load_checkpoint, save_checkpoint


def _rewrite(path: Path, target: Path, heads=None, tensors=None) -> Path:
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    if heads is not None:
        meta["heads"] = json.dumps(heads)
    state.update(tensors or {})
    save_file(state, str(target), metadata=meta)
    return target


@pytest.fixture
def small(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(soundnet8(heads=(HeadSpec("k", 3),)), tmp_path / "small.safetensors")


def test_huge_heads_in_metadata_are_refused_before_allocating(small, tmp_path):
    bad = _rewrite(small, tmp_path / "bad.safetensors", [{"name": "k", "size": 10**12}])
    with pytest.raises(CheckpointError, match=r"tensor 'heads\.k\.weight' has shape \[3, "):
        load_checkpoint(bad)


def test_a_100000_class_head_costs_no_memory(small, tmp_path):
    bad = _rewrite(small, tmp_path / "bad.safetensors", [{"name": "k", "size": 100_000}])
    script = f"""
import resource
from soundnet_cli.errors import CheckpointError
from soundnet_cli.weights.checkpoints import load_checkpoint
load_checkpoint({str(small)!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_checkpoint({str(bad)!r})
except CheckpointError:
    pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    grown = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=os.environ
    )
    assert int(grown.stdout.strip()) < 300, grown.stdout  # MB; building the head took 3.3 GB


def test_a_tensor_of_the_wrong_shape_is_named(small, tmp_path):
    bad = _rewrite(
        small, tmp_path / "bad.safetensors", tensors={"blocks.conv3.conv.bias": torch.zeros(5)}
    )
    with pytest.raises(
        CheckpointError, match=r"tensor 'blocks\.conv3\.conv\.bias' has shape \[5\]"
    ):
        load_checkpoint(bad)


def test_checkpoints_respect_the_umask(tmp_path):
    previous = os.umask(0o002)
    try:
        path = save_checkpoint(soundnet8(), tmp_path / "shared.safetensors")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o664
