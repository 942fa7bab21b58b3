"""Audio files a user owns, under a ``file://`` or ``s3://`` URL prefix: list and fetch.

An audio job names a prefix; the dispatcher lists the audio files under it (recursively, in
URL order) and a worker fetches each one. A local file is read in place; an S3 object is
downloaded into the worker's scratch folder. Which prefixes a job may name is the web
service's decision (``allowed_prefix``): a ``file://`` URL names the disk of whichever
host reads it, so outside the embedded all-in-one it needs ``AUDIO_ROOTS``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from libs.common import s3
from libs.common.settings import storage_url

AUDIO_EXTENSIONS = frozenset(
    {".mp3", ".wav", ".ogg", ".oga", ".opus", ".flac", ".m4a", ".aac", ".webm", ".aiff", ".aif"}
)


@dataclass(frozen=True)
class AudioFile:
    url: str
    name: str
    size: int


def is_audio(name: str) -> bool:
    return Path(name).suffix.lower() in AUDIO_EXTENSIONS


def allowed_prefix(prefix: str, roots: tuple[str, ...] | None, *, embedded: bool) -> str:
    """The normalised prefix (ending in ``/``), or ValueError saying why it is refused."""
    scheme = urlsplit(prefix).scheme
    if scheme not in {"file", "s3"}:
        raise ValueError("the prefix must be a file:///dir/ or s3://bucket/prefix/ URL")
    normal = storage_url(prefix) + "/"
    if roots is not None:
        if not any(normal.startswith(root) for root in roots):
            raise ValueError(f"the prefix is outside AUDIO_ROOTS ({', '.join(roots)})")
    elif scheme == "file" and not embedded:
        raise ValueError(
            "file:// prefixes name the workers' own disks: the operator must allow them "
            "with AUDIO_ROOTS"
        )
    return normal


def list_audio(prefix: str, *, limit: int) -> list[AudioFile]:
    """Audio files under ``prefix``, in URL order, at most ``limit`` of them.

    FileNotFoundError when the folder (or bucket) does not exist.
    """
    parts = urlsplit(prefix)
    if parts.scheme == "file":
        return _list_local(Path(unquote(parts.path)), limit)
    bucket = s3.Bucket(prefix, part_size=s3.PART_SIZE, endpoint_url=None)
    found = []
    for key, size in bucket.list(bucket.prefix + "/" if bucket.prefix else ""):
        name = key.rsplit("/", 1)[-1]
        if is_audio(name):
            found.append(AudioFile(f"s3://{bucket.name}/{key}", name, size))
            if len(found) >= limit:
                break
    return found


def _list_local(root: Path, limit: int) -> list[AudioFile]:
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            if is_audio(name) and path.is_file():
                found.append(AudioFile(path.as_uri(), name, path.stat().st_size))
                if len(found) >= limit:
                    return found
    return found


def fetch(url: str, scratch: Path) -> Path:
    """A local path to the file at ``url``: the file itself, or a download into ``scratch``."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        if not path.is_file():
            raise FileNotFoundError(f"the file is gone: {path}")
        return path
    if parts.scheme != "s3":
        raise ValueError(f"unsupported audio URL {url!r}")
    bucket = s3.Bucket(f"s3://{parts.netloc}", part_size=s3.PART_SIZE, endpoint_url=None)
    key = parts.path.lstrip("/")
    dest = scratch / Path(key).name
    with bucket.open_read(key) as stream, open(dest, "wb") as out:
        shutil.copyfileobj(stream, out, 1 << 20)
    return dest
