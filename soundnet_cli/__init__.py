"""soundnet-cli: sound representations learned from unlabeled video (SoundNet, NIPS 2016).

Importing this package is cheap; torch loads only when a model is built::

    import soundnet_cli
    model = soundnet_cli.load_student("soundnet8", pretrained=True)
    wave = soundnet_cli.load_audio("dog.wav")
    feats = model.forward_features(torch.from_numpy(wave.samples), ["pool5"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soundnet_cli._version import __version__
from soundnet_cli.errors import SoundnetError
from soundnet_cli.hookspecs import hookimpl

if TYPE_CHECKING:
    from soundnet_cli.extraction.engine import extract, extract_array
    from soundnet_cli.media.audio import load_audio
    from soundnet_cli.models import list_students, load_student
    from soundnet_cli.plugins import get_plugins
    from soundnet_cli.students.predict import predict_waveform
    from soundnet_cli.weights.checkpoints import load_checkpoint, save_checkpoint

_LAZY = {
    "load_student": "models",
    "list_students": "models",
    "load_audio": "media.audio",
    "load_checkpoint": "weights.checkpoints",
    "save_checkpoint": "weights.checkpoints",
    "get_plugins": "plugins",
    "predict_waveform": "students.predict",
    "extract": "extraction.engine",
    "extract_array": "extraction.engine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'soundnet_cli' has no attribute {name!r}")


__all__ = [
    "SoundnetError",
    "__version__",
    "extract",
    "extract_array",
    "get_plugins",
    "hookimpl",
    "list_students",
    "load_audio",
    "load_checkpoint",
    "load_student",
    "predict_waveform",
    "save_checkpoint",
]
