"""Linear probes: the L2-loss SVM (one-vs-rest, as the authors' release) and logistic regression.

Each has two solvers for the same objective: ``torch`` (the default; full-batch truncated Newton
over all classes at once, windows scored by convolution, see :mod:`.solver`) and ``liblinear``
(the reference: scikit-learn's liblinear dual coordinate descent, one class at a time, for the
SVM; scikit-learn's lbfgs for logistic regression; both on materialised windows). Both keep only
coefficients, intercepts and classes after fitting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from soundnet_cli.errors import SoundnetError, UsageProblem

if TYPE_CHECKING:
    from soundnet_cli.probes.solver import FitReport

SOLVERS = ("torch", "liblinear")
DEFAULT_SOLVER = "torch"


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise UsageProblem(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    return solver


def build_probe(
    factory: Callable[..., Any], C: float, *, solver: str | None = None, device: str = "cpu"
) -> Any:
    """A window-level estimator from a registered probe factory, set to fit with ``solver`` on
    ``device`` when it has that choice (the builtin linear probes do). ``solver=None`` keeps the
    probe's default; asking a probe without the choice for ``liblinear`` is an error."""
    estimator = factory(C=C)
    if hasattr(estimator, "solver"):
        if solver is not None:
            estimator.solver = check_solver(solver)
        estimator.device = device
    elif solver not in (None, DEFAULT_SOLVER):
        raise UsageProblem(
            f"probe {getattr(estimator, 'name', type(estimator).__name__)!r} has no solver "
            "choice; a solver applies to linear-svm and logreg",
            parameter="solver",
        )
    return estimator


class LinearProbe(ABC):
    """Decision values are ``X @ coef_.T + intercept_``, one column per class.

    ``solver`` and ``device`` say how to fit, not what: they are not saved with a probe. After a
    fit, ``fit_report_`` says whether the solver converged.
    """

    name = "linear"
    loss = "squared-hinge"
    coef_: np.ndarray
    intercept_: np.ndarray
    classes_: np.ndarray
    fit_report_: FitReport | None = None

    def __init__(
        self,
        C: float,
        max_iter: int | None = None,
        *,
        solver: str = DEFAULT_SOLVER,
        device: str = "cpu",
        tol: float | None = None,
    ) -> None:
        self.C = float(C)
        self.max_iter = None if max_iter is None else int(max_iter)
        self.solver = check_solver(solver)
        self.device = device
        self.tol = tol

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters a saved probe records (the objective and the iteration cap)."""
        return {"C": self.C, "max_iter": self.max_iter}

    @abstractmethod
    def _estimator(self, work: int) -> Any:
        """A fresh scikit-learn linear classifier (``work``: data size times classes)."""

    @staticmethod
    def _coefficients(estimator: Any) -> tuple[np.ndarray, np.ndarray]:
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        return coef, np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))

    @staticmethod
    def _reference_report(estimator: Any, max_iter: int) -> FitReport:
        from soundnet_cli.probes.solver import FitReport

        parts = getattr(estimator, "estimators_", [estimator])
        iterations = max(int(np.max(getattr(e, "n_iter_", 0))) for e in parts)
        return FitReport("liblinear", iterations < max_iter, iterations, None, 0.0)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearProbe:
        """Fit on materialised windows (one row each)."""
        X = np.asarray(X)
        return self.fit_clips(list(X[:, None, :]), y, steps=1)

    def fit_clips(
        self, clips: Sequence[np.ndarray], labels: Sequence[str] | np.ndarray, steps: int
    ) -> LinearProbe:
        """Fit on every window of ``steps`` steps of each (time, channels) clip, each window
        labelled with its clip's label."""
        labels_arr = np.asarray(labels).astype(str)
        classes = np.unique(labels_arr)
        if len(classes) < 2:
            raise SoundnetError("a probe needs training examples of at least two classes")
        if self.solver == "liblinear":
            coef, intercept = self._fit_reference(clips, labels_arr, steps)
        else:
            from soundnet_cli.probes import solver

            solution = solver.fit_linear(
                clips,
                np.searchsorted(classes, labels_arr),
                len(classes),
                steps,
                loss=self.loss,  # type: ignore[arg-type]
                C=self.C,
                device=self.device,
                tol=solver.DEFAULT_TOL if self.tol is None else self.tol,
                max_iter=solver.DEFAULT_MAX_ITER if self.max_iter is None else self.max_iter,
            )
            coef, intercept = solution.coef, solution.intercept
            self.fit_report_ = solution.report
        if coef.shape[0] == 1:  # binary: one score for classes_[1]; make it symmetric
            coef = np.vstack([-coef, coef])
            intercept = np.concatenate([-intercept, intercept])
        self.coef_, self.intercept_, self.classes_ = coef, intercept, classes
        return self

    def _fit_reference(
        self, clips: Sequence[np.ndarray], labels: np.ndarray, steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from soundnet_cli.probes.windows import cut_windows

        windows = [cut_windows(c, steps) for c in clips]
        X = np.concatenate(windows)
        y = np.repeat(labels, [len(w) for w in windows])
        del windows
        estimator = self._estimator(X.size * len(np.unique(y))).fit(X, y)
        self.fit_report_ = self._reference_report(estimator, self._reference_max_iter())
        return self._coefficients(estimator)

    @abstractmethod
    def _reference_max_iter(self) -> int:
        """The reference solver's iteration cap."""

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def clip_decision(self, features: np.ndarray, steps: int) -> np.ndarray:
        """The mean decision over a clip's windows without cutting them: a mean of linear scores
        is the score of the mean window, whose step ``j`` is the mean of steps ``j..j+W-1``."""
        from soundnet_cli.probes.windows import pad_to_window

        features = pad_to_window(features, steps).astype(np.float64)
        windows = len(features) - steps + 1
        totals = np.concatenate([np.zeros((1, features.shape[1])), np.cumsum(features, 0)])
        means = (totals[windows : windows + steps] - totals[:steps]) / windows
        return means.reshape(-1) @ self.coef_.T + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_, "classes": self.classes_}

    def from_arrays(self, arrays: dict[str, np.ndarray]) -> LinearProbe:
        self.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
        self.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64)
        self.classes_ = np.asarray(arrays["classes"]).astype(str)
        return self


class LinearSVMProbe(LinearProbe):
    """L2-regularised L2-loss SVM, one-vs-rest, bias regularised like liblinear's ``-B 1``. The
    release used C = 0.01."""

    name = "linear-svm"
    loss = "squared-hinge"

    def __init__(
        self,
        C: float = 0.01,
        max_iter: int | None = None,
        *,
        solver: str = DEFAULT_SOLVER,
        device: str = "cpu",
        tol: float | None = None,
    ) -> None:
        super().__init__(C, max_iter, solver=solver, device=device, tol=tol)

    def _reference_max_iter(self) -> int:
        return self.max_iter or 5000

    def _estimator(self, work: int) -> Any:
        import os
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.svm import LinearSVC

        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        # liblinear's default solver (-s 1, dual coordinate descent), as the release ran it; the
        # seed fixes its shuffling so that a probe refitted on the same data is identical.
        svm = LinearSVC(
            C=self.C,
            loss="squared_hinge",
            dual=True,
            fit_intercept=True,
            intercept_scaling=1.0,
            max_iter=self._reference_max_iter(),
            random_state=0,
        )
        # One-vs-rest trains each class on its own, exactly as liblinear does; big problems
        # spread the classes over the cores.
        jobs = min(os.cpu_count() or 1, 8) if work > 50_000_000 else 1
        return OneVsRestClassifier(svm, n_jobs=jobs)

    @staticmethod
    def _coefficients(estimator: Any) -> tuple[np.ndarray, np.ndarray]:
        parts = estimator.estimators_
        coef = np.vstack([np.asarray(e.coef_, dtype=np.float64) for e in parts])
        intercept = np.concatenate([np.atleast_1d(e.intercept_).astype(np.float64) for e in parts])
        return coef, intercept


class LogRegProbe(LinearProbe):
    """Logistic regression, L2 on the weights (not the intercept): multinomial, or one sigmoid
    for two classes."""

    name = "logreg"
    loss = "logistic"

    def __init__(
        self,
        C: float = 1.0,
        max_iter: int | None = None,
        *,
        solver: str = DEFAULT_SOLVER,
        device: str = "cpu",
        tol: float | None = None,
    ) -> None:
        super().__init__(C, max_iter, solver=solver, device=device, tol=tol)

    def _reference_max_iter(self) -> int:
        return self.max_iter or 2000

    def _estimator(self, work: int) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self._reference_max_iter())
