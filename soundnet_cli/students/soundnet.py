"""SoundNet-8 and SoundNet-5 (Aytar et al., 2016): explicit builders with every hyper-parameter."""

from __future__ import annotations

from collections.abc import Sequence

from soundnet_cli.students.base import ConvLayer, ConvStudent, HeadLayer, HeadSpec, PoolLayer

# The authors' pretrained model: 1000 ImageNet objects, 401 Places scenes.
PRETRAINED_HEADS = (HeadSpec("objects", 1000), HeadSpec("scenes", 401))

SOUNDNET8_BODY = (
    ConvLayer("conv1", 16, 64, 2, 32),
    PoolLayer("pool1", 8),
    ConvLayer("conv2", 32, 32, 2, 16),
    PoolLayer("pool2", 8),
    ConvLayer("conv3", 64, 16, 2, 8),
    ConvLayer("conv4", 128, 8, 2, 4),
    ConvLayer("conv5", 256, 4, 2, 2),
    PoolLayer("pool5", 4),
    ConvLayer("conv6", 512, 4, 2, 2),
    ConvLayer("conv7", 1024, 4, 2, 2),
)
SOUNDNET8_HEAD = HeadLayer("conv8", 8, 2, 0)

SOUNDNET5_BODY = (
    ConvLayer("conv1", 32, 64, 2, 32),
    PoolLayer("pool1", 8),
    ConvLayer("conv2", 64, 32, 2, 16),
    PoolLayer("pool2", 8),
    ConvLayer("conv3", 128, 16, 2, 8),
    PoolLayer("pool3", 8),
    ConvLayer("conv4", 256, 8, 2, 4),
)
SOUNDNET5_HEAD = HeadLayer("conv5", 16, 12, 4)


def soundnet8(heads: Sequence[HeadSpec] = PRETRAINED_HEADS) -> ConvStudent:
    """SoundNet-8: seven conv+BN+ReLU layers, three max-pools, and one conv8 output per head."""
    return ConvStudent("soundnet8", SOUNDNET8_BODY, SOUNDNET8_HEAD, heads, default_layer="pool5")


def soundnet5(heads: Sequence[HeadSpec] = PRETRAINED_HEADS) -> ConvStudent:
    """SoundNet-5 (the paper's Table 2): four conv+BN+ReLU layers, three pools, conv5 heads."""
    return ConvStudent("soundnet5", SOUNDNET5_BODY, SOUNDNET5_HEAD, heads, default_layer="pool3")
