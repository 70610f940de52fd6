"""Inputs named by URL: ``http(s)://`` through the standard library, every other scheme
(``s3://``, ``gs://``, ``file://``, ...) through fsspec, whose own configuration supplies
credentials (environment, config files, instance roles). Nothing here is imported unless a URL
is given, and fsspec's optional back ends (s3fs, gcsfs) only for their scheme.

A URL is fetched to a local temporary file (its name keeps the URL's extension, which says
how to decode it), decoded as any file, then removed. A URL that cannot be fetched (404,
refused, a body cut short) is an :class:`~soundnet_cli.errors.AudioError` naming the URL:
the batch records it and goes on.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from soundnet_cli.errors import AudioError, UsageProblem, reason

URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
HTTP = ("http", "https")
TIMEOUT_SECONDS = 60.0


def is_url(text: str) -> bool:
    """Whether ``text`` names a URL (``scheme://...``) rather than a local path."""
    return URL.match(text) is not None


def scheme_of(url: str) -> str:
    match = URL.match(url)
    return match["scheme"].lower() if match else ""


def check_url(url: str) -> None:
    """A usage error for a URL whose scheme no installed reader knows (or whose fsspec back end
    is missing), before any work."""
    scheme = scheme_of(url)
    if scheme in HTTP or scheme == "file":
        return
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        raise UsageProblem(f"{url}: reading {scheme}:// needs a package: {reason(exc)}") from None
    except ValueError:
        raise UsageProblem(
            f"{url}: unknown URL scheme {scheme!r} (use a local path, http(s)://, file://, or "
            "a scheme fsspec knows such as s3:// or gs://)"
        ) from None


def local_path(url: str) -> str:
    """The local path a ``file://`` URL names."""
    return unquote(urlsplit(url).path)


def url_path(url: str) -> str:
    """The path part of ``url`` (decoded, without a leading slash): where its outputs go."""
    parts = urlsplit(url)
    path = unquote(parts.path).lstrip("/")
    if scheme_of(url) not in HTTP and parts.netloc:  # s3://bucket/key: the bucket is a folder
        path = f"{parts.netloc}/{path}"
    return path or parts.netloc or "input"


def expand(url: str, extensions: Sequence[str]) -> list[str]:
    """``url``, or the files under it with one of ``extensions`` when it names a folder of an
    fsspec file system (HTTP URLs are taken as files: a server's index pages are no folders).
    A URL that cannot be listed is kept as it is; fetching it reports the problem."""
    if scheme_of(url) in HTTP:
        return [url]
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        if not fs.isdir(path):
            return [url]
        found = sorted(fs.find(path))
    except Exception:  # noqa: BLE001  (reported when the URL is fetched)
        return [url]
    wanted = tuple(e.lower() for e in extensions)
    return [
        fs.unstrip_protocol(name)
        for name in found
        if not wanted or posixpath.splitext(name)[1].lower() in wanted
    ]


def fetch(url: str, folder: Path) -> Path:
    """Copy ``url`` to a new file in ``folder`` (named with the URL's extension); an
    :class:`AudioError` naming the URL when it cannot be read whole."""
    suffix = posixpath.splitext(urlsplit(url).path)[1][:16]
    fd, name = _temporary(folder, suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            if scheme_of(url) in HTTP:
                _fetch_http(url, handle)
            else:
                import fsspec

                with fsspec.open(url, "rb") as remote:
                    shutil.copyfileobj(remote, handle, 1 << 20)
    except Exception as exc:
        Path(name).unlink(missing_ok=True)
        raise AudioError(f"{url}: cannot fetch ({reason(exc)})") from exc
    return Path(name)


def _fetch_http(url: str, handle: object) -> None:
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "soundnet-cli"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            expected = response.headers.get("Content-Length")
            copied = 0
            while chunk := response.read(1 << 20):
                handle.write(chunk)  # type: ignore[attr-defined]
                copied += len(chunk)
            if expected is not None and copied != int(expected):
                raise OSError(f"body cut short: {copied} of {expected} bytes")
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    except http.client.IncompleteRead as exc:
        raise OSError(f"body cut short after {len(exc.partial)} bytes") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None


def _temporary(folder: Path, suffix: str) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(suffix=suffix, prefix="url-", dir=folder)


__all__ = ["check_url", "expand", "fetch", "is_url", "local_path", "scheme_of", "url_path"]
