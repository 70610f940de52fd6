"""The chunk plan on a stream: features of audio pushed in arbitrary blocks equal the whole
input's, the runs are the offline plan's runs, and only a bounded tail of samples is held."""

import numpy as np
import pytest
import torch

from soundnet_cli.extraction.chunks import chunk_plan
from soundnet_cli.extraction.streamed import StreamedFeatures, latency_samples
from soundnet_cli.students import soundnet8
from soundnet_cli.students.inference import optimise

LAYERS = ["pool5", "conv8"]


@pytest.fixture(scope="module")
def fast():
    torch.manual_seed(0)
    return optimise(soundnet8().eval(), layers=LAYERS)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("seconds", [10.0, 29.7])
def test_blocks_of_any_size_give_the_whole_inputs_features(fast, seconds):
    rng = np.random.default_rng(int(seconds))
    wave = (rng.standard_normal(int(seconds * 22050)) * 40).astype(np.float32)
    with torch.inference_mode():
        whole = fast.forward_features(torch.from_numpy(wave), LAYERS)
    stream = StreamedFeatures(fast, LAYERS, chunk_samples=3 * 22050)
    got: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
    at = 0
    while at < len(wave):
        size = int(rng.integers(1, 50_000))
        for name, part in stream.push(wave[at : at + size]).items():
            got[name].append(part)
        at += size
    for name, part in stream.finish().items():
        got[name].append(part)
    for name in LAYERS:
        expected = whole[name][0].t().numpy()
        features = np.concatenate(got[name])
        assert features.shape == expected.shape
        assert rel(features, expected) < 1e-5


def test_runs_on_a_stream_are_the_offline_plans_runs(fast):
    samples = 40 * 22050 + 777
    stream = StreamedFeatures(fast, LAYERS, chunk_samples=4 * 22050)
    stream.received = samples  # geometry only: which runs the arrived audio allows
    offline = chunk_plan(fast, LAYERS, samples, 4 * 22050)
    streamed = []
    while (chunk := stream._next_chunk()) is not None:
        streamed.append(chunk)
        stream._begin += stream.core
    # every run that neither reaches the end of the input nor depends on where the deepest
    # layer's steps stop is known before the end comes
    known = [c for c in offline[:-1] if c.stop < samples and set(c.steps) == set(LAYERS)]
    assert streamed == known == offline[: len(known)]
    assert len(streamed) >= len(offline) - 6


def test_only_a_bounded_tail_is_held(fast):
    stream = StreamedFeatures(fast, ["pool5"], chunk_samples=2 * 22050)
    block = np.zeros(22050, np.float32)
    held = []
    for _ in range(60):
        stream.push(block)
        held.append(stream.held)
    assert max(held) <= latency_samples(fast, "pool5", 2 * 22050) + 2 * 22050
    assert held[-1] < 60 * 22050 / 10
