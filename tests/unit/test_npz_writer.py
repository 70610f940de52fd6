"""The npz writer on its own: what one ``<stem>.npz`` holds (written whole or streamed), what a
resume's check finds in it, and how the reader lists and reads it. Fast, no model: these tests
are the `npz-writer` row of `nox -s mutants` (docs/testing.md)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from soundnet_cli.extraction.writers.base import Finding, WriteSpec
from soundnet_cli.extraction.writers.npz import NpzWriter

PROVENANCE = {"architecture": "soundnet8", "mix": "mean", "pool": None}


def times(layer: str, steps: int) -> np.ndarray:
    return np.arange(steps) * 0.5 + (1.0 if layer == "conv1" else 2.0)


def spec(pool=None) -> WriteSpec:
    return WriteSpec(("conv1", "pool5"), pool, PROVENANCE, times)


def features(pooled: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    steps = {"conv1": rng.normal(size=(5, 3)), "pool5": rng.normal(size=(4, 2))}  # float64
    return {k: v.mean(0) for k, v in steps.items()} if pooled else steps


def contents(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def test_an_npz_holds_each_layer_in_float32_its_step_times_and_the_provenance(tmp_path):
    NpzWriter().write(tmp_path, "a", features(), spec())
    held = contents(tmp_path / "a.npz")
    assert set(held) == {"conv1", "conv1_times", "pool5", "pool5_times", "provenance"}
    for layer, values in features().items():
        assert held[layer].dtype == np.float32
        np.testing.assert_array_equal(held[layer], values.astype(np.float32))
        np.testing.assert_array_equal(held[f"{layer}_times"], times(layer, len(values)))
    assert json.loads(str(held["provenance"])) == PROVENANCE


def test_a_pooled_npz_has_no_step_times(tmp_path):
    NpzWriter().write(tmp_path, "a", features(pooled=True), spec("mean"))
    assert set(contents(tmp_path / "a.npz")) == {"conv1", "pool5", "provenance"}


@pytest.mark.parametrize("pool", [None, "mean"])
def test_a_streamed_npz_holds_what_a_written_one_holds(tmp_path, pool):
    steps = features()
    writer = NpzWriter()
    shapes = {layer: values.shape for layer, values in steps.items()}
    (tmp_path / "scratch").mkdir()
    with writer.stream(tmp_path, "b", shapes, spec(pool), tmp_path / "scratch") as streams:
        for layer, values in steps.items():
            streams.add(layer, values[:2])
            streams.add(layer, values[2:])
    writer.write(tmp_path, "a", features(pooled=pool is not None), spec(pool))
    written, streamed = contents(tmp_path / "a.npz"), contents(tmp_path / "b.npz")
    assert set(streamed) == set(written)
    assert str(streamed.pop("provenance")) == str(written.pop("provenance"))
    for name, values in written.items():
        assert streamed[name].dtype == values.dtype, name
        np.testing.assert_allclose(streamed[name], values, rtol=1e-6, err_msg=name)


def test_the_check_finds_missing_added_damaged_and_complete_outputs(tmp_path):
    writer = NpzWriter()
    recorded = {"conv1": [5, 3], "pool5": [4, 2]}
    assert writer.check(tmp_path, "a", recorded) == Finding(missing=("conv1", "pool5"))
    writer.write(tmp_path, "a", features(), spec())
    assert writer.check(tmp_path, "a", recorded) == Finding()
    assert writer.check(tmp_path, "a", {"conv1": None, "pool5": None}) == Finding()
    assert writer.check(tmp_path, "a", {**recorded, "conv7": None}) == Finding(missing=("conv7",))
    assert writer.check(tmp_path, "a", {"conv1": [4, 3]}) == Finding(
        damage="a.npz: layer 'conv1' has shape [5, 3], the manifest recorded [4, 3]"
    )
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    found = writer.check(tmp_path, "c", recorded)
    assert found.damage is not None and found.damage.startswith("c.npz: unreadable (")


def test_a_member_cut_short_is_damage(tmp_path):
    member = tmp_path / "conv1.npy"
    np.save(member, np.ones((5, 3), np.float32))
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as archive:
        archive.writestr("conv1.npy", member.read_bytes()[:-4])
    damaged = Finding(damage="a.npz: layer 'conv1' truncated")
    assert NpzWriter().check(tmp_path, "a", {"conv1": [5, 3]}) == damaged
    # a layer added since (missing) does not hide the damage of the layers after it
    assert NpzWriter().check(tmp_path, "a", {"conv7": None, "conv1": [5, 3]}) == damaged


def test_the_reader_parses_lists_and_reads_npz_outputs(tmp_path):
    writer = NpzWriter()
    assert writer.parse("d/x.npz") == ("d/x", None)
    assert writer.parse("d/x.conv1.npy") is None and writer.parse("npz") is None
    writer.write(tmp_path, "a", features(), spec())
    assert writer.holds(tmp_path / "a.npz", "conv1") and not writer.holds(tmp_path / "a.npz", "x")
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    assert writer.holds(tmp_path / "c.npz", "conv1")  # listed, so reading it reports the failure
    read = writer.read(tmp_path / "a.npz", "pool5", "")
    np.testing.assert_array_equal(read, features()["pool5"].astype(np.float32))
    np.savez(tmp_path / "p.npz", conv1=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):  # never unpickles what a features file holds
        writer.read(tmp_path / "p.npz", "conv1", "")
