import numpy as np
import pytest
from sklearn.svm import LinearSVC

from soundnet_cli.probes import (
    ClipProbe,
    LinearSVMProbe,
    LogRegProbe,
    choose_c,
    cut_windows,
    load_probe,
    save_probe,
    window_steps,
)
from soundnet_cli.probes.storage import ProbeFileError


def test_window_steps_follow_the_layer_stride():
    assert window_steps(8192, 1.0) == 3  # pool5: 22050 / 8192 = 2.7 steps per second
    assert window_steps(32768, 1.0) == 1  # conv7: never less than one step
    assert window_steps(8192, 5.0) == 13


def test_windows_slide_by_one_step_and_concatenate_time():
    features = np.arange(12, dtype=np.float32).reshape(6, 2)  # (time, channels)
    windows = cut_windows(features, 3)
    assert windows.shape == (4, 6)
    np.testing.assert_array_equal(windows[0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(windows[3], [6, 7, 8, 9, 10, 11])


def test_short_clip_gives_one_circular_window():
    windows = cut_windows(np.array([[1.0], [2.0]]), 3)
    np.testing.assert_array_equal(windows, [[1.0, 2.0, 1.0]])


def blobs(
    n_clips: int, classes: int, seed: int = 0, steps: int = 6, dim: int = 4, sep: float = 3.0
):
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for i in range(n_clips):
        k = i % classes
        clips.append(rng.normal(size=(steps, dim)) + sep * np.eye(dim)[k])
        labels.append(f"class{k}")
    return clips, labels


def test_svm_probe_matches_liblinear_one_vs_rest():
    clips, labels = blobs(30, 3)
    X = np.concatenate([cut_windows(c, 2) for c in clips])
    y = np.repeat(labels, 5)
    ours = LinearSVMProbe(C=0.5, solver="liblinear").fit(X, y)
    reference = LinearSVC(C=0.5, loss="squared_hinge", dual=True, random_state=0).fit(X, y)
    # liblinear's own one-vs-rest and ours differ only in the order the solver visits
    # examples: the same optimum, up to the solver's tolerance
    np.testing.assert_allclose(
        ours.decision_function(X), reference.decision_function(X), rtol=1e-3, atol=1e-4
    )
    primal = LinearSVC(C=0.5, loss="squared_hinge", dual=False).fit(X, y)  # the same optimum
    np.testing.assert_allclose(ours.decision_function(X), primal.decision_function(X), atol=1e-2)
    assert (ours.predict(X) == reference.predict(X)).all()
    # the default solver (PyTorch, all classes at once) stops at its own tolerance: within 1%
    # of the scale of the decision values
    default = LinearSVMProbe(C=0.5).fit(X, y)
    scale = np.abs(primal.decision_function(X)).max()
    np.testing.assert_allclose(
        default.decision_function(X), primal.decision_function(X), atol=1e-2 * scale
    )
    assert (default.predict(X) == reference.predict(X)).all()


def test_binary_probe_has_a_score_per_class():
    clips, labels = blobs(20, 2)
    X = np.concatenate(clips)
    y = np.repeat(labels, 6)
    probe = LinearSVMProbe().fit(X, y)
    scores = probe.decision_function(X)
    assert scores.shape == (len(X), 2)
    np.testing.assert_allclose(scores[:, 0], -scores[:, 1])
    assert (probe.predict(X) == y).mean() > 0.9


def test_clip_probe_averages_window_decisions():
    clips, labels = blobs(24, 3)
    probe = ClipProbe(LinearSVMProbe(C=1.0), steps=2).fit(clips, labels)
    manual = np.stack([probe.estimator.decision_function(cut_windows(c, 2)).mean(0) for c in clips])
    np.testing.assert_allclose(probe.decision_function(clips), manual)
    assert (probe.predict(clips) == np.asarray(labels)).mean() == 1.0


def test_one_class_is_refused():
    from soundnet_cli.errors import SoundnetError

    with pytest.raises(SoundnetError, match="two classes"):
        LinearSVMProbe().fit(np.zeros((4, 2)), ["a"] * 4)


def correlated_clips(n_clips: int, seed: int = 0):
    """Class offsets along one axis, hidden under a large nuisance shared by both axes: only a
    weakly regularised probe learns to subtract it."""
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for i in range(n_clips):
        k = i % 3
        nuisance = 5.0 * rng.normal(size=(2, 1))
        clips.append(np.hstack([nuisance + k + 0.1 * rng.normal(size=(2, 1)), nuisance]))
        labels.append(f"class{k}")
    return clips, labels


def test_choose_c_prefers_the_c_that_generalises():
    clips, labels = correlated_clips(45)
    groups = [str(i) for i in range(45)]
    best, scores = choose_c(
        lambda c: LinearSVMProbe(C=c), clips, labels, groups, 2, grid=(1e-6, 10.0)
    )
    assert set(scores) == {1e-6, 10.0}
    assert best == 10.0 and scores[10.0] > 0.9 > scores[1e-6]


@pytest.mark.parametrize("make", [lambda: LinearSVMProbe(C=0.1), lambda: LogRegProbe(C=1.0)])
def test_saved_probe_round_trips_exactly(tmp_path, make):
    clips, labels = blobs(24, 3)
    probe = ClipProbe(make(), steps=2).fit(clips, labels)
    meta = {
        "probe": probe.estimator.name,
        "params": probe.estimator.get_params(),
        "window_steps": 2,
        "features": {"layer": "pool5", "model": "m-1"},
    }
    path = save_probe(tmp_path / "p.npz", probe, meta)
    loaded = load_probe(path)
    assert loaded.meta["features"] == meta["features"]
    np.testing.assert_array_equal(
        loaded.probe.decision_function(clips), probe.decision_function(clips)
    )
    assert list(loaded.probe.classes_) == list(probe.classes_)


def _saved(tmp_path):
    clips, labels = blobs(12, 3)
    probe = ClipProbe(LinearSVMProbe(), steps=2).fit(clips, labels)
    meta = {
        "probe": "linear-svm",
        "params": probe.estimator.get_params(),
        "window_steps": 2,
        "features": {"layer": "pool5", "model": "m-1"},
    }
    return save_probe(tmp_path / "p.npz", probe, meta)


def test_tampered_probe_is_refused(tmp_path):
    path = _saved(tmp_path)
    with np.load(path) as data:
        contents = {k: data[k] for k in data.files}
    contents["a_coef"] = contents["a_coef"] * 1.01  # someone edits the coefficients
    np.savez(path, **contents)
    with pytest.raises(ProbeFileError, match="modified or damaged"):
        load_probe(path)


def test_garbage_and_pickled_probe_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ProbeFileError, match="not a readable probe file"):
        load_probe(bad)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.array({"evil": True}, dtype=object))
    with pytest.raises(ProbeFileError):
        load_probe(pickled)
    with pytest.raises(ProbeFileError, match="no such probe file"):
        load_probe(tmp_path / "missing.npz")


def test_features_of_another_layer_or_model_are_refused(tmp_path):
    loaded = load_probe(_saved(tmp_path))
    loaded.check_features("pool5", "m-1")
    with pytest.raises(ProbeFileError, match="layer 'pool5', not 'conv7'"):
        loaded.check_features("conv7", "m-1")
    with pytest.raises(ProbeFileError, match="m-1, not m-2"):
        loaded.check_features("pool5", "m-2")


def test_probe_files_written_before_the_torch_solver_still_load(tmp_path):
    """Format soundnet-probe/1 is unchanged: the old parameters (liblinear's max_iter) and no
    `solver` entry load, and predict what the same arrays predict."""
    clips, labels = blobs(12, 3)
    probe = ClipProbe(LinearSVMProbe(solver="liblinear"), steps=2).fit(clips, labels)
    meta = {
        "probe": "linear-svm",
        "params": {"C": 0.01, "max_iter": 5000},
        "window_steps": 2,
        "features": {"layer": "pool5", "model": "m-1"},
    }
    loaded = load_probe(save_probe(tmp_path / "old.npz", probe, meta))
    assert loaded.probe.estimator.get_params() == {"C": 0.01, "max_iter": 5000}
    np.testing.assert_allclose(
        loaded.probe.decision_function(clips), probe.decision_function(clips), rtol=1e-12
    )
