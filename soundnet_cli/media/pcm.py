"""What audio and video decoding share: the model's sample rate and scale, the channel mixes,
and int16 PCM (the corpus's storage) to the model's float scale. A module of its own so that
``audio`` and ``video`` need not import each other."""

from __future__ import annotations

from typing import Literal

import numpy as np

SAMPLE_RATE = 22050
SCALE = 256.0  # float audio in [-1, 1] times 256, as the authors' release; no mean subtraction
Mix = Literal["first", "mean"]
MIX_CHOICES: tuple[str, ...] = ("first", "mean")
INT16_SCALE = 32768.0


def int16_to_model(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> the model's float32 scale ([-256, 256], as audio.load_audio)."""
    return samples.astype(np.float32) * (SCALE / INT16_SCALE)
