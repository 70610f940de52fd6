"""No probe output holds ``nan`` where a number is expected: non-finite features or weights
are a one-line error (issue 25, item 4's probe part)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundnet_cli.errors import SoundnetError
from soundnet_cli.probes import ClipProbe, LinearSVMProbe, load_probe, save_probe, storage
from soundnet_cli.probes.storage import ProbeFileError


def clips(nan_at: int | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((12, 4)).astype(np.float32) + i % 2 for i in range(6)]
    if nan_at is not None:
        data[nan_at][3, 1] = np.nan
    return data


LABELS = ["a", "b"] * 3


@pytest.mark.parametrize("solver", ["torch", "liblinear"])
def test_fitting_on_nan_features_is_a_one_line_error(solver):
    with pytest.raises(SoundnetError, match="clip 2 contain NaN or infinite") as caught:
        ClipProbe(LinearSVMProbe(C=1.0, solver=solver), 3).fit(clips(nan_at=2), LABELS)
    assert "\n" not in str(caught.value)


def test_scoring_nan_features_is_an_error_not_nan_scores():
    probe = ClipProbe(LinearSVMProbe(C=1.0), 3).fit(clips(), LABELS)
    with pytest.raises(SoundnetError, match="clip 4 contain NaN"):
        probe.decision_function(clips(nan_at=4))


def test_a_probe_with_nan_weights_is_neither_saved_nor_loaded(tmp_path: Path):
    probe = ClipProbe(LinearSVMProbe(C=1.0), 3).fit(clips(), LABELS)
    meta = {"probe": "linear-svm", "params": {"C": 1.0}, "window_steps": 3}
    path = save_probe(tmp_path / "ok.npz", probe, meta)
    probe.estimator.coef_[0, 0] = np.nan
    with pytest.raises(ProbeFileError, match="NaN or infinite weights"):
        save_probe(tmp_path / "bad.npz", probe, meta)
    # a file with NaN weights and a checksum that matches them (written by hand)
    with np.load(path) as data:
        contents = {k: data[k] for k in data.files}
    contents["a_coef"] = probe.estimator.coef_
    arrays = {k[2:]: v for k, v in contents.items() if k.startswith("a_")}
    contents["checksum"] = np.array(storage._digest(arrays, str(contents["meta"])))
    np.savez(tmp_path / "forged.npz", **contents)
    assert json.loads(str(contents["meta"]))["probe"] == "linear-svm"
    with pytest.raises(ProbeFileError, match="NaN or infinite weights"):
        load_probe(tmp_path / "forged.npz")


def test_a_decompression_bomb_is_refused_before_it_is_inflated(tmp_path: Path, monkeypatch):
    """A small probe file holding a deflated member that inflates far beyond the file: refused
    from the zip header, without inflating it (np.load is never reached)."""
    import zipfile

    bomb = tmp_path / "bomb.npz"
    with (
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("a_coef.npy", "w", force_zip64=True) as member,
    ):
        np.lib.format.write_array_header_1_0(
            member, {"descr": "<f8", "fortran_order": False, "shape": (4096, 1024)}
        )
        zeros = bytes(2**20)
        for _ in range(32):  # 32 MiB of zeros, tens of KB on disk
            member.write(zeros)
    assert bomb.stat().st_size < 200_000

    def never(*args, **kwargs):
        raise AssertionError("the archive was inflated")

    monkeypatch.setattr(np, "load", never)
    with pytest.raises(ProbeFileError, match="inflates to 33,554,") as caught:
        load_probe(bomb)
    assert "\n" not in str(caught.value)


def test_a_member_whose_header_lies_about_its_size_is_refused(tmp_path: Path):
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (2**28, 256)}
    )
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as archive:
        archive.writestr("a_coef.npy", head.getvalue() + bytes(64))
    with pytest.raises(ProbeFileError, match="not the bytes it holds"):
        load_probe(liar)


def test_scores_that_are_not_finite_are_an_error_not_inf():
    """A plugin estimator whose scores overflow: an error, never inf or nan in the output."""

    class Overflowing:
        classes_ = np.array(["a", "b"])

        def fit(self, X, y):
            return self

        def decision_function(self, X):
            return np.full((len(X), 2), np.inf)

    probe = ClipProbe(Overflowing(), 3).fit(clips(), LABELS)
    with pytest.raises(SoundnetError, match="scores of clip 0 are not finite"):
        probe.decision_function(clips())
