"""The real release: fetched through the library's own verified download, converted, loaded."""

import re

from soundnet_cli.students import feature_of
from soundnet_cli.weights.checkpoints import read_info
from soundnet_cli.weights.official import OFFICIAL
from soundnet_cli.weights.sound8 import OBJECT_NAMES_SOURCE, imagenet_categories


def test_release_converts_with_all_names(official_checkpoint):
    info = read_info(official_checkpoint)
    assert info.architecture == "soundnet8" and info.sample_rate == 22050
    heads = {h.name: h for h in info.heads}
    assert heads["objects"].size == 1000 and heads["scenes"].size == 401
    assert list(heads["objects"].categories) == imagenet_categories()  # at every index
    assert heads["objects"].categories[742] == "printer"
    scenes = heads["scenes"].categories
    assert scenes[:2] == ("abbey", "airfield") and len(set(scenes)) == 401
    assert all(re.fullmatch(r"[a-z][a-z0-9_/ -]*[a-z]", name) for name in scenes), scenes
    assert info.provenance["object_names"] == OBJECT_NAMES_SOURCE
    assert info.provenance["official"] is True
    assert info.provenance["weights_sha256"] == OFFICIAL.weights_sha256


def test_load_student_pretrained_uses_the_cache(official_home):
    import soundnet_cli

    model = soundnet_cli.load_student("soundnet8", pretrained=True)
    assert model.checkpoint_info.path == official_home
    assert feature_of(model, "pool5").channels == 256
