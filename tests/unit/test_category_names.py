"""Issue 25 (low): the pretrained model's object names are torchvision's ImageNet categories at
every index. The release's list splits 10 names at apostrophes and reads "logger.debuger" at
index 742; checkpoints converted before the fix are corrected when read."""

from __future__ import annotations

import json

from safetensors import safe_open

from soundnet_cli.students import HeadSpec, soundnet8
from soundnet_cli.weights import sound8
from soundnet_cli.weights.checkpoints import load_checkpoint, read_info, save_checkpoint


def release_objects() -> list[str]:
    """The release's list as it reads: long WordNet names, broken ones where it breaks them."""
    names = [f"{name}, synonym" for name in sound8.imagenet_categories()]
    names[400], names[607], names[742] = 's robe",', '-lantern",', "logger.debuger"
    return names


def release_source(objects: list[str]) -> str:
    scenes = [f"scene_{i}" for i in range(401)]
    return f"categories_imagenet = {objects!r}\ncategories_places = {scenes!r}\n"


def test_converted_names_are_torchvisions_at_every_index():
    names = sound8.read_category_names(release_source(release_objects()))
    torchvision = sound8.imagenet_categories()
    assert len(torchvision) == 1000
    assert names["objects"] == torchvision
    assert names["objects"][742] == "printer" and names["objects"][607] == "jack-o'-lantern"
    assert names["scenes"][:2] == ["scene_0", "scene_1"]  # the release's scene names, kept


def test_a_checkpoint_converted_before_the_fix_reads_torchvisions_names(tmp_path):
    heads = (HeadSpec("objects", 1000, tuple(release_objects())), HeadSpec("scenes", 2))
    path = save_checkpoint(soundnet8(heads=heads), tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as handle:  # written as before the fix
        assert json.loads(handle.metadata()["heads"])[0]["categories"][742] == "logger.debuger"
    info = read_info(path)
    assert list(info.heads[0].categories) == sound8.imagenet_categories()
    model = load_checkpoint(path)
    assert model.head_specs[0].categories[742] == "printer"


def test_other_object_lists_are_left_alone(tmp_path):
    own = tuple(f"thing {i}" for i in range(1000))
    path = save_checkpoint(soundnet8(heads=(HeadSpec("objects", 1000, own),)), tmp_path / "o.st")
    assert read_info(path).heads[0].categories == own


def test_the_shipped_names_are_torchvisions_own():
    """The copy the package reads (so that no command imports torchvision for names) equals
    torchvision's ImageNet categories at every index."""
    from torchvision.models import ResNet50_Weights

    assert sound8.imagenet_categories() == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
