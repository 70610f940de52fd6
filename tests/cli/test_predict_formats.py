"""`soundnet predict --format csv|tsv|json|audacity`, --segments, --threshold, --out, with a
checkpoint that has its own heads (not the official model's)."""

import csv
import io
import json

from ..conftest import tone, write_wav


def flat(text: str) -> str:
    """A usage error's message without the box rich draws around it."""
    return " ".join(text.replace("│", " ").split())


def rows_of(text: str, delimiter: str = ",") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def test_csv_rows_per_step_head_and_rank(run, named_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "long.wav", tone(25.0))
    args = ("predict", str(clip), "--checkpoint", str(named_checkpoint), "--format", "csv")
    result = run(*args, "-k", "2")
    assert result.exit_code == 0, result.stderr
    rows = rows_of(result.stdout)
    assert list(rows[0]) == ["path", "start", "end", "head", "rank", "label", "probability"]
    steps = json.loads(
        run("predict", str(clip), "--checkpoint", str(named_checkpoint), "--json").stdout
    )["results"][0]["steps"]
    assert len(rows) == len(steps) * 2 * 2  # steps x heads x ranks
    starts = [float(r["start"]) for r in rows]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert float(rows[-1]["end"]) == 25.0
    assert {r["label"] for r in rows if r["head"] == "objects"} <= {"cat", "dog", "bird"}
    assert all(r["start"].split(".")[1].__len__() == 3 for r in rows)


def test_segments_cover_the_clip_per_head(run, named_checkpoint, tmp_path):
    clip = write_wav(tmp_path / "long.wav", tone(30.0))
    result = run(
        "predict",
        str(clip),
        "--checkpoint",
        str(named_checkpoint),
        "--format",
        "tsv",
        "--segments",
    )
    assert result.exit_code == 0, result.stderr
    rows = rows_of(result.stdout, "\t")
    for head in ("objects", "scenes"):
        mine = [r for r in rows if r["head"] == head]
        assert float(mine[0]["start"]) == 0.0 and float(mine[-1]["end"]) == 30.0
        for before, after in zip(mine, mine[1:], strict=False):
            assert before["end"] == after["start"]  # contiguous events, no overlap
            assert before["label"] != after["label"]  # else they would be one event
        assert all(float(r["start"]) < float(r["end"]) and r["rank"] == "1" for r in mine)


def test_out_file_and_out_folder(run, named_checkpoint, wav_factory, tmp_path):
    clip = wav_factory("a.wav", seconds=3.0)
    target = tmp_path / "pred.json"
    result = run(
        "predict",
        str(clip),
        "--checkpoint",
        str(named_checkpoint),
        "--format",
        "json",
        "--segments",
        "--out",
        str(target),
    )
    assert result.exit_code == 0 and result.stdout == ""
    (item,) = json.loads(target.read_text())["results"]
    assert item["segments"][0]["start"] == 0.0 and item["segments"][0]["end"] == 3.0
    folder = tmp_path / "tables"
    folder.mkdir()
    result = run(
        "predict",
        str(clip),
        "--checkpoint",
        str(named_checkpoint),
        "--format",
        "csv",
        "--out",
        str(folder),
    )
    assert result.exit_code == 0
    assert rows_of((folder / "predictions.csv").read_text())[0]["path"] == str(clip)


def test_audacity_writes_one_label_track_per_input(run, named_checkpoint, tmp_path):
    write_wav(tmp_path / "in" / "a.wav", tone(25.0))
    write_wav(tmp_path / "in" / "sub" / "b.wav", tone(4.0, freq=220.0))
    (tmp_path / "in" / "bad.wav").write_text("not audio")
    out = tmp_path / "labels"
    result = run(
        "predict",
        str(tmp_path / "in"),
        "--checkpoint",
        str(named_checkpoint),
        "--format",
        "audacity",
        "--out",
        str(out),
    )
    assert result.exit_code == 1  # bad.wav failed; the others still have their tracks
    assert "bad.wav" in result.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == [
        "a.txt",
        "sub/b.txt",
    ]
    for track in out.rglob("*.txt"):
        lines = track.read_text().splitlines()
        assert lines
        for line in lines:
            start, end, label = line.split("\t")
            assert 0 <= float(start) < float(end) and label.startswith(("objects: ", "scenes: "))
    short = (out / "sub" / "b.txt").read_text().splitlines()
    assert len(short) == 2 and all(line.startswith("0.000000\t4.000000\t") for line in short)


def test_threshold_filters_rows(run, named_checkpoint, wav_factory):
    clip = wav_factory("a.wav", seconds=3.0)
    args = ("predict", str(clip), "--checkpoint", str(named_checkpoint), "--format", "csv")
    everything = rows_of(run(*args).stdout)
    assert len(everything) == 3 + 2  # a tiled clip: one span, every label of both heads
    assert rows_of(run(*args, "--threshold", "1.0").stdout) == []
    middle = sorted(float(r["probability"]) for r in everything)[2]
    kept = rows_of(run(*args, "--threshold", str(middle)).stdout)
    assert kept and all(float(r["probability"]) >= middle for r in kept)


def test_table_with_segments_and_to_a_file(run, named_checkpoint, wav_factory, tmp_path):
    clip = wav_factory("dog.wav", seconds=3.0)
    result = run("predict", str(clip), "--checkpoint", str(named_checkpoint), "--segments")
    assert result.exit_code == 0 and "start (s)" in result.stdout and "mean p" in result.stdout
    target = tmp_path / "out.txt"
    result = run("predict", str(clip), "--checkpoint", str(named_checkpoint), "--out", str(target))
    assert result.exit_code == 0 and result.stdout == ""
    title = target.read_text().replace("\n", "")  # the title wraps at the table's width
    assert "dog.wav" in title and "tiled to 20 s" in title


def test_format_usage_errors(run, named_checkpoint, wav_factory):
    clip = str(wav_factory("a.wav", seconds=1.0))
    ck = ("--checkpoint", str(named_checkpoint))
    for extra, message in [
        (("--format", "xml"), "'--format' / '-f': the output format must be one of"),
        (("--format", "audacity"), "'--out' / '-o': the audacity format writes one label file"),
        (("--format", "csv", "--json"), "--json means --format json"),
        (("--threshold", "2"), "'--threshold': must be a finite number at least 0 and at most 1"),
    ]:
        result = run("predict", clip, *ck, *extra)
        assert result.exit_code == 2, (extra, result.stdout)
        assert message in flat(result.stderr)
