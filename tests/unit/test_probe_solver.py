"""The PyTorch probe solver: window scores by convolution, the objectives of the references,
convergence on badly scaled features, flags when it stops early, devices."""

import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from soundnet_cli.datasets import ESC50
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.evaluation.protocol import evaluate
from soundnet_cli.probes import ClipProbe, LinearSVMProbe, LogRegProbe, build_probe, cut_windows
from soundnet_cli.probes import solver as solver_module
from soundnet_cli.probes.solver import WindowData, fit_linear
from soundnet_cli.weights.checkpoints import load_checkpoint

from ..fakes import make_esc_tree


def clips_of(n: int, classes: int, *, steps=8, dim=5, scale=1.0, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for i in range(n):
        k = i % classes
        clip = rng.normal(size=(steps, dim)) + 1.5 * np.eye(dim)[k % dim]
        clips.append((clip * scale + shift).astype(np.float32))
        labels.append(k)
    return clips, np.array(labels)


def windows_of(clips, labels, steps):
    parts = [cut_windows(c, steps) for c in clips]
    return np.concatenate(parts), np.repeat(labels, [len(p) for p in parts])


def decisions(solution, X):
    return X @ solution.coef.T + solution.intercept


@pytest.mark.parametrize("segment", [512, 2])
@pytest.mark.parametrize("steps", [1, 3, 5])
@pytest.mark.parametrize("lengths", [None, [3, 8, 1, 6, 5, 2]])
def test_window_scores_are_a_convolution_of_the_steps(lengths, steps, segment, monkeypatch):
    monkeypatch.setattr(solver_module, "SEGMENT_WINDOWS", segment)  # 2: many short segments
    clips, _ = clips_of(6, 2, steps=8, dim=4)
    if lengths:  # clips of several lengths, one shorter than a window
        clips = [c[:n] for c, n in zip(clips, lengths, strict=True)]
    data = WindowData(clips, steps=steps)
    theta = torch.randn(2, data.dim, dtype=torch.float64)
    scores = data.scores(theta)
    X = np.concatenate([cut_windows(c, steps) for c in clips])
    expected = X @ theta[:, :-1].numpy().T + theta[:, -1].numpy()
    got = scores.permute(0, 2, 1)[data.mask[:, 0] > 0].numpy()
    assert data.n_windows == len(X)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("segment", [512, 3])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_adjoint_is_the_transpose_of_the_scores(steps, segment, monkeypatch):
    monkeypatch.setattr(solver_module, "SEGMENT_WINDOWS", segment)
    if segment < 512:  # and one clip per spectral product
        monkeypatch.setattr(solver_module, "SPECTRA_BYTES", 1)
    clips, _ = clips_of(5, 2, steps=9, dim=3, shift=-20.0)
    data = WindowData([c[: 4 + i] for i, c in enumerate(clips)], steps=steps)
    theta = torch.randn(3, data.dim, dtype=torch.float64)
    r = torch.randn(data.batch, 3, data.windows, dtype=torch.float64) * data.mask
    left = float((data.scores(theta) * r).sum())
    right = float((theta * data.adjoint(r)).sum())
    assert left == pytest.approx(right, rel=1e-5)


@pytest.mark.parametrize("classes", [2, 3])
def test_squared_hinge_reaches_liblinears_optimum(classes):
    clips, labels = clips_of(30, classes)
    X, y = windows_of(clips, labels, 3)
    solution = fit_linear(clips, labels, classes, 3, C=0.05, tol=1e-6)
    reference = LinearSVC(C=0.05, dual=False, tol=1e-10, max_iter=100_000).fit(X, y)
    expected = reference.decision_function(X).reshape(len(X), -1)
    assert solution.report.converged
    np.testing.assert_allclose(decisions(solution, X), expected, atol=1e-4 * np.abs(expected).max())


def test_badly_scaled_features_converge_to_the_same_optimum():
    """Logits-like features (mean -200, std 45): the preconditioner makes them as easy as
    standardised ones; liblinear's dual solver runs out of iterations and says so."""
    clips, labels = clips_of(40, 4, scale=45.0, shift=-200.0)
    X, y = windows_of(clips, labels, 3)
    solution = fit_linear(clips, labels, 4, 3, C=0.05, tol=1e-6)
    reference = LinearSVC(C=0.05, dual=False, tol=1e-12, max_iter=100_000).fit(X, y)
    expected = reference.decision_function(X)
    assert solution.report.converged
    np.testing.assert_allclose(decisions(solution, X), expected, atol=1e-4 * np.abs(expected).max())
    dual = LinearSVMProbe(C=0.05, max_iter=20, solver="liblinear").fit(X, y)
    assert dual.fit_report_ is not None and not dual.fit_report_.converged


def test_conjugate_gradients_get_more_steps_when_capped_newton_steps_stall(monkeypatch):
    """One conjugate-gradient step per Newton step is preconditioned gradient descent, too slow
    on many dimensions and few windows: the solver notices and gives the systems more steps."""
    monkeypatch.setattr(solver_module, "MAX_CG", 1)
    monkeypatch.setattr(solver_module, "RANK", 2)
    clips, labels = clips_of(24, 3, steps=1, dim=40, seed=3)
    X, y = windows_of(clips, labels, 1)
    solution = fit_linear(clips, labels, 3, 1, C=1.0, tol=1e-6, max_iter=60)
    reference = LinearSVC(C=1.0, dual=False, tol=1e-12, max_iter=100_000).fit(X, y)
    expected = reference.decision_function(X)
    assert solution.report.converged
    np.testing.assert_allclose(decisions(solution, X), expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_matches_scikit_learn(classes):
    clips, labels = clips_of(30, classes)
    X, y = windows_of(clips, labels, 3)
    solution = fit_linear(clips, labels, classes, 3, loss="logistic", C=0.05, tol=1e-7)
    reference = LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000).fit(X, y)
    expected = reference.decision_function(X).reshape(len(X), -1)
    np.testing.assert_allclose(decisions(solution, X), expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("loss", ["squared-hinge", "logistic"])
def test_preconditioner_split_between_exact_and_global_parts_still_matches(monkeypatch, loss):
    """With fewer exact directions than window dimensions, the rest of the space goes through
    the global part of the preconditioner: the optimum must not move."""
    monkeypatch.setattr(solver_module, "RANK", 3)
    clips, labels = clips_of(24, 3, steps=40)
    X, y = windows_of(clips, labels, 4)
    X = X.astype(np.float64)  # scikit-learn's float32 fits stop short of the optimum
    solution = fit_linear(clips, labels, 3, 4, loss=loss, C=0.02, tol=1e-7)
    if loss == "logistic":
        reference = LogisticRegression(C=0.02, tol=1e-10, max_iter=10_000).fit(X, y)
    else:
        reference = LinearSVC(C=0.02, dual=False, tol=1e-10, max_iter=100_000).fit(X, y)
    expected = reference.decision_function(X)
    assert solution.report.converged
    np.testing.assert_allclose(decisions(solution, X), expected, atol=1e-4 * np.abs(expected).max())


def test_features_with_nan_are_refused_in_one_line():
    clips, labels = clips_of(6, 2)
    clips[2][3, 1] = np.nan
    with pytest.raises(SoundnetError) as caught:
        fit_linear(clips, labels, 2, 3)
    assert str(caught.value) == "the probe's features contain NaN or infinite values"


def test_a_solver_that_stops_early_says_so():
    clips, labels = clips_of(30, 3, scale=45.0, shift=-200.0)
    probe = ClipProbe(LinearSVMProbe(C=0.05, max_iter=1), steps=3).fit(clips, labels.astype(str))
    report = probe.fit_report
    assert report is not None and not report.converged
    assert report.iterations == 1 and report.gradient_ratio > report.tol


def test_the_same_data_gives_the_same_probe():
    clips, labels = clips_of(30, 3)
    first = fit_linear(clips, labels, 3, 3, C=0.05)
    second = fit_linear(clips, labels, 3, 3, C=0.05)
    np.testing.assert_array_equal(first.coef, second.coef)
    np.testing.assert_array_equal(first.intercept, second.intercept)


def test_clip_scores_need_no_windows():
    clips, labels = clips_of(12, 3, steps=10)
    probe = ClipProbe(LinearSVMProbe(C=0.1), steps=4).fit(clips, labels.astype(str))
    by_windows = np.stack(
        [probe.estimator.decision_function(cut_windows(c, 4)).mean(0) for c in clips]
    )
    np.testing.assert_allclose(probe.decision_function(clips), by_windows, rtol=1e-9, atol=1e-9)
    short = clips[0][:2]  # shorter than a window: repeated circularly, as cut_windows does
    np.testing.assert_allclose(
        probe.decision_function([short])[0],
        probe.estimator.decision_function(cut_windows(short, 4))[0],
        rtol=1e-9,
        atol=1e-9,
    )


def test_both_solvers_agree_on_a_clip_probe():
    clips, labels = clips_of(30, 3, steps=6)
    ours = ClipProbe(LinearSVMProbe(C=0.1), steps=2).fit(clips, labels.astype(str))
    reference = ClipProbe(LinearSVMProbe(C=0.1, solver="liblinear"), steps=2).fit(
        clips, labels.astype(str)
    )
    a, b = ours.decision_function(clips), reference.decision_function(clips)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
    assert (ours.predict(clips) == reference.predict(clips)).all()


def test_solver_choice_and_device_reach_the_probe():
    probe = build_probe(LinearSVMProbe, 0.5, solver="liblinear", device="cpu")
    assert (probe.solver, probe.device, probe.C) == ("liblinear", "cpu", 0.5)
    assert build_probe(LogRegProbe, 1.0, device="cuda:1").device == "cuda:1"
    with pytest.raises(UsageProblem, match="unknown solver"):
        build_probe(LinearSVMProbe, 0.5, solver="sgd")

    class PluginProbe:
        name = "plugin"

        def __init__(self, C):
            self.C = C

    assert build_probe(PluginProbe, 1.0).C == 1.0
    with pytest.raises(UsageProblem, match="no solver choice"):
        build_probe(PluginProbe, 1.0, solver="liblinear")


def test_unknown_device_fails_in_the_solver():
    clips, labels = clips_of(6, 2)
    with pytest.raises((RuntimeError, SoundnetError)):
        fit_linear(clips, labels, 2, 3, device="nonsense")


def test_evaluate_fits_its_probes_on_the_requested_device(tmp_path, named_checkpoint, monkeypatch):
    tree = make_esc_tree(tmp_path / "esc", {"low": 200.0, "high": 4000.0}, per_class=4, folds=2)
    devices = []
    original = solver_module.fit_linear

    def spy(*args, **kwargs):
        devices.append(kwargs["device"])
        return original(*args, **kwargs)

    monkeypatch.setattr(solver_module, "fit_linear", spy)
    model = load_checkpoint(named_checkpoint)
    report = evaluate(ESC50(), tree, model, ["pool5"], C=1.0, device="cpu")
    assert devices == ["cpu", "cpu"]  # one probe per split, on the device of the features
    assert report.solver == "torch"
    assert all(r.converged for r in report.results)
    assert report.as_dict()["splits"][0]["fit"]["solver"] == "torch-newton-squared-hinge"
    reference = evaluate(ESC50(), tree, model, ["pool5"], C=1.0, solver="liblinear")
    assert devices == ["cpu", "cpu"] and reference.solver == "liblinear"
    assert reference.as_dict()["splits"][0]["fit"]["solver"] == "liblinear"


# -- found by mutation testing (issue 30) ------------------------------------------------------
# Every fit above uses clips of one length, so no window was ever masked out: a mask multiplied
# in was indistinguishable from one divided by (1 / 1 == 1 * 1), and the losses' second
# derivatives only steer the Newton steps, so a wrong one still reached the same optimum.


def _losses_with_masked_windows():
    """Each loss object on (2 clips, 3 columns, 5 windows) scores, the last two windows of the
    second clip masked out (label 0 / mask 0, as WindowData.per_window leaves them)."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 1, 5, dtype=torch.float64)
    mask[1, :, 3:] = 0.0
    signs = torch.where(torch.rand(2, 3, 5, generator=gen) > 0.5, 1.0, -1.0).double() * mask
    onehot = F.one_hot(torch.randint(0, 3, (2, 5), generator=gen), 3).permute(0, 2, 1) * mask
    yield "squared-hinge", solver_module._SquaredHinge(signs)
    yield "binary-logistic", solver_module._BinaryLogistic(signs[:, :1])
    yield "multinomial", solver_module._Multinomial(onehot.double(), mask)


def test_each_losss_gradient_curvature_and_hessian_are_its_derivatives():
    """grad is d value / d z, hessian(z)(v) the Hessian-vector product and curvature the
    Hessian's diagonal (each class's own curvature), all zero on masked windows. Mutations
    killed: a mask or ``|y|`` divided by instead of multiplied, ``2.0 -> 3.0`` in the squared
    hinge's curvature, ``p * (2 - p)``, ``p / (1 - p)``, the softmax over windows (dim 2)."""
    for name, loss in _losses_with_masked_windows():
        columns = loss.columns
        z = (3 * torch.randn(2, columns, 5, dtype=torch.float64)).requires_grad_()
        value = loss.value(z)
        assert value.shape == ((1,) if loss.coupled else (columns,)), name
        (grad,) = torch.autograd.grad(value.sum(), z, create_graph=True)
        np.testing.assert_allclose(loss.grad(z).detach(), grad.detach(), rtol=1e-9, atol=1e-12)
        v = torch.randn_like(z)
        (hv,) = torch.autograd.grad((grad * v).sum(), z, retain_graph=True)
        got = loss.hessian(z.detach())(v.float())
        np.testing.assert_allclose(got, hv, rtol=1e-5, atol=1e-6 * float(hv.abs().max()))
        diagonal = torch.zeros_like(z)
        for k in range(columns):  # the windows are independent: one product per class
            unit = torch.zeros_like(z)
            unit[:, k] = 1.0
            (column,) = torch.autograd.grad((grad * unit).sum(), z, retain_graph=True)
            diagonal[:, k] = column[:, k]
        curvature = loss.curvature(z.detach())
        np.testing.assert_allclose(curvature, diagonal, rtol=1e-9, atol=1e-12, err_msg=name)
        masked = torch.zeros(2, 1, 5, dtype=torch.bool)
        masked[1, :, 3:] = True
        masked = masked.expand_as(z)
        assert (loss.grad(z.detach())[masked] == 0).all() and (curvature[masked] == 0).all()


@pytest.mark.parametrize(
    ("loss", "classes"), [("squared-hinge", 3), ("logistic", 2), ("logistic", 3)]
)
def test_clips_of_several_lengths_reach_the_windows_optimum(monkeypatch, loss, classes):
    """Clips of several lengths (one shorter than a window) are cut into overlap-save segments
    whose straddling windows are masked out; the fit must still be the reference's on exactly
    the windows ``cut_windows`` gives, with each window labelled by its own clip. Mutations
    killed: masks divided by, the last clip's windows given the previous clip's label
    (``np.minimum(owner, len(lengths) - 2)``), the owners not reshaped per segment."""
    monkeypatch.setattr(solver_module, "SEGMENT_WINDOWS", 16)
    clips, labels = clips_of(12, classes, steps=9)
    clips = [c[: 2 + (5 * i) % 8] for i, c in enumerate(clips)]  # lengths 2 to 9
    X, y = windows_of(clips, labels, 3)
    X = X.astype(np.float64)
    solution = fit_linear(clips, labels, classes, 3, loss=loss, C=0.05, tol=1e-7)
    if loss == "logistic":
        reference = LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000).fit(X, y)
    else:
        reference = LinearSVC(C=0.05, dual=False, tol=1e-10, max_iter=100_000).fit(X, y)
    expected = reference.decision_function(X).reshape(len(X), -1)
    assert solution.report.converged
    np.testing.assert_allclose(decisions(solution, X), expected, atol=1e-4 * np.abs(expected).max())


def test_segments_are_as_few_as_the_windows_need(monkeypatch):
    """Overlap-save segments of ``SEGMENT_WINDOWS`` windows: ceil(windows / SEGMENT_WINDOWS) of
    them, each as long as its windows need, never one more (memory and time grow with their
    count). Mutations killed: ``max(2, ...)``, ``* hop``, ``total + steps``, ``+ 2``."""
    clips, _ = clips_of(3, 2, steps=6)
    clips = [clips[0][:4], clips[1][:5], clips[2]]  # 15 steps, 13 windows of 3 steps
    assert WindowData(clips, steps=3).batch == 1
    monkeypatch.setattr(solver_module, "SEGMENT_WINDOWS", 4)
    data = WindowData(clips, steps=3)
    assert (data.batch, data.x.shape[2]) == (4, 4 + 3 - 1)
    monkeypatch.setattr(solver_module, "SEGMENT_WINDOWS", 13)  # exactly one full segment
    assert WindowData(clips, steps=3).batch == 1


def test_fit_linears_arguments_are_checked_and_its_defaults_are_liblinears():
    """Mutations killed: the messages emptied (also WindowData's), ``C <= 0`` turned into
    ``C < 0`` (C = 0 accepted: zero weights), the default C changed, labels of another integer
    type refused by one_hot, float64 features not read as float32, the number of columns taken
    from the labels rather than ``n_classes``, the report's solver name and seconds."""
    clips, labels = clips_of(12, 3)
    with pytest.raises(SoundnetError, match="^a probe needs training examples of at least two"):
        fit_linear(clips, labels, 1, 3)
    with pytest.raises(SoundnetError, match="^C must be positive, not 0$"):
        fit_linear(clips, labels, 3, 3, C=0)
    with pytest.raises(SoundnetError, match="^unknown loss 'hinge'$"):
        fit_linear(clips, labels, 3, 3, loss="hinge")
    for bad in (clips[0][:, 0], clips[0][:0]):  # one channel's values; no steps at all
        shape = re.escape(str(bad.shape))
        with pytest.raises(SoundnetError, match=f"^expected features shaped .*got {shape}$"):
            fit_linear([bad, *clips[1:]], labels, 3, 3)
    with pytest.raises(SoundnetError, match="^a probe needs training clips$"):
        WindowData([], steps=3)
    with pytest.raises(SoundnetError, match="^a window needs at least one step, not 0$"):
        WindowData(clips, steps=0)
    with pytest.raises(SoundnetError, match=r"^clips have different channel counts: \[4, 5\]$"):
        WindowData([clips[0], clips[1][:, :4]], steps=3)
    started = time.perf_counter()
    default = fit_linear(clips, labels.astype(np.int32), 3, 3)
    as_float64 = fit_linear([c.astype(np.float64) for c in clips], labels, 3, 3)
    np.testing.assert_array_equal(as_float64.coef, default.coef)  # features read as float32
    assert 0 < default.report.seconds <= time.perf_counter() - started
    assert default.report.solver == "torch-newton-squared-hinge"
    np.testing.assert_array_equal(default.coef, fit_linear(clips, labels, 3, 3, C=0.01).coef)
    # a class without training clips still gets its column (all its windows negative)
    absent = fit_linear(clips, labels, 4, 3)
    assert absent.coef.shape == (4, 3 * 5) and absent.intercept.shape == (4,)
    assert (decisions(absent, windows_of(clips, labels, 3)[0])[:, 3] < 0).all()


def test_a_warm_start_at_the_optimum_takes_no_newton_step():
    """``init`` is where the solver starts: from its own optimum it has nothing left to do, and
    from another C's optimum it reaches this C's. Mutations killed: ``init`` ignored (a cold
    start takes Newton steps), the coefficients and intercepts mixed up."""
    clips, labels = clips_of(24, 3)
    cold = fit_linear(clips, labels, 3, 3, C=0.05, tol=1e-6)
    assert cold.report.converged and cold.report.iterations > 0
    warm = fit_linear(clips, labels, 3, 3, C=0.05, tol=1e-6, init=(cold.coef, cold.intercept))
    assert warm.report.converged and warm.report.iterations == 0
    np.testing.assert_array_equal(warm.coef, cold.coef)
    np.testing.assert_array_equal(warm.intercept, cold.intercept)
    # a gradient ratio equal to the tolerance has converged (``ratio <= tol``)
    ratio = warm.report.gradient_ratio
    edge = fit_linear(clips, labels, 3, 3, C=0.05, tol=ratio, init=(cold.coef, cold.intercept))
    assert edge.report.gradient_ratio == ratio and edge.report.converged
    other = fit_linear(clips, labels, 3, 3, C=1.0, tol=1e-6)
    moved = fit_linear(clips, labels, 3, 3, C=0.05, tol=1e-6, init=(other.coef, other.intercept))
    X = windows_of(clips, labels, 3)[0]
    expected = decisions(cold, X)
    assert moved.report.converged
    np.testing.assert_allclose(decisions(moved, X), expected, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("steps", [1, 3])
def test_one_clip_is_windowed_like_many(steps):
    """Mutants that read the second clip's length (``lengths[1]`` for ``lengths[0]``): scoring a
    single clip, as probe predict does for one file, raised IndexError."""
    (clip,), _ = clips_of(1, 1, steps=7, dim=4)
    data = WindowData([clip], steps=steps)
    theta = torch.randn(2, data.dim, dtype=torch.float64)
    got = data.scores(theta).permute(0, 2, 1)[data.mask[:, 0] > 0].numpy()
    X = cut_windows(clip, steps)
    expected = X @ theta[:, :-1].numpy().T + theta[:, -1].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_clips_of_one_length_are_a_batch_and_one_step_windows_need_no_spectra():
    """What the docstring promises about cost, asserted (mutants: ``!=`` for ``==`` sent clips
    of one length through overlap-save segments; ``steps >= 1`` kept the spectra of the
    features for one-step windows, which never use them: memory the size of the features)."""
    clips, _ = clips_of(4, 2, steps=9, dim=3)
    stacked = WindowData(clips, steps=3)
    assert (stacked.batch, stacked.windows, stacked.n_windows) == (4, 7, 28)
    assert len(stacked.spectra) >= 1
    assert WindowData(clips, steps=1).spectra == []


def test_the_bias_gradient_is_summed_in_float64():
    """Mutant: the adjoint's sum over windows left in float32 (``dtype=None``), where a large
    window weight swallows the small ones: 1e8 + 1 - 1e8 is 0 in float32."""
    clips = [np.zeros((3, 2), np.float32)]
    data = WindowData(clips, steps=1)
    r = torch.tensor([[[1e8, 1.0, -1e8]]], dtype=torch.float64)
    assert float(data.adjoint(r)[0, -1]) == 1.0
