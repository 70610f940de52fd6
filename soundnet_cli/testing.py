"""Contract checks and pytest fixtures for plugin authors.

Every component a plugin registers must keep the contract the commands rely on. Run these checks
in your plugin's tests, as timm tests every registered model::

    from soundnet_cli import testing
    from soundnet_cli.testing import soundnet_home  # noqa: F401  (a fixture)

    def test_my_student_keeps_the_contract(soundnet_home):
        testing.check_registered_student("my-student")

    def test_my_probe(soundnet_home):
        testing.check_probe(testing.plugins().probes.create("my-probe"))

Each ``check_*`` raises ``AssertionError`` naming the first broken rule, so a failing test says
what to fix. ``with_plugin(module)`` loads a plugin module that is not installed (yet), as if its
entry point were declared. See docs/plugins.md.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from soundnet_cli import plugins as _plugins
from soundnet_cli.errors import AudioError, LayerError
from soundnet_cli.media.audio import SAMPLE_RATE, SCALE
from soundnet_cli.students.base import FeatureInfo

if TYPE_CHECKING:
    import torch

__all__ = [
    "check_probe",
    "check_registered_student",
    "check_registered_teacher",
    "check_student",
    "check_teacher",
    "make_wave",
    "plugins",
    "sound_wave",
    "soundnet_home",
    "with_plugin",
]

CHECK_SECONDS = 2.0  # input length for student checks, lengthened to the deepest layer's minimum


# -- inputs ------------------------------------------------------------------------------------
def make_wave(
    seconds: float = CHECK_SECONDS,
    *,
    batch: int | None = None,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """A student-ready test waveform: a tone plus noise, scaled to [-256, 256], float32.

    Shaped (samples,), or (batch, samples) when ``batch`` is given (each row different)."""
    import torch

    rows = 1 if batch is None else batch
    samples = max(1, int(round(seconds * sample_rate)))
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sample_rate
    waves = [
        0.4 * np.sin(2 * np.pi * (220.0 * (row + 1)) * t) + 0.1 * rng.standard_normal(samples)
        for row in range(rows)
    ]
    wave = torch.from_numpy((np.clip(np.stack(waves), -1, 1) * SCALE).astype(np.float32))
    return wave[0] if batch is None else wave


# -- plugins -----------------------------------------------------------------------------------
def plugins(disabled: Sequence[str] = ()) -> _plugins.Plugins:
    """Load the plugins afresh (builtins, installed entry points and ``with_plugin`` modules)."""
    _plugins.reset_plugins()
    _plugins.disable(disabled)
    return _plugins.get_plugins()


@contextlib.contextmanager
def with_plugin(module: str | ModuleType, name: str | None = None) -> Iterator[_plugins.Plugins]:
    """Load ``module`` as a plugin called ``name`` (default: its last dotted part) for the
    duration of the block, whether or not its package is installed. An installed plugin of the
    same name is replaced by this module, not loaded twice."""
    module_name = module if isinstance(module, str) else module.__name__
    importlib.import_module(module_name)  # fail here, loudly, if it does not import
    plugin_name = name or module_name.rsplit(".", 1)[-1].removeprefix("soundnet_")
    original = _plugins.installed_entry_points
    point = metadata.EntryPoint(plugin_name, module_name, _plugins.ENTRY_POINT_GROUP)

    def entry_points() -> list[metadata.EntryPoint]:
        return [ep for ep in original() if ep.name != plugin_name] + [point]

    _plugins.installed_entry_points = entry_points
    _plugins.reset_plugins()
    try:
        yield _plugins.get_plugins()
    finally:
        _plugins.installed_entry_points = original
        _plugins.reset_plugins()


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def soundnet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private SOUNDNET_HOME, offline (no downloads), plugins reloaded before and after."""
    home = tmp_path / "soundnet-home"
    home.mkdir()
    monkeypatch.setenv("SOUNDNET_HOME", str(home))
    monkeypatch.setenv("SOUNDNET_OFFLINE", "1")
    monkeypatch.delenv("SOUNDNET_DISABLE_PLUGINS", raising=False)
    _plugins.reset_plugins()
    yield home
    _plugins.reset_plugins()


@pytest.fixture
def sound_wave() -> torch.Tensor:
    """Two seconds of :func:`make_wave`, shaped (samples,)."""
    return make_wave()


# -- students ----------------------------------------------------------------------------------
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _check_feature_info(model: Any, who: str) -> list[FeatureInfo]:
    infos = getattr(model, "feature_info", None)
    _require(
        isinstance(infos, (list, tuple)) and len(infos) > 0,
        f"{who}: feature_info must be a non-empty list of FeatureInfo",
    )
    assert infos is not None
    names = []
    for info in infos:
        _require(isinstance(info, FeatureInfo), f"{who}: {info!r} is not a FeatureInfo")
        _require(
            isinstance(info.name, str) and info.name != "",
            f"{who}: a layer has no name ({info!r})",
        )
        for attr in ("channels", "stride", "receptive_field"):
            value = getattr(info, attr)
            _require(
                isinstance(value, int) and value > 0,
                f"{who}: layer {info.name!r} has {attr}={value!r}; it must be a positive int",
            )
        _require(isinstance(info.offset, int), f"{who}: layer {info.name!r} offset must be int")
        names.append(info.name)
    _require(len(set(names)) == len(names), f"{who}: layer names repeat: {names}")
    return list(infos)


def check_student(
    model: Any, *, architecture: str | None = None, layers: Sequence[str] | None = None
) -> None:
    """Check a built student against the contract every command relies on
    (:class:`soundnet_cli.students.Student`); a student that passes runs through extract,
    predict, evaluate and HEAR.

    Checked: it is a ``torch.nn.Module`` with every member of the contract: ``architecture``
    (equal to ``architecture`` when given), ``sample_rate`` 22,050, ``feature_info``,
    ``default_layer`` (one of its layers), ``device`` (a ``torch.device``, where its outputs
    are), ``min_samples`` and ``output_length``; ``forward_features`` accepts (samples,) and
    (batch, samples), returns exactly the requested layers as finite float tensors
    (batch, channels, time) with the declared channels and ``output_length`` steps, gives each
    row of a batch the same result as alone, and leaves its input alone; an unknown layer raises
    ``LayerError`` listing the valid ones; too short an input raises ``AudioError``;
    ``min_samples`` is the shortest input with one step and each ``stride`` more samples give
    one more step. A student with ``head_specs`` must keep ``HeadedStudent`` (``head_layer``;
    called on a waveform, log-probabilities per head shaped (batch, categories, steps)), which
    ``predict`` uses.
    """
    import torch

    who = f"student {getattr(model, 'architecture', type(model).__name__)!r}"
    _require(isinstance(model, torch.nn.Module), f"{who}: must be a torch.nn.Module")
    infos = _check_feature_info(model, who)
    _require(
        getattr(model, "sample_rate", None) == SAMPLE_RATE,
        f"{who}: sample_rate must be {SAMPLE_RATE}, got {getattr(model, 'sample_rate', None)!r}",
    )
    name = getattr(model, "architecture", None)
    _require(isinstance(name, str) and name != "", f"{who}: needs an `architecture` name")
    if architecture is not None:
        _require(
            name == architecture, f"{who}: architecture is {name!r}, registered as {architecture!r}"
        )
    _require(callable(getattr(model, "forward_features", None)), f"{who}: no forward_features")
    for member in ("output_length", "min_samples"):
        _require(callable(getattr(model, member, None)), f"{who}: needs a `{member}` method")
    default = getattr(model, "default_layer", None)
    _require(
        default in [info.name for info in infos],
        f"{who}: default_layer must name one of its layers, got {default!r}",
    )
    device = getattr(model, "device", None)
    _require(
        isinstance(device, torch.device),
        f"{who}: `device` must be the torch.device it runs on, got {device!r}",
    )

    wanted = list(layers) if layers is not None else [info.name for info in infos]
    by_name = {info.name: info for info in infos}
    for layer in wanted:
        _require(layer in by_name, f"{who}: {layer!r} is not in feature_info")
    samples = max(
        [int(CHECK_SECONDS * SAMPLE_RATE)]
        + [int(model.min_samples(layer)) * 5 // 4 for layer in wanted]
    )
    model.eval()
    seconds = samples / SAMPLE_RATE
    batch = make_wave(seconds, batch=2, seed=1)
    original = batch.clone()
    with torch.inference_mode():
        taps = model.forward_features(batch, wanted)
        single = model.forward_features(batch[1], wanted)
    _require(torch.equal(batch, original), f"{who}: forward_features changed its input")
    for result, rows in ((taps, 2), (single, 1)):
        _require(
            isinstance(result, dict) and set(result) == set(wanted),
            f"{who}: asked for {wanted}, got "
            f"{sorted(result) if isinstance(result, dict) else type(result).__name__}",
        )
        for layer, tensor in result.items():
            info = by_name[layer]
            _require(
                isinstance(tensor, torch.Tensor) and tensor.dim() == 3,
                f"{who}: layer {layer!r} must be a tensor (batch, channels, time), got "
                f"{getattr(tensor, 'shape', type(tensor))}",
            )
            _require(
                tuple(tensor.shape[:2]) == (rows, info.channels),
                f"{who}: layer {layer!r} has shape {tuple(tensor.shape)} for a batch of {rows}; "
                f"feature_info declares {info.channels} channels",
            )
            _require(tensor.shape[2] > 0, f"{who}: layer {layer!r} gave no time steps")
            _require(tensor.is_floating_point(), f"{who}: layer {layer!r} is not floating point")
            _require(bool(torch.isfinite(tensor).all()), f"{who}: layer {layer!r} is not finite")
            _require(
                tensor.device == model.device,
                f"{who}: layer {layer!r} is on {tensor.device}, the student on {model.device}",
            )
            expected = model.output_length(layer, samples)
            _require(
                tensor.shape[2] == expected,
                f"{who}: layer {layer!r} gave {tensor.shape[2]} steps for {samples} samples; "
                f"output_length says {expected}",
            )
    for layer in wanted:
        _require(
            torch.allclose(taps[layer][1], single[layer][0], rtol=1e-3, atol=1e-3),
            f"{who}: layer {layer!r} differs for the same audio alone and in a batch",
        )
    _check_bad_inputs(model, who, [info.name for info in infos], wanted)
    _check_geometry(model, who, [by_name[layer] for layer in wanted], samples)
    if getattr(model, "head_specs", None):
        _check_heads(model, who, by_name)


def _check_heads(model: Any, who: str, by_name: dict[str, FeatureInfo]) -> None:
    """A student with ``head_specs`` keeps ``HeadedStudent``: what predict uses."""
    import torch

    from soundnet_cli.students.contract import HeadedStudent

    _require(
        isinstance(model, HeadedStudent),
        f"{who}: a student with head_specs needs head_layer and to be callable "
        "(the HeadedStudent protocol predict uses)",
    )
    layer = model.head_layer
    _require(layer in by_name, f"{who}: head_layer {layer!r} is not in feature_info")
    samples = max(int(CHECK_SECONDS * SAMPLE_RATE), int(model.min_samples(layer)) * 5 // 4)
    wave = make_wave(samples / SAMPLE_RATE, batch=2, seed=2)
    with torch.inference_mode():
        outputs = model(wave)
    names = [h.name for h in model.head_specs]
    _require(
        isinstance(outputs, dict) and list(outputs) == names,
        f"{who}: calling it must return {{head: log-probabilities}} for heads {names}",
    )
    steps = model.output_length(layer, wave.shape[-1])
    for head in model.head_specs:
        out = outputs[head.name]
        _require(
            tuple(out.shape) == (wave.shape[0], head.size, steps),
            f"{who}: head {head.name!r} gave {tuple(out.shape)}; expected "
            f"{(wave.shape[0], head.size, steps)} (batch, categories, {layer} steps)",
        )
        total = out.exp().sum(dim=1)
        _require(
            bool(torch.allclose(total, torch.ones_like(total), atol=1e-3)),
            f"{who}: head {head.name!r} does not give log-probabilities over its categories",
        )


def _check_bad_inputs(model: Any, who: str, valid: list[str], wanted: list[str]) -> None:
    import torch

    try:
        model.forward_features(make_wave(0.5), ["no-such-layer"])
    except LayerError as exc:
        missing = [name for name in valid if name not in str(exc)]
        _require(not missing, f"{who}: the unknown-layer error does not list {missing}: {exc}")
    except Exception as exc:
        raise AssertionError(f"{who}: an unknown layer must raise LayerError, not {exc!r}") from exc
    else:
        raise AssertionError(f"{who}: an unknown layer must raise LayerError")
    # Too short: one sample less than the deepest requested layer needs. A layer that gives a
    # step for any input has nothing to check.
    deepest = max(wanted, key=lambda name: int(model.min_samples(name)))
    short = int(model.min_samples(deepest)) - 1
    if short < 1:
        return
    try:
        with torch.inference_mode():
            model.forward_features(torch.zeros(short), [deepest])
    except AudioError:
        pass
    except Exception as exc:
        raise AssertionError(
            f"{who}: {short} samples for layer {deepest!r} must raise AudioError, not {exc!r}"
        ) from exc
    else:
        raise AssertionError(f"{who}: {short} samples for layer {deepest!r} must raise AudioError")


def _check_geometry(model: Any, who: str, infos: list[FeatureInfo], samples: int) -> None:
    for info in infos:
        need = model.min_samples(info.name)
        _require(
            model.output_length(info.name, need) >= 1
            and (need == 1 or model.output_length(info.name, need - 1) == 0),
            f"{who}: min_samples({info.name!r}) = {need} is not the shortest input with one step",
        )
        steps = model.output_length(info.name, samples)
        later = model.output_length(info.name, samples + info.stride)
        _require(
            later == steps + 1,
            f"{who}: layer {info.name!r}: {info.stride} more samples (its stride) gave "
            f"{later - steps} more steps, not 1",
        )
        centres = info.step_centres(steps)
        _require(
            all(math.isfinite(c) for c in centres), f"{who}: bad step centres for {info.name!r}"
        )


def check_registered_student(name: str, **factory_kwargs: Any) -> None:
    """Build the registered student ``name`` (no weights are downloaded) and check it. A family
    (a name ending in ``:``) is checked through the variant its factory builds by default."""
    registry = _plugins.get_plugins().students
    family = next((e for e in registry if e.name == name and e.is_family), None)
    if family is None:
        check_student(registry.create(name, **factory_kwargs), architecture=name)
        return
    model = family.factory(**factory_kwargs)
    check_student(model)
    _require(
        str(getattr(model, "architecture", "")).startswith(name),
        f"student family {name!r}: its default variant is named {model.architecture!r}",
    )


# -- teachers ----------------------------------------------------------------------------------
def check_teacher(
    teacher: Any, *, name: str | None = None, frames: int = 2, height: int = 72, width: int = 96
) -> None:
    """Check a built teacher against what ``soundnet prepare`` uses of it.

    Checked: it is a :class:`soundnet_cli.teachers.Teacher` (an ``nn.Module``; ``get_teacher``
    refuses anything else) named ``name`` when given; ``heads`` each have a name a student head
    can take (lower-case letters, digits, ``-`` and ``_``) and category names; ``transform``
    turns uint8 RGB frames (N, H, W, 3) into float pixels (N, 3, h, w); ``label(frames)`` gives
    probabilities per head, (N, categories), each row summing to 1, and ``label_pixels`` of the
    transformed frames the same; ``device`` is a ``torch.device``; ``describe()`` (what a
    corpus manifest records) is JSON with its name and heads.
    """
    import json

    import torch

    from soundnet_cli.students.contract import HEAD_NAME
    from soundnet_cli.teachers.base import Teacher

    who = f"teacher {getattr(teacher, 'name', type(teacher).__name__)!r}"
    _require(
        isinstance(teacher, Teacher),
        f"{who}: must be a soundnet_cli.teachers.Teacher (wrap the network in one)",
    )
    _require(isinstance(teacher.name, str) and teacher.name != "", f"{who}: needs a name")
    if name is not None:
        _require(teacher.name == name, f"{who}: its name is not the registered {name!r}")
    heads = list(getattr(teacher, "heads", ()) or ())
    _require(len(heads) > 0, f"{who}: declares no heads")
    if any(getattr(h, "kind", "posteriors") == "embedding" for h in heads):
        _check_embedding_teacher(teacher, who, heads, frames, height, width)
        return
    for head in heads:
        categories = getattr(head, "categories", None)
        _require(
            isinstance(getattr(head, "name", None), str) and bool(categories),
            f"{who}: every head needs a name and category names, got {head!r}",
        )
        _require(
            bool(HEAD_NAME.match(head.name)),
            f"{who}: head {head.name!r} must be lower-case letters, digits, - or _ "
            "(students' heads are named after it)",
        )
        _require(
            all(isinstance(c, str) and c for c in categories or ()),
            f"{who}: head {head.name!r} has a category name that is not a non-empty string",
        )
    _require(callable(getattr(teacher, "transform", None)), f"{who}: needs a frame transform")
    _require(isinstance(teacher.device, torch.device), f"{who}: `device` must be a torch.device")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8)
    pixels = teacher.transform(images)
    _require(
        isinstance(pixels, torch.Tensor)
        and pixels.is_floating_point()
        and pixels.dim() == 4
        and tuple(pixels.shape[:2]) == (frames, 3),
        f"{who}: transform gave {getattr(pixels, 'shape', type(pixels))} for {frames} frames; "
        "expected float pixels (N, 3, height, width)",
    )
    probabilities = teacher.label(images)
    _require(
        set(probabilities) == {h.name for h in heads},
        f"{who}: label() returned heads {sorted(probabilities)}, declared "
        f"{[h.name for h in heads]}",
    )
    again = teacher.label_pixels(pixels)
    for head in heads:
        p = np.asarray(probabilities[head.name], dtype=np.float64)
        _require(
            p.shape == (frames, len(head.categories)),
            f"{who}: head {head.name!r} gave {p.shape} for {frames} frames and "
            f"{len(head.categories)} categories",
        )
        _require(
            bool(
                np.isfinite(p).all() and (p >= 0).all() and np.allclose(p.sum(axis=1), 1, atol=1e-3)
            ),
            f"{who}: head {head.name!r} does not give probabilities (non-negative, rows sum to 1)",
        )
        _require(
            np.allclose(np.asarray(again[head.name], dtype=np.float64), p, atol=1e-4),
            f"{who}: label_pixels(transform(frames)) differs from label(frames)",
        )
    described = teacher.describe()
    try:
        json.dumps(described)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{who}: describe() is not JSON ({exc})") from exc
    _require(
        described.get("name") == teacher.name
        and [h.get("name") for h in described.get("heads", [])] == [h.name for h in heads],
        f"{who}: describe() does not name the teacher and its heads",
    )


def check_registered_teacher(name: str, **factory_kwargs: Any) -> None:
    """Build the registered teacher ``name`` as ``soundnet prepare`` does, without weights
    (``random_init=True``, nothing downloaded, unless ``factory_kwargs`` say otherwise), and
    check it. A family (``timm:``) is checked through the variant in ``name``
    (``timm:test_resnet``)."""
    from soundnet_cli.errors import SoundnetError

    kwargs = {"weights": None, "random_init": True, **factory_kwargs}
    try:
        teacher = _plugins.get_plugins().teachers.create(name, **kwargs)
    except SoundnetError as exc:
        raise AssertionError(f"teacher {name!r}: cannot be built without weights ({exc})") from exc
    check_teacher(teacher.eval(), name=name)


def _check_embedding_teacher(
    teacher: Any, who: str, heads: list[Any], frames: int, height: int, width: int
) -> None:
    """A teacher with ``embedding`` heads: each declares a size and gives unit vectors of that
    size per frame (posterior heads beside them give probabilities)."""
    _require(callable(getattr(teacher, "transform", None)), f"{who}: needs a frame transform")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8)
    outputs = teacher.label(pixels)
    _require(
        set(outputs) == {h.name for h in heads},
        f"{who}: label() returned heads {sorted(outputs)}, declared {[h.name for h in heads]}",
    )
    for head in heads:
        values = np.asarray(outputs[head.name], dtype=np.float64)
        _require(
            values.shape == (frames, head.size) and head.size > 0,
            f"{who}: head {head.name!r} gave {values.shape} for {frames} frames and size "
            f"{head.size}",
        )
        if getattr(head, "kind", "posteriors") == "embedding":
            norms = np.linalg.norm(values, axis=1)
            _require(
                bool(np.isfinite(values).all() and np.allclose(norms, 1, atol=1e-3)),
                f"{who}: embedding head {head.name!r} does not give L2-normalised vectors",
            )
        else:
            _require(
                bool((values >= 0).all() and np.allclose(values.sum(axis=1), 1, atol=1e-3)),
                f"{who}: head {head.name!r} does not give probabilities",
            )


# -- probes ------------------------------------------------------------------------------------
def _blobs(classes: int, per_class: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(classes, dims))
    x = np.concatenate([c + rng.normal(size=(per_class, dims)) for c in centres])
    y = np.repeat(np.array([f"class-{i}" for i in range(classes)]), per_class)
    return x.astype(np.float32), y


def check_probe(probe: Any) -> None:
    """Check a fresh probe: scikit-learn's estimator API. ``fit(x, y)`` returns the probe and
    sets ``classes_``; ``decision_function`` gives (n, classes) for three classes; ``predict``
    returns labels from ``classes_`` and separates well-separated classes."""
    who = f"probe {type(probe).__name__}"
    for method in ("fit", "decision_function", "predict"):
        _require(callable(getattr(probe, method, None)), f"{who}: needs {method}()")
    x, y = _blobs(3, 20, 8, seed=0)
    fitted = probe.fit(x, y)
    _require(fitted is probe, f"{who}: fit() must return the probe itself")
    classes = list(getattr(probe, "classes_", []))
    _require(
        sorted(classes) == sorted(set(y)), f"{who}: classes_ is {classes}, expected the labels"
    )
    scores = np.asarray(probe.decision_function(x))
    _require(
        scores.shape == (len(x), 3), f"{who}: decision_function gave {scores.shape}, not (60, 3)"
    )
    predicted = np.asarray(probe.predict(x))
    _require(predicted.shape == (len(x),), f"{who}: predict gave shape {predicted.shape}")
    _require(set(predicted) <= set(classes), f"{who}: predict returned labels not in classes_")
    _require(
        bool(np.all(np.asarray(classes)[scores.argmax(axis=1)] == predicted)),
        f"{who}: predict disagrees with the largest decision value",
    )
    accuracy = float(np.mean(predicted == y))
    _require(accuracy >= 0.9, f"{who}: {accuracy:.0%} on well-separated training data")
