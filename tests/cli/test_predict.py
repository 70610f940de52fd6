import json

import numpy as np

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
