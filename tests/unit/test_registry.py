import pytest

from soundnet_cli.errors import DuplicateNameError, SoundnetError, UnknownNameError
from soundnet_cli.registry import Registry


def factory(**kwargs):
    return kwargs


def test_add_get_and_create():
    reg = Registry("student")
    reg.add("soundnet8", factory, description="eight", plugin="a")
    assert reg.get("soundnet8").description == "eight"
    assert reg.create("soundnet8", heads=1) == {"heads": 1}
    assert "soundnet8" in reg and len(reg) == 1 and reg.names() == ["soundnet8"]


def test_duplicate_names_both_plugins():
    reg = Registry("teacher")
    reg.add("vgg16-places", factory, description="", plugin="first-plugin")
    with pytest.raises(DuplicateNameError) as info:
        reg.add("vgg16-places", factory, description="", plugin="second-plugin")
    assert "first-plugin" in str(info.value) and "second-plugin" in str(info.value)


def test_unknown_name_lists_close_matches():
    reg = Registry("student")
    for name in ("soundnet8", "soundnet5", "mfcc"):
        reg.add(name, factory, description="", plugin="p")
    with pytest.raises(UnknownNameError) as info:
        reg.get("soundnet9")
    message = str(info.value)
    assert (
        "Did you mean 'soundnet8', 'soundnet5'" in message
        or "Did you mean 'soundnet5', 'soundnet8'" in message
    )
    assert "mfcc" in message  # the full list is there too
    assert set(info.value.close) == {"soundnet8", "soundnet5"}


@pytest.mark.parametrize("bad", ["SoundNet8", "vgg16_places", "-x", "a b", ""])
def test_names_must_be_kebab_case(bad):
    with pytest.raises(SoundnetError, match="kebab-case"):
        Registry("student").add(bad, factory, description="", plugin="p")


def test_factory_must_be_callable():
    with pytest.raises(SoundnetError, match="not callable"):
        Registry("probe").add("svm", 3, description="", plugin="p")  # type: ignore[arg-type]


def test_family_prefix_answers_for_every_variant():
    reg = Registry("teacher")
    reg.add("timm:", factory, description="any timm model", plugin="p")
    reg.add("vgg16-places", factory, description="", plugin="p")
    assert reg.get("timm:resnet18").name == "timm:"
    assert reg.create("timm:resnet18", random_init=True) == {
        "variant": "resnet18",
        "random_init": True,
    }
    assert reg.create("vgg16-places") == {}
    for bad in ("timm:", "timm", "other:resnet18"):
        with pytest.raises(UnknownNameError):
            reg.get(bad)


@pytest.mark.parametrize("bad", ["Timm:", "timm::", ":x", "timm:x"])
def test_family_names_are_a_prefix_and_a_colon(bad):
    with pytest.raises(SoundnetError, match="kebab-case"):
        Registry("teacher").add(bad, factory, description="", plugin="p")
