"""The track task handler: fetch each track's audio, decode it, and make its vector.

A track found by search is downloaded with yt-dlp; a file is read where it lies (or
downloaded from S3). A lent worker (``urls``: its server's task URLs) downloads a file
through the URL its server gives for it instead, never reading its own disk. Each
track's audio lives in a scratch folder of its own, removed as soon as the track is
done, whatever happened. A reason that belongs to one track (not
found, too long, too big, undecodable) is recorded on that track and the batch goes on;
trouble that is nobody's fault (the network) fails the task, which is then retried.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from libs.common import messages
from libs.common.audio import decode, download, features, layout, sources
from libs.common.retry import TransientError
from services.worker.task_urls import PresignedTask, TaskUrls, TooBig

log = logging.getLogger(__name__)

Progress = Callable[[str, int, str], None]  # (task id, track id, stage)


@dataclass(frozen=True)
class AudioConfig:
    ffmpeg: str | None
    scratch: Path
    search_prefix: str = "ytsearch1:"
    max_duration: float = 1200.0
    max_bytes: int = 100 << 20
    analysis_seconds: float = 180.0
    socket_timeout: float = 20.0
    local_files: bool = True  # False on a lent machine: a job must not read its owner's disk


class TrackFailed(Exception):
    """This track has no vector, for the reason in ``str()``."""


def handle_tracks(
    task: messages.TrackTask,
    config: AudioConfig,
    *,
    worker: str,
    progress: Progress,
    urls: TaskUrls | None = None,
) -> messages.TaskResult:
    """Vectorize the task's tracks; with ``urls`` (a lent worker), files come through the
    URLs the server gives for this task (asked for once, at the first file)."""
    started = time.monotonic()
    if config.ffmpeg is None:
        raise TransientError("this worker has no ffmpeg to decode audio with")
    files = urls.for_task(task.task_id) if urls is not None else None
    outcomes: list[messages.TrackOutcome] = []
    errors: list[messages.RowError] = []
    for ref in task.tracks:
        try:
            outcomes.append(_vectorize(task.task_id, ref, config, progress, files))
        except TrackFailed as exc:
            reason = str(exc)
            outcomes.append(messages.TrackOutcome(ref.id, error=reason))
            errors.append(messages.RowError(ref.row, "track", f"{_label(ref)}: {reason}"))
            log.info(
                "no vector for %s: %s", _label(ref), reason,
                extra={"task_id": task.task_id, "action": "track_unavailable"},
            )  # fmt: skip
    return messages.TaskResult(
        task_id=task.task_id, seq=task.seq, rows_in=len(task.tracks),
        rows_out=len(task.tracks) - len(errors), rows_failed=len(errors), errors=errors,
        worker=worker, elapsed=time.monotonic() - started, tracks=outcomes,
    )  # fmt: skip


def _vectorize(
    task_id: str,
    ref: messages.TrackRef,
    config: AudioConfig,
    progress: Progress,
    files: PresignedTask | None,
) -> messages.TrackOutcome:
    config.scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=config.scratch, prefix="track-") as folder:
        if ref.location and files is not None:
            source_url, path = None, _fetch_url(task_id, ref, config, progress, files, folder)
        else:
            source_url, path = _fetch(task_id, ref, config, progress, Path(folder))
        progress(task_id, ref.id, "analysing")
        assert config.ffmpeg is not None
        try:
            samples = decode.decode(
                path, ffmpeg=config.ffmpeg, sample_rate=layout.SAMPLE_RATE,
                max_seconds=config.analysis_seconds or None,
            )  # fmt: skip
        except decode.DecodeError as exc:
            raise TrackFailed(str(exc)) from None
        try:
            found = features.extract(samples, layout.SAMPLE_RATE)
        except ValueError as exc:
            raise TrackFailed(str(exc)) from None
    return messages.TrackOutcome(
        ref.id, vector=found.vector.astype("<f4").tobytes(), version=layout.FEATURE_VERSION,
        duration=float(found.summary.get("duration_seconds", 0.0)) or None,
        summary=dict(found.summary), source_url=source_url,
    )  # fmt: skip


def _fetch(
    task_id: str, ref: messages.TrackRef, config: AudioConfig, progress: Progress, folder: Path
) -> tuple[str | None, Path]:
    if ref.location:
        if ref.location.startswith("file:") and not config.local_files:
            raise TrackFailed("a lent worker does not read files on its own disk")
        progress(task_id, ref.id, "downloading")
        try:
            return None, sources.fetch(ref.location, folder)
        except FileNotFoundError as exc:
            raise TrackFailed(f"the file is gone: {exc}") from None
        except OSError as exc:
            raise TransientError(f"cannot read {ref.location}: {exc}") from exc
    progress(task_id, ref.id, "searching")
    try:
        got = download.download(
            ref.artist, ref.title, folder, search_prefix=config.search_prefix,
            max_bytes=config.max_bytes, max_duration=config.max_duration,
            socket_timeout=config.socket_timeout, ffmpeg=config.ffmpeg,
        )  # fmt: skip
    except download.Unavailable as exc:
        raise TrackFailed(str(exc)) from None
    except download.DownloadTransient as exc:
        raise TransientError(f"{_label(ref)}: {exc}") from exc
    return got.source_url, got.path


def _fetch_url(
    task_id: str,
    ref: messages.TrackRef,
    config: AudioConfig,
    progress: Progress,
    files: PresignedTask,
    folder: str,
) -> Path:
    """The track's file, downloaded through its task URL into the track's scratch folder
    (named as at its location: ffmpeg may go by the extension)."""
    progress(task_id, ref.id, "downloading")
    name = Path(unquote(urlsplit(ref.location).path)).name or f"track-{ref.id}"
    try:
        return files.track_file(ref.id, Path(folder, name), config.max_bytes)
    except FileNotFoundError as exc:
        raise TrackFailed(f"the file is gone: {exc}") from None
    except TooBig as exc:
        raise TrackFailed(str(exc)) from None


def _label(ref: messages.TrackRef) -> str:
    return f"{ref.artist} - {ref.title}" if ref.artist else ref.title
