"""Fetch one track's audio with yt-dlp, within size and duration limits, errors per track.

``download("Queen", "Bohemian Rhapsody", tmp, max_bytes=50_000_000, max_duration=1200)``
searches ``ytsearch1:Queen Bohemian Rhapsody`` and saves the best audio as it comes
(no re-encoding: the worker decodes any container with ffmpeg) to ``tmp/dl-<random>.<ext>``.
A ``search_prefix`` starting with ``http://``/``https://`` gets the URL-quoted
"artist title" appended instead, and yt-dlp's generic extractor takes the URL (the
tests' local media server).

Failures are :class:`Unavailable` (this track cannot be had: not found, too long, too
big, HTTP 404...) or :class:`DownloadTransient` (network trouble, 429, 5xx: try later).
yt-dlp works in a private ``.dl-*`` folder inside ``dest_dir`` which is always removed,
so a failure leaves nothing behind; :func:`clean_stale` removes what a killed process left.

The duration is only known before downloading when the extractor reports it (YouTube
does; a direct file link does not, and there is no ffprobe): then ``duration`` is None
and the caller must check the decoded length itself.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yt_dlp
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import ContentTooShortError, DownloadCancelled, DownloadError

log = logging.getLogger(__name__)

_STAGING = ".dl-"  # yt-dlp's private working folder, removed after each download
_FINAL = "dl-"  # downloaded files handed to the caller
_TRANSIENT_MARKERS = ("timed out", "connection reset", "temporary failure", "not a bot")
_NOT_FOUND_MARKERS = ("no video results", "unsupported url")
#: Warnings about the normal course of things, logged at debug level only.
_ROUTINE_WARNINGS = ("[generic] Falling back on generic information extractor",)


class Unavailable(Exception):
    """This track cannot be downloaded; ``str()`` is a one-line reason for the user."""


class DownloadTransient(Exception):
    """Network trouble (refused, timeout, 429, 5xx): the same download may work later."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    duration: float | None  # seconds, when the extractor knew it
    source_url: str
    title: str  # as yt-dlp saw it


class _TooBig(DownloadCancelled):
    msg = "the download outgrew max_bytes"


class _Logger:
    """yt-dlp's messages to Python logging instead of stdout/stderr."""

    def debug(self, message: str) -> None:
        log.debug("%s", message)

    def info(self, message: str) -> None:
        log.debug("%s", message)

    def warning(self, message: str) -> None:
        quiet = message.startswith(_ROUTINE_WARNINGS)
        log.log(logging.DEBUG if quiet else logging.WARNING, "yt-dlp: %s", message)

    def error(self, message: str) -> None:
        log.debug("%s", message)  # also raised as a DownloadError, classified below


def search_query(artist: str, title: str, search_prefix: str) -> str:
    if search_prefix.startswith(("http://", "https://")):
        return search_prefix + quote(f"{artist} {title}")
    return f"{search_prefix}{artist} {title}"


def download(
    artist: str,
    title: str,
    dest_dir: Path,
    *,
    search_prefix: str = "ytsearch1:",
    max_bytes: int,
    max_duration: float,
    socket_timeout: float = 20,
    retries: int = 3,
    ffmpeg: str | None = None,
) -> Downloaded:
    dest_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=dest_dir))

    def guard(progress: dict[str, Any]) -> None:  # servers that send no Content-Length
        if (progress.get("downloaded_bytes") or 0) > max_bytes:
            raise _TooBig()

    options: dict[str, Any] = {
        "format": "bestaudio/best",
        "noplaylist": True,
        "socket_timeout": socket_timeout,
        "retries": retries,
        "fragment_retries": retries,
        "extractor_retries": retries,
        "max_filesize": max_bytes,
        "match_filter": yt_dlp.utils.match_filter_func(f"duration <=? {max_duration} & !is_live"),
        "progress_hooks": [guard],
        "logger": _Logger(),
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "outtmpl": {"default": str(staging / "audio.%(ext)s")},
        "cachedir": False,
        "updatetime": False,  # keep mtimes honest for clean_stale
    }
    if ffmpeg:
        options["ffmpeg_location"] = ffmpeg
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(search_query(artist, title, search_prefix), download=True)
        return _keep(info, staging, dest_dir, max_bytes, max_duration)
    except _TooBig:
        raise _too_big(max_bytes) from None
    except DownloadError as error:
        raise _classify(error) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _keep(
    info: dict[str, Any] | None, staging: Path, dest_dir: Path, max_bytes: int, max_duration: float
) -> Downloaded:
    if info and info.get("_type") == "playlist":  # a search: its first (only) result
        info = next((entry for entry in info.get("entries") or [] if entry), None)
    if not info:
        raise Unavailable("not found")
    downloads = info.get("requested_downloads") or [{}]
    filepath = downloads[0].get("filepath")
    duration = info.get("duration")
    if not filepath or not Path(filepath).is_file():
        if info.get("is_live"):
            raise Unavailable("a live stream")
        if duration is not None and duration > max_duration:
            raise Unavailable(f"too long ({duration:.0f} s > {max_duration:.0f} s)")
        raise _too_big(max_bytes)
    if Path(filepath).stat().st_size > max_bytes:
        raise _too_big(max_bytes)
    final = dest_dir / f"{_FINAL}{staging.name.removeprefix(_STAGING)}{Path(filepath).suffix}"
    os.replace(filepath, final)
    return Downloaded(
        path=final,
        duration=float(duration) if duration is not None else None,
        source_url=info.get("webpage_url") or info.get("original_url") or "",
        title=info.get("title") or "",
    )


def _too_big(max_bytes: int) -> Unavailable:
    return Unavailable(f"too big (over {max_bytes / 1e6:.3g} MB)")


def _reason(message: str) -> str:
    """``ERROR: [generic] id: Unable to ...: HTTP Error 404 (caused by ...)`` -> the middle."""
    text = re.sub(r"^\s*ERROR:\s*", "", message)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "unknown error")
    line = re.sub(r"^\[[\w:]+\] [^:]*: ", "", line)
    return re.sub(r"\s*\(caused by .*\)$", "", line)[:200]


def _causes(error: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    while error is not None and error not in chain and len(chain) < 10:
        chain.append(error)
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return chain


def _http_status(causes: list[BaseException], reason: str) -> int | None:
    """yt-dlp reports some HTTP errors with the exception, others only in the message."""
    for cause in causes:
        if isinstance(cause, HTTPError):
            return int(cause.status)
    found = re.search(r"HTTP Error (\d{3})", reason)
    return int(found[1]) if found else None


def _classify(error: DownloadError) -> Unavailable | DownloadTransient:
    reason = _reason(str(error))
    causes = _causes(error.exc_info[1] if error.exc_info else None)
    status = _http_status(causes, reason)
    if status is not None:
        if status == 429 or status >= 500:
            return DownloadTransient(
                reason if f"HTTP Error {status}" in reason else f"HTTP {status}: {reason}"
            )
        fetching = "unable to download video data" in str(error).lower()  # past extraction
        if status in (404, 410) and not fetching:
            return Unavailable("not found")
        return Unavailable(f"download failed: HTTP {status}")
    for cause in causes:
        if isinstance(cause, (TransportError, ContentTooShortError, ConnectionError, TimeoutError)):
            return DownloadTransient(f"network error: {reason}")
        if isinstance(cause, OSError):  # local trouble, such as a full disk
            return DownloadTransient(reason)
    lowered = reason.lower()
    if any(marker in lowered for marker in _TRANSIENT_MARKERS):
        return DownloadTransient(f"network error: {reason}")
    if any(marker in lowered for marker in _NOT_FOUND_MARKERS):
        return Unavailable("not found")
    return Unavailable(reason)


def clean_stale(dir: Path, older_than: float = 0) -> int:
    """Remove :func:`download`'s leftovers in ``dir`` last modified over ``older_than`` s ago.

    Only its own entries (``.dl-*`` working folders, ``dl-*`` files) go, whatever else
    ``dir`` holds. Run it when a worker starts, before it downloads anything. Returns
    how many entries were removed.
    """
    if not dir.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for entry in dir.iterdir():
        if not entry.name.startswith((_STAGING, _FINAL)):
            continue
        try:
            if entry.lstat().st_mtime > cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # removed meanwhile
        removed += 1
    return removed
