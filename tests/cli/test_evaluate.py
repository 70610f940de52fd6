import json

import pytest

from ..fakes import make_esc_tree

CLASSES = {"low": 200.0, "mid": 1200.0, "high": 4000.0}


@pytest.fixture
def tree(tmp_path):
    return make_esc_tree(tmp_path / "esc", CLASSES, per_class=4, folds=2, seconds=1.0)


def test_json_report_files_and_table(run, tree, named_checkpoint, tmp_path):
    out = tmp_path / "report"
    result = run(
        "evaluate",
        "esc50",
        str(tree),
        "--checkpoint",
        str(named_checkpoint),
        "-l",
        "pool5",
        "-l",
        "conv6",
        "--C",
        "1",
        "--out",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["layers"] == ["pool5", "conv6"] and payload["C"] == 1.0
    assert set(payload["summary"]) == {"pool5", "conv6"}
    assert json.loads((out / "report.json").read_text())["summary"] == payload["summary"]
    for layer in ("pool5", "conv6"):
        png = out / f"confusion-{layer}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run(
        "evaluate", "esc50", str(tree), "--checkpoint", str(named_checkpoint), "--out", str(out)
    )
    assert table.exit_code == 0
    assert "fold 1" in table.stdout and "mean ± std" in table.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["evaluate", "esc5o", "."], "unknown dataset 'esc5o'"),
        (["evaluate", "esc50", ".", "--C", "-1"], "'--C': must be positive"),
        (["evaluate", "esc50", ".", "--C", "lots"], "'--C': must be a positive number"),
        (["evaluate", "esc50", ".", "--probe", "svm"], "unknown probe 'svm'"),
    ],
)
def test_usage_errors(run, args, message):
    result = run(*args)
    assert result.exit_code == 2 and message in result.stderr


def test_bad_layer_is_a_usage_error(run, tree, named_checkpoint):
    result = run("evaluate", "esc50", str(tree), "--checkpoint", str(named_checkpoint), "-l", "fc7")
    assert result.exit_code == 2 and "valid layers" in result.stderr


def test_not_a_dataset_folder(run, tmp_path, named_checkpoint):
    result = run("evaluate", "esc50", str(tmp_path), "--checkpoint", str(named_checkpoint))
    assert result.exit_code == 1 and "no meta/esc50.csv" in result.stderr


def test_default_layer_comes_from_the_model(run, tree, tmp_path):
    result = run(
        "evaluate",
        "esc50",
        str(tree),
        "--student",
        "soundnet5",
        "--json",
        "--out",
        str(tmp_path / "r"),
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["layers"] == ["pool3"] and payload["model"] == "soundnet5-init-seed0"


def test_dcase2013_train_test_layout(run, tmp_path, named_checkpoint):
    from ..conftest import tone, write_wav

    root = tmp_path / "dcase"
    for part, count in (("train", 3), ("test", 2)):
        for label, freq in (("bus", 220.0), ("park", 3000.0)):
            for n in range(count):
                write_wav(
                    root / part / f"{label}{n + 1:02d}.wav", tone(6.0, freq=freq * (1 + n / 50))
                )
    result = run(
        "evaluate",
        "dcase2013",
        str(root),
        "--checkpoint",
        str(named_checkpoint),
        "--json",
        "--out",
        str(tmp_path / "r"),
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    (split,) = payload["splits"]
    assert split["split"] == "train -> test" and split["n_test"] == 4
    assert payload["protocol"]["window_seconds"] == 5.0 and payload["protocol"]["repeat_to"] is None


def test_a_layer_beyond_the_memory_budget_is_refused_before_any_feature(
    run, tree, named_checkpoint, monkeypatch
):
    from soundnet_cli.evaluation import protocol

    def never(*args, **kwargs):
        raise AssertionError("features were computed")

    monkeypatch.setattr(protocol, "compute_features", never)
    result = run(
        "evaluate", "esc50", str(tree), "--checkpoint", str(named_checkpoint),
        "-l", "pool5", "-l", "conv2", "--max-memory", "256M",
    )  # fmt: skip
    assert result.exit_code == 1, result.stdout
    message = " ".join(result.stderr.split())
    assert "probe fit on conv2" in message and "256.0 MB budget (--max-memory)" in message
    assert "unexpected" not in message


def test_zero_shot_keeps_the_probes_memory_budget(tree, monkeypatch):
    """The linear probe that `evaluate --zero-shot` reports beside zero-shot is planned against
    the same budget, before any feature is computed (it used to be fitted without one)."""
    from types import SimpleNamespace

    import pytest

    from soundnet_cli.evaluation import zeroshot
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.probes.budget import ProbeMemoryError
    from soundnet_cli.students import soundnet8

    def never(*args, **kwargs):
        raise AssertionError("features were computed")

    monkeypatch.setattr(zeroshot, "compute_features", never)
    head = SimpleNamespace(spec=SimpleNamespace(layer="conv2"))
    dataset = get_plugins().datasets.create("esc50")
    with pytest.raises(ProbeMemoryError, match="probe fit on conv2"):
        zeroshot.evaluate_zero_shot(
            dataset, tree, soundnet8(), head, encoder=None, use_cache=False, max_memory=2**20
        )
