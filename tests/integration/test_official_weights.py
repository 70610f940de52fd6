"""The real release: fetched through the library's own verified download, converted, loaded."""

from soundnet_cli.weights.checkpoints import read_info
from soundnet_cli.weights.official import OFFICIAL


def test_release_converts_with_all_names(official_checkpoint):
    info = read_info(official_checkpoint)
    assert info.architecture == "soundnet8" and info.sample_rate == 22050
    heads = {h.name: h for h in info.heads}
    assert heads["objects"].size == 1000 and heads["scenes"].size == 401
    assert heads["objects"].categories[0] == "tench, Tinca tinca"
    assert heads["scenes"].categories[:2] == ("abbey", "airfield")
    assert info.provenance["official"] is True
    assert info.provenance["weights_sha256"] == OFFICIAL.weights_sha256


def test_load_student_pretrained_uses_the_cache(official_home):
    import soundnet_cli

    model = soundnet_cli.load_student("soundnet8", pretrained=True)
    assert model.checkpoint_info.path == official_home
    assert model.feature("pool5").channels == 256
