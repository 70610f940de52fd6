"""Vision teachers: declared heads and transforms, parity with torchvision / timm, weights files
(torchvision state dicts, Places365 checkpoints with ``module.`` prefixes), downloads from a
local HTTP server, and the offline errors."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import logging
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
import torchvision.transforms as T

from soundnet_cli.errors import UsageProblem, WeightsError
from soundnet_cli.plugins import get_plugins
from soundnet_cli.teachers import Teacher, get_teacher, get_teachers, parse_weight_specs
from soundnet_cli.teachers import torchvision_teachers as tvt
from soundnet_cli.teachers.weights import WeightSource, from_torchvision_url, read_state_dict

BUILTINS = [
    "alexnet-imagenet",
    "alexnet-places",
    "resnet50-places",
    "vgg16-imagenet",
    "vgg16-places",
]
PLACES_LINES = "".join(
    f"/{chr(97 + i % 26)}/scene_{i}/{'in' if i % 2 else 'out'}door {i}\n" for i in range(365)
)


def frames(n: int = 2, height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def softmax_direct(network: torch.nn.Module, pixels: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return network.eval()(pixels).softmax(-1).numpy()


@pytest.fixture(scope="module")
def alexnet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return tvm.alexnet(weights=None).state_dict()


@pytest.fixture(scope="module")
def random_teachers() -> dict[str, Teacher]:
    """Each builtin once, randomly initialised (VGG16's init alone takes seconds on 2 cores)."""
    torch.manual_seed(0)
    return {name: get_teacher(name, random_init=True) for name in BUILTINS + ["timm:test_resnet"]}


def test_builtin_teachers_are_registered():
    names = get_plugins().teachers.names()
    assert set(BUILTINS) <= set(names) and "timm:" in names
    entry = get_plugins().teachers.get("timm:resnet18")
    assert entry.plugin == "builtin-teachers"


@pytest.mark.parametrize("name", BUILTINS + ["timm:test_resnet"])
def test_every_teacher_declares_heads_and_transform(name, random_teachers):
    teacher = random_teachers[name]
    assert isinstance(teacher, Teacher) and teacher.name == name
    (head,) = teacher.heads
    assert head.size == (1000 if "imagenet" in name or name.startswith("timm") else 365)
    assert len(head.categories) == head.size and all(head.categories)
    crop = teacher.transform.crop
    pixels = teacher.transform(frames(1, 60, 80))
    assert pixels.shape == (1, 3, crop, crop) and pixels.dtype == torch.float32
    description = teacher.describe()
    assert description["heads"][0]["name"] == head.name and description["transform"]["crop"] == crop


def test_transforms_match_torchvision_presets():
    batch = torch.from_numpy(frames(3)).permute(0, 3, 1, 2)
    imagenet = tvt.SPECS["vgg16-imagenet"].transform
    preset = tvm.VGG16_Weights.IMAGENET1K_V1.transforms()
    assert torch.allclose(imagenet(batch), preset(batch), atol=1e-6)
    places = tvt.SPECS["resnet50-places"].transform
    reference = T.Compose(  # the Places365 demo's transform, on tensors
        [
            T.Resize((256, 256), antialias=True),
            T.CenterCrop(224),
            T.ConvertImageDtype(torch.float32),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    assert torch.allclose(places(batch), reference(batch), atol=1e-6)


@pytest.mark.parametrize(
    "name, builder",
    [
        ("alexnet-imagenet", partial(tvm.alexnet, num_classes=1000)),
        ("vgg16-imagenet", partial(tvm.vgg16, num_classes=1000)),
        ("resnet50-places", partial(tvm.resnet50, num_classes=365)),
    ],
)
def test_probabilities_equal_torchvision_with_the_same_weights(name, builder, random_teachers):
    teacher = random_teachers[name]
    with torch.device("meta"):  # built without init cost; the teacher's tensors are assigned
        direct = builder(weights=None)
    direct.load_state_dict(teacher.network.state_dict(), assign=True)
    # 64-px inputs keep VGG16 quick on 2 cores; the transform is checked on its own above
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours = teacher.label_pixels(pixels, batch_size=2)[teacher.heads[0].name]
    assert ours.shape == (3, teacher.heads[0].size)
    assert np.abs(ours - softmax_direct(direct, pixels)).max() <= 1e-5


def test_local_torchvision_state_dict(tmp_path, alexnet_state):
    path = tmp_path / "alexnet.pth"
    torch.save(alexnet_state, path)
    teacher = get_teacher("alexnet-imagenet", weights=path)
    direct = tvm.alexnet(weights=None)
    direct.load_state_dict(alexnet_state)
    preset = tvm.AlexNet_Weights.IMAGENET1K_V1.transforms()
    batch = frames(2)
    expected = softmax_direct(direct, preset(torch.from_numpy(batch).permute(0, 3, 1, 2)))
    got = teacher.label(batch)["alexnet-imagenet"]
    assert np.abs(got - expected).max() <= 1e-5
    assert teacher.heads[0].categories[:2] == ("tench", "goldfish")
    assert teacher.provenance["weights"] == str(path)


def test_places365_checkpoint_with_module_prefixes(tmp_path):
    """The CSAIL checkpoints: {'state_dict': {'module.conv1.weight': ...}, 'epoch', 'arch'},
    or for AlexNet 'features.module.0.weight' (DataParallel around the features only)."""
    torch.manual_seed(2)
    resnet = tvm.resnet50(weights=None, num_classes=365)
    torch.save(
        {
            "epoch": 90,
            "arch": "resnet50",
            "best_prec1": 54.7,
            "state_dict": {f"module.{k}": v for k, v in resnet.state_dict().items()},
        },
        tmp_path / "resnet50_places365.pth.tar",
    )
    (tmp_path / "categories_places365.txt").write_text(PLACES_LINES)
    teacher = get_teacher("resnet50-places", weights=tmp_path / "resnet50_places365.pth.tar")
    assert teacher.heads[0].categories[:2] == ("scene_0/outdoor", "scene_1/indoor")
    pixels = torch.randn(2, 3, 64, 64)
    ours = teacher.label_pixels(pixels)["resnet50-places"]
    assert np.abs(ours - softmax_direct(resnet, pixels)).max() <= 1e-5

    # AlexNet/VGG checkpoints wrap only the features: 'features.module.0.weight'
    torch.save(
        {"state_dict": {"features.module.0.weight": torch.ones(2, dtype=torch.float16)}},
        tmp_path / "alexnet_places365.pth.tar",
    )
    state = read_state_dict(tmp_path / "alexnet_places365.pth.tar")
    assert (
        list(state) == ["features.0.weight"] and state["features.0.weight"].dtype == torch.float32
    )


def test_places_weights_without_names_say_where_to_put_them(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="categories_places365.txt"):
        get_teacher("alexnet-places", weights=tmp_path / "w.pth")


def test_timm_teacher_equals_timm(tmp_path):
    import timm
    from timm.data import create_transform, resolve_data_config

    teacher = get_teacher("timm:test_resnet", random_init=True)
    direct = timm.create_model("test_resnet", pretrained=False)
    direct.load_state_dict(teacher.network.state_dict())
    batch = frames(3)
    config = resolve_data_config({}, model=direct)
    assert teacher.transform.crop == config["input_size"][-1]
    pixels = teacher.transform(batch)
    got = teacher.label(batch)["timm-test_resnet"]
    assert np.abs(got - softmax_direct(direct, pixels)).max() <= 1e-5
    assert teacher.heads[0].categories[0] == "tench, Tinca tinca"  # ImageNet names from timm
    # timm's own eval transform on a PIL image agrees closely (PIL vs tensor resizing differ)
    from PIL import Image

    pil = create_transform(**config)(Image.fromarray(batch[0]))
    assert float((pil - pixels[0]).abs().mean()) < 0.05

    # a local file with another number of classes: the classifier size is read from the file
    five = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    torch.save(five.state_dict(), tmp_path / "five.pth")
    small = get_teacher("timm:test_resnet", weights=tmp_path / "five.pth")
    assert small.heads[0].size == 5 and small.heads[0].categories[0] == "class-0"
    got = small.label(batch)["timm-test_resnet"]
    assert np.abs(got - softmax_direct(five, small.transform(batch))).max() <= 1e-5


def test_unknown_timm_model_is_a_usage_error():
    with pytest.raises(UsageProblem, match="timm has no model"):
        get_teacher("timm:no_such_net", random_init=True)


@pytest.mark.parametrize("name", ["vgg16-imagenet", "resnet50-places", "timm:test_resnet"])
def test_offline_without_weights_says_what_to_do(name):
    with pytest.raises(WeightsError) as info:
        get_teacher(name)
    message = str(info.value)
    assert "\n" not in message
    assert "give local weights for" in message and "random initialisation" in message
    assert info.value.parameter == ("teacher_weights", "random_init")  # the CLI names its flags


def test_weights_that_do_not_fit_give_one_line(tmp_path):
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="do not fit") as info:
        get_teacher("vgg16-imagenet", weights=tmp_path / "other.pth")
    assert "\n" not in str(info.value)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="cannot read weights"):
        read_state_dict(tmp_path / "evil.pth")


def test_safetensors_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    save_file(state, str(tmp_path / "net.safetensors"))
    teacher = get_teacher("timm:test_resnet", weights=tmp_path / "net.safetensors")
    assert all(torch.equal(v, teacher.network.state_dict()[k]) for k, v in state.items())


def test_parse_weight_specs_and_several_teachers(tmp_path):
    assert parse_weight_specs(["a=/x.pth", "timm:b=y=z.pth"]) == {
        "a": "/x.pth",
        "timm:b": "y=z.pth",
    }
    for bad in (["novalue"], ["=x"], ["a="], ["a=1", "a=2"]):
        with pytest.raises(UsageProblem):
            parse_weight_specs(bad)
    with pytest.raises(UsageProblem, match="not among the teachers"):
        get_teachers(["timm:test_resnet"], weights={"vgg16-places": "x"}, random_init=True)
    with pytest.raises(UsageProblem, match="twice"):
        get_teachers(["timm:test_resnet", "timm:test_resnet"], random_init=True)
    two = get_teachers(["timm:test_resnet", "alexnet-places"], random_init=True)
    assert [h.name for t in two for h in t.heads] == ["timm-test_resnet", "alexnet-places"]


def test_torchvision_urls_carry_a_hash_prefix():
    source = from_torchvision_url("https://download.pytorch.org/models/vgg16-397923af.pth")
    assert source.sha256 == "397923af" and source.filename == "vgg16-397923af.pth"
    assert tvt.resolve_source(tvt.SPECS["vgg16-imagenet"]) == source
    caffe = tvt.resolve_source(tvt.SPECS["vgg16-places"])  # CSAIL's, converted on first use
    assert caffe is not None and caffe.filename == "vgg16_places365.caffemodel"


# -- downloads, from a local server only -----------------------------------------------------------
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_caches_and_checks_the_hash(tmp_path, monkeypatch, caplog):
    """The real download path against 127.0.0.1; SqueezeNet stands in for the big nets (the
    download code does not care which architecture the spec names)."""
    from dataclasses import replace

    from soundnet_cli.teachers.weights import teachers_dir

    monkeypatch.delenv("SOUNDNET_OFFLINE")
    site = tmp_path / "site"
    site.mkdir()
    objects = tvm.squeezenet1_1(num_classes=1000).state_dict()
    torch.save(objects, site / "tmp.pth")
    digest = hashlib.sha256((site / "tmp.pth").read_bytes()).hexdigest()
    good = (site / "tmp.pth").rename(site / f"squeezenet-{digest[:8]}.pth")
    (site / "squeezenet-00000000.pth").write_bytes(good.read_bytes())
    scenes = tvm.squeezenet1_1(num_classes=365).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in scenes.items()}}, site / "sq.pth.tar")
    (site / "categories_places365.txt").write_text(PLACES_LINES)

    def use(name: str, url: str, tv_hash: bool = True) -> None:
        source = from_torchvision_url(url) if tv_hash else WeightSource(url)
        spec = replace(tvt.SPECS[name], architecture="squeezenet1_1", source=source)
        monkeypatch.setitem(tvt.SPECS, name, spec)

    with serve(site) as base, caplog.at_level(logging.INFO, logger="soundnet_cli"):
        use("alexnet-imagenet", f"{base}/{good.name}")
        teacher = get_teacher("alexnet-imagenet")
        assert base in caplog.messages[0]
        assert all(torch.equal(v, teacher.network.state_dict()[k]) for k, v in objects.items())

        use("alexnet-imagenet", f"{base}/squeezenet-00000000.pth")
        with pytest.raises(WeightsError, match="does not match the published 00000000"):
            get_teacher("alexnet-imagenet")

        use("resnet50-places", f"{base}/sq.pth.tar", tv_hash=False)
        monkeypatch.setattr(tvt, "PLACES_NAMES", WeightSource(f"{base}/categories_places365.txt"))
        places = get_teacher("resnet50-places")
        assert places.heads[0].categories[1] == "scene_1/indoor"
        assert all(torch.equal(v, places.network.state_dict()[k]) for k, v in scenes.items())
    cached = sorted(p.name for p in teachers_dir().iterdir())
    assert cached == sorted([good.name, "sq.pth.tar", "categories_places365.txt"])  # no bad file
    # the server is gone and we are offline: the cache answers
    use("alexnet-imagenet", f"{base}/{good.name}")
    monkeypatch.setenv("SOUNDNET_OFFLINE", "1")
    assert get_teacher("alexnet-imagenet").provenance["weights"].endswith(good.name)


def test_unreachable_server_is_a_weights_error(monkeypatch):
    from dataclasses import replace

    monkeypatch.delenv("SOUNDNET_OFFLINE")
    spec = tvt.SPECS["alexnet-places"]
    monkeypatch.setitem(
        tvt.SPECS, "alexnet-places", replace(spec, source=WeightSource("http://127.0.0.1:9/x.pth"))
    )
    with pytest.raises(WeightsError, match="download of .* failed.*give local weights"):
        get_teacher("alexnet-places")
