"""Student networks: 1-D convolutional nets on the raw waveform."""

from soundnet_cli.students.base import (
    ConvLayer,
    ConvStudent,
    FeatureInfo,
    HeadLayer,
    HeadSpec,
    PoolLayer,
)
from soundnet_cli.students.soundnet import PRETRAINED_HEADS, soundnet5, soundnet8

__all__ = [
    "PRETRAINED_HEADS",
    "ConvLayer",
    "ConvStudent",
    "FeatureInfo",
    "HeadLayer",
    "HeadSpec",
    "PoolLayer",
    "soundnet5",
    "soundnet8",
]
