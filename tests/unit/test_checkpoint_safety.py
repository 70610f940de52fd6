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


def test_a_header_listing_200000_heads_is_refused_fast(small, tmp_path):
    """Issue 25, item 5: the heads are counted before any is built (40 s and 1.6 GB before)."""
    import time

    heads = [{"name": f"h{i}", "size": 3, "categories": ["a", "b", "c"]} for i in range(200_000)]
    bad = _rewrite(small, tmp_path / "bad.safetensors", heads)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="lists 200000 heads; at most 64"):
        load_checkpoint(bad)
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize(
    ("heads", "message"),
    [
        ([{"name": "k", "size": 3, "categories": ["x"] * 200_000}], "200000 category names"),
        ([{"name": "k", "size": 3, "categories": ["a", "b", "c" * 10_000]}], "at most 256"),
        ([{"name": "k" * 10_000, "size": 3}], "head name is not a string of at most 256"),
        ({"k": 3}, "'heads' is not a list"),
    ],
)
def test_header_structures_are_bounded(small, tmp_path, heads, message):
    bad = _rewrite(small, tmp_path / "bad.safetensors", heads)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.full((16, 1, 64), float("nan")), "'blocks.conv1.conv.weight' holds NaN or infinite"),
        (torch.full((16, 1, 64), float("inf")), "'blocks.conv1.conv.weight' holds NaN or infinite"),
        (torch.zeros((16, 1, 64), dtype=torch.int8), "'blocks.conv1.conv.weight' holds int8"),
    ],
)
def test_non_finite_or_integer_weights_are_refused_at_load(small, tmp_path, tensor, message):
    """Issue 25, item 4: refused by name at load, for every command (predict printed nan)."""
    bad = _rewrite(
        small, tmp_path / "bad.safetensors", tensors={"blocks.conv1.conv.weight": tensor}
    )
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)


def test_a_half_precision_checkpoint_loads_as_float32(small, tmp_path):
    with safe_open(str(small), framework="pt") as handle:
        halves = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    halves = {k: v.half() if v.is_floating_point() else v for k, v in halves.items()}
    model = load_checkpoint(_rewrite(small, tmp_path / "half.safetensors", tensors=halves))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_predict_and_extract_refuse_nan_weights_in_one_line(small, tmp_path):
    from typer.testing import CliRunner

    from soundnet_cli.cli.main import build_app

    from ..conftest import tone, write_wav

    nan = torch.full((16, 1, 64), float("nan"))
    bad = _rewrite(small, tmp_path / "bad.safetensors", tensors={"blocks.conv1.conv.weight": nan})
    clip = write_wav(tmp_path / "clip.wav", tone(2.0))
    runner = CliRunner()
    for args in (
        ["predict", str(clip), "--checkpoint", str(bad)],
        ["extract", str(clip), "-o", str(tmp_path / "out"), "--checkpoint", str(bad)],
    ):
        result = runner.invoke(build_app(), args)
        assert result.exit_code == 1, result.output
        assert "nan" not in result.stdout.lower()
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "holds NaN" in lines[0]


def test_a_sample_rate_other_than_22050_is_refused(small, tmp_path):
    with safe_open(str(small), framework="pt") as handle:
        meta = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(state, str(tmp_path / "rate.safetensors"), metadata={**meta, "sample_rate": "16000"})
    with pytest.raises(
        CheckpointError, match="runs at 16000 Hz; soundnet-cli students run at 22050"
    ):
        load_checkpoint(tmp_path / "rate.safetensors")
