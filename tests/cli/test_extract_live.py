"""`soundnet extract` on live input: stdin read whole and followed in pieces (a paced writer),
raw PCM, Ctrl-C mid-follow, bad input, and what the folder records.

The features of a stream must equal those of the same audio read from a file (within 1e-5 of
their scale) for a shallow, a middle and a deep layer; a stream one sample short must not."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundnet_cli.cli.main import build_app

from ..numeric import assert_close_to_scale, relative_to_scale
from ..unit.test_live_audio import fake_sounddevice
from .test_predict_live import Reader, cli, one_line_error, paced_write, varied

RATE = 22050
LAYERS = ("conv2", "pool5", "conv7")  # shallow, middle, deep (conv7: 1024 channels)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random SoundNet-8 (no network): equal features mean equal computations."""
    import torch

    from soundnet_cli.students import soundnet8
    from soundnet_cli.weights.checkpoints import save_checkpoint

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "random.safetensors"
    return save_checkpoint(soundnet8(), path, provenance={"source": "test"})


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """34 s of stereo 44.1 kHz PCM whose character changes over time."""
    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    sf.write(str(path), varied(34.0), 44100, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def from_file(clip, checkpoint, tmp_path_factory) -> dict[str, np.ndarray]:
    """`extract FILE`: the reference features, per layer."""
    out = tmp_path_factory.mktemp("file")
    result = invoke(str(clip), "-o", str(out), "--checkpoint", str(checkpoint), *layer_args())
    assert result.exit_code == 0, result.stderr
    return {layer: np.load(out / f"clip.{layer}.npy") for layer in LAYERS}


def layer_args() -> list[str]:
    return [arg for layer in LAYERS for arg in ("--layer", layer)]


def invoke(*args: str, stdin: bytes | None = None):
    return CliRunner().invoke(build_app(), ["extract", *args], input=stdin)


def pieces(out: Path, name: str = "stdin") -> dict[str, list[np.ndarray]]:
    """The npy pieces of a followed stream, per layer, in order."""
    return {
        layer: [np.load(p) for p in sorted((out / name).glob(f"*.{layer}.npy"))] for layer in LAYERS
    }


def same_features(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for layer in LAYERS:
        assert got[layer].shape == want[layer].shape, layer
        assert_close_to_scale(got[layer], want[layer], 1e-5, layer)


def test_stdin_read_to_its_end_gives_the_features_of_the_file(clip, checkpoint, from_file,
                                                              tmp_path):  # fmt: skip
    out = tmp_path / "out"
    args = ["-o", str(out), "--checkpoint", str(checkpoint), *layer_args()]
    result = invoke("-", *args, stdin=clip.read_bytes())
    assert result.exit_code == 0, result.stderr
    same_features({layer: np.load(out / f"stdin.{layer}.npy") for layer in LAYERS}, from_file)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["path"], r["key"], r["status"]) for r in rows] == [("-", "stdin", "ok")]
    assert rows[0]["duration"] == pytest.approx(34.0, abs=1e-3)
    settings = json.loads((out / "features.json").read_text())
    assert sorted(settings["layers"]) == sorted(LAYERS) and settings["format"] == "npy"
    assert not [p for p in out.rglob(".*") if p.is_dir()]  # no spool left behind
    # the same name again is refused (it would replace the stream), unless --overwrite
    again = invoke("-", *args, stdin=clip.read_bytes())
    one_line_error(again, 2, "holds the outputs of stdin already")
    named = invoke("-", *args, "--name", "take2", stdin=clip.read_bytes())
    assert named.exit_code == 0, named.stderr
    assert (out / "take2.pool5.npy").is_file()


def test_raw_pcm_on_stdin_equals_the_file_and_one_sample_less_does_not(checkpoint, tmp_path):
    samples = (varied(25.0, RATE)[:, 0] * 32767).astype("<i2")
    wav = tmp_path / "mono.wav"
    sf.write(str(wav), samples, RATE, subtype="PCM_16")
    reference = tmp_path / "file"
    common = ["--checkpoint", str(checkpoint), *layer_args()]
    assert invoke(str(wav), "-o", str(reference), *common).exit_code == 0
    want = {layer: np.load(reference / f"mono.{layer}.npy") for layer in LAYERS}
    raw = ["--raw-format", "s16le", "--rate", str(RATE)]
    whole = invoke("-", "-o", str(tmp_path / "raw"), *raw, *common, stdin=samples.tobytes())
    assert whole.exit_code == 0, whole.stderr
    same_features({layer: np.load(tmp_path / "raw" / f"stdin.{layer}.npy") for layer in LAYERS},
                  want)  # fmt: skip
    # the comparison can fail: the stream without its first sample is told apart
    short = invoke("-", "-o", str(tmp_path / "short"), *raw, *common,
                   stdin=samples[1:].tobytes())  # fmt: skip
    assert short.exit_code == 0, short.stderr
    for layer in ("pool5", "conv7"):
        got = np.load(tmp_path / "short" / f"stdin.{layer}.npy")
        n = min(len(got), len(want[layer]))
        assert relative_to_scale(got[:n], want[layer][:n]) > 1e-3, layer


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_follow_writes_pieces_that_join_into_the_features_of_the_file(
    fmt, clip, checkpoint, from_file, tmp_path
):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / "out"
    process = cli("extract", "-", "--follow", "-o", str(out), "--format", fmt, "--checkpoint",
                  str(checkpoint), "--chunk-seconds", "4", *layer_args())  # fmt: skip
    err = Reader(process.stderr)
    err.start()
    seen_before_end: list[int] = []
    start = time.monotonic()

    def watch() -> None:  # pieces appear while the audio still arrives
        seen_before_end.append(len(list(out.glob("stdin/*.pool5.npy") if fmt == "npy"
                                         else out.glob("part-pool5-*.parquet"))))  # fmt: skip

    blob = clip.read_bytes()
    half = len(blob) // 2
    paced_write_no_close(process, blob[:half], 44100 * 4, speed=20.0)
    time.sleep(2.0)
    watch()
    paced_write(process, blob[half:], 44100 * 4, speed=20.0)
    assert process.wait(timeout=120) == 0, err.text()
    assert seen_before_end[0] >= 1, f"no piece before the end ({time.monotonic() - start:.1f} s)"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) >= 5 and [r["key"] for r in rows] == [
        f"stdin/{i:06d}" for i in range(len(rows))
    ]
    for layer in LAYERS:  # each piece's steps continue the previous one's
        firsts = [r["layers"][layer]["first_step"] for r in rows]
        sizes = [r["layers"][layer]["shape"][0] for r in rows]
        assert firsts == list(np.cumsum([0, *sizes[:-1]]))
    if fmt == "npy":
        joined = {layer: np.concatenate(parts) for layer, parts in pieces(out).items()}
    else:
        import pyarrow.parquet as pq

        joined = {}
        for layer in LAYERS:
            table = pq.read_table(sorted(out.glob(f"part-{layer}-*.parquet"))).sort_by("step")
            assert table["step"].to_pylist() == list(range(len(from_file[layer])))
            assert set(table["path"].to_pylist()) == {"-"}
            flat = table["vector"].combine_chunks().flatten().to_numpy()
            joined[layer] = np.asarray(flat, np.float32).reshape(table.num_rows, -1)
    same_features(joined, from_file)
    assert not [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp"))]


def paced_write_no_close(process, blob: bytes, bytes_per_second: float, speed: float) -> None:
    step = max(1, int(bytes_per_second * 0.1))
    begin = time.monotonic()
    for at in range(0, len(blob), step):
        time.sleep(max(0.0, begin + at / bytes_per_second / speed - time.monotonic()))
        process.stdin.write(blob[at : at + step])
        process.stdin.flush()


def test_ctrl_c_mid_follow_leaves_whole_pieces_and_exits_130(clip, checkpoint, from_file,
                                                             tmp_path):  # fmt: skip
    out = tmp_path / "out"
    process = cli("extract", "-", "--follow", "-o", str(out), "--checkpoint", str(checkpoint),
                  "--chunk-seconds", "3", *layer_args())  # fmt: skip
    err = Reader(process.stderr)
    err.start()
    blob = clip.read_bytes()[: 44 + 22 * 44100 * 4]  # 22 s, then nothing more: a live source
    process.stdin.write(blob)
    process.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("stdin/*.conv7.npy"))) < 2:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130, err.text()
    err.join(5)
    assert "Error: interrupted" in err.text()
    arrived = re.search(r"interrupted at ([0-9.]+) s of audio", err.text())
    assert arrived and float(arrived.group(1)) > 5.0
    from soundnet_cli.models import load_student
    from soundnet_cli.students.contract import feature_of

    model = load_student(checkpoint)
    assert not [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp"))]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    received = int(round(sum(r["duration"] for r in rows) * RATE))  # the audio of the pieces
    assert received == pytest.approx(float(arrived.group(1)) * RATE, abs=0.05 * RATE)
    found = pieces(out)
    for layer in LAYERS:
        assert len(found[layer]) == len(rows) >= 3  # every piece whole, each with its row
        joined = np.concatenate(found[layer])
        assert len(joined) == model.output_length(layer, received)
        # the audio up to Ctrl-C, written as if the stream had ended there: the steps whose
        # receptive field lies inside it (before the last 0.1 s, which the resampler ends as
        # at the end of a file) are the file's
        info = feature_of(model, layer)
        settled = (received - RATE // 10 - info.receptive_field - info.offset) // info.stride
        assert settled > 0
        assert_close_to_scale(joined[:settled], from_file[layer][:settled], 1e-5, layer)


def test_bad_live_input_is_one_line(clip, checkpoint, tmp_path, monkeypatch):
    args = ["-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint)]
    garbage = bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8))
    one_line_error(invoke("-", *args, stdin=garbage), 1, "cannot read audio")
    one_line_error(invoke("-", "--follow", *args, stdin=garbage), 1, "cannot read audio")
    raw = ["--raw-format", "s16le", "--rate", "22050"]
    one_line_error(invoke("-", *raw, *args, stdin=clip.read_bytes()), 1, "starts like a WAV file")
    one_line_error(invoke("-", "--raw-format", "s24le", "--rate", "8000", *args), 2, "s24le")
    one_line_error(invoke("-", "--raw-format", "s16le", *args), 2, "--rate")
    one_line_error(invoke(str(clip), "--follow", *args), 2, "--follow needs a live input")
    one_line_error(invoke(str(clip), "--name", "x", *args), 2, "--name names a live input")
    one_line_error(invoke("-", "--follow", "--pool", "mean", *args), 2, "cannot go with --follow")
    one_line_error(invoke("-", "--shard", "0/2", *args), 2, "--shard")
    one_line_error(invoke("-", str(clip), *args), 2, "must be the only input")
    one_line_error(invoke("-", "--name", "../up", *args, stdin=clip.read_bytes()), 2, "--name")
    too_long = invoke("-", "--name", "x" * 300, *args, stdin=clip.read_bytes())
    one_line_error(too_long, 2, "at most 224 bytes, not 300")
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([]))
    one_line_error(invoke("mic:Nope", "--follow", *args), 2, "no input device 'Nope'")
    one_line_error(invoke("--device-input", "Nope", *args), 2, "'USB Mic'")
    assert not (tmp_path / "out" / "stdin.pool5.npy").exists()


def test_pooled_stdin_is_pooled_like_the_file(clip, checkpoint, from_file, tmp_path):
    out = tmp_path / "out"
    args = ["-o", str(out), "--checkpoint", str(checkpoint), "--pool", "mean", *layer_args()]
    result = invoke("-", *args, "--json", stdin=clip.read_bytes())
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["name"] == "stdin" and not summary["interrupted"]
    assert summary["audio_seconds"] == pytest.approx(34.0, abs=1e-3)
    assert summary["steps"] == {layer: len(from_file[layer]) for layer in LAYERS}
    for layer in LAYERS:
        got = np.load(out / f"stdin.{layer}.npy")
        assert got.shape == (from_file[layer].shape[1],)
        assert_close_to_scale(got, from_file[layer].mean(axis=0), 1e-5, layer)


def test_an_http_url_is_still_a_file_to_fetch_without_follow():
    from soundnet_cli.cli._live import LiveOptions, live_input

    url = "https://example.org/a.wav"
    assert live_input([url], LiveOptions(), "extract", http_files=True) is None
    assert live_input([url], LiveOptions(follow=True), "extract", http_files=True) is not None
    assert live_input(["rtsp://cam/x"], LiveOptions(), "extract", http_files=True) is not None


def test_a_stream_url_followed_to_its_end_gives_the_features_of_the_file(checkpoint, tmp_path):
    from .test_predict_live import serve

    samples = (varied(24.0, RATE)[:, 0] * 32767).astype("<i2")
    wav = tmp_path / "mono.wav"
    sf.write(str(wav), samples, RATE, subtype="PCM_16")
    common = ["--checkpoint", str(checkpoint), *layer_args()]
    assert invoke(str(wav), "-o", str(tmp_path / "file"), *common).exit_code == 0
    server = serve(0, samples.tobytes(), 0, len(samples) * 2)  # a WAV of unknown length
    url = f"http://127.0.0.1:{server.server_address[1]}/live.wav"
    try:
        result = invoke(url, "--follow", "--name", "radio", "-o", str(tmp_path / "live"), *common)
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.stderr
    for layer in LAYERS:
        want = np.load(tmp_path / "file" / f"mono.{layer}.npy")
        got = np.concatenate(
            [np.load(p) for p in sorted((tmp_path / "live" / "radio").glob(f"*.{layer}.npy"))]
        )
        assert got.shape == want.shape, layer
        assert_close_to_scale(got, want, 1e-5, layer)
    rows = (tmp_path / "live" / "manifest.jsonl").read_text().splitlines()
    assert all(json.loads(row)["path"] == url for row in rows)


def test_a_sound_card_is_followed_until_ctrl_c(checkpoint, tmp_path, monkeypatch):
    """A (fake) sound card at 16 kHz delivers 25 s and then nothing; Ctrl-C (as SIGINT
    arrives) ends the input and the pieces join into the features of the same samples."""
    import _thread
    import threading

    from soundnet_cli.extraction.live import extract_live
    from soundnet_cli.media.live import LiveAudio, LiveInput
    from soundnet_cli.models import load_student

    recorded = varied(25.0, 16000)[:, :1]
    blocks = np.array_split(recorded, 20)
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(blocks))
    wav = tmp_path / "card.wav"
    sf.write(str(wav), recorded, 16000, subtype="FLOAT")
    common = ["--checkpoint", str(checkpoint), *layer_args()]
    assert invoke(str(wav), "-o", str(tmp_path / "file"), *common).exit_code == 0
    model = load_student(checkpoint)
    audio = LiveAudio(LiveInput("device", "USB Mic"))
    out = tmp_path / "live"
    timer = threading.Timer(6.0, _thread.interrupt_main)
    timer.start()
    try:
        summary = extract_live(audio, LAYERS, out, model=model, follow=True, chunk_seconds=4.0)
    finally:
        timer.cancel()
    assert summary.interrupted and summary.name == "mic-USB-Mic"
    assert summary.audio_seconds == pytest.approx(25.0, abs=1e-3)
    for layer in LAYERS:
        want = np.load(tmp_path / "file" / f"card.{layer}.npy")
        got = np.concatenate(
            [np.load(p) for p in sorted((out / "mic-USB-Mic").glob(f"*.{layer}.npy"))]
        )
        assert got.shape == want.shape, layer
        assert_close_to_scale(got, want, 1e-5, layer)


def reference_windows(steps: np.ndarray, geometry: dict, duration: float, window: float,
                      hop: float, how: str) -> np.ndarray:  # fmt: skip
    """Windows computed here from the definition (an independent implementation): spans from
    the midpoints between step centres, pooled by overlap (mean) or over those overlapping."""
    centres = (geometry["offset"] + np.arange(len(steps)) * geometry["stride"]
               + (geometry["receptive_field"] - 1) / 2) / RATE  # fmt: skip
    middle = (centres[:-1] + centres[1:]) / 2
    starts = np.minimum(np.r_[0.0, middle], duration)
    ends = np.minimum(np.r_[middle, duration], duration)
    out, k = [], 0
    while True:
        begin = k * hop
        end = min(begin + window, duration)
        overlap = np.clip(np.minimum(ends, end) - np.maximum(starts, begin), 0, None)
        if how == "mean":
            out.append((overlap[:, None] * steps).sum(0) / overlap.sum())
        else:
            out.append(steps[overlap > 0].max(0))
        k += 1
        if begin + window >= duration:
            return np.array(out)


@pytest.mark.parametrize("how", ["mean", "max"])
def test_windows_with_a_hop_are_the_same_for_a_file_stdin_and_a_followed_stream(
    how, clip, checkpoint, from_file, tmp_path
):
    common = ["--checkpoint", str(checkpoint), "--pool", how, "--window", "10", "--hop", "4",
              *layer_args()]  # fmt: skip
    bytes_in = clip.read_bytes()
    runs = {
        "file": invoke(str(clip), "-o", str(tmp_path / "file"), *common),
        "long": invoke(str(clip), "-o", str(tmp_path / "long"), "--chunk-seconds", "8", *common),
        "stdin": invoke("-", "-o", str(tmp_path / "stdin"), *common, stdin=bytes_in),
        "follow": invoke(
            "-",
            "--follow",
            "-o",
            str(tmp_path / "follow"),
            "--chunk-seconds",
            "4",
            *common,
            stdin=bytes_in,
        ),  # fmt: skip
    }
    for name, result in runs.items():
        assert result.exit_code == 0, (name, result.stderr)
    settings = json.loads((tmp_path / "file" / "features.json").read_text())
    assert (settings["window"], settings["hop"], settings["pool"]) == (10.0, 4.0, how)
    for layer in LAYERS:
        want = reference_windows(from_file[layer], settings["layers"][layer], 34.0, 10, 4, how)
        assert want.shape[0] == 7  # starts 0, 4, ..., 24; the last reaches 34 s
        found = {
            "file": np.load(tmp_path / "file" / f"clip.{layer}.npy"),
            "long": np.load(tmp_path / "long" / f"clip.{layer}.npy"),
            "stdin": np.load(tmp_path / "stdin" / f"stdin.{layer}.npy"),
            "follow": np.concatenate(
                [np.load(p) for p in sorted((tmp_path / "follow" / "stdin").glob(f"*.{layer}.npy"))]
            ),
        }
        for name, got in found.items():
            assert got.shape == want.shape, (name, layer)
            assert_close_to_scale(got, want, 1e-5, f"{name} {layer}")
    row = json.loads((tmp_path / "file" / "manifest.jsonl").read_text())
    assert row["layers"]["pool5"]["shape"] == [7, 256]
    assert row["layers"]["pool5"]["step_seconds"] == 4.0
    # a window is not a setting a later run may change
    other = invoke(str(clip), "-o", str(tmp_path / "file"), *common[:-len(layer_args()) - 2],
                   "--hop", "5", *layer_args())  # fmt: skip
    one_line_error(other, 2, "hop was 4.0, now 5.0")


def test_window_options_need_a_pool(clip, checkpoint, tmp_path):
    args = [str(clip), "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint)]
    one_line_error(invoke(*args, "--window", "5"), 2, "give --pool mean or max too")
    one_line_error(invoke(*args, "--hop", "5"), 2, "give --window too")
    one_line_error(invoke(*args, "--pool", "mean", "--window", "-1"), 2, "--window")
    assert not (tmp_path / "out").exists()


class ManifestWatcher:
    """Polls a followed folder's manifest and records when each piece's row first appears."""

    def __init__(self, out: Path) -> None:
        import threading

        self.manifest, self.seen = out / "manifest.jsonl", {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            time.sleep(0.02)

    def poll(self) -> None:
        try:
            lines = self.manifest.read_text().splitlines()
        except FileNotFoundError:
            return
        now = time.monotonic()
        for line in lines:
            row = json.loads(line)
            self.seen.setdefault(row["key"], (now, row))

    def rows(self) -> list[tuple[float, dict]]:
        self.stop.set()
        self.thread.join(5)
        self.poll()
        return sorted(self.seen.values(), key=lambda seen: seen[1]["key"])


def test_every_piece_comes_within_the_documented_latency(checkpoint, tmp_path):
    """Audio paced at twice real time: each piece's row is in the manifest at most (the deepest
    layer's receptive field + one chunk) / 2 + 0.5 s after the end of its last step's span was
    written (docs/commands/extract.md, "Latency")."""
    from soundnet_cli.models import load_student
    from soundnet_cli.prediction.follow import latency_seconds
    from soundnet_cli.students.contract import feature_of

    chunk, speed, seconds = 3.0, 2.0, 26.0
    model = load_student(checkpoint)
    bound = latency_seconds(model, chunk, "conv7") / speed + 0.5
    sf.write(str(tmp_path / "clip.wav"), varied(seconds, RATE)[:, 0], RATE, subtype="PCM_16")
    blob = (tmp_path / "clip.wav").read_bytes()
    out = tmp_path / "out"
    process = cli("extract", "-", "--follow", "-o", str(out), "--checkpoint", str(checkpoint),
                  "--chunk-seconds", str(chunk), "--layer", "pool5",
                  "--layer", "conv7")  # fmt: skip
    err = Reader(process.stderr)
    err.start()
    watcher = ManifestWatcher(out)
    sent: list[tuple[float, int]] = []
    paced_write(process, blob, RATE * 2, speed=speed, sent=sent)
    assert process.wait(timeout=60) == 0, err.text()
    rows = watcher.rows()
    assert len(rows) >= 5
    header = 44
    for arrived, row in rows[:-1]:  # the last piece comes when the stream ends
        for layer in ("pool5", "conv7"):
            info = feature_of(model, layer)
            last = row["layers"][layer]["first_step"] + row["layers"][layer]["shape"][0] - 1
            needed = header + 2 * (last + 1) * info.stride  # the end of its step's span
            written = min(t for t, count in sent if count >= min(needed, len(blob)))
            assert arrived - written <= bound, (row["key"], layer, arrived - written, bound)


def test_a_cut_stream_resumes_with_a_reported_gap_and_pieces_that_follow_on(checkpoint, tmp_path):
    """A local HTTP stream cut half-way and restarted (`--reconnect`): the gap is reported and
    the pieces go on where the audio stopped, every step once and in order."""
    from .test_predict_live import stream_cut_and_restarted

    out = tmp_path / "out"
    options = ["--follow", "--reconnect", "--name", "radio", "-o", str(out), "--checkpoint",
               str(checkpoint), "--chunk-seconds", "3", *layer_args()]  # fmt: skip
    _, err = stream_cut_and_restarted(lambda url: ["extract", url, *options])
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [f"radio/{i:06d}" for i in range(len(rows))]
    assert sum(r["duration"] for r in rows) == pytest.approx(24.0, abs=1e-3)
    from soundnet_cli.models import load_student

    model = load_student(checkpoint)
    for layer in LAYERS:
        firsts = [r["layers"][layer]["first_step"] for r in rows]
        sizes = [r["layers"][layer]["shape"][0] for r in rows]
        assert firsts == list(np.cumsum([0, *sizes[:-1]]))  # no step twice, none missing
        assert sum(sizes) == model.output_length(layer, 24 * RATE)
    assert "[20" in err.text()  # timestamped lines
