"""Object storage by key under one base URL: ``file:///dir`` or ``s3://bucket/prefix``.

Writes are all-or-nothing: a local write goes to a temporary name and is renamed into
place, and an S3 multipart upload only appears when it completes. So a retried task
overwrites its part and a reader never sees half of one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, cast
from urllib.parse import urlsplit

import smart_open

COPY_BUFFER = 1 << 20


class Storage:
    def __init__(self, base_url: str, transport_params: dict[str, Any] | None = None) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.base_url = base_url.rstrip("/")
        self._root = Path(parts.path) if self.scheme == "file" else None
        self._params = transport_params or {}

    def url(self, key: str) -> str:
        return f"{self.base_url}/{key}"

    def _path(self, key: str) -> Path:
        assert self._root is not None
        path = (self._root / key).resolve()
        if self._root.resolve() not in path.parents:
            raise ValueError(f"key escapes the storage root: {key!r}")
        return path

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """Yield a binary writer; the object appears only if the block exits cleanly."""
        if self._root is None:
            with smart_open.open(self.url(key), "wb", transport_params=self._params) as out:
                yield out
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
        """A seekable binary reader; FileNotFoundError when the object is missing."""
        if self._root is None:
            stream = smart_open.open(self.url(key), "rb", transport_params=self._params)
            return cast(BinaryIO, stream)
        return open(self._path(key), "rb")

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``: only that range is read."""
        with self.open_read(key) as stream:
            stream.seek(start)
            data = stream.read(end - start)
        if len(data) != end - start:
            raise ValueError(f"{key}: expected {end - start} bytes at {start}, got {len(data)}")
        return data

    def size(self, key: str) -> int:
        if self._root is None:
            with self.open_read(key) as stream:
                return int(stream.seek(0, os.SEEK_END))
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        if self._root is None:
            raise NotImplementedError("delete on S3 arrives with the S3 backend")
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        if self._root is not None:
            shutil.rmtree(self._path(prefix), ignore_errors=True)

    def compose(self, dest: str, head: bytes, keys: Iterable[str]) -> int:
        """Write ``head`` then every object in ``keys``, in order, as ``dest``; return its size."""
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
