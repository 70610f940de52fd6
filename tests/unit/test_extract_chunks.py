"""Long inputs streamed in blocks and run in overlapping chunks give whole-file features."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundnet_cli.extraction.chunks import chunk_plan, chunked_features, run_chunk, step_times
from soundnet_cli.extraction.engine import extract_array
from soundnet_cli.media.audio import load_audio
from soundnet_cli.media.streaming import StreamingAudio
from soundnet_cli.students import soundnet8
from soundnet_cli.students.inference import optimise

# Chunked and whole-file runs do the same arithmetic in different blocks: float32 rounding only.
TOLERANCE = 1e-5
LAYERS = ["conv2", "pool5", "conv7", "conv8"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return soundnet8().eval()


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> Path:
    """Three minutes at 44.1 kHz, stereo: resampling and channel choice both count."""
    rate, seconds = 44100, 180
    rng = np.random.default_rng(0)
    t = np.arange(rate * seconds) / rate
    left = 0.3 * np.sin(2 * np.pi * 330 * t) * np.sin(2 * np.pi * 0.05 * t)
    left += 0.05 * rng.standard_normal(len(t))
    data = np.stack([left, 0.1 * rng.standard_normal(len(t))], axis=1).astype(np.float32)
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(str(path), data, rate, subtype="PCM_24")
    return path


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_streamed_windows_equal_whole_file_decoding(long_file: Path):
    whole = load_audio(long_file).samples
    with StreamingAudio(long_file) as audio:
        assert audio.samples == len(whole)
        for start, stop in [(0, 1000), (12345, 400000), (len(whole) - 5000, len(whole) + 100)]:
            window = audio.window(start, stop)
            expected = whole[start:stop]
            assert window.shape == expected.shape
            assert np.abs(window - expected).max() <= 1e-4 * np.abs(whole).max()


@pytest.fixture(scope="module")
def whole_file_features(model, long_file: Path):
    fast = optimise(model, layers=LAYERS)
    return fast, fast.forward_features(torch.from_numpy(load_audio(long_file).samples), LAYERS)


@pytest.mark.parametrize(
    ("chunk_seconds", "layers"), [(15.0, ["conv2", "pool5", "conv7"]), (50.0, LAYERS)]
)
def test_chunked_features_equal_whole_file_features(
    whole_file_features, long_file: Path, chunk_seconds, layers
):
    fast, reference = whole_file_features
    with StreamingAudio(long_file) as audio:
        parts = list(
            chunked_features(fast, audio.window, audio.samples, layers, int(chunk_seconds * 22050))
        )
    assert len(parts) >= 3
    for name in layers:
        ours = np.concatenate([p[name] for p in parts if name in p])
        expected = reference[name][0].T.numpy()
        assert ours.shape == expected.shape, name
        assert rel(ours, expected) <= TOLERANCE, name


@pytest.mark.parametrize("samples", [4574, 20000, 441000, 441001, 1_000_003])
def test_the_plan_covers_every_step_once(model, samples):
    plan = chunk_plan(model, LAYERS, samples, 50_000)
    for name in LAYERS:
        ranges = [c.steps[name][:2] for c in plan if name in c.steps]
        covered = [i for a, b in ranges for i in range(a, b)]
        assert covered == list(range(model.output_length(name, samples)))
    deepest = max(model.feature(n).stride for n in LAYERS)
    assert all(c.start % deepest == 0 and 0 <= c.start < c.stop <= samples for c in plan)


def test_extract_array_chunked_equals_unchunked_and_resamples(model):
    rng = np.random.default_rng(1)
    wave = (0.2 * rng.standard_normal(48000 * 40)).astype(np.float32)
    whole = extract_array(wave, 48000, ["pool5", "conv6"], model=model)
    chunked = extract_array(wave, 48000, ["pool5", "conv6"], model=model, chunk_seconds=9)
    for name in whole:
        assert whole[name].shape == chunked[name].shape
        assert rel(chunked[name], whole[name]) <= TOLERANCE
    pooled = extract_array(wave, 48000, ["pool5"], model=model, pool="mean")
    assert pooled["pool5"].shape == (256,)
    assert np.allclose(pooled["pool5"], whole["pool5"].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_step_times_equal_feature_info_step_centres(model):
    for name in LAYERS:
        info = model.feature(name)
        assert np.allclose(step_times(info, 50, 22050), info.step_centres(50, 22050))


@pytest.mark.parametrize("rate", [44100, 48000, 96000, 16000, 8000, 11025, 16001])
def test_resampling_a_batch_as_channels_equals_one_at_a_time(rate):
    from soundnet_cli.media.audio import resample, resampled_length

    rng = np.random.default_rng(rate)
    waves = rng.uniform(-1, 1, (3, rate + 777)).astype(np.float32)
    batch = resample(waves.T, rate)
    assert batch.shape == (resampled_length(rate + 777, rate), 3)
    for column, wave in zip(batch.T, waves, strict=True):
        assert np.array_equal(column, resample(wave, rate))


@pytest.mark.parametrize(
    "layers,chunk_samples,samples",
    [
        (LAYERS, 50_000, 1_000_003),
        (["conv2", "pool5"], 50_000, 1_000_003),
        (["conv2", "pool5"], 50_000, 3 * 49_152),  # ends exactly where a chunk ends
        (["conv1", "conv4"], 10_000, 77_777),
    ],
)
def test_each_chunk_is_the_tight_span_of_its_steps_fields(model, layers, chunk_samples, samples):
    """Without running the model: each chunk starts at the last multiple of the deepest stride
    before its earliest field (or 0) and stops at its latest field's end (or the file's), every
    step's field lies inside it unless it crosses a real edge, a layer's local indices start at
    ``skip``, and chunks advance by ``chunk_samples`` rounded down to the deepest stride. (Mutants
    of chunk_plan survived the coverage test above: see docs/testing.md.)"""
    plan = chunk_plan(model, layers, samples, chunk_samples)
    infos = {name: model.feature(name) for name in layers}
    deepest = max(info.stride for info in infos.values())
    core = max(deepest, chunk_samples // deepest * deepest)
    assert len(plan) == -(-samples // core)
    for name in layers:
        covered = [i for c in plan if name in c.steps for i in range(*c.steps[name][:2])]
        assert covered == list(range(model.output_length(name, samples))), name
    for chunk in plan:
        assert type(chunk.start) is int and type(chunk.stop) is int
        fields = []
        for name, (first, last, skip) in chunk.steps.items():
            info = infos[name]
            assert first < last and type(skip) is int
            assert skip * info.stride == first * info.stride - chunk.start
            for i in (first, last - 1):
                begin = info.offset + i * info.stride
                fields.append((begin, begin + info.receptive_field))
        for begin, end in fields:
            assert begin >= chunk.start or chunk.start == 0
            assert end <= chunk.stop or chunk.stop == samples
        earliest = min(begin for begin, _ in fields)
        latest = max(end for _, end in fields)
        assert chunk.start == max(0, earliest // deepest * deepest)
        assert chunk.stop == min(samples, latest)


def test_chunked_features_read_only_each_chunks_span_and_run_chunk_takes_a_batch(model):
    """Mutants: chunked_features reading to the end of the file for every chunk (right
    features, unbounded memory) or ignoring its default device; run_chunk flattening a batch
    into one clip."""
    rng = np.random.default_rng(3)
    wave = (60 * rng.standard_normal(200_000)).astype(np.float32)
    plan = chunk_plan(model, ["pool5"], len(wave), 50_000)
    reads: list[tuple[int, int]] = []

    def read(start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return wave[start:stop]

    parts = list(chunked_features(model, read, len(wave), ["pool5"], 50_000))
    assert reads == [(c.start, c.stop) for c in plan] and len(parts) == len(plan)
    chunk = plan[1]
    batch = torch.from_numpy(np.stack([wave, wave[::-1].copy()]))[:, chunk.start : chunk.stop]
    together = run_chunk(model, batch, chunk)["pool5"]
    for row in range(2):
        alone = run_chunk(model, batch[row : row + 1], chunk)["pool5"]
        assert together.shape[0] == 2 and rel(together[row].numpy(), alone[0].numpy()) <= TOLERANCE
