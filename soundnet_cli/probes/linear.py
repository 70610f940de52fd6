"""Linear probes: liblinear's L2-loss SVM (one-vs-rest, as the authors' release) and logistic
regression. Both keep only coefficients, intercepts and classes after fitting."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class LinearProbe(ABC):
    """Decision values are ``X @ coef_.T + intercept_``, one column per class."""

    name = "linear"
    coef_: np.ndarray
    intercept_: np.ndarray
    classes_: np.ndarray

    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters, as passed to the constructor."""

    @abstractmethod
    def _estimator(self, work: int) -> Any:
        """A fresh scikit-learn linear classifier (``work``: data size times classes)."""

    @staticmethod
    def _coefficients(estimator: Any) -> tuple[np.ndarray, np.ndarray]:
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        return coef, np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearProbe:
        y = np.asarray(y)
        if len(np.unique(y)) < 2:
            from soundnet_cli.errors import SoundnetError

            raise SoundnetError("a probe needs training examples of at least two classes")
        estimator = self._estimator(X.size * len(np.unique(y))).fit(X, y)
        coef, intercept = self._coefficients(estimator)
        if coef.shape[0] == 1:  # binary: one score for classes_[1]; make it symmetric
            coef = np.vstack([-coef, coef])
            intercept = np.concatenate([-intercept, intercept])
        self.coef_, self.intercept_ = coef, intercept
        self.classes_ = np.asarray(estimator.classes_).astype(str)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

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
    """liblinear L2-regularised L2-loss SVM, one-vs-rest, bias term regularised like liblinear's
    ``-B 1``. The release used C = 0.01."""

    name = "linear-svm"

    def __init__(self, C: float = 0.01, max_iter: int = 5000) -> None:
        self.C = float(C)
        self.max_iter = int(max_iter)

    def get_params(self) -> dict[str, Any]:
        return {"C": self.C, "max_iter": self.max_iter}

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
            max_iter=self.max_iter,
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
    """Multinomial logistic regression (L2, lbfgs)."""

    name = "logreg"

    def __init__(self, C: float = 1.0, max_iter: int = 2000) -> None:
        self.C = float(C)
        self.max_iter = int(max_iter)

    def get_params(self) -> dict[str, Any]:
        return {"C": self.C, "max_iter": self.max_iter}

    def _estimator(self, work: int) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self.max_iter)
