"""The features folder has one owner (issue 24): settings checked before anything is made and
recorded whole in features.json; long names, a full disk and symlinked folder DAGs never stop
the run (issue 25, items 6, 7, 10; the collision message); npz resume is checked as npy resume
is, and an added layer is an addition, not damage (issue 30)."""

import errno
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from soundnet_cli.errors import UsageProblem
from soundnet_cli.extraction.engine import extract
from soundnet_cli.extraction.folder import (
    MAX_OUTPUT_NAME,
    NAME_MAX,
    SETUP,
    SUFFIX_RESERVE,
    list_feature_files,
    output_stem,
    read_feature_file,
)
from soundnet_cli.extraction.manifest import MANIFEST
from soundnet_cli.extraction.writers import npy as npy_module
from soundnet_cli.extraction.writers import writer_for
from soundnet_cli.extraction.writers.base import StepSink
from soundnet_cli.media.files import walk
from soundnet_cli.weights.checkpoints import load_checkpoint

from ..conftest import tone, write_wav


@pytest.fixture
def model(named_checkpoint: Path):
    return load_checkpoint(named_checkpoint)


def rows(out: Path) -> dict[str, dict]:
    lines = (out / MANIFEST).read_text().splitlines()
    return {r["key"]: r for r in (json.loads(x) for x in lines)}


# -- settings ----------------------------------------------------------------------------------
def test_a_bad_precision_is_refused_before_the_folder_exists(model, tmp_path):
    clip = write_wav(tmp_path / "in" / "a.wav", tone(1.0))
    out = tmp_path / "out"
    with pytest.raises(UsageProblem, match="precision"):
        extract([clip], ["pool5"], out, model=model, precision="nonsense")
    assert not out.exists()  # no folder, lock or features.json


def test_features_json_records_every_setting_the_values_depend_on(model, tmp_path):
    clip = write_wav(tmp_path / "in" / "a.wav", tone(1.0))
    out = tmp_path / "out"
    extract([clip], ["pool5"], out, model=model, mix="mean", pool="max", fmt="npz")
    setup = json.loads((out / SETUP).read_text())
    assert setup["architecture"] == model.architecture
    assert setup["checkpoint_sha256"] and len(setup["checkpoint_sha256"]) == 64
    assert list(setup["layers"]) == ["pool5"]
    assert (setup["precision"], setup["resampler"]) == ("fp32", "soxr-hq")
    assert (setup["mix"], setup["pool"], setup["format"]) == ("mean", "max", "npz")


def test_bf16_into_an_fp32_folder_is_refused_naming_the_precision(model, tmp_path):
    clip = write_wav(tmp_path / "in" / "a.wav", tone(1.0))
    out = tmp_path / "out"
    extract([clip], ["pool5"], out, model=model)
    before = (out / "a.pool5.npy").read_bytes()
    with pytest.raises(UsageProblem, match=r"precision was 'fp32', now 'bf16'.*new --out"):
        extract([clip], ["pool5"], out, model=model, precision="bf16", overwrite=False)
    assert (out / "a.pool5.npy").read_bytes() == before


def test_an_old_folder_without_precision_is_taken_as_fp32(model, tmp_path):
    """Folders written before precision and resampler were recorded resume in fp32 (and
    refuse bf16); the rerun records the settings it assumed."""
    clip = write_wav(tmp_path / "in" / "a.wav", tone(1.0))
    out = tmp_path / "out"
    extract([clip], ["pool5"], out, model=model)
    setup = json.loads((out / SETUP).read_text())
    for key in ("precision", "resampler", "sample_rate"):
        del setup[key]
    (out / SETUP).write_text(json.dumps(setup))
    with pytest.raises(UsageProblem, match="precision was 'fp32'"):
        extract([clip], ["pool5"], out, model=model, precision="bf16")
    again = extract([clip], ["pool5"], out, model=model)
    assert (again.skipped, again.extracted) == (1, 0)
    assert json.loads((out / SETUP).read_text())["precision"] == "fp32"


class _ProtocolStudent(torch.nn.Module):
    """Every member of the Student protocol, by delegation: no StudentBase, no ``feature``."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.architecture = "protocol-student"
        self.sample_rate = inner.sample_rate
        self.feature_info = inner.feature_info
        self.default_layer = inner.default_layer

    @property
    def device(self):
        return self.inner.device

    def output_length(self, layer, samples):
        return self.inner.output_length(layer, samples)

    def min_samples(self, layer):
        return self.inner.min_samples(layer)

    def forward_features(self, wave, layers):
        return self.inner.forward_features(wave, layers)


def test_a_protocol_student_without_studentbase_runs_through_extract(model, tmp_path):
    student = _ProtocolStudent(model)
    assert not hasattr(student, "feature")
    clip = write_wav(tmp_path / "in" / "a.wav", tone(1.5))
    summary = extract([clip], ["conv5"], tmp_path / "out", model=student)
    assert not summary.failures
    assert np.load(tmp_path / "out" / "a.conv5.npy").shape[1] == 256


# -- issue 25 item 6: long names ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_legal_long_input_names_get_short_outputs_mapped_in_the_manifest(model, tmp_path, fmt):
    names = ["a" * 236 + ".wav", "b" * 250 + ".wav", "short.wav"]  # 240 and 254 bytes
    for name in names:
        write_wav(tmp_path / "in" / name, tone(1.0))
    long_clip = write_wav(tmp_path / "long" / ("c" * 250 + ".wav"), tone(3.0))  # streamed
    out = tmp_path / "out"
    summary = extract(
        [tmp_path / "in", long_clip], ["pool5"], out, model=model, fmt=fmt, chunk_seconds=1.0
    )
    assert not summary.failures and summary.extracted == 4
    table = rows(out)
    assert set(table) == {"in/" + n[:-4] for n in names} | {"long/" + "c" * 250}
    for key, row in table.items():
        for output in row["outputs"]:
            assert len(Path(output).name.encode()) <= MAX_OUTPUT_NAME
            assert (out / output).is_file()
        if key.endswith("short"):
            assert row["outputs"][0].startswith("in/short.")  # short names are unchanged
    assert MAX_OUTPUT_NAME + len("..12345678.part") == NAME_MAX
    # The reader maps the shortened files back to their inputs.
    _, files = list_feature_files(out, "pool5")
    assert sorted(f.key for f in files) == sorted(table)
    assert {f.source for f in files} == {r["path"] for r in table.values()}
    # Resume finds them.
    again = extract(
        [tmp_path / "in", long_clip], ["pool5"], out, model=model, fmt=fmt, chunk_seconds=1.0
    )
    assert (again.skipped, again.extracted, again.redone) == (4, 0, [])


# -- issue 25 item 7: a full disk ---------------------------------------------------------------
def test_a_full_disk_is_a_one_line_failure_and_the_manifest_stays_true(
    model, tmp_path, monkeypatch
):
    """A writer that meets ENOSPC: that input is failed in one line, the others are written,
    and the manifest says exactly that (before: the OSError stopped the whole run)."""
    for name in ("a.wav", "b.wav"):
        write_wav(tmp_path / "in" / name, tone(1.0))
    real = npy_module.NpyWriter.write

    def full_for_b(self, out, stem, features, spec, **kwargs):
        if stem == "b":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, out, stem, features, spec, **kwargs)

    monkeypatch.setattr(npy_module.NpyWriter, "write", full_for_b)
    out = tmp_path / "out"
    summary = extract([tmp_path / "in"], ["pool5"], out, model=model, workers=1)
    assert summary.extracted == 1 and len(summary.failures) == 1
    error = summary.failures[0].error
    assert "b.wav" in error and "no space left" in error and "\n" not in error
    table = rows(out)
    assert table["a"]["status"] == "ok" and table["b"]["status"] == "failed"
    assert table["b"]["outputs"] == [] and not (out / "b.pool5.npy").exists()


def test_a_full_disk_while_streaming_keeps_nothing_of_that_input(model, tmp_path, monkeypatch):
    write_wav(tmp_path / "in" / "long.wav", tone(3.0))

    def full(self, part):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(StepSink, "add", full)
    out = tmp_path / "out"
    summary = extract([tmp_path / "in"], ["conv5"], out, model=model, chunk_seconds=1.0)
    assert len(summary.failures) == 1 and "no space left" in summary.failures[0].error
    assert rows(out)["long"]["status"] == "failed"
    left = [p.name for p in out.rglob("*") if p.is_file()]
    assert not [n for n in left if n.endswith((".npy", ".part"))]


def test_streamed_outputs_are_written_without_a_memory_map(model, tmp_path, monkeypatch):
    """A memory-mapped output on a full disk dies of SIGBUS; plain writes give ENOSPC."""
    clip = write_wav(tmp_path / "in" / "long.wav", tone(3.0, freq=300))
    whole = extract([clip], ["conv5"], tmp_path / "whole", model=model)
    assert not whole.failures

    def no_mmap(*args, **kwargs):
        raise AssertionError("an output was memory-mapped")

    monkeypatch.setattr(np.lib.format, "open_memmap", no_mmap)
    monkeypatch.setattr(np, "memmap", no_mmap)
    for fmt in ("npy", "npz"):
        out = tmp_path / f"streamed-{fmt}"
        summary = extract([clip], ["conv5"], out, model=model, chunk_seconds=1.0, fmt=fmt)
        assert not summary.failures, summary.failures
        _, files = list_feature_files(out, "conv5")
        np.testing.assert_allclose(
            read_feature_file(files[0]),
            np.load(tmp_path / "whole" / "long.conv5.npy"),
            rtol=1e-5,
            atol=1e-5 * float(np.abs(np.load(tmp_path / "whole" / "long.conv5.npy")).max()),
        )


# -- issue 25 item 10: directory-symlink DAGs --------------------------------------------------
def test_a_dag_of_folder_links_is_walked_once_per_folder(tmp_path, caplog):
    """12 levels of folders each holding two links to the next: 2^11 = 2,048 routes to the
    clip before (2^14 at 15 levels); each linked folder is now listed once, and a log says so."""
    levels = [tmp_path / f"level{i}" for i in range(13)]
    for level in levels:
        level.mkdir()
    (levels[-1] / "clip.wav").write_bytes(b"")
    for here, below in zip(levels[1:-1], levels[2:], strict=False):
        os.symlink(below, here / "a")
        os.symlink(below, here / "b")
    root = levels[0]
    os.symlink(levels[1], root / "a")
    os.symlink(levels[1], root / "b")
    with caplog.at_level(logging.INFO, logger="soundnet_cli.media.files"):
        found = walk([root])
    assert len(found) == 1
    assert found[0].rel == "a/" * 12 + "clip.wav"
    assert "not followed" in caplog.text and "listed once" in caplog.text


# -- collisions --------------------------------------------------------------------------------
def test_a_file_folder_collision_names_both_inputs(model, tmp_path):
    write_wav(tmp_path / "in" / "x.wav", tone(1.0))
    write_wav(tmp_path / "in" / "x.pool5.npy" / "y.wav", tone(1.0))
    with pytest.raises(UsageProblem) as caught:
        extract([tmp_path / "in"], ["pool5"], tmp_path / "out", model=model)
    message = str(caught.value)
    assert "x.wav" in message and "y.wav" in message and "\n" not in message


# -- issue 30: npz resume ----------------------------------------------------------------------
def _npz_folder(model, tmp_path, layers=("conv1",)):
    for name, freq in (("a.wav", 300.0), ("b.wav", 500.0)):
        write_wav(tmp_path / "in" / name, tone(1.0, freq=freq))
    out = tmp_path / "out"
    summary = extract([tmp_path / "in"], list(layers), out, model=model, fmt="npz")
    assert summary.extracted == 2
    return out, {k: np.load(out / f"{k}.npz")["conv1"] for k in ("a", "b")}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage(path: Path) -> None:
    """The zip stays readable but the member's data is cut short (a torn write)."""
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data[:-40] if name == "conv1.npy" else data)


def _drop_layer(path: Path) -> None:
    """An .npz that lacks a layer its manifest row says it holds."""
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if not name.startswith("conv1"):
                archive.writestr(name, data)


@pytest.mark.parametrize("spoil", [_truncate, _damage, _drop_layer])
def test_npz_resume_redoes_damaged_outputs_and_says_so(model, tmp_path, spoil):
    out, first = _npz_folder(model, tmp_path, layers=("conv1", "conv2"))
    spoil(out / "b.npz")
    again = extract([tmp_path / "in"], ["conv1", "conv2"], out, model=model, fmt="npz")
    assert (again.extracted, again.skipped) == (1, 1)
    assert len(again.redone) == 1 and "b.npz" in again.redone[0]
    if spoil is _drop_layer:  # the whole reason, word for word
        assert again.redone[0] == (
            f"{tmp_path / 'in' / 'b.wav'}: b.npz: no layer 'conv1' inside, the manifest recorded "
            "it; extracted again"
        )
    with np.load(out / "b.npz") as data:
        np.testing.assert_array_equal(data["conv1"], first["b"])
        assert "conv2" in data.files


def test_an_added_npz_layer_is_an_addition_not_damage(model, tmp_path, caplog):
    """Also the log's wording, word for word (mutation testing): a fresh input is not an
    addition; two added layers are "layers conv2, conv3", one is "layer conv4"."""
    with caplog.at_level(logging.INFO, logger="soundnet_cli.extraction.folder"):
        out, first = _npz_folder(model, tmp_path)
    assert "adding" not in caplog.text
    caplog.clear()
    layers = ["conv1", "conv2", "conv3"]
    with caplog.at_level(logging.INFO, logger="soundnet_cli.extraction.folder"):
        more = extract([tmp_path / "in"], layers, out, model=model, fmt="npz")
    assert (more.extracted, more.skipped, more.redone) == (2, 0, [])
    said = sorted(r.getMessage() for r in caplog.records if "adding" in r.getMessage())
    assert said == [str(tmp_path / "in" / f"{k}.wav: adding layers conv2, conv3") for k in "ab"]
    assert "damaged" not in caplog.text
    for key in ("a", "b"):
        with np.load(out / f"{key}.npz") as data:
            np.testing.assert_array_equal(data["conv1"], first[key])
            assert {"conv2", "conv3"} <= set(data.files)
    assert set(rows(out)["a"]["layers"]) == set(layers)
    caplog.clear()  # one layer more: "layer", not "layers"
    with caplog.at_level(logging.INFO, logger="soundnet_cli.extraction.folder"):
        extract([tmp_path / "in"], [*layers, "conv4"], out, model=model, fmt="npz")
    said = sorted(r.getMessage() for r in caplog.records if "adding" in r.getMessage())
    assert said == [str(tmp_path / "in" / f"{k}.wav: adding layer conv4") for k in "ab"]


def test_writers_are_found_by_format_name():
    assert writer_for("npy").names("d/x", ["pool5", "conv5"]) == [
        "d/x.pool5.npy",
        "d/x.conv5.npy",
    ]
    assert writer_for("npz").names("d/x", ["pool5", "conv5"]) == ["d/x.npz"]
    with pytest.raises(UsageProblem, match="npy, npz"):
        writer_for("csv")


# -- found by mutation testing (issue 30) --------------------------------------------------------
def test_a_resume_records_nothing_twice_and_overwrite_recomputes_everything(model, tmp_path):
    """Mutations killed in ``FeatureFolder.plan`` and ``_finished``: ``--overwrite`` ignored
    (finished outputs trusted anyway), a finished input's manifest row appended again on every
    resume, the row of an output recovered without one never written (or written as ""), a
    row without its outputs listed trusted as it is, damaged layer records crashing the
    resume."""
    for name in ("a", "b"):
        write_wav(tmp_path / "in" / f"{name}.wav", tone(1.0))
    out = tmp_path / "out"
    assert extract([tmp_path / "in"], ["pool5"], out, model=model).extracted == 2
    manifest = (out / MANIFEST).read_text()
    again = extract([tmp_path / "in"], ["pool5"], out, model=model)
    assert (again.extracted, again.skipped) == (0, 2)
    assert (out / MANIFEST).read_text() == manifest  # nothing recorded twice
    lost = next(key for key in rows(out) if key.endswith("b"))
    kept = [line for line in manifest.splitlines() if json.loads(line)["key"] != lost]
    (out / MANIFEST).write_text("".join(f"{line}\n" for line in kept))
    recovered = extract([tmp_path / "in"], ["pool5"], out, model=model)
    assert (recovered.extracted, recovered.skipped) == (0, 2)
    assert rows(out)[lost]["status"] == "ok"  # its row written again from the outputs
    # a row that does not list its outputs: recovered from them; a row whose layer records are
    # damaged: its complete outputs still trusted
    table = rows(out)
    other = next(key for key in table if key != lost)
    table[lost] = {**table[lost], "outputs": []}
    table[other] = {**table[other], "layers": "damaged"}
    (out / MANIFEST).write_text("".join(json.dumps(row) + "\n" for row in table.values()))
    trusted = extract([tmp_path / "in"], ["pool5"], out, model=model)
    assert (trusted.extracted, trusted.skipped) == (0, 2)
    assert rows(out)[lost]["outputs"]  # the recovered row lists them
    redone = extract([tmp_path / "in"], ["pool5"], out, model=model, overwrite=True)
    assert (redone.extracted, redone.skipped) == (2, 0)


def test_a_long_key_is_cut_to_exactly_the_budget_with_or_without_folders():
    """Mutants of ``output_stem``: the cut one byte shorter than the budget allows (``budget -
    10``), and a key without folders given a leading ``/`` (``if head or True``), which would
    name a file at the root of the file system."""
    import hashlib

    budget = MAX_OUTPUT_NAME - SUFFIX_RESERVE
    for key in ("x" * (budget + 1), "d/" + "y" * (budget + 40)):
        stem = output_stem(key)
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        head, _, last = key.rpartition("/")
        want = last[: budget - 9] + "~" + digest
        assert stem == (f"{head}/{want}" if head else want)
        assert len(stem.rpartition("/")[2].encode()) == budget


def test_output_stem_cuts_only_the_last_part_of_a_long_key():
    """The name rules of ``output_stem`` directly (mutation testing): a last part of exactly the
    budget is kept; a longer one is cut, never in the middle of a character, and gets ``~`` and
    8 hex digits of the whole key's sha256; the folders before it stay; a key with undecodable
    bytes (surrogate escapes) is shortened and hashed without an error (the cut part drops
    those bytes: the digest keeps distinct keys apart)."""
    import hashlib

    budget = MAX_OUTPUT_NAME - SUFFIX_RESERVE
    exact = "d/" + "x" * budget
    assert output_stem(exact) == exact
    for base in ("\u00e9" * budget, "caf\udce9" * budget):  # 2-byte letters; escaped bytes
        key = f"d1/d2/{base}"
        stem = output_stem(key)
        head, _, last = stem.rpartition("/")
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        assert head == "d1/d2" and last.endswith(f"~{digest}")
        encoded = last.encode("utf-8", "surrogateescape")
        assert len(encoded) <= budget
        if base[0] == "\u00e9":  # cut at the last whole character before the budget
            assert len(encoded) == budget - 1 and base.startswith(last[: -len(digest) - 1])
