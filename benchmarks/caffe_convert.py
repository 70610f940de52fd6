"""Benchmark `soundnet weights convert-caffe` memory on a full-size VGG16 caffemodel.

Writes a synthetic caffemodel with the real VGG16-Places365 shapes (13 convolutions 64...512,
fc6 25088 x 4096, fc7 4096 x 4096, fc8a 4096 x 365: about 537 MB, the size of CSAIL's
``vgg16_places365.caffemodel``) in the protobuf wire format, streamed to disk in blocks, then
converts it in a child process and prints the child's peak RSS next to the file's size (the
target: at most 1.5 x the file). ``--legacy`` writes the V1 layout instead.

    python benchmarks/caffe_convert.py
    python benchmarks/caffe_convert.py --legacy --keep /tmp/vgg16-synthetic.caffemodel
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
FCS = ((512 * 7 * 7, 4096), (4096, 4096), (4096, 365))
BLOCK = 1 << 22  # values written at a time


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload_size: int) -> bytes:
    """The key and length of a length-delimited field whose payload follows."""
    return varint(number << 3 | 2) + varint(payload_size)


def blob_head(shape: tuple[int, ...], legacy: bool) -> bytes:
    if legacy:
        dims = (1,) * (4 - len(shape)) + shape
        return b"".join(varint((i + 1) << 3) + varint(d) for i, d in enumerate(dims))
    packed = b"".join(varint(d) for d in shape)
    inner = field(1, len(packed)) + packed
    return field(7, len(inner)) + inner


def write_blob(out: BinaryIO, shape: tuple[int, ...], legacy: bool, rng: np.random.Generator,
               blob_field: int) -> None:  # fmt: skip
    count = int(np.prod(shape))
    head = blob_head(shape, legacy) + field(5, 4 * count)
    out.write(field(blob_field, len(head) + 4 * count) + head)
    for start in range(0, count, BLOCK):
        n = min(BLOCK, count - start)
        out.write((0.01 * rng.standard_normal(n, dtype=np.float32)).astype("<f4").tobytes())


def blob_size(shape: tuple[int, ...], legacy: bool) -> int:
    count = int(np.prod(shape))
    head = blob_head(shape, legacy) + field(5, 4 * count)
    return len(head) + 4 * count


def write_caffemodel(path: Path, legacy: bool) -> None:
    rng = np.random.default_rng(0)
    layer_field, name_field, blob_field = (2, 4, 6) if legacy else (100, 1, 7)
    layers: list[tuple[str, int, tuple[int, ...], tuple[int, ...]]] = []
    channels = 3
    for i, width in enumerate(WIDTHS):
        layers.append((f"conv{i}", 4, (width, channels, 3, 3), (width,)))
        channels = width
    for i, (inputs, outputs) in enumerate(FCS):
        layers.append((f"fc{6 + i}", 14, (outputs, inputs), (outputs,)))
    with open(path, "wb") as out:
        for name, v1_type, weight, bias in layers:
            kind = "Convolution" if v1_type == 4 else "InnerProduct"
            label = field(name_field, len(name)) + name.encode()
            if legacy:
                label += varint(5 << 3) + varint(v1_type)
            else:
                label += field(2, len(kind)) + kind.encode()
            blobs = [(s, blob_size(s, legacy)) for s in (weight, bias)]
            body = len(label) + sum(len(field(blob_field, n)) + n for _, n in blobs)
            out.write(field(layer_field, body) + label)
            for shape, _ in blobs:
                write_blob(out, shape, legacy, rng, blob_field)


def peak_rss_of(command: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MiB, wall seconds, stdout) of one child process."""
    script = (
        "import resource, subprocess, sys, json, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': p.returncode, 'peak': peak, 'wall': wall, 'out': p.stdout,"
        " 'err': p.stderr[-2000:]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        sys.exit(f"convert-caffe failed ({result['rc']}): {result['err']}")
    return result["peak"], result["wall"], result["out"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legacy", action="store_true", help="write the V1 (layers) layout")
    parser.add_argument("--keep", type=Path, help="keep the synthetic caffemodel at this path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        folder = Path(tmp)
        source = args.keep or folder / "vgg16_synthetic.caffemodel"
        started = time.perf_counter()
        write_caffemodel(source, args.legacy)
        made = time.perf_counter() - started
        size = source.stat().st_size / 2**20
        command = [
            sys.executable, "-m", "soundnet_cli", "weights", "convert-caffe", str(source),
            "--out", str(folder / "vgg16.safetensors"), "--json",
        ]  # fmt: skip
        env_home = {"SOUNDNET_HOME": str(folder / "home")}
        os.environ.update(env_home)
        peak, wall, out = peak_rss_of(command)
        summary = json.loads(out)
        print(
            f"{size:.0f} MiB caffemodel ({'legacy V1' if args.legacy else 'current'} layout, "
            f"written in {made:.0f} s): converted in {wall:.1f} s, peak RSS {peak:.0f} MiB "
            f"= {peak / size:.2f} x the file"
        )
        print(json.dumps({
            "caffemodel_mib": round(size),
            "peak_rss_mib": round(peak),
            "ratio": round(peak / size, 3),
            "wall_seconds": round(wall, 1),
            "output_mib": round((folder / "vgg16.safetensors").stat().st_size / 2**20),
            "sha256": summary.get("caffemodel_sha256"),
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
