"""Student networks: 1-D convolutional nets on the raw waveform, and the contract every student
keeps (:class:`Student`, in ``students/contract.py`` with its types; :class:`StudentBase` is an
optional base class)."""

from soundnet_cli.media.audio import SAMPLE_RATE, SCALE
from soundnet_cli.students.base import (
    ConvLayer,
    ConvStudent,
    FeatureInfo,
    HeadLayer,
    HeadSpec,
    PoolLayer,
)
from soundnet_cli.students.contract import (
    HeadedStudent,
    Student,
    StudentBase,
    check_taps,
    feature_of,
    forward_inputs,
)
from soundnet_cli.students.soundnet import PRETRAINED_HEADS, soundnet5, soundnet8

__all__ = [
    "PRETRAINED_HEADS",
    "SAMPLE_RATE",
    "SCALE",
    "ConvLayer",
    "ConvStudent",
    "FeatureInfo",
    "HeadLayer",
    "HeadSpec",
    "HeadedStudent",
    "PoolLayer",
    "Student",
    "StudentBase",
    "check_taps",
    "feature_of",
    "forward_inputs",
    "soundnet5",
    "soundnet8",
]
