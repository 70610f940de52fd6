"""Where downloaded weights live and the rules for getting them: the cache home
(``$SOUNDNET_HOME``, default ``~/.cache/soundnet``), offline mode (``SOUNDNET_OFFLINE=1``: never
touch the network) and one verified, streamed download used for every model file."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from soundnet_cli.errors import WeightsError, reason

HOME_ENV = "SOUNDNET_HOME"
OFFLINE_ENV = "SOUNDNET_OFFLINE"

ByteProgress = Callable[[int, int | None], None]  # (bytes so far, total or None)


def soundnet_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "soundnet").expanduser()


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}


def open_url(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "soundnet-cli"})
    return urllib.request.urlopen(request, timeout=timeout)


def download(
    url: str,
    target: Path,
    *,
    expected_sha256: str | None,
    progress: ByteProgress | None = None,
    timeout: float = 60.0,
    hint: str = "check the network and try again",
) -> str:
    """Stream ``url`` to ``target``; raise WeightsError unless its sha256 is as expected.

    ``expected_sha256=None`` skips the check (for sources that publish no hash, or only a
    prefix the caller checks); the sha256 is returned either way. ``hint`` ends error messages.
    """
    digest = hashlib.sha256()
    try:
        with open_url(url, timeout) as response, open(target, "wb") as out:
            total = response.headers.get("Content-Length")
            total_bytes = int(total) if total and total.isdigit() else None
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(done, total_bytes)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(f"download of {url} failed ({reason(exc)}); {hint}") from exc
    if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
        raise WeightsError(
            f"{url}: sha256 {digest.hexdigest()} does not match the pinned {expected_sha256}; "
            "the file was not used"
        )
    return digest.hexdigest()
