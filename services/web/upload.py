"""Stream a multipart CSV upload into object storage in bounded memory.

The body is parsed as it arrives (a sans-IO multipart parser). The ``file`` part goes to
storage in blocks of about 1 MiB, checked on the way by ``csvfile.UploadInspector`` (text,
UTF-8, a header row). The size limit is enforced on the bytes as they come, so an
oversized upload is refused without being stored. Any failure removes what was written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO

import anyio.to_thread
import multipart
from litestar.exceptions import ClientException, HTTPException

from libs.common import csvfile
from libs.common.storage import Storage

BLOCK = 1 << 20
MAX_SPEC_BYTES = 1 << 20
FORM_OVERHEAD = 64 << 10
FIELDS = ("file", "mapping", "pool")
#: The small text fields: their largest value in bytes, and what errors call them.
TEXT_LIMITS = {"mapping": MAX_SPEC_BYTES, "pool": 64}
TEXT_NAMES = {"mapping": "the mapping spec", "pool": "the pool name"}


class UploadError(HTTPException):
    """A 4xx with a reason for the user."""


def too_large(limit: int) -> UploadError:
    return UploadError(status_code=413, detail=f"the upload exceeds the limit of {limit} bytes")


def unprocessable(reason: str) -> UploadError:
    return UploadError(status_code=422, detail=reason)


@dataclass
class Upload:
    header: list[str]
    size: int
    filename: str
    mapping: str | None
    pool: str | None = None


class _Sink:
    """The storage writer, driven from worker threads; ``abort`` leaves nothing behind."""

    def __init__(self, storage: Storage, key: str) -> None:
        self._stack = ExitStack()
        self._out: IO[bytes] = self._stack.enter_context(storage.open_write(key))
        self.inspector = csvfile.UploadInspector()

    def write(self, block: bytes) -> None:
        self.inspector.feed(block)
        self._out.write(block)

    def commit(self) -> list[str]:
        header = self.inspector.close()
        self._stack.close()
        return header

    def abort(self) -> None:
        self._stack.__exit__(UploadError, UploadError(status_code=400), None)


def boundary_of(content_type: str) -> str:
    kind, options = multipart.parse_options_header(content_type or "")
    if kind != "multipart/form-data" or not options.get("boundary"):
        raise ClientException(
            status_code=415,
            detail="send multipart/form-data with a 'file' field (and optionally 'mapping')",
        )
    return options["boundary"]


async def receive(
    chunks: AsyncIterator[bytes], content_type: str, storage: Storage, key: str, limit: int
) -> Upload:
    parser = multipart.PushMultipartParser(boundary_of(content_type), max_segment_count=8)
    receiver = _Receiver(storage, key, limit)
    try:
        async for chunk in chunks:
            receiver.count(len(chunk))
            for event in parser.parse(chunk):
                await receiver.on_event(event)
        for event in parser.parse(b""):
            await receiver.on_event(event)
        if not parser.closed:
            raise unprocessable("the multipart body ended early")
        return await receiver.finish()
    except multipart.MultipartError as exc:
        await receiver.abort()
        raise unprocessable(f"malformed multipart body: {exc}") from None
    except csvfile.CsvContentError as exc:
        await receiver.abort()
        raise unprocessable(str(exc)) from None
    except BaseException:
        await receiver.abort()
        raise


class _Receiver:
    def __init__(self, storage: Storage, key: str, limit: int) -> None:
        self.storage, self.key, self.limit = storage, key, limit
        self.sink: _Sink | None = None
        self.field: str | None = None
        self.filename = ""
        self.size = 0
        self.seen = 0
        self.buffer = bytearray()
        self.texts: dict[str, bytearray] = {}

    def count(self, n: int) -> None:
        self.seen += n
        if self.seen > self.limit + FORM_OVERHEAD:
            raise too_large(self.limit)

    async def on_event(self, event: object) -> None:
        if isinstance(event, multipart.MultipartSegment):
            await self._start(event)
        elif event is None:
            await self._flush()
            self.field = None
        elif not isinstance(event, bytes | bytearray):
            raise unprocessable(f"unexpected multipart event {type(event).__name__}")
        elif self.field == "file":
            self.size += len(event)
            if self.size > self.limit:
                raise too_large(self.limit)
            self.buffer += event
            if len(self.buffer) >= BLOCK:
                await self._flush()
        elif self.field in self.texts:
            text = self.texts[self.field]
            text += event
            if len(text) > TEXT_LIMITS[self.field]:
                limit = TEXT_LIMITS[self.field]
                raise unprocessable(f"{TEXT_NAMES[self.field]} exceeds {limit} bytes")

    async def _start(self, segment: multipart.MultipartSegment) -> None:
        if segment.name not in FIELDS:
            raise unprocessable(
                f"unknown form field {segment.name!r} (expected: file, mapping, pool)"
            )
        self.field = segment.name
        if segment.name == "file":
            if self.sink is not None:
                raise unprocessable("send exactly one 'file' field")
            self.filename = segment.filename or "upload.csv"
            self.sink = await anyio.to_thread.run_sync(_Sink, self.storage, self.key)
        else:
            if segment.name in self.texts:
                raise unprocessable(f"send at most one {segment.name!r} field")
            self.texts[segment.name] = bytearray()

    async def _flush(self) -> None:
        if self.sink is not None and self.buffer:
            block, self.buffer = bytes(self.buffer), bytearray()
            await anyio.to_thread.run_sync(self.sink.write, block)

    async def finish(self) -> Upload:
        if self.sink is None:
            raise unprocessable("the form has no 'file' field with the CSV")
        texts: dict[str, str] = {}
        for name, raw in self.texts.items():
            try:
                texts[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise unprocessable(f"{TEXT_NAMES[name]} is not valid UTF-8") from None
        await self._flush()
        header = await anyio.to_thread.run_sync(self.sink.commit)
        self.sink = None
        pool = texts.get("pool", "").strip() or None
        return Upload(header, self.size, self.filename, texts.get("mapping"), pool)

    async def abort(self) -> None:
        if self.sink is not None:
            sink, self.sink = self.sink, None
            await anyio.to_thread.run_sync(sink.abort)
