"""MFCC frames as a student: the hand-crafted baseline of the paper's Tables 4 and 5.

The paper compares SoundNet with "SVM on MFCC", the baseline of Piczak's ESC data set: a few
MFCC coefficients and the zero-crossing rate, summarised by their mean and standard deviation.
This module computes those features with torchaudio and exposes them through the student
contract, so every command that takes ``--student`` can use them. It has no weights to learn.

Two layers (taps):

``mfcc``
    One frame every ``hop_length`` samples: ``n_mfcc`` coefficients c0..c(n-1) of the log mel
    spectrum (Hann window of ``n_fft`` samples, centred, reflect-padded at the edges).
``summary`` (the default layer)
    Over ``summary_frames`` frames, every ``summary_hop`` frames: the mean and the standard
    deviation of c1..c(n-1) and of the zero-crossing rate. c0, the frame's log energy, is left
    out so that the summary does not depend on the recording's loudness.

The defaults at 22,050 Hz (46-ms frames every 11.6 ms, 1-s summaries every 0.5 s) give the same
frame durations as librosa's defaults at 44.1 kHz.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchaudio

from soundnet_cli.errors import SoundnetError
from soundnet_cli.students import SAMPLE_RATE, SCALE, FeatureInfo, StudentBase, feature_of

LOG_FLOOR = 1e-6  # torchaudio's log_mels offset; keeps every frame independent of the others


class MfccStudent(StudentBase):
    """MFCC frames and per-window statistics with the student contract.

    ``forward_features(wave, layers)`` takes (samples,), (batch, samples) or (batch, 1, samples)
    at 22,050 Hz scaled to [-256, 256] and returns ``{layer: (batch, channels, time)}``.
    """

    architecture = "mfcc"
    default_layer = "summary"

    def __init__(
        self,
        *,
        n_mfcc: int = 13,
        n_mels: int = 40,
        n_fft: int = 1024,
        hop_length: int = 256,
        f_min: float = 0.0,
        f_max: float | None = None,
        summary_frames: int = 86,
        summary_hop: int = 43,
    ) -> None:
        super().__init__()
        if n_mfcc < 2 or n_mels < n_mfcc:
            raise SoundnetError(f"mfcc needs 2 <= n_mfcc <= n_mels, got {n_mfcc} and {n_mels}")
        if n_fft % 2 or hop_length < 1 or hop_length > n_fft:
            raise SoundnetError(
                f"mfcc needs an even n_fft and 1 <= hop_length <= n_fft, "
                f"got {n_fft} and {hop_length}"
            )
        if summary_frames < 2 or not 1 <= summary_hop <= summary_frames:
            raise SoundnetError(
                f"mfcc needs summary_frames >= 2 and 1 <= summary_hop <= summary_frames, "
                f"got {summary_frames} and {summary_hop}"
            )
        self.sample_rate = SAMPLE_RATE
        self.n_fft, self.hop_length = n_fft, hop_length
        self.summary_frames, self.summary_hop = summary_frames, summary_hop
        self.params = {
            "n_mfcc": n_mfcc,
            "n_mels": n_mels,
            "n_fft": n_fft,
            "hop_length": hop_length,
            "f_min": f_min,
            "f_max": f_max,
            "summary_frames": summary_frames,
            "summary_hop": summary_hop,
        }
        self.transform = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE,
            n_mfcc=n_mfcc,
            log_mels=True,
            melkwargs={
                "n_fft": n_fft,
                "hop_length": hop_length,
                "n_mels": n_mels,
                "f_min": f_min,
                "f_max": f_max,
                "center": True,
                "pad_mode": "reflect",
                "power": 2.0,
            },
        )
        offset = -(n_fft // 2)  # centred frames: frame 0 is centred on sample 0
        self.feature_info = [
            FeatureInfo("mfcc", n_mfcc, hop_length, n_fft, offset),
            FeatureInfo(
                "summary",
                2 * (n_mfcc - 1) + 2,
                summary_hop * hop_length,
                (summary_frames - 1) * hop_length + n_fft,
                offset,
            ),
        ]

    # -- geometry -----------------------------------------------------------------------------
    def _frames(self, samples: int) -> int:
        # Reflect padding needs more than n_fft // 2 samples.
        return 1 + samples // self.hop_length if samples > self.n_fft // 2 else 0

    def output_length(self, layer: str, samples: int) -> int:
        """Time steps that ``layer`` gives for an input of ``samples`` (0 when too short)."""
        frames = self._frames(samples)
        if feature_of(self, layer).name == "mfcc":
            return frames
        if frames < self.summary_frames:
            return 0
        return (frames - self.summary_frames) // self.summary_hop + 1

    def min_samples(self, layer: str) -> int:
        """The shortest input that gives ``layer`` at least one time step."""
        first = self.n_fft // 2 + 1
        if feature_of(self, layer).name == "mfcc":
            return first
        return max(first, (self.summary_frames - 1) * self.hop_length)

    # -- forward ------------------------------------------------------------------------------
    def zero_crossing_rate(self, audio: torch.Tensor) -> torch.Tensor:
        """Fraction of sign changes in each centred frame, (batch, frames)."""
        pad = self.n_fft // 2
        padded = F.pad(audio[:, None], (pad, pad), mode="reflect")[:, 0]
        frames = padded.unfold(-1, self.n_fft, self.hop_length)  # (batch, frames, n_fft)
        signs = frames >= 0
        return (signs[..., 1:] != signs[..., :-1]).float().mean(dim=-1)

    def forward_features(
        self, wave: torch.Tensor, layers: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        batch, layers = self.forward_inputs(wave, layers)
        audio = batch.float() / SCALE
        coefficients = self.transform(audio)  # (batch, n_mfcc, frames)
        taps: dict[str, torch.Tensor] = {}
        if "mfcc" in layers:
            taps["mfcc"] = coefficients
        if "summary" in layers:
            taps["summary"] = self._summary(coefficients, self.zero_crossing_rate(audio))
        return taps

    def _summary(self, coefficients: torch.Tensor, zcr: torch.Tensor) -> torch.Tensor:
        frames = torch.cat([coefficients[:, 1:], zcr[:, None]], dim=1)  # (batch, n, frames)
        windows = frames.unfold(-1, self.summary_frames, self.summary_hop)  # (b, n, t, w)
        mean = windows.mean(dim=-1)
        std = windows.std(dim=-1, unbiased=False)
        n = coefficients.shape[1] - 1
        # channels: mean c1.., std c1.., mean zcr, std zcr
        return torch.cat([mean[:, :n], std[:, :n], mean[:, n:], std[:, n:]], dim=1)

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """The default layer, ``summary``: ``{"summary": (batch, channels, time)}``."""
        return self.forward_features(wave, [self.default_layer])

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())
