"""Live `soundnet predict` and `soundnet extract`: offline equality at real speed, and memory
over hours.

``equality``: a file (default: 10 minutes made here, 44.1 kHz stereo) is written into
``soundnet predict - --follow --format csv`` at ``--speed`` times real time (1 = real time)
and its rows are compared with ``soundnet predict FILE --format csv``: same times, heads,
ranks and labels, and the largest score difference (the acceptance line: 1e-5). Also prints
each row's lag behind the arrival of the end of its span, against the documented latency.

``memory``: ``--hours`` of audio (generated block by block, never held) are written as a WAV
stream into ``soundnet predict - --follow --format csv`` as fast as it reads them; the peak
RSS of the predict process is printed (the acceptance line: under 1 GB).

``extract-equality``: the same file written into ``soundnet extract - --follow`` (pieces) at
``--speed``; the pieces joined are compared with ``soundnet extract FILE`` per layer (the
largest difference relative to the values' scale; the acceptance line: 1e-5), with each
piece's lag behind the arrival of the audio that completed it. ``extract-memory``: ``--hours``
of audio into ``soundnet extract - --follow`` as fast as it reads them; peak RSS.

    python benchmarks/live_stream.py equality                   # 10 minutes, real time
    python benchmarks/live_stream.py extract-equality --seconds 600 --speed 1
    python benchmarks/live_stream.py extract-memory --hours 2
    python benchmarks/live_stream.py equality --seconds 120 --speed 10
    python benchmarks/live_stream.py memory --hours 2
    python benchmarks/live_stream.py memory --hours 0.2 --checkpoint tiny.safetensors

Without ``--checkpoint`` the official SoundNet-8 is used (``soundnet weights fetch``).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RATE = 44100


def audio_block(start: int, frames: int, channels: int = 2) -> np.ndarray:
    """Frames [start, start + frames) of a deterministic signal that changes over time."""
    t = (start + np.arange(frames)) / RATE
    rng = np.random.default_rng(start)
    tone = 0.3 * np.sin(2 * np.pi * (200 + 150 * np.sin(2 * np.pi * t / 60)) * t)
    noise = (np.sin(2 * np.pi * t / 11) > 0.5) * 0.2 * rng.standard_normal(frames)
    left = tone + noise
    data = np.stack([left, 0.05 * rng.standard_normal(frames)][:channels], axis=1)
    return (np.clip(data, -1, 1) * 32767).astype("<i2")


def wav_header(rate: int, channels: int, frames: int | None) -> bytes:
    """A 16-bit PCM WAV header; ``frames=None`` gives the streaming form (unknown length)."""
    size = 0xFFFFFFFF if frames is None else frames * channels * 2
    riff = 0xFFFFFFFF if frames is None else size + 36
    fields = [(1, 2), (channels, 2), (rate, 4), (rate * channels * 2, 4), (channels * 2, 2)]
    fmt = b"".join(v.to_bytes(n, "little") for v, n in fields) + (16).to_bytes(2, "little")
    return (
        b"RIFF" + riff.to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little") + fmt
        + b"data" + size.to_bytes(4, "little")
    )  # fmt: skip


def predict(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "soundnet_cli", "predict", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def extract(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "soundnet_cli", "extract", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def peak_rss(process: subprocess.Popen, peak: list[int]) -> None:
    """Keep ``peak[0]`` at the process's own peak resident set (VmHWM) while it runs."""
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except OSError:
            break
        time.sleep(0.5)


def paced_write(live: subprocess.Popen, blob: bytes, speed: float) -> list[tuple[float, int]]:
    """Write a stereo 16-bit 22,050-Hz WAV to ``live``'s stdin at ``speed`` times real time, in
    0.1-s blocks, then close it; (time, bytes written so far) after each block."""
    per_second = RATE * 4
    step = per_second // 10
    sent: list[tuple[float, int]] = []
    start = time.monotonic()
    assert live.stdin is not None
    for at in range(0, len(blob), step):
        time.sleep(max(0.0, start + at / per_second / speed - time.monotonic()))
        live.stdin.write(blob[at : at + step])
        live.stdin.flush()
        sent.append((time.monotonic(), min(len(blob), at + step)))
    live.stdin.close()
    return sent


def write_unpaced(live: subprocess.Popen, frames: int, peak: list[int]) -> None:
    """Write ``frames`` of mono audio to ``live``'s stdin as a WAV of unknown length, as fast as
    it reads, printing the peak RSS so far every 20 minutes of audio; then close it."""
    assert live.stdin is not None
    live.stdin.write(wav_header(RATE, 1, None))
    block = RATE * 30
    for at in range(0, frames, block):
        live.stdin.write(audio_block(at, min(block, frames - at), channels=1).tobytes())
        if at // block % 40 == 0:
            rss = peak[0] / 2**20
            print(f"  {at / RATE / 3600:.2f} h written, peak RSS so far {rss:.0f} MiB", flush=True)
    live.stdin.close()


def written_by(sent: list[tuple[float, int]], needed: int) -> float:
    """When the first ``needed`` bytes (or all there were) had been written."""
    total = sent[-1][1]
    return min(t for t, count in sent if count >= min(needed, total))


def checkpoint_args(checkpoint: str | None) -> list[str]:
    return ["--checkpoint", checkpoint] if checkpoint else []


def equality(args: argparse.Namespace) -> None:
    from soundnet_cli.models import load_student
    from soundnet_cli.prediction.follow import latency_seconds

    folder = Path(tempfile.mkdtemp(prefix="soundnet-live-"))
    frames = int(args.seconds * RATE)
    path = folder / "long.wav"
    with open(path, "wb") as handle:
        handle.write(wav_header(RATE, 2, frames))
        for start in range(0, frames, RATE * 10):
            handle.write(audio_block(start, min(RATE * 10, frames - start)).tobytes())
    extra = checkpoint_args(args.checkpoint)
    started = time.perf_counter()
    offline = subprocess.run(
        [sys.executable, "-m", "soundnet_cli", "predict", str(path), "-f", "csv", *extra],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    print(f"offline predict: {time.perf_counter() - started:.1f} s")
    model = load_student(args.checkpoint) if args.checkpoint else load_student("soundnet8")
    bound = latency_seconds(model, args.chunk_seconds)
    live = predict("-", "--follow", "-f", "csv", "--chunk-seconds", str(args.chunk_seconds),
                   *extra, stdin=subprocess.PIPE)  # fmt: skip
    arrivals: list[tuple[float, str]] = []

    def read() -> None:
        assert live.stdout is not None
        for line in iter(live.stdout.readline, b""):
            arrivals.append((time.monotonic(), line.decode()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = paced_write(live, path.read_bytes(), args.speed)
    code = live.wait()
    reader.join(10)
    assert live.stderr is not None
    if code != 0:
        sys.exit(f"live predict failed ({code}): {live.stderr.read().decode()}")
    text = "".join(line for _, line in arrivals)
    streamed = list(csv.DictReader(io.StringIO(text)))
    reference = list(csv.DictReader(io.StringIO(offline.stdout)))
    same = len(streamed) == len(reference) and all(
        all(a[k] == b[k] for k in ("start", "end", "head", "rank", "label"))
        for a, b in zip(streamed, reference, strict=True)
    )
    worst = max(
        (abs(float(a["probability"]) - float(b["probability"]))
         for a, b in zip(streamed, reference, strict=False)),
        default=float("nan"),
    )  # fmt: skip
    lags = []
    for arrived, line in arrivals[1:]:
        end = float(next(csv.reader([line]))[2])
        needed = 44 + int(round(end * RATE)) * 4
        written = written_by(sent, needed)
        lags.append((arrived - written) * args.speed)  # in seconds of audio
    print(
        f"{args.seconds:.0f} s of audio at {args.speed:g}x real time: {len(streamed)} rows "
        f"(offline {len(reference)}); times, heads, ranks and labels equal: {same}; "
        f"largest score difference {worst:.2e} (limit 1e-5)"
    )
    print(
        f"lag of a row behind the end of its span (audio seconds): max {max(lags):.2f}, "
        f"median {float(np.median(lags)):.2f}; documented bound {bound:.2f} s + 0.5 s"
    )


def memory(args: argparse.Namespace) -> None:
    frames = int(args.hours * 3600 * RATE)
    live = predict("-", "--follow", "-f", "csv", *checkpoint_args(args.checkpoint),
                   stdin=subprocess.PIPE)  # fmt: skip
    rows = [0]

    def read() -> None:
        assert live.stdout is not None
        for _ in iter(live.stdout.readline, b""):
            rows[0] += 1

    peak = [0]
    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=peak_rss, args=(live, peak), daemon=True).start()
    started = time.perf_counter()
    write_unpaced(live, frames, peak)
    code = live.wait()
    elapsed = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert live.stderr is not None
    if code != 0:
        sys.exit(f"live predict failed ({code}): {live.stderr.read().decode()}")
    speed = args.hours * 3600 / elapsed
    rss = max(peak[0], children) / 2**20
    print(
        f"{args.hours:g} h of audio streamed in {elapsed:.0f} s ({speed:.0f}x real time), "
        f"{rows[0] - 1} rows; peak RSS {rss:.0f} MiB (limit 1 GB)"
    )


EXTRACT_LAYERS = ("conv2", "pool5", "conv7")


def extract_equality(args: argparse.Namespace) -> None:
    import json

    folder = Path(tempfile.mkdtemp(prefix="soundnet-live-extract-"))
    frames = int(args.seconds * RATE)
    path = folder / "long.wav"
    with open(path, "wb") as handle:
        handle.write(wav_header(RATE, 2, frames))
        for start in range(0, frames, RATE * 10):
            handle.write(audio_block(start, min(RATE * 10, frames - start)).tobytes())
    layers = [arg for layer in EXTRACT_LAYERS for arg in ("--layer", layer)]
    extra = [*checkpoint_args(args.checkpoint), *layers]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "soundnet_cli", "extract", str(path), "-o", str(folder / "file"),
         "-q", *extra],
        check=True,
    )  # fmt: skip
    print(f"offline extract: {time.perf_counter() - started:.1f} s")
    out = folder / "live"
    live = extract("-", "--follow", "-o", str(out), "--chunk-seconds", str(args.chunk_seconds),
                   *extra, stdin=subprocess.PIPE)  # fmt: skip
    peak = [0]
    threading.Thread(target=peak_rss, args=(live, peak), daemon=True).start()
    pieces_seen: dict[str, float] = {}

    def watch() -> None:  # when each piece's last file appeared
        while live.poll() is None:
            for item in out.glob("stdin/*.conv7.npy"):
                pieces_seen.setdefault(item.name.split(".")[0], time.monotonic())
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    sent = paced_write(live, path.read_bytes(), args.speed)
    code = live.wait()
    assert live.stderr is not None
    if code != 0:
        sys.exit(f"live extract failed ({code}): {live.stderr.read().decode()}")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    worst = {}
    for layer in EXTRACT_LAYERS:
        joined = np.concatenate([np.load(out / f"{r['key']}.{layer}.npy") for r in rows])
        reference = np.load(folder / "file" / f"long.{layer}.npy")
        assert joined.shape == reference.shape, (layer, joined.shape, reference.shape)
        worst[layer] = float(np.abs(joined - reference).max() / np.abs(reference).max())
    lags = []  # audio seconds between the audio that completed a piece and the piece
    received = 0.0
    for row in rows[:-1]:  # the last piece waits for the end of the stream
        received += row["duration"]
        needed = 44 + int(round(received * RATE)) * 4
        written = written_by(sent, needed)
        seen = pieces_seen.get(row["key"].split("/")[-1])
        if seen is not None:
            lags.append(seen - written)
    print(
        f"{args.seconds:.0f} s of audio at {args.speed:g}x real time: {len(rows)} pieces; "
        "largest difference from `extract FILE`, relative to the values' scale: "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
        + " (limit 1e-5)"
    )
    if lags:
        print(
            f"a piece's files appeared {max(lags):.2f} s at most (median "
            f"{float(np.median(lags)):.2f} s) after the audio that completed it was written; "
            f"peak RSS {peak[0] / 2**20:.0f} MiB"
        )


def extract_memory(args: argparse.Namespace) -> None:
    frames = int(args.hours * 3600 * RATE)
    out = Path(tempfile.mkdtemp(prefix="soundnet-live-extract-")) / "live"
    live = extract("-", "--follow", "-o", str(out), "-q", *checkpoint_args(args.checkpoint),
                   stdin=subprocess.PIPE)  # fmt: skip
    peak = [0]
    threading.Thread(target=peak_rss, args=(live, peak), daemon=True).start()
    started = time.perf_counter()
    write_unpaced(live, frames, peak)
    code = live.wait()
    elapsed = time.perf_counter() - started
    assert live.stderr is not None
    if code != 0:
        sys.exit(f"live extract failed ({code}): {live.stderr.read().decode()}")
    pieces = len((out / "manifest.jsonl").read_text().splitlines())
    print(
        f"{args.hours:g} h of audio streamed in {elapsed:.0f} s "
        f"({args.hours * 3600 / elapsed:.0f}x real time), {pieces} pieces; peak RSS "
        f"{peak[0] / 2**20:.0f} MiB (limit 1 GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    eq = sub.add_parser("equality")
    eq.add_argument("--seconds", type=float, default=600.0)
    eq.add_argument("--speed", type=float, default=1.0)
    eq.add_argument("--chunk-seconds", type=float, default=6.0)
    eq.add_argument("--checkpoint")
    mem = sub.add_parser("memory")
    mem.add_argument("--hours", type=float, default=2.0)
    mem.add_argument("--checkpoint")
    xeq = sub.add_parser("extract-equality")
    xeq.add_argument("--seconds", type=float, default=600.0)
    xeq.add_argument("--speed", type=float, default=1.0)
    xeq.add_argument("--chunk-seconds", type=float, default=6.0)
    xeq.add_argument("--checkpoint")
    xmem = sub.add_parser("extract-memory")
    xmem.add_argument("--hours", type=float, default=2.0)
    xmem.add_argument("--checkpoint")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    runs = {
        "equality": equality,
        "memory": memory,
        "extract-equality": extract_equality,
        "extract-memory": extract_memory,
    }
    runs[args.what](args)


if __name__ == "__main__":
    main()
