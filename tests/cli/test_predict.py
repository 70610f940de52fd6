import json

import numpy as np
import pytest

from ..conftest import tone, write_wav


def test_json_has_steps_summary_and_tiling(run, named_checkpoint, wav_factory):
    clip = wav_factory("short.wav", seconds=5.0, rate=44100)
    result = run("predict", str(clip), "--checkpoint", str(named_checkpoint), "--json", "-k", "2")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["errors"] == []
    (item,) = payload["results"]
    assert item["duration"] == 5.0 and item["tiled_to"] == 20.0
    assert len(item["steps"]) == 4  # 20 s give four conv8 steps
    head = item["summary"][0]
    assert head["head"] == "objects" and len(head["top"]) == 2
    assert {t["label"] for t in head["top"]} <= {"cat", "dog", "bird"}
    probs = [t["probability"] for t in head["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    times = [s["time"] for s in item["steps"]]
    assert times == sorted(times)


def test_long_clip_is_not_tiled(run, named_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "long.wav", tone(25.0))
    result = run("predict", str(clip), "--checkpoint", str(named_checkpoint), "--json")
    item = json.loads(result.stdout)["results"][0]
    from soundnet_cli.students import soundnet8

    assert item["tiled_to"] is None
    assert len(item["steps"]) == soundnet8().output_length("conv8", 25 * 22050) > 4


def test_table_output_names_the_file_and_tiling(run, named_checkpoint, wav_factory):
    clip = wav_factory("dog.wav", seconds=3.0)
    result = run("predict", str(clip), "--checkpoint", str(named_checkpoint))
    assert result.exit_code == 0
    title = result.stdout.replace("\n", "")  # the title wraps at the table's width
    assert "dog.wav" in title and "tiled to 20 s" in title
    assert "mean" in result.stdout and "objects" in result.stdout and "scenes" in result.stdout


def test_bad_file_is_reported_and_the_rest_still_run(run, named_checkpoint, tmp_path):
    good = write_wav(tmp_path / "in" / "good.wav", tone(2.0))
    bad = tmp_path / "in" / "bad.wav"
    bad.write_text("not audio")
    nan = tone(1.0)
    nan[5] = np.nan
    write_wav(tmp_path / "in" / "nan.wav", nan, subtype="FLOAT")
    result = run("predict", str(tmp_path / "in"), "--checkpoint", str(named_checkpoint), "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert [r["path"] for r in payload["results"]] == [str(good)]
    errors = {e["path"]: e["error"] for e in payload["errors"]}
    assert "cannot read audio" in errors[str(bad)]
    assert "NaN" in errors[str(tmp_path / "in" / "nan.wav")]


def test_missing_file_is_one_line_error(run, named_checkpoint, tmp_path):
    result = run("predict", str(tmp_path / "gone.wav"), "--checkpoint", str(named_checkpoint))
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error:") and "gone.wav" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_option_values_are_usage_errors(run, named_checkpoint, wav_factory):
    clip = wav_factory()
    assert run("predict", str(clip), "--mix", "avg").exit_code == 2
    result = run("predict", str(clip), "--checkpoint", str(named_checkpoint), "--device", "tpu")
    assert result.exit_code == 2 and "unknown device" in result.stderr


def test_no_weights_offline_says_how_to_get_them(run, wav_factory):
    result = run("predict", str(wav_factory()))
    assert result.exit_code == 1
    assert "soundnet weights fetch" in result.stderr and "Traceback" not in result.stderr


def test_empty_directory(run, tmp_path):
    result = run("predict", str(tmp_path))
    assert result.exit_code == 2 and "no audio files" in result.stderr


def test_the_whole_file_summary_is_the_mean_over_steps(run, named_checkpoint, tmp_path):
    """Mutation guarded: the summary taken from the first step instead of the mean over steps.
    A file whose halves differ (a low tone, then noise) gives steps that differ; every label's
    summary probability is the mean of its step probabilities (all labels shown: -k 10)."""
    rng = np.random.default_rng(0)
    noise = (rng.normal(0, 0.3, 12 * 22050)).astype(np.float32)
    clip = write_wav(tmp_path / "halves.wav", np.concatenate([tone(12.0, freq=150.0), noise]))
    result = run("predict", str(clip), "--checkpoint", str(named_checkpoint), "--json", "-k", "10")
    assert result.exit_code == 0, result.stderr
    item = json.loads(result.stdout)["results"][0]
    assert len(item["steps"]) > 2
    for h, summary in enumerate(item["summary"]):
        steps = [
            {t["label"]: t["probability"] for t in s["heads"][h]["top"]} for s in item["steps"]
        ]
        assert {t["label"] for t in summary["top"]} == set(steps[0])
        first = steps[0]
        assert any(abs(s[label] - first[label]) > 1e-4 for s in steps for label in first)
        for t in summary["top"]:
            mean = np.mean([s[t["label"]] for s in steps])
            assert t["probability"] == pytest.approx(mean, abs=2e-6), (summary["head"], t)
