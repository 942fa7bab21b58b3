"""Object storage by key under one base URL: ``file:///dir`` or ``s3://bucket/prefix``.

Writes are all-or-nothing: a local write goes to a temporary name and is renamed into
place, and an S3 object only appears when its PUT or multipart upload completes (an
exception inside ``open_write`` aborts it). So a retried task overwrites its part and a
reader never sees half of one. The S3 details live in ``libs.common.s3``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO, cast
from urllib.parse import urlsplit

from libs.common import s3

COPY_BUFFER = 1 << 20


class Storage:
    """Keys are relative, ``/``-separated paths under the base URL.

    On ``file://`` a key may not resolve outside the root; on ``s3://`` it may not start
    with ``/`` nor hold a ``.`` or ``..`` segment (servers differ on normalising those).
    ``part_size`` is the S3 multipart part size (memory per writer); ``endpoint_url``
    overrides boto3's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.
    """

    def __init__(
        self, base_url: str, *, part_size: int = s3.PART_SIZE, endpoint_url: str | None = None
    ) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.base_url = base_url.rstrip("/")
        self._root: Path | None = None
        self._s3: s3.Bucket | None = None
        if self.scheme == "file":
            self._root = Path(parts.path)
        elif self.scheme == "s3":
            self._s3 = s3.Bucket(base_url, part_size=part_size, endpoint_url=endpoint_url)
        else:
            raise ValueError(f"unsupported storage URL {base_url!r} (use file:// or s3://)")

    def url(self, key: str) -> str:
        return f"{self.base_url}/{key}"

    def _path(self, key: str) -> Path:
        assert self._root is not None
        path = (self._root / key).resolve()
        if self._root.resolve() not in path.parents:
            raise ValueError(f"key escapes the storage root: {key!r}")
        return path

    def _key(self, key: str) -> str:
        assert self._s3 is not None
        if not key or key.startswith("/") or {".", ".."} & set(key.split("/")):
            raise ValueError(f"key escapes the storage root or is not plain: {key!r}")
        return self._s3.key(key)

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """Yield a binary writer; the object appears only if the block exits cleanly."""
        if self._s3 is not None:
            with self._s3.open_write(self._key(key)) as writer:
                yield cast(IO[bytes], writer)
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def write(self, key: str, data: bytes) -> None:
        with self.open_write(key) as out:
            out.write(data)

    def open_read(self, key: str) -> BinaryIO:
        """A seekable binary reader; FileNotFoundError when the object is missing.

        On S3 it fetches nothing until the first read (so a seek first costs nothing),
        then GETs at most ``s3.READ_RANGE`` bytes per request, from its position.
        """
        if self._s3 is not None:
            return self._s3.open_read(self._key(key))
        return open(self._path(key), "rb")

    @property
    def can_presign(self) -> bool:
        return self._s3 is not None

    def presign(self, key: str, method: str, seconds: int) -> str:
        """A URL to GET or PUT ``key`` for ``seconds`` without credentials (S3 only)."""
        if self._s3 is None:
            raise ValueError(f"{self.base_url}: only s3:// storage can presign URLs")
        return self._s3.presign(self._key(key), method, seconds)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``: only that range is read (on S3, one ranged GET)."""
        if not 0 <= start <= end:
            raise ValueError(f"{key}: bad range [{start}, {end})")
        if self._s3 is not None:
            data = self._s3.read_range(self._key(key), start, end)
        else:
            with open(self._path(key), "rb") as stream:
                stream.seek(start)
                data = stream.read(end - start)
        if len(data) != end - start:
            raise ValueError(f"{key}: expected {end - start} bytes at {start}, got {len(data)}")
        return data

    def size(self, key: str) -> int:
        if self._s3 is not None:
            return self._s3.size(self._key(key))
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""
        if self._s3 is not None:
            self._s3.delete(self._key(key))
        else:
            self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix/`` (a folder, not a string prefix)."""
        if self._s3 is not None:
            self._s3.delete_prefix(self._key(prefix))
        else:
            shutil.rmtree(self._path(prefix), ignore_errors=True)

    def compose(self, dest: str, head: bytes, keys: Iterable[str]) -> int:
        """Write ``head`` then every object in ``keys``, in order, as ``dest``; return its size.

        All or nothing, like ``open_write``: a missing part raises FileNotFoundError and
        leaves no ``dest``. On S3, parts of 5 MiB or more are copied by S3 itself.
        """
        if self._s3 is not None:
            bucket = self._s3
            return bucket.compose(self._key(dest), head, (self._key(k) for k in keys))
        total = 0
        with self.open_write(dest) as out:
            out.write(head)
            total += len(head)
            for key in keys:
                with self.open_read(key) as part:
                    while block := part.read(COPY_BUFFER):
                        out.write(block)
                        total += len(block)
        return total
