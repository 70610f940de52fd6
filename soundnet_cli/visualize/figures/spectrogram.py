"""Small log-magnitude spectrograms of audio excerpts, for the unit report."""

from __future__ import annotations

import numpy as np

from soundnet_cli.visualize.figures._base import _pyplot, png_bytes

FFT_SIZE = 512
HOP = 128


def log_spectrogram(samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float, float]:
    """(frequency bins, frames) in dB relative to the loudest bin; with the excerpt's duration in
    seconds and the top frequency in Hz."""
    wave = np.asarray(samples, dtype=np.float64)
    if len(wave) < FFT_SIZE:
        wave = np.pad(wave, (0, FFT_SIZE - len(wave)))
    frames = 1 + (len(wave) - FFT_SIZE) // HOP
    index = np.arange(FFT_SIZE)[None, :] + HOP * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(wave[index] * np.hanning(FFT_SIZE), axis=1)).T
    decibels = 20 * np.log10(np.maximum(spectrum, 1e-9))
    decibels = np.maximum(decibels - decibels.max(), -80.0)
    return decibels, len(samples) / sample_rate, sample_rate / 2.0


def spectrogram_png(
    samples: np.ndarray, sample_rate: int, *, marker: float | None = None, title: str = ""
) -> bytes:
    """A 320x160-pixel spectrogram (kHz over seconds) as PNG bytes; ``marker`` draws a line at
    that time (seconds into the excerpt)."""
    plt = _pyplot()
    decibels, seconds, top = log_spectrogram(samples, sample_rate)
    fig, ax = plt.subplots(figsize=(3.2, 1.6), dpi=100)
    ax.imshow(
        decibels,
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=-80.0,
        vmax=0.0,
        extent=(0.0, seconds, 0.0, top / 1000.0),
        interpolation="nearest",
    )
    if marker is not None:
        ax.axvline(marker, color="cyan", linewidth=1.0, linestyle="--")
    ax.set_xlabel("s", fontsize=6, labelpad=0)
    ax.set_ylabel("kHz", fontsize=6, labelpad=0)
    ax.tick_params(labelsize=6, length=2, pad=1)
    if title:
        ax.set_title(title, fontsize=7)
    fig.subplots_adjust(left=0.11, right=0.99, bottom=0.2, top=0.88 if title else 0.97)
    return png_bytes(fig)
