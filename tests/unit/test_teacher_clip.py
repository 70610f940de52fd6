"""The ``clip:`` teacher family: open_clip's own preprocessing and image vectors, the embedding
head kind, names checked against open_clip, and the weights cache with its sha256 check."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")

import torch  # noqa: E402

from soundnet_cli.errors import UsageProblem, WeightsError  # noqa: E402
from soundnet_cli.media.video import read_frames  # noqa: E402
from soundnet_cli.teachers import get_teacher  # noqa: E402
from soundnet_cli.testing import check_teacher  # noqa: E402
from tests.videos import make_video  # noqa: E402

MODEL = "ViT-S-32"  # the smallest ViT open_clip builds; random weights, nothing downloaded


@pytest.fixture(scope="module")
def teacher_and_reference():
    torch.manual_seed(0)
    teacher = get_teacher(f"clip:{MODEL}", random_init=True)
    torch.manual_seed(0)
    reference, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    return teacher, reference.eval(), preprocess


@pytest.fixture(scope="module")
def video_frames(tmp_path_factory) -> np.ndarray:
    path = make_video(tmp_path_factory.mktemp("v") / "clip.mp4", seconds=2.0, size=(96, 64))
    frames, _ = read_frames(path, [0.25, 1.05, 1.75])
    assert frames.shape == (3, 64, 96, 3)
    return frames


def test_frames_are_open_clip_preprocess(teacher_and_reference, video_frames):
    from PIL import Image

    teacher, _, preprocess = teacher_and_reference
    mine = teacher.transform(torch.from_numpy(video_frames))
    theirs = torch.stack([preprocess(Image.fromarray(f)) for f in video_frames])
    assert mine.shape == theirs.shape == (3, 3, 224, 224)
    assert float((mine - theirs).abs().max()) <= 1e-6


def test_vectors_are_encode_image_normalised(teacher_and_reference, video_frames):
    from PIL import Image

    teacher, reference, preprocess = teacher_and_reference
    vectors = teacher.label(video_frames)[teacher.heads[0].name]
    with torch.inference_mode():
        pixels = torch.stack([preprocess(Image.fromarray(f)) for f in video_frames])
        expected = torch.nn.functional.normalize(reference.encode_image(pixels), dim=-1).numpy()
    assert vectors.shape == (3, reference.visual.output_dim)
    scale = np.abs(expected).max()
    assert np.abs(vectors - expected).max() <= 1e-5 * scale
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_head_kind_and_identity(teacher_and_reference):
    teacher, reference, _ = teacher_and_reference
    head = teacher.heads[0]
    assert (head.kind, head.size, head.categories) == ("embedding", reference.visual.output_dim, ())
    described = teacher.describe()
    assert described["heads"] == [{"name": "clip-vit-s-32", "kind": "embedding", "size": head.size}]
    clip = described["provenance"]["clip"]
    assert clip["model"] == MODEL and clip["pretrained"] is None and clip["sha256"] is None
    assert clip["image_size"] == 224 and len(clip["image_mean"]) == 3
    check_teacher(teacher)  # the contract check covers embedding heads


def test_check_teacher_refuses_unnormalised_vectors(teacher_and_reference, monkeypatch):
    teacher, _, _ = teacher_and_reference
    original = teacher.label

    def loud(frames):
        return {k: v * 3 for k, v in original(frames).items()}

    monkeypatch.setattr(teacher, "label", loud)  # the same Teacher, vectors three times too long
    with pytest.raises(AssertionError, match="L2-normalised"):
        check_teacher(teacher)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("clip:NoSuchNet/openai", "no model 'NoSuchNet'"),
        (f"clip:{MODEL}/nope", "no pretrained tag"),
    ],
)
def test_unknown_model_or_tag_is_a_usage_problem(name, words):
    with pytest.raises(UsageProblem, match=words) as info:
        get_teacher(name, random_init=True)
    assert "\n" not in str(info.value)


def test_weights_file_is_recorded_by_sha256(tmp_path, teacher_and_reference):
    _, reference, _ = teacher_and_reference
    path = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), path)
    teacher = get_teacher(f"clip:{MODEL}", weights=path)
    identity = teacher.provenance["clip"]
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert identity["weights_file"] == str(path.resolve())


class _Server:
    def __init__(self, root: Path) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                hits.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_is_cached_and_sha256_checked(tmp_path, monkeypatch):
    from soundnet_cli.weights import clip

    monkeypatch.setenv("SOUNDNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SOUNDNET_OFFLINE", raising=False)
    payload = b"clip weights" * 1000
    sha = hashlib.sha256(payload).hexdigest()
    # OpenAI's URLs publish the sha256 as the folder before the file name
    (tmp_path / "srv" / "openaipublic" / sha).mkdir(parents=True)
    (tmp_path / "srv" / "openaipublic" / sha / "w.pt").write_bytes(payload)
    (tmp_path / "srv" / "openaipublic" / ("0" * 64)).mkdir()
    (tmp_path / "srv" / "openaipublic" / ("0" * 64) / "w.pt").write_bytes(payload)
    server = _Server(tmp_path / "srv")
    try:
        url = f"{server.url}/openaipublic/{sha}/w.pt"
        path, digest = clip.fetch_clip_weights(MODEL, "t1", url=url)
        assert digest == sha and path.read_bytes() == payload
        assert path.parent == tmp_path / "home" / "clip"
        again, _ = clip.fetch_clip_weights(MODEL, "t1", url=url)
        assert again == path and len(server.hits) == 1  # the second call used the cache
        bad = f"{server.url}/openaipublic/{'0' * 64}/w.pt"
        with pytest.raises(WeightsError, match="does not match the published"):
            clip.fetch_clip_weights(MODEL, "t2", url=bad)
        assert not clip.cached_file(MODEL, "t2").exists()  # nothing half-written is kept
        assert not any(p.suffix == ".part" for p in path.parent.iterdir())
    finally:
        server.close()
