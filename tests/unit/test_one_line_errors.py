"""Inputs that used to print "Error: unexpected <Exception>" now get one line that says what is
wrong (issue 12, item 13). Extract's own cases are in test_extract_safety.py, checkpoints' in
test_checkpoint_safety.py, label CSVs' in test_label_csvs.py."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from soundnet_cli.cli.main import build_app
from soundnet_cli.corpus.format import Corpus, CorpusError, ShardWriter, VideoRecord, write_manifest
from soundnet_cli.errors import WeightsError
from soundnet_cli.weights.sound8 import read_category_names

from .test_corpus import manifest, random_clip


def run(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "unexpected" not in result.output
    return result.output


@pytest.fixture
def corpus_root(tmp_path: Path) -> Path:
    m = manifest()
    write_manifest(tmp_path, m)
    writer = ShardWriter(tmp_path, m, 0)
    rng = np.random.default_rng(0)
    writer.add_video(VideoRecord("/v/a", "/v/a", 8.0), [random_clip(rng, 4), random_clip(rng, 4)])
    writer.flush()
    return tmp_path


def test_corpus_index_with_offsets_past_its_arrays_is_damaged(corpus_root):
    (index,) = corpus_root.glob("shards/*/index.json")
    data = json.loads(index.read_text())
    data["clips"][1]["audio_offset"] = 10**9
    index.write_text(json.dumps(data))
    with pytest.raises(CorpusError, match=r"clip 1 of /v/a spans 1000000000\.\."):
        Corpus(corpus_root)
    output = one_line_error(run("corpus", "info", str(corpus_root)))
    assert "the corpus is damaged" in output


def test_corpus_index_entry_missing_keys_is_damaged(corpus_root):
    (index,) = corpus_root.glob("shards/*/index.json")
    data = json.loads(index.read_text())
    del data["clips"][0]["frames"]
    index.write_text(json.dumps(data))
    with pytest.raises(CorpusError, match="damaged clip entry"):
        Corpus(corpus_root)


def test_names_that_are_not_a_literal_list_are_refused():
    with pytest.raises(WeightsError, match="line 1: categories_imagenet is not a literal list"):
        read_category_names("categories_imagenet = [name(i) for i in x]\ncategories_places = []")


def test_names_file_that_is_not_utf8_is_one_line(tmp_path):
    weights = tmp_path / "sound8.npy"
    weights.write_bytes(b"\x93NUMPY not really")
    names = tmp_path / "names.py"
    names.write_bytes("categories_imagenet = ['caf\xe9']".encode("latin-1"))
    output = one_line_error(run("weights", "import", str(weights), "--names", str(names)))
    assert "not UTF-8 text" in output


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_C_must_be_a_positive_finite_number(tmp_path, value):
    result = run(
        "probe", "fit", str(tmp_path), "--labels", str(tmp_path / "l.csv"), "--out",
        str(tmp_path / "p.npz"), "--C", value,
    )  # fmt: skip
    output = " ".join(one_line_error(result, code=2).replace("│", " ").split())
    assert "Invalid value for '--C': must be positive and finite" in output


def test_os_errors_reach_the_user_as_one_line(capsys):
    import typer

    from soundnet_cli.cli._common import handle_errors

    @handle_errors
    def write_somewhere() -> None:
        raise PermissionError(13, "Permission denied", "/srv/features/features.json")

    with pytest.raises(typer.Exit) as exit_info:
        write_somewhere()
    assert exit_info.value.exit_code == 1
    err = capsys.readouterr().err
    assert "Error: /srv/features/features.json: Permission denied" in err
    assert "unexpected" not in err
