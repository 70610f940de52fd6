"""`--solver` and `--device` of `soundnet evaluate` and `soundnet probe fit`, and the flag on a
probe whose solver stopped before converging."""

import json

import pytest
import torch

from soundnet_cli.probes import solver as solver_module

from ..fakes import make_esc_tree

CLASSES = {"low": 200.0, "mid": 1200.0, "high": 4000.0}


@pytest.fixture
def tree(tmp_path):
    return make_esc_tree(tmp_path / "esc", CLASSES, per_class=4, folds=2, seconds=1.0)


def evaluate_args(tree, checkpoint, tmp_path, *extra):
    return (
        "evaluate",
        "esc50",
        str(tree),
        "--checkpoint",
        str(checkpoint),
        "--C",
        "1",
        "--out",
        str(tmp_path / "report"),
        *extra,
    )


def test_reference_solver_is_recorded(run, tree, named_checkpoint, tmp_path):
    result = run(
        *evaluate_args(tree, named_checkpoint, tmp_path, "--solver", "liblinear", "--json")
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["solver"] == "liblinear"
    assert {s["fit"]["solver"] for s in payload["splits"]} == {"liblinear"}
    assert all(s["converged"] for s in payload["splits"])
    assert "NaN" not in result.stdout  # liblinear gives no gradient ratio: null, not NaN
    assert {s["fit"]["gradient_ratio"] for s in payload["splits"]} == {None}


def test_default_solver_converges_and_says_so(run, tree, named_checkpoint, tmp_path):
    result = run(*evaluate_args(tree, named_checkpoint, tmp_path, "--json"))
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["solver"] == "torch"
    for split in payload["splits"]:
        assert split["converged"] is True
        assert split["fit"]["gradient_ratio"] <= split["fit"]["tol"]
    assert "Warning" not in result.stderr


def test_unconverged_probes_are_flagged(run, tree, named_checkpoint, tmp_path, monkeypatch):
    original = solver_module.fit_linear

    def one_step(*args, **kwargs):
        return original(*args, **{**kwargs, "max_iter": 1, "tol": 1e-12})

    monkeypatch.setattr(solver_module, "fit_linear", one_step)
    result = run(*evaluate_args(tree, named_checkpoint, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "stopped before the solver converged" in result.stderr
    assert "pool5 fold 1" in result.stderr
    assert "%*" in result.stdout  # the table marks the cells
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [s["converged"] for s in report["splits"]] == [False, False]


@pytest.mark.parametrize(
    "args,message",
    [
        (["evaluate", "esc50", ".", "--solver", "sgd"], "'--solver': must be torch or liblinear"),
        (
            ["probe", "fit", ".", "--labels", "x.csv", "--out", "p.npz", "--solver", "sgd"],
            "--solver",
        ),
    ],
)
def test_unknown_solver_is_a_usage_error(run, args, message):
    result = run(*args)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_usage_error(run, tree, named_checkpoint, tmp_path):
    result = run(*evaluate_args(tree, named_checkpoint, tmp_path, "--device", "cuda"))
    assert result.exit_code == 2 and "CUDA is not available" in result.stderr


def test_probe_fit_records_the_solver(run, tree, named_checkpoint, tmp_path):
    labels = tmp_path / "labels.csv"
    files = sorted((tree / "audio").iterdir())
    labels.write_text(
        "path,label\n" + "".join(f"audio/{f.name},{f.name.split('-')[-1][:-4]}\n" for f in files)
    )
    result = run(
        "probe",
        "fit",
        str(tree),
        "--labels",
        str(labels),
        "--out",
        str(tmp_path / "p.npz"),
        "--checkpoint",
        str(named_checkpoint),
        "--solver",
        "liblinear",
        "--C",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    meta = json.loads(result.stdout)
    assert meta["solver"]["solver"] == "liblinear" and meta["solver"]["converged"]
    assert meta["params"] == {"C": 1.0, "max_iter": None}
