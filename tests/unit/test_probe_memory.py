"""A probe fit is planned before it allocates: beyond the memory budget it is refused in one
line that says what would fit (issue 25, item 2)."""

from __future__ import annotations

import numpy as np
import pytest

from soundnet_cli.errors import UsageProblem
from soundnet_cli.probes import ClipProbe, LinearSVMProbe, LogRegProbe, budget, solver
from soundnet_cli.probes.budget import ProbeMemoryError, check_fit, fit_bytes, parse_size


def clips(count: int = 6, length: int = 40, channels: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((length, channels)).astype(np.float32) for _ in range(count)]


LABELS = ["a", "b", "c"] * 2


def test_a_long_window_is_refused_before_the_solver_allocates(monkeypatch):
    """--window 1000 on pool5 (2692 steps x 256 channels): the Gram matrix alone would be
    terabytes; it is refused in one line before the solver runs."""

    def never(*args, **kwargs):
        raise AssertionError("the solver ran")

    monkeypatch.setattr(solver, "fit_linear", never)
    probe = ClipProbe(LinearSVMProbe(C=0.01), 2692, step_seconds=8192 / 22050)
    with pytest.raises(ProbeMemoryError) as caught:
        probe.fit(clips(channels=256), LABELS)
    message = str(caught.value)
    assert "\n" not in message and "689,153 weights" in message
    assert "TB" in message and "--max-memory" in message
    assert "windows of at most" in message and " s) fit" in message


@pytest.mark.parametrize("make", [LinearSVMProbe, LogRegProbe])
@pytest.mark.parametrize("solver_name", ["torch", "liblinear"])
def test_what_the_refusal_says_fits_does_fit(make, solver_name):
    """conv2-like features (32 channels) and a tiny budget: the window the message offers fits
    that budget and is fitted; one step more is refused."""
    data = clips()
    steps = 20
    limit = fit_bytes(solver_name, 8, 32, [len(c) for c in data], 3)
    probe = ClipProbe(make(C=1.0, solver=solver_name), steps, max_memory=limit)
    with pytest.raises(ProbeMemoryError, match="windows of at most 8 steps fit"):
        probe.fit(data, LABELS)
    fitted = ClipProbe(make(C=1.0, solver=solver_name), 8, max_memory=limit).fit(data, LABELS)
    assert fitted.decision_function(data).shape == (6, 3)


def test_a_budget_too_small_for_any_window_says_so():
    with pytest.raises(ProbeMemoryError, match="not even 1-step windows fit"):
        check_fit("torch", 4, 32, [100] * 10, 3, budget=1000)


def test_the_plan_grows_with_the_square_of_the_window_and_with_the_data():
    base = fit_bytes("torch", 100, 32, [1000] * 10, 3)
    assert fit_bytes("torch", 200, 32, [1000] * 10, 3) > 3 * base
    assert fit_bytes("torch", 100, 32, [1000] * 40, 3) > base
    assert fit_bytes("liblinear", 10, 32, [100] * 10, 3) > 0


def test_the_default_budget_is_a_fraction_of_the_machine(monkeypatch):
    monkeypatch.setattr(budget, "physical_memory", lambda: 16 * 2**30)
    assert budget.default_budget() == 8 * 2**30


@pytest.mark.parametrize(
    "text, size",
    [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)), ("2048", 2048)],
)
def test_sizes_parse(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "4Q"])
def test_bad_sizes_are_usage_errors(text):
    with pytest.raises(UsageProblem, match="memory budget must be") as refused:
        parse_size(text)
    assert refused.value.parameter == "max_memory"
