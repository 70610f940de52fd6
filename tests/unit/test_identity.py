"""A model's identity: both digests of its checkpoint, computed once and remembered by path,
size and mtime, so later runs start without reading the whole file again."""

import os

import pytest

from soundnet_cli.evaluation.features import model_key as evaluation_model_key
from soundnet_cli.students import HeadSpec, soundnet8
from soundnet_cli.students.inference import optimise
from soundnet_cli.weights import identity as identity_module
from soundnet_cli.weights.checkpoints import (
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from soundnet_cli.weights.identity import (
    PrecisionCache,
    checkpoint_digests,
    identity,
    model_key,
    precision_cache,
)


@pytest.fixture()
def checkpoint(tmp_path):
    return save_checkpoint(soundnet8(heads=(HeadSpec("a", 3),)), tmp_path / "m.safetensors")


@pytest.fixture()
def fresh_memory(monkeypatch):
    monkeypatch.setattr(identity_module, "_MEMORY", {})


def test_digests_are_those_of_the_file_and_of_its_tensor_data(checkpoint, fresh_memory):
    model = load_checkpoint(checkpoint)
    who = identity(model)
    assert who.file_sha256 == file_sha256(checkpoint)
    assert who.weights_sha256 == weights_sha256(checkpoint)
    assert who.key == f"soundnet8-{weights_sha256(checkpoint)[:16]}"
    assert model_key(model) == evaluation_model_key(model) == who.key
    assert model_key(optimise(model)) == who.key  # the inference twin names the same weights


def test_a_second_run_reads_the_remembered_digests(checkpoint, fresh_memory, monkeypatch):
    first = checkpoint_digests(checkpoint)
    monkeypatch.setattr(identity_module, "_MEMORY", {})  # as a new process would start

    def no_hashing(path):
        raise AssertionError("the checkpoint was hashed again")

    monkeypatch.setattr(identity_module, "_hash_safetensors", no_hashing)
    assert checkpoint_digests(checkpoint) == first


def test_a_changed_file_is_hashed_again(checkpoint, fresh_memory, monkeypatch):
    first = checkpoint_digests(checkpoint)
    monkeypatch.setattr(identity_module, "_MEMORY", {})
    save_checkpoint(soundnet8(heads=(HeadSpec("b", 4),)), checkpoint)
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = checkpoint_digests(checkpoint)
    assert again != first and again[0] == file_sha256(checkpoint)


def test_a_model_without_a_checkpoint_is_named_by_its_architecture():
    assert model_key(soundnet8()) == "soundnet8-init-seed0"
    assert precision_cache(soundnet8()) is None


def test_the_precision_cache_is_per_weights_device_and_layers(checkpoint, tmp_path):
    cache = precision_cache(load_checkpoint(checkpoint))
    assert cache is not None
    assert "cpu" in cache.prefix and "torch" in cache.prefix
    cache.put("bf16", ["pool5"], {"error": 0.01, "keep_fp32": [], "note": ""})
    assert cache.get("bf16", ["pool5"]) == {"error": 0.01, "keep_fp32": [], "note": ""}
    assert cache.get("bf16", ["conv7"]) is None and cache.get("fp16", ["pool5"]) is None
    other = PrecisionCache("another-model", cache.file)
    assert other.get("bf16", ["pool5"]) is None


def test_an_unwritable_cache_is_not_an_error(checkpoint, fresh_memory, monkeypatch, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("SOUNDNET_HOME", str(blocked))
    assert checkpoint_digests(checkpoint)[0] == file_sha256(checkpoint)
