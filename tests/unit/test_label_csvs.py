"""Label CSVs as people save them: a BOM is fine; missing fields, empty labels, one file under
two labels and paths outside the audio folder are refused with the line (issue 12, 13-14)."""

from pathlib import Path

import pytest

from soundnet_cli.datasets import ESC50, DatasetError
from soundnet_cli.datasets.labels import read_label_map
from soundnet_cli.errors import SoundnetError, UsageProblem
from soundnet_cli.evaluation.probing import read_labels

from ..conftest import tone, write_wav
from ..fakes import make_esc_tree

CLASSES = {"dog": 300.0, "rain": 900.0}


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    for name in ("a.wav", "b.wav", "c.wav"):
        write_wav(tmp_path / "audio" / name, tone(0.2))
    write_wav(tmp_path / "outside.wav", tone(0.2))
    return tmp_path / "audio"


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_a_bom_is_accepted_by_probe_labels_and_figures(audio, tmp_path):
    labels = write(tmp_path / "l.csv", "path,label\na.wav,dog\nb.wav,rain\n", bom=True)
    clips = read_labels(labels, audio)
    assert [(c.path.name, c.label) for c in clips] == [("a.wav", "dog"), ("b.wav", "rain")]
    assert read_label_map(labels).lookup("a.wav") == "dog"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\na.wav,dog\nb.wav,\n", r"line 3: b\.wav has an empty label"),
        ("path,label\na.wav,dog\nb.wav,rain\na.wav,rain\n", r"line 4: a\.wav is labelled 'rain'"),
        ("path,label\na.wav,dog\n../outside.wav,rain\n", r"line 3: \.\./outside\.wav is outside"),
        ("path,label\na.wav,dog\nb.wav\n", r"line 3: 1 of 2 fields; missing label"),
    ],
)
def test_bad_rows_are_refused_with_their_line(audio, tmp_path, text, message):
    with pytest.raises(UsageProblem, match=message):
        read_labels(write(tmp_path / "l.csv", text), audio)


def test_absolute_paths_are_outside_the_audio_folder(audio, tmp_path):
    labels = write(tmp_path / "l.csv", f"path,label\na.wav,dog\n{audio / 'b.wav'},rain\n")
    with pytest.raises(UsageProblem, match="line 3: .* is outside the audio folder"):
        read_labels(labels, audio)


def test_a_file_that_is_not_utf8_is_one_line(audio, tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_bytes("path,label\na.wav,chien é\n".encode("latin-1"))
    with pytest.raises(UsageProblem, match="not UTF-8 text"):
        read_labels(labels, audio)


def test_figure_labels_refuse_conflicts_too(tmp_path):
    labels = write(tmp_path / "l.csv", "path,label\nx.wav,dog\nx.wav,rain\n")
    with pytest.raises(UsageProblem, match="line 3"):
        read_label_map(labels)


def _esc(tmp_path: Path) -> Path:
    return make_esc_tree(tmp_path / "esc", CLASSES, per_class=2, folds=2, seconds=0.2)


def test_esc50_meta_with_a_bom_is_read(tmp_path):
    root = _esc(tmp_path)
    meta = root / "meta" / "esc50.csv"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    assert len(ESC50().clips(root)) == 4


def test_esc50_row_with_missing_fields_names_its_line(tmp_path):
    root = _esc(tmp_path)
    meta = root / "meta" / "esc50.csv"
    lines = meta.read_text().splitlines()
    lines[2] = lines[2].split(",")[0]
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="esc50.csv line 3: 1 of"):
        ESC50().clips(root)


def test_esc50_conflicting_labels_and_escaping_names_are_refused(tmp_path):
    root = _esc(tmp_path)
    meta = root / "meta" / "esc50.csv"
    header, first, *rest = meta.read_text().splitlines()
    meta.write_text("\n".join([header, first, first.replace("dog", "rain"), *rest]) + "\n")
    with pytest.raises(DatasetError, match="line 3: .* is labelled 'rain'"):
        ESC50().clips(root)
    name = first.split(",")[0]
    meta.write_text("\n".join([header, first.replace(name, "../" + name, 1), *rest]) + "\n")
    with pytest.raises(SoundnetError, match="line 2: .* is outside the audio folder"):
        ESC50().clips(root)


def test_an_identical_duplicated_row_counts_once(audio, tmp_path):
    labels = write(tmp_path / "l.csv", "path,label\na.wav,dog\nb.wav,rain\na.wav,dog\n")
    clips = read_labels(labels, audio)
    assert [(c.path.name, c.label) for c in clips] == [("a.wav", "dog"), ("b.wav", "rain")]
    assert read_label_map(labels).rows == [("a.wav", "dog"), ("b.wav", "rain")]


def test_a_conflicting_duplicate_is_still_refused(audio, tmp_path):
    labels = write(tmp_path / "l.csv", "path,label\na.wav,dog\nb.wav,rain\na.wav,rain\n")
    with pytest.raises(UsageProblem, match=r"line 4: a\.wav is labelled 'rain'"):
        read_labels(labels, audio)


def test_a_header_naming_a_column_twice_is_one_clear_line(audio, tmp_path):
    labels = write(tmp_path / "l.csv", "path,label,label\na.wav,dog,dog\nb.wav,rain,rain\n")
    for read in (lambda: read_labels(labels, audio), lambda: read_label_map(labels)):
        with pytest.raises(UsageProblem) as caught:
            read()
        message = str(caught.value)
        assert "names the column 'label' more than once" in message and "\n" not in message
        assert "at least two labels" not in message


def test_finetune_labels_count_a_repeated_row_once(audio, tmp_path):
    from soundnet_cli.training.finetune import labels_task

    labels = write(tmp_path / "l.csv", "path,label\na.wav,dog\nb.wav,rain\nb.wav,rain\n")
    assert len(labels_task(audio, labels).train) == 2
