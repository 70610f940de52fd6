import json

import pytest
import torch
from safetensors.torch import save_file

from soundnet_cli.errors import CheckpointError
from soundnet_cli.students import HeadSpec, soundnet5, soundnet8
from soundnet_cli.weights.checkpoints import load_checkpoint, read_info, save_checkpoint


def test_round_trip_keeps_weights_heads_and_provenance(tmp_path):
    torch.manual_seed(3)
    heads = (HeadSpec("objects", 3, ("a", "b", "c")), HeadSpec("scenes", 2, ("x", "y")))
    model = soundnet8(heads=heads).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", provenance={"steps": 7})
    info = read_info(path)
    assert info.architecture == "soundnet8" and info.heads == heads
    assert info.sample_rate == 22050 and info.provenance == {"steps": 7}
    loaded = load_checkpoint(path)
    wave = torch.randn(1, 300000)
    with torch.inference_mode():
        a, b = model(wave), loaded(wave)
    assert torch.equal(a["objects"], b["objects"]) and torch.equal(a["scenes"], b["scenes"])
    assert not list(tmp_path.glob("*.part"))  # the atomic write left no temporary file


def test_soundnet5_round_trip(tmp_path):
    path = save_checkpoint(soundnet5(heads=(HeadSpec("k", 4),)), tmp_path / "five.safetensors")
    assert load_checkpoint(path).architecture == "soundnet5"


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        read_info(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a soundnet-cli checkpoint"):
        read_info(path)


def test_weights_that_do_not_fit(tmp_path):
    path = save_checkpoint(soundnet8(), tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    tensors["heads.scenes.bias"] = torch.zeros(7)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="do not fit soundnet8"):
        load_checkpoint(path)


def test_damaged_metadata(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file(
        {"w": torch.zeros(1)},
        str(path),
        metadata={
            "format": "soundnet-cli/1",
            "architecture": "soundnet8",
            "heads": "not json",
            "sample_rate": "22050",
            "provenance": json.dumps({}),
        },
    )
    with pytest.raises(CheckpointError, match="damaged"):
        read_info(path)


def test_unknown_architecture_in_checkpoint(tmp_path):
    from soundnet_cli.errors import UnknownNameError
    from soundnet_cli.weights.checkpoints import save_state

    path = save_state(
        {"w": torch.zeros(1)},
        tmp_path / "x.safetensors",
        architecture="soundnet9",
        heads=(HeadSpec("a", 1),),
        sample_rate=22050,
    )
    with pytest.raises(UnknownNameError, match="soundnet8"):
        load_checkpoint(path)


def test_weights_hash_ignores_metadata(tmp_path):
    from soundnet_cli.weights.checkpoints import file_sha256, weights_sha256

    torch.manual_seed(4)
    model = soundnet5(heads=(HeadSpec("k", 4),))
    a = save_checkpoint(model, tmp_path / "a.safetensors", provenance={"source": "one"})
    b = save_checkpoint(model, tmp_path / "b.safetensors", provenance={"source": "another"})
    assert file_sha256(a) != file_sha256(b)
    assert weights_sha256(a) == weights_sha256(b)
    torch.nn.init.zeros_(model.heads["k"].bias)
    model.heads["k"].bias.data += 1
    c = save_checkpoint(model, tmp_path / "c.safetensors", provenance={"source": "one"})
    assert weights_sha256(c) != weights_sha256(a)
