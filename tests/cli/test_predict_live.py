"""`soundnet predict` on live input: stdin (paced writers), a local HTTP stream that is cut and
restarted, Ctrl-C, bad input, pooled windows and `soundnet devices`.

The CLI runs as a subprocess where timing or signals matter (a real pipe, a real SIGINT);
audio is short and paced faster than real time, except where the latency is measured."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundnet_cli.cli.main import build_app

from ..conftest import REPO, tone
from ..unit.test_live_audio import fake_sounddevice

RATE = 22050


@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory) -> Path:
    """A random SoundNet-8 with small named heads whose probabilities differ clearly from
    step to step (head weights scaled up), so that equal rows mean equal computations."""
    import torch

    from soundnet_cli.students import HeadSpec, soundnet8
    from soundnet_cli.weights.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = soundnet8(
        heads=(
            HeadSpec("objects", 3, ("cat", "dog", "bird")),
            HeadSpec("scenes", 2, ("beach", "forest")),
        )
    )
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.mul_(300.0)
    path = tmp_path_factory.mktemp("ckpt") / "sharp.safetensors"
    return save_checkpoint(model, path, provenance={"source": "test"})


def varied(seconds: float, rate: int = 44100) -> np.ndarray:
    """Stereo audio whose character changes over time (a sweep, bursts of noise)."""
    rng = np.random.default_rng(7)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    sweep = 0.3 * np.sin(2 * np.pi * (100 + 60 * t) * t)
    bursts = (np.sin(2 * np.pi * t / 7) > 0.3) * 0.2 * rng.standard_normal(n)
    return np.stack([sweep + bursts, 0.1 * rng.standard_normal(n)], axis=1).astype(np.float32)


def wav_file(path: Path, seconds: float, rate: int = 44100) -> Path:
    sf.write(str(path), varied(seconds, rate), rate, subtype="PCM_16")
    return path


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "soundnet_cli", *args],
        stdin=kwargs.pop("stdin", subprocess.PIPE),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        **kwargs,
    )


class Reader(threading.Thread):
    """Collects a pipe's lines with the time each arrived."""

    def __init__(self, pipe) -> None:
        super().__init__(daemon=True)
        self.pipe, self.lines = pipe, []

    def run(self) -> None:
        for raw in iter(self.pipe.readline, b""):
            self.lines.append((time.monotonic(), raw.decode()))

    def text(self) -> str:
        return "".join(line for _, line in self.lines)

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            time.sleep(0.05)
        return False


def paced_write(process: subprocess.Popen, blob: bytes, bytes_per_second: float, speed: float,
                block_seconds: float = 0.1, sent: list | None = None) -> None:  # fmt: skip
    """Write ``blob`` at ``speed`` times real time; ``sent`` gets (time, bytes written)."""
    step = max(1, int(bytes_per_second * block_seconds))
    start = time.monotonic()
    for at in range(0, len(blob), step):
        due = start + at / bytes_per_second / speed
        time.sleep(max(0.0, due - time.monotonic()))
        process.stdin.write(blob[at : at + step])
        process.stdin.flush()
        if sent is not None:
            sent.append((time.monotonic(), at + len(blob[at : at + step])))
    process.stdin.close()


def offline_rows(*args: str) -> list[dict[str, str]]:
    result = CliRunner().invoke(build_app(), ["predict", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def same_rows(streamed: list[dict[str, str]], offline: list[dict[str, str]]) -> None:
    assert len(streamed) == len(offline) > 0
    for got, want in zip(streamed, offline, strict=True):
        assert got["path"] == "-"
        for key in ("start", "end", "head", "rank", "label"):
            assert got[key] == want[key], (got, want)
        assert abs(float(got["probability"]) - float(want["probability"])) <= 1e-5


def test_a_file_piped_through_stdin_gives_the_offline_rows(tmp_path, sharp_checkpoint):
    clip = wav_file(tmp_path / "clip.wav", 47.0)
    offline = offline_rows(str(clip), "--checkpoint", str(sharp_checkpoint), "-f", "csv")
    assert len({r["label"] for r in offline if r["rank"] == "1"}) > 2  # rows that differ
    process = cli("predict", "-", "--follow", "-f", "csv", "--checkpoint", str(sharp_checkpoint),
                  "--chunk-seconds", "4")  # fmt: skip
    out, err = Reader(process.stdout), Reader(process.stderr)
    out.start(), err.start()
    paced_write(process, clip.read_bytes(), 44100 * 4, speed=20.0)
    assert process.wait(timeout=120) == 0, err.text()
    out.join(5)
    same_rows(list(csv.DictReader(io.StringIO(out.text()))), offline)


def test_every_row_comes_within_the_documented_latency(tmp_path, sharp_checkpoint):
    """Audio paced at twice real time: a row comes at most (receptive field + one chunk) / 2
    + 0.5 s after the end of its span was written."""
    from soundnet_cli.models import load_student
    from soundnet_cli.prediction.follow import latency_seconds

    chunk, speed, seconds = 3.0, 2.0, 26.0
    bound = latency_seconds(load_student(sharp_checkpoint), chunk) / speed + 0.5
    sf.write(str(tmp_path / "clip.wav"), varied(seconds, RATE)[:, 0], RATE, subtype="PCM_16")
    blob = (tmp_path / "clip.wav").read_bytes()
    process = cli("predict", "-", "--follow", "-f", "jsonl", "--checkpoint",
                  str(sharp_checkpoint), "--chunk-seconds", str(chunk), "-k", "1")  # fmt: skip
    out, err = Reader(process.stdout), Reader(process.stderr)
    out.start(), err.start()
    sent: list[tuple[float, int]] = []
    paced_write(process, blob, RATE * 2, speed=speed, sent=sent)
    assert process.wait(timeout=60) == 0, err.text()
    out.join(5)
    header = 44
    assert out.lines
    for arrived, line in out.lines:
        row = json.loads(line)
        needed = header + int(round(row["end"] * RATE)) * 2
        written = min(t for t, count in sent if count >= min(needed, len(blob)))
        assert arrived - written <= bound, (row, arrived - written, bound)


class LiveWav(BaseHTTPRequestHandler):
    """Serves a never-ending WAV (a header without a length) from the server's ``pcm``, fast,
    and drops the connection after the server's ``stop_at`` bytes."""

    def do_GET(self) -> None:  # noqa: N802
        server = self.server
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.end_headers()
        fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + RATE.to_bytes(4, "little")
        fmt += (
            (RATE * 2).to_bytes(4, "little")
            + (2).to_bytes(2, "little")
            + (16).to_bytes(2, "little")
        )
        header = b"RIFF" + b"\xff\xff\xff\xff" + b"WAVEfmt " + (16).to_bytes(4, "little") + fmt
        self.wfile.write(header + b"data" + b"\xff\xff\xff\xff")
        while server.position < server.stop_at:  # type: ignore[attr-defined]
            end = min(server.stop_at, server.position + RATE)  # type: ignore[attr-defined]
            self.wfile.write(server.pcm[server.position : end])  # type: ignore[attr-defined]
            self.wfile.flush()
            server.position = end  # type: ignore[attr-defined]
            time.sleep(0.05)
        self.server.cut.set()  # type: ignore[attr-defined]

    def log_message(self, *args) -> None:
        pass


def serve(port: int, pcm: bytes, start: int, stop: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), LiveWav)
    server.pcm, server.position, server.stop_at = pcm, start, stop  # type: ignore[attr-defined]
    server.cut = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stream_cut_and_restarted(args: Callable[[str], list[str]]) -> tuple[Reader, Reader]:
    """Runs the CLI (``args(url)``) on 24 s of audio served from 127.0.0.1, cut after 12 s and
    served again from there a second later; Ctrl-C once the stream has ended the second time.
    The readers of stdout and stderr, after the exit (130)."""
    samples = (varied(24.0, RATE)[:, 0] * 32767).astype("<i2")
    pcm = samples.tobytes()
    half = len(pcm) // 2
    first = serve(0, pcm, 0, half)
    port = first.server_address[1]
    process = cli(*args(f"http://127.0.0.1:{port}/live.wav"))
    out, err = Reader(process.stdout), Reader(process.stderr)
    out.start(), err.start()
    try:
        assert first.cut.wait(60), err.text()  # type: ignore[attr-defined]
        first.shutdown()
        first.server_close()
        assert err.wait_for("dropped at 12.0 s", 30), err.text()
        time.sleep(1.0)  # the stream is down: retries fail, with back-off
        second = serve(port, pcm, half, len(pcm))
        assert second.cut.wait(60), err.text()  # type: ignore[attr-defined]
        second.shutdown()
        second.server_close()
        assert err.wait_for("reconnected after a gap of", 30), err.text()
        assert err.wait_for("dropped at 24.0 s", 30), err.text()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130, err.text()
    finally:
        process.kill()
    out.join(5)
    err.join(5)
    return out, err


def test_a_cut_stream_resumes_with_a_reported_gap(sharp_checkpoint):
    options = ["--follow", "-f", "csv", "--reconnect", "--checkpoint", str(sharp_checkpoint)]
    out, err = stream_cut_and_restarted(lambda url: ["predict", url, *options, "-k", "1"])
    rows = list(csv.DictReader(io.StringIO(out.text())))
    assert rows
    for head in ("objects", "scenes"):
        spans = [(float(r["start"]), float(r["end"])) for r in rows if r["head"] == head]
        assert len(spans) == len(set(spans))  # nothing twice
        pairs = zip(spans[:-1], spans[1:], strict=True)
        assert all(a[1] == b[0] for a, b in pairs)  # in order, without holes
        assert spans[0][0] == 0.0 and spans[-1][1] == 24.0  # all the audio, once
    assert "[20" in err.text()  # timestamped lines


def test_ctrl_c_flushes_whole_rows_and_exits_130(tmp_path, sharp_checkpoint):
    clip = wav_file(tmp_path / "clip.wav", 30.0, RATE)
    labels = tmp_path / "labels"
    process = cli("predict", "-", "--follow", "-f", "tsv", "--checkpoint", str(sharp_checkpoint),
                  "-k", "2")  # fmt: skip
    labeller = cli("predict", "-", "--follow", "-f", "audacity", "--out", str(labels),
                   "--checkpoint", str(sharp_checkpoint))  # fmt: skip
    readers = [Reader(p.stdout) for p in (process, labeller)]
    errors = [Reader(p.stderr) for p in (process, labeller)]
    for r in readers + errors:
        r.start()
    blob = clip.read_bytes()[: 44 + 28 * RATE * 4]  # 28 s, then nothing more: a live source
    for p in (process, labeller):
        p.stdin.write(blob)
        p.stdin.flush()
    assert readers[0].wait_for("objects", 60), errors[0].text()
    time.sleep(0.5)
    for p in (process, labeller):
        p.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130, errors[0].text()
    assert labeller.wait(timeout=60) == 130, errors[1].text()
    readers[0].join(5)
    lines = readers[0].text().splitlines()
    assert all(len(line.split("\t")) == 7 for line in lines)
    # the rows of the audio up to Ctrl-C (what the decoder had been given), flushed
    arrived = re.search(r"interrupted at ([0-9.]+) s of audio", errors[0].text())
    assert arrived and float(arrived.group(1)) > 27.0
    assert float(lines[-1].split("\t")[2]) == pytest.approx(float(arrived.group(1)), abs=0.05)
    label_lines = (labels / "stdin.txt").read_text().splitlines()
    assert label_lines and all(len(line.split("\t")) == 3 for line in label_lines)
    assert not list(labels.glob(".*part"))


def test_ctrl_c_on_a_sound_card_predicts_all_the_audio_that_arrived(
    tmp_path, sharp_checkpoint, monkeypatch
):
    """A (fake) 16 kHz sound card delivers 25 s, then Ctrl-C: the resampler's held-back
    samples are drained, so the rows equal those of the 25 s as a file (without the drain the
    last rows end about 0.04 s early and differ)."""
    import _thread

    from soundnet_cli.media.live import LiveAudio, LiveInput
    from soundnet_cli.models import load_student
    from soundnet_cli.prediction.follow import RowStream
    from soundnet_cli.prediction.live import collect

    from ..unit.test_live_audio import fake_sounddevice

    recorded = varied(25.0, 16000)[:, :1]
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(np.array_split(recorded, 20)))
    wav = tmp_path / "card.wav"
    sf.write(str(wav), recorded, 16000, subtype="FLOAT")
    offline = offline_rows(str(wav), "--checkpoint", str(sharp_checkpoint), "-f", "csv")
    rows = RowStream(load_student(sharp_checkpoint), "-", chunk_seconds=4.0)
    timer = threading.Timer(6.0, _thread.interrupt_main)
    timer.start()
    try:
        got, interrupted = collect(LiveAudio(LiveInput("device", "USB Mic")), rows)
    finally:
        timer.cancel()
    assert interrupted
    streamed = [{k: str(v) for k, v in r.as_dict().items()} for r in got]
    for row in streamed:  # the CSV's number formatting
        row["start"], row["end"] = f"{float(row['start']):.3f}", f"{float(row['end']):.3f}"
    same_rows(streamed, offline)


def invoke(*args: str, stdin: bytes | None = None):
    return CliRunner().invoke(build_app(), ["predict", *args], input=stdin)


def one_line_error(result, code: int, needle: str) -> None:
    assert result.exit_code == code, result.output
    text = result.stderr
    flat = " ".join(text.replace("│", " ").split())  # usage errors come in a wrapped box
    assert needle in flat and "Traceback" not in text
    if code == 1:
        assert text.strip().count("\n") == 0 and text.startswith("Error:")


def test_bad_input_is_one_line(tmp_path, sharp_checkpoint, monkeypatch):
    ckpt = ["--checkpoint", str(sharp_checkpoint)]
    garbage = bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8))
    one_line_error(invoke("-", "--follow", *ckpt, stdin=garbage), 1, "cannot read audio")
    wav = io.BytesIO()
    sf.write(wav, tone(1.0), RATE, format="WAV")
    raw = ["--raw-format", "s16le", "--rate", "22050"]
    one_line_error(invoke("-", *raw, *ckpt, stdin=wav.getvalue()), 1, "starts like a WAV file")
    one_line_error(invoke("-", "--raw-format", "s24le", "--rate", "8000", *ckpt), 2, "s24le")
    one_line_error(invoke("-", "--raw-format", "s16le", *ckpt), 2, "--rate")
    one_line_error(invoke("-", "--rate", "8000", *ckpt), 2, "--raw-format")
    clip = tmp_path / "a.wav"
    sf.write(str(clip), tone(1.0), RATE)
    one_line_error(invoke(str(clip), "--follow", *ckpt), 2, "--follow needs a live input")
    one_line_error(invoke("-", "--reconnect", *ckpt), 2, "--reconnect needs a stream URL")
    one_line_error(invoke("-", "--follow", "-f", "json", *ckpt), 2, "jsonl")
    one_line_error(invoke("-", str(clip), *ckpt), 2, "must be the only input")
    one_line_error(invoke(str(clip), "--window", "5", "--segments", *ckpt), 2, "--segments")
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([]))
    one_line_error(invoke("mic:Nope", "--follow", *ckpt), 2, "no input device 'Nope'")
    one_line_error(invoke("--device-input", "Nope", *ckpt), 2, "'USB Mic'")
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    one_line_error(invoke("mic:USB Mic", "--follow", *ckpt), 1, "soundnet-cli[live]")


def test_stdin_without_follow_is_predicted_as_the_file(tmp_path, sharp_checkpoint):
    for seconds in (8.0, 31.0):  # tiled to the training length, and not
        clip = wav_file(tmp_path / f"clip{seconds:g}.wav", seconds)
        args = ["--checkpoint", str(sharp_checkpoint), "--json", "-k", "2"]
        offline = json.loads(invoke(str(clip), *args).stdout)["results"][0]
        result = invoke("-", *args, stdin=clip.read_bytes())
        assert result.exit_code == 0, result.stderr
        streamed = json.loads(result.stdout)["results"][0]
        assert streamed["path"] == "-" and streamed["tiled_to"] == offline["tiled_to"]
        assert streamed["duration"] == offline["duration"]
        assert [s["time"] for s in streamed["steps"]] == [s["time"] for s in offline["steps"]]
        for got, want in zip(streamed["summary"], offline["summary"], strict=True):
            assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
            for a, b in zip(got["top"], want["top"], strict=True):
                assert abs(a["probability"] - b["probability"]) <= 1e-5


def test_windows_are_the_same_for_a_file_and_a_stream(tmp_path, sharp_checkpoint):
    clip = wav_file(tmp_path / "clip.wav", 33.0)
    args = ["--checkpoint", str(sharp_checkpoint), "--window", "10", "--hop", "4", "-f", "csv"]
    from_file = offline_rows(str(clip), *args)
    result = invoke("-", *args, stdin=clip.read_bytes())
    assert result.exit_code == 0, result.stderr
    same_rows(list(csv.DictReader(io.StringIO(result.stdout))), from_file)
    starts = sorted({float(r["start"]) for r in from_file})
    assert starts == [0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0]  # the last one reaches 33 s
    assert max(float(r["end"]) for r in from_file) == 33.0


def test_devices_lists_the_sound_cards(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([]))
    result = CliRunner().invoke(build_app(), ["devices", "--json"])
    assert result.exit_code == 0, result.stderr
    cards = json.loads(result.stdout)
    assert [c["name"] for c in cards] == ["Built-in Output", "USB Mic"]
    table = CliRunner().invoke(build_app(), ["devices"])
    assert "USB Mic (default input)" in table.stdout
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    missing = CliRunner().invoke(build_app(), ["devices"])
    assert missing.exit_code == 1 and "soundnet-cli[live]" in missing.stderr


def test_a_label_track_of_stdin_is_named_after_it(tmp_path, sharp_checkpoint):
    clip = wav_file(tmp_path / "clip.wav", 25.0)
    args = ["--checkpoint", str(sharp_checkpoint), "-f", "audacity", "--segments"]
    assert invoke(str(clip), *args, "--out", str(tmp_path / "file")).exit_code == 0
    result = invoke("-", *args, "--out", str(tmp_path / "live"), stdin=clip.read_bytes())
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in (tmp_path / "live").iterdir()] == ["stdin.txt"]
    streamed = (tmp_path / "live" / "stdin.txt").read_text().splitlines()
    offline = (tmp_path / "file" / "clip.txt").read_text().splitlines()
    assert [line.split("\t")[:2] for line in streamed] == [line.split("\t")[:2] for line in offline]


def test_a_terminal_on_stdin_is_a_usage_error():
    from soundnet_cli.cli._live import check_stdin
    from soundnet_cli.errors import UsageProblem

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    check_stdin(io.BytesIO(b"RIFF"))
    with pytest.raises(UsageProblem, match="stdin, which is a terminal"):
        check_stdin(Terminal())
