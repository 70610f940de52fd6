"""Shared options (cli/_options.py): a bad value exits 2 with one line while the command line is
parsed, before anything is created or loaded (issue 24, issue 25 "option values" and "--out
errors come late"); -q and -v on the root command; logging for Python callers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest


def usage_error(result, *fragments: str) -> str:
    """Exit 2, click's one-line message naming the option, no traceback, no 'unexpected'."""
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert "\n" not in text, text
    assert "unexpected" not in text and "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, text
    return text


def test_extract_with_a_bad_precision_creates_no_output_folder(run, wav_factory, tmp_path):
    out = tmp_path / "X"
    result = run("extract", str(wav_factory()), "--precision", "nonsense", "--out", str(out))
    usage_error(result, "Invalid value for '--precision'", "fp32, bf16, fp16", "'nonsense'")
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--mix", "left"),
        ("--device", "gpu"),
        ("--chunk-seconds", "1e308"),
        ("--chunk-seconds", "nan"),
        ("--threads", "0"),
    ],
)
def test_extract_refuses_bad_values_before_any_work(run, wav_factory, tmp_path, option, value):
    out = tmp_path / "X"
    result = run("extract", str(wav_factory()), option, value, "--out", str(out))
    usage_error(result, f"'{option}'")
    assert not out.exists()


def test_chunk_seconds_overflow_is_a_usage_error(run, wav_factory, tmp_path):
    """Issue 25: `--chunk-seconds 1e308` was `unexpected OverflowError`."""
    result = run(
        "extract", str(wav_factory()), "--chunk-seconds", "1e308", "--out", str(tmp_path / "o")
    )
    usage_error(result, "'--chunk-seconds'", "at most 3600")


@pytest.mark.parametrize("command", ["distill", "finetune"])
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_learning_rate_must_be_positive_and_finite(run, tmp_path, command, value):
    """Issue 25: `--lr nan` was `unexpected ValueError`."""
    result = run(command, str(tmp_path), "--out", str(tmp_path / "run"), "--lr", value)
    usage_error(result, "'--lr'", "finite number above 0")
    assert not (tmp_path / "run").exists()


def test_distill_refuses_a_zero_kl_scale(run, tmp_path):
    """Issue 25: `--kl-scale 0` was accepted silently (a loss of 0 learns nothing)."""
    result = run("distill", str(tmp_path), "--out", str(tmp_path / "run"), "--kl-scale", "0")
    usage_error(result, "'--kl-scale'", "above 0")
    assert not (tmp_path / "run").exists()


def test_probe_fit_refuses_a_negative_repeat_to(run, tmp_path):
    """Issue 25: `--repeat-to -5` was accepted silently."""
    result = run(
        "probe", "fit", str(tmp_path), "--labels", str(tmp_path / "l.csv"),
        "--out", str(tmp_path / "p.npz"), "--repeat-to", "-5",
    )  # fmt: skip
    usage_error(result, "'--repeat-to'", "at least 0")


def test_predict_refuses_steps_with_summary_only(run, wav_factory):
    """Issue 25: `--steps --summary-only` was accepted, the last one winning."""
    result = run("predict", str(wav_factory()), "--steps", "--summary-only")
    usage_error(result, "--steps and --summary-only")


def test_probe_fit_refuses_an_out_that_is_a_folder_before_the_work(run, tmp_path, monkeypatch):
    """Issue 25: the folder was found only after the features and the fit, in a message that
    named a temporary file."""
    from soundnet_cli.cli import _model

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(_model, "load_model", no_model)
    target = tmp_path / "DIR" / "x.npz"
    target.mkdir(parents=True)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.wav,x\nb.wav,y\n")
    result = run("probe", "fit", str(tmp_path), "--labels", str(labels), "--out", str(target))
    text = usage_error(result, "'--out'", "is a folder")
    assert ".part" not in text and "tmp" not in text.split("is a folder")[1]


def test_export_refuses_an_out_that_is_a_folder_before_the_work(run, tmp_path, monkeypatch):
    from soundnet_cli.cli import _model

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(_model, "load_model", no_model)
    target = tmp_path / "DIR" / "y.onnx"
    target.mkdir(parents=True)
    result = run("export", "--out", str(target))
    usage_error(result, "'--out'", "is a folder")


def test_predict_csv_cells_are_spreadsheet_safe(run, named_checkpoint, wav_factory, monkeypatch):
    """Issue 25: `predict '=cmd|calc.ogg' --format csv` wrote the formula cell as it was."""
    clip = wav_factory("=cmd|calc.wav", seconds=3.0)
    monkeypatch.chdir(clip.parent)
    result = run(
        "predict", clip.name, "--checkpoint", str(named_checkpoint), "--format", "csv", "-k", "1"
    )
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:]
    assert rows and all(row.startswith("'=cmd|calc.wav,") for row in rows), rows


# -q / -v on the root command, and logging for Python callers


@pytest.fixture
def chatty_library(monkeypatch):
    """`weights list` with a library function that logs at every level."""
    from soundnet_cli.weights import official

    log = logging.getLogger("soundnet_cli.weights.official")

    def list_weights():
        log.debug("a debug detail")
        log.info("a note")
        log.warning("a warning")
        log.error("an error")
        return []

    monkeypatch.setattr(official, "list_weights", list_weights)


def test_library_log_records_reach_stderr_through_the_cli_handler(run, chatty_library):
    result = run("weights", "list")
    assert result.exit_code == 0, result.output
    assert "a note" in result.stderr
    assert "Warning: a warning" in result.stderr
    assert "Error: an error" in result.stderr
    assert "a debug detail" not in result.stderr
    assert result.stderr.count("a warning") == 1  # one handler, however many invocations
    again = run("weights", "list")
    assert again.stderr.count("a warning") == 1


def test_quiet_prints_only_errors(run, chatty_library):
    result = run("-q", "weights", "list")
    assert result.exit_code == 0, result.output
    assert "Error: an error" in result.stderr
    for hidden in ("a note", "a warning", "a debug detail"):
        assert hidden not in result.stderr


def test_verbose_shows_debug_messages(run, chatty_library):
    result = run("-v", "weights", "list")
    assert result.exit_code == 0, result.output
    assert "a debug detail" in result.stderr and "a note" in result.stderr


def test_verbose_and_quiet_together_are_a_usage_error(run):
    usage_error(run("-v", "-q", "weights", "list"), "--verbose and --quiet")


def test_quiet_extract_prints_nothing_but_errors(run, named_checkpoint, wav_factory, tmp_path):
    good = wav_factory("good.wav", seconds=3.0)
    bad = good.parent / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    result = run(
        "-q", "extract", str(good), str(bad), "--checkpoint", str(named_checkpoint),
        "--out", str(tmp_path / "feats"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all("bad.wav" in line for line in lines), lines


def test_python_callers_silence_or_redirect_messages_with_logging(monkeypatch, tmp_path):
    """A library user controls messages with the standard logging module: the logger
    ``soundnet_cli`` (every module logs under it)."""
    from soundnet_cli.weights import official

    cached = tmp_path / "official.safetensors"
    monkeypatch.setattr(official, "official_path", lambda: tmp_path / "absent.safetensors")
    monkeypatch.setattr(official, "offline", lambda: False)
    monkeypatch.setattr(official, "fetch_official", lambda progress=None: cached)

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("soundnet_cli")
    handler = Collect()
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        assert official.ensure_official() == cached
        assert [r.name for r in records] == ["soundnet_cli.weights.official"]
        assert "Fetching the official SoundNet-8 weights" in records[0].getMessage()
        records.clear()
        logger.setLevel(logging.WARNING)  # silence the notes
        official.ensure_official()
        assert records == []
    finally:
        logger.removeHandler(handler)


def test_library_modules_log_under_the_package_logger():
    """Every library module that logs names its logger after itself (``__name__``), so the
    ``soundnet_cli`` logger governs them all; no module outside cli/ installs a handler."""
    import re

    package = Path(__file__).parents[2] / "soundnet_cli"
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in re.findall(r"logging\.getLogger\(([^)]*)\)", text):
            if path.parent.name != "cli":
                assert name == "__name__", f"{path}: getLogger({name})"
        if path.parent.name != "cli":
            assert "addHandler(" not in text, path


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["extract", "x.wav", "-o", "o", "--precision", "bf17"], ["--precision", "bf17"]),
        (["extrac"], ["No such command", "extract"]),
        (["predict", "x.wav", "--top-k", "many"], ["--top-k", "integer"]),
    ],
)
def test_a_usage_error_is_one_line_even_on_a_narrow_terminal(run, args, needles, monkeypatch):
    """Typer drew usage errors in a box over several lines, the message wrapped inside."""
    monkeypatch.setenv("COLUMNS", "40")
    result = run(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert all(n in lines[0] for n in needles) and "-h')" in lines[0]
