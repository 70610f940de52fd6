"""Registers the builtin probes."""

from __future__ import annotations

from typing import Any

from soundnet_cli.hookspecs import Register, hookimpl


def _linear_svm(**params: Any) -> Any:
    from soundnet_cli.probes import LinearSVMProbe

    return LinearSVMProbe(**params)


def _logreg(**params: Any) -> Any:
    from soundnet_cli.probes import LogRegProbe

    return LogRegProbe(**params)


@hookimpl
def register_probes(register: Register) -> None:
    register(
        "linear-svm",
        _linear_svm,
        description="liblinear L2-loss SVM, one-vs-rest (the paper's probe; C=0.01)",
    )
    register("logreg", _logreg, description="multinomial logistic regression")
