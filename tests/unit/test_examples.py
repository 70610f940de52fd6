"""The clips shipped for the README's first command: small, decodable, labelled, attributed."""

import soundfile as sf

from soundnet_cli.evaluation.probing import read_labels
from soundnet_cli.media.files import find_audio

from ..conftest import REPO

MINI = REPO / "examples" / "esc10-mini"
ESC10 = {
    "dog", "rooster", "rain", "sea_waves", "crackling_fire",
    "crying_baby", "sneezing", "clock_tick", "helicopter", "chainsaw",
}  # fmt: skip


def test_one_short_clip_per_esc10_class_well_under_2_mb():
    clips = find_audio([MINI])
    assert {c.stem for c in clips} == ESC10
    assert sum(c.stat().st_size for c in clips) < 1_000_000
    for clip in clips:
        info = sf.info(str(clip))
        assert info.samplerate == 22050 and info.channels == 1
        assert 4.9 < info.duration < 5.1


def test_every_clip_is_labelled_and_attributed():
    labels = read_labels(MINI / "labels.csv", MINI)
    assert {c.path.stem: c.label for c in labels} == {name: name for name in ESC10}
    attribution = (MINI / "ATTRIBUTION.md").read_text()
    assert "Creative Commons Attribution 3.0" in attribution
    for name in ESC10:
        assert f"| {name}.ogg |" in attribution
