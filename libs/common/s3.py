"""The S3 side of ``libs.common.storage``: one bucket and prefix, reached through boto3.

The client is built on first use, once per ``Bucket``, from boto3's own configuration
chain: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (LocalStack, moto, MinIO, R2),
``AWS_DEFAULT_REGION`` and the usual credentials. A custom endpoint gets path-style
addressing from botocore, which every S3-compatible server accepts.

Writes go through ``Writer``: bytes are buffered up to one part, so an object that stays
small is a single PUT, and a larger one becomes a multipart upload of ``part_size`` parts.
Either way the object appears only on ``commit``; ``abort`` leaves nothing behind.
Reads of a whole object stream through smart_open; ``read_range`` is one ranged GET.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
import smart_open.s3
from botocore.config import Config
from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

MIN_PART = 5 << 20  # S3's floor for every part of a multipart upload but the last
MAX_PART = 5 << 30  # S3's ceiling for one part, and for one UploadPartCopy range
MAX_PARTS = 10_000
PART_SIZE = 8 << 20  # our part size: the writer holds at most about this much
READ_RANGE = 16 << 20  # the most one GET of an ``open_read`` stream asks for
COPY_BUFFER = 1 << 20
_MISSING = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})


@contextmanager
def _not_found_as(key: str) -> Iterator[None]:
    """Turn S3's "no such key / bucket" into FileNotFoundError, like the local backend."""
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _MISSING:
            raise FileNotFoundError(f"no such object: {key}") from exc
        raise


class Writer(io.BufferedIOBase):
    """An all-or-nothing S3 object writer; use it through ``Bucket.open_write``."""

    def __init__(self, client: Any, bucket: str, key: str, part_size: int) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._part_size = part_size
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.size = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed S3 writer")
        n = memoryview(data).nbytes
        self._buf += data
        self.size += n
        while len(self._buf) >= self._part_size:
            with memoryview(self._buf) as view:
                body = bytes(view[: self._part_size])
            del self._buf[: self._part_size]
            self._upload(Body=body)
        return n

    def copy(self, source: str, start: int, end: int) -> None:
        """Append bytes ``[start, end)`` of object ``source`` by a server-side part copy.

        The buffered bytes become a part first, so they must be none or >= MIN_PART.
        """
        if 0 < len(self._buf) < MIN_PART or not MIN_PART <= end - start <= MAX_PART:
            raise ValueError(f"cannot copy {end - start} bytes after {len(self._buf)} buffered")
        if self._buf:
            body, self._buf = bytes(self._buf), bytearray()
            self._upload(Body=body)
        source_ref = {"Bucket": self._bucket, "Key": source}
        with _not_found_as(source):
            self._upload(CopySource=source_ref, CopySourceRange=f"bytes={start}-{end - 1}")
        self.size += end - start

    def _upload(self, **part: Any) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise ValueError(f"{self._key}: more than {MAX_PARTS} parts")
        if self._upload_id is None:
            created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        where = {"Bucket": self._bucket, "Key": self._key, "UploadId": self._upload_id}
        if "CopySource" in part:
            copied = self._client.upload_part_copy(**where, PartNumber=number, **part)
            etag = copied["CopyPartResult"]["ETag"]
        else:
            etag = self._client.upload_part(**where, PartNumber=number, **part)["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})

    def commit(self) -> None:
        body, self._buf = bytes(self._buf), bytearray()
        if self._upload_id is None:
            self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body)
        else:
            if body:
                self._upload(Body=body)
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )  # fmt: skip
            self._upload_id = None
        self.close()

    def abort(self) -> None:
        self._buf = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        self.close()
        if upload_id is None:
            return
        try:
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=upload_id
            )
        except Exception:  # the caller's exception matters more; a lifecycle rule reaps it
            log.warning("could not abort the multipart upload of %s", self._key, exc_info=True)


class Bucket:
    """Objects under ``s3://bucket/prefix``; keys here are full object keys."""

    def __init__(self, url: str, *, part_size: int, endpoint_url: str | None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"expected s3://bucket/prefix, got {url!r}")
        if not MIN_PART <= part_size <= MAX_PART:
            raise ValueError(f"part_size must be between {MIN_PART} and {MAX_PART} bytes")
        self.name = parts.netloc
        self.prefix = parts.path.strip("/")
        self.part_size = part_size
        self._endpoint_url = endpoint_url
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 client, built once on first use (clients are thread-safe)."""
        with self._lock:
            if self._client is None:
                session = boto3.session.Session()  # the default session is not thread-safe
                config = Config(
                    max_pool_connections=32, user_agent_extra="conveyor",
                    signature_version="s3v4",  # presigned URLs too: SigV2 is retired
                )  # fmt: skip
                self._client = session.client("s3", endpoint_url=self._endpoint_url, config=config)
            return self._client

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def presign(self, key: str, method: str, seconds: int) -> str:
        """A URL that lets its holder GET or PUT the object ``key`` for ``seconds``,
        signed with this process's credentials (no request is made)."""
        operation = {"GET": "get_object", "PUT": "put_object"}[method]
        return str(
            self.client.generate_presigned_url(
                operation, Params={"Bucket": self.name, "Key": key}, ExpiresIn=seconds
            )
        )

    @contextmanager
    def open_write(self, key: str) -> Iterator[Writer]:
        out = Writer(self.client, self.name, key, self.part_size)
        try:
            yield out
            out.commit()
        except BaseException:
            out.abort()
            raise

    def open_read(self, key: str) -> BinaryIO:
        self.size(key)  # FileNotFoundError now, not at the first read
        stream = smart_open.s3.open(
            self.name, key, "rb", client=self.client, defer_seek=True,
            range_chunk_size=READ_RANGE,
        )  # fmt: skip
        return cast(BinaryIO, stream)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if start == end:
            self.size(key)
            return b""
        try:
            with _not_found_as(key):
                response = self.client.get_object(
                    Bucket=self.name, Key=key, Range=f"bytes={start}-{end - 1}"
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                raise
            return b""  # the range starts at or past the end
        data: bytes = response["Body"].read()
        if "ContentRange" not in response:  # a server that ignores Range sends it all
            data = data[start:end]
        return data

    def size(self, key: str) -> int:
        with _not_found_as(key):
            return int(self.client.head_object(Bucket=self.name, Key=key)["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with ``prefix``, in key order."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        with _not_found_as(prefix):
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"], int(item["Size"])

    def delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix.rstrip("/") + "/"
        )
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if not keys:
                continue
            done = self.client.delete_objects(
                Bucket=self.name, Delete={"Objects": keys, "Quiet": True}
            )
            if errors := done.get("Errors"):
                raise OSError(f"could not delete {len(errors)} objects, first: {errors[0]}")

    def compose(self, dest: str, head: bytes, keys: Iterable[str]) -> int:
        """Write ``head`` then each object of ``keys`` as ``dest``; see ``Storage.compose``.

        Small objects are streamed through the writer. Of an object of at least MIN_PART,
        only enough bytes to bring the writer's buffer up to MIN_PART are streamed; the rest
        is copied by S3 itself (UploadPartCopy), since every part but the last must be at
        least MIN_PART and streamed bytes cannot share a part with copied ones.
        """
        with self.open_write(dest) as out:
            out.write(head)
            for key in keys:
                size, start = self.size(key), 0
                if size >= MIN_PART and 0 < out.buffered < MIN_PART:
                    start = MIN_PART - out.buffered
                    self._stream(out, key, 0, start)
                while size - start >= MIN_PART:
                    end = min(size, start + MAX_PART)
                    out.copy(key, start, end)
                    start = end
                self._stream(out, key, start, size)
            return out.size

    def _stream(self, out: Writer, key: str, start: int, end: int) -> None:
        if start >= end:
            return
        with _not_found_as(key):
            response = self.client.get_object(
                Bucket=self.name, Key=key, Range=f"bytes={start}-{end - 1}"
            )
        body, copied = response["Body"], 0
        try:
            while block := body.read(COPY_BUFFER):
                out.write(block)
                copied += len(block)
        finally:
            body.close()
        if copied != end - start:  # the object changed since we asked for its size
            raise OSError(f"{key}: expected {end - start} bytes at {start}, got {copied}")
