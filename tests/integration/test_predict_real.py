"""The official model's scene predictions on real ESC-50 fold-4 clips, where the paper's
model is known to be good (top-1 scene of the whole-file summary, most clips of each class)."""

import json
from collections import defaultdict

from soundnet_cli.media.audio import load_audio
from soundnet_cli.students.predict import predict_waveform

from .conftest import esc_rows

EXPECTED_SCENES = {
    "sea_waves": {"ocean", "beach", "coast"},
    "chirping_birds": {
        "rainforest",
        "forest_path",
        "forest_road",
        "forest/broadleaf",
        "forest/needleleaf",
        "bamboo_forest",
    },
    "thunderstorm": {"sky"},
    "fireworks": {"sky"},
    "helicopter": {"sky", "airfield", "runway"},
    "airplane": {"sky", "airfield", "runway"},
    "clapping": {"auditorium"},
    "train": {"train_railway", "railroad_track", "train_station/platform"},
}


def test_top_scenes_are_sensible(official_model):
    hits: dict[str, list[bool]] = defaultdict(list)
    for row in esc_rows("esc50-fold4"):
        if row["category"] in EXPECTED_SCENES:
            result = predict_waveform(official_model, load_audio(row["path"]), top_k=1)
            scene = next(h for h in result.summary if h.head == "scenes").labels[0]
            hits[row["category"]].append(scene in EXPECTED_SCENES[row["category"]])
    assert set(hits) == set(EXPECTED_SCENES)
    for category, results in hits.items():
        assert sum(results) > len(results) / 2, (category, results)


def test_cli_predict_with_the_cached_official_model(official_home):
    from typer.testing import CliRunner

    from soundnet_cli.cli.main import build_app

    rows = [r for r in esc_rows("esc50-fold4") if r["category"] == "sea_waves"][:2]
    result = CliRunner().invoke(
        build_app(), ["predict", *(r["path"] for r in rows), "--json", "-k", "3"]
    )
    assert result.exit_code == 0, result.stderr
    for item in json.loads(result.stdout)["results"]:
        assert item["tiled_to"] == 20.0 and len(item["steps"]) == 4
        scenes = next(h for h in item["summary"] if h["head"] == "scenes")
        assert scenes["top"][0]["label"] == "ocean"
