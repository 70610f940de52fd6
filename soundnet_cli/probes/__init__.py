"""Probe classifiers on frozen features, and the paper's window protocol.

A registered probe is a window-level estimator with scikit-learn's API (``fit``,
``decision_function``, ``predict``, ``classes_``) that can also export its learned state as plain
arrays (``to_arrays`` / ``from_arrays``), so a saved probe never needs pickle.
:class:`ClipProbe` applies the protocol of PAPER.md ("Probing"): train on fixed-length windows
of each clip's feature sequence, score a clip by averaging decision values over its windows.
The builtin linear probes fit all classes at once with a PyTorch solver that never cuts the
windows out (:mod:`soundnet_cli.probes.solver`); ``solver="liblinear"`` keeps the reference.
"""

from soundnet_cli.probes.linear import SOLVERS, LinearSVMProbe, LogRegProbe, build_probe
from soundnet_cli.probes.storage import ProbeFile, load_probe, save_probe
from soundnet_cli.probes.windows import ClipProbe, choose_c, cut_windows, window_steps

__all__ = [
    "ClipProbe",
    "LinearSVMProbe",
    "LogRegProbe",
    "ProbeFile",
    "SOLVERS",
    "build_probe",
    "choose_c",
    "cut_windows",
    "load_probe",
    "save_probe",
    "window_steps",
]
