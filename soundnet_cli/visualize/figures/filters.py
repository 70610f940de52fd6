"""The first layer's filters as waveforms with their frequency responses (the paper's Figure on
conv1: a trained SoundNet learns band-pass, wavelet-like filters)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from soundnet_cli.errors import SoundnetError
from soundnet_cli.visualize.figures._base import _pyplot, save_png

if TYPE_CHECKING:
    from soundnet_cli.students.contract import Student

FFT_SIZE = 1024  # zero-padded, so that short (64-tap) filters get a smooth response curve


def first_layer_filters(model: Student) -> np.ndarray:
    """The weights of the model's first 1-D convolution on the waveform, (filters, taps)."""
    from torch import nn

    modules = model.modules() if isinstance(model, nn.Module) else ()
    for module in modules:
        if isinstance(module, nn.Conv1d) and module.in_channels == 1:
            return module.weight.detach().float().cpu().numpy()[:, 0, :]
    raise SoundnetError("this model has no 1-D convolution on the waveform to draw")


def frequency_responses(filters: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude responses in dB, each relative to its own peak, and their frequencies in Hz."""
    magnitude = np.abs(np.fft.rfft(filters, n=FFT_SIZE, axis=1))
    peak = magnitude.max(axis=1, keepdims=True)
    relative = np.divide(magnitude, peak, out=np.zeros_like(magnitude), where=peak > 0)
    decibels = 20 * np.log10(np.maximum(relative, 1e-4))
    return decibels, np.fft.rfftfreq(FFT_SIZE, 1.0 / sample_rate)


def peak_frequencies(filters: np.ndarray, sample_rate: int) -> np.ndarray:
    responses, freqs = frequency_responses(filters, sample_rate)
    return np.asarray(freqs[np.argmax(responses, axis=1)])


def filters_png(
    filters: np.ndarray, sample_rate: int, path: str | os.PathLike[str], title: str
) -> Path:
    """A grid with one cell per filter, sorted by peak frequency: the waveform (amplitude over
    milliseconds) above its magnitude response (dB over kHz)."""
    plt = _pyplot()
    count, taps = filters.shape
    responses, freqs = frequency_responses(filters, sample_rate)
    order = np.argsort(freqs[np.argmax(responses, axis=1)], kind="stable")
    cols = 4 if count <= 16 else 8
    rows = math.ceil(count / cols)
    fig = plt.figure(figsize=(2.6 * cols, 3.1 * rows + 0.6), dpi=100)
    grid = fig.add_gridspec(
        rows, cols, hspace=0.3, wspace=0.3, top=1 - 0.5 / fig.get_figheight(), bottom=0.05
    )
    times = np.arange(taps) / sample_rate * 1000.0
    for cell, index in enumerate(order):
        row, col = divmod(cell, cols)
        pair = grid[row, col].subgridspec(2, 1, hspace=0.5)
        wave_ax = fig.add_subplot(pair[0])
        wave_ax.plot(times, filters[index], color="tab:blue", linewidth=1.0)
        wave_ax.axhline(0.0, color="grey", linewidth=0.5)
        peak_hz = freqs[np.argmax(responses[index])]
        wave_ax.set_title(f"filter {index}: peak {peak_hz / 1000:.2f} kHz", fontsize=8)
        wave_ax.tick_params(labelsize=6)
        wave_ax.set_xlabel("ms", fontsize=7, labelpad=1)
        response_ax = fig.add_subplot(pair[1])
        response_ax.plot(freqs / 1000.0, responses[index], color="tab:red", linewidth=1.0)
        response_ax.set_ylim(-40, 2)
        response_ax.set_xlim(0, sample_rate / 2000.0)
        response_ax.tick_params(labelsize=6)
        response_ax.set_xlabel("kHz", fontsize=7, labelpad=1)
        if col == 0:
            wave_ax.set_ylabel("weight", fontsize=7)
            response_ax.set_ylabel("dB", fontsize=7)
    fig.suptitle(title, fontsize=11, y=1 - 0.15 / fig.get_figheight())
    return save_png(fig, path)
