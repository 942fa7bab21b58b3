"""CSV parsing shared by the web service, the dispatcher and the workers.

Everything here uses one set of parsing rules, so that the upload check, the dispatcher's cut
into byte ranges and the workers' parse of those ranges agree on what a record is:

* Dialect: the :mod:`csv` module's default (``,`` delimiter, ``"`` quote, doubled quotes inside
  quoted fields, no escape character, not strict).
* Encoding: UTF-8. A UTF-8 BOM at the very start of the file is skipped (it is part of the
  header's byte range, so :func:`read_header` reports a data offset after it).
* Lines: the bytes are split into lines at ``\\n``, ``\\r\\n`` and a lone ``\\r``, exactly as a file
  opened with ``newline=""`` would be, and the lines are handed to :func:`csv.reader`. A record
  therefore always ends at a line end; a quoted field may span lines (its line breaks are kept).
* Blank lines (a line with nothing but its line ending, which :func:`csv.reader` returns as
  ``[]``) are *not records*: they are skipped everywhere and do not consume a row number. Their
  bytes still belong to a chunk (see :func:`iter_chunks`).
* Row numbers are 1-based and count data records only: row 1 is the first record after the
  header.
* A record that :mod:`csv` rejects (``csv.Error``, which in this dialect means a field longer
  than :data:`FIELD_SIZE_LIMIT` characters) or that is not valid UTF-8 still counts as a record
  (it has a row number and is included in ``Chunk.rows``); :func:`iter_records` reports it with a
  reason instead of fields. After a ``csv.Error`` the parser resumes at the next line, like
  :func:`csv.reader` does.
* ``csv.field_size_limit`` is process-wide state. The functions below that parse set it to
  exactly :data:`FIELD_SIZE_LIMIT` (only if it differs) before parsing, so that every process
  agrees on which records are too large. Importing this module does not change it.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import BinaryIO

__all__ = [
    "FIELD_SIZE_LIMIT",
    "MAX_HEADER_BYTES",
    "MAX_LINE_BYTES",
    "Chunk",
    "CsvContentError",
    "UploadInspector",
    "header_line",
    "iter_chunks",
    "iter_records",
    "read_header",
    "write_rows",
]

#: Largest field, in characters, that :mod:`csv` accepts (``csv.field_size_limit``).
FIELD_SIZE_LIMIT = 64 * 1024 * 1024

#: Default bound on the bytes before the end of the header record (BOM, leading blank lines,
#: the header record and its line ending).
MAX_HEADER_BYTES = 1 << 20

#: :func:`iter_chunks` refuses a single physical line (bytes between two line breaks) longer than
#: this, so that a file without line breaks cannot make the dispatcher buffer all of it.
MAX_LINE_BYTES = 2 * FIELD_SIZE_LIMIT

_BOM = codecs.BOM_UTF8
_BLANK_LINES = frozenset((b"\n", b"\r\n", b"\r"))
_BLOCK_SIZE = 1 << 20  # read size used by iter_chunks
_HEADER_READ_SIZE = 64 * 1024  # first read size used by read_header (doubled as needed)


class CsvContentError(ValueError):
    """The content is not a usable CSV file; ``str(e)`` is a reason meant for humans."""


@dataclass(frozen=True)
class Chunk:
    """A byte range ``[start, end)`` of the stored file holding ``rows`` whole records."""

    seq: int  # 0-based chunk number
    start: int  # byte offset, inclusive, into the whole object
    end: int  # byte offset, exclusive
    first_row: int  # 1-based data row number of its first record
    rows: int  # number of records in it


def _ensure_field_size_limit() -> None:
    if csv.field_size_limit() != FIELD_SIZE_LIMIT:
        csv.field_size_limit(FIELD_SIZE_LIMIT)


# --------------------------------------------------------------------------------------------
# header


def _text_problem(line: bytes, offset: int) -> str | None:
    """The first NUL byte or UTF-8 problem in ``line`` (which starts at byte ``offset``)."""
    nul = line.find(b"\0")
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        if nul < 0 or exc.start < nul:
            return f"not valid UTF-8 at byte offset {offset + exc.start}: {exc.reason}"
    if nul >= 0:
        return f"not a text file: found a NUL byte at offset {offset + nul}"
    return None


def _validate_header(fields: list[str]) -> list[str]:
    names = [field.strip() for field in fields]
    empty = [str(position) for position, name in enumerate(names, 1) if not name]
    if empty:
        where = ", ".join(empty)
        plural = "s" if len(empty) > 1 else ""
        raise CsvContentError(f"the header has an empty column name at position{plural} {where}")
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    if duplicates:
        listed = ", ".join(repr(name) for name in duplicates)
        raise CsvContentError(f"the header has duplicate column names: {listed}")
    return names


def _parse_header(buf: bytes, *, final: bool) -> tuple[list[str], int] | None:
    """Find the header record at the start of ``buf`` (the first bytes of the file).

    Returns ``(names, data_offset)``, or ``None`` when ``buf`` may be too short to tell (only
    when ``final`` is false; ``final`` means ``buf`` is the whole file). Raises
    :class:`CsvContentError` for a file without a usable header.
    """
    skip = len(_BOM) if buf.startswith(_BOM) else 0
    if not final and _BOM.startswith(buf):
        return None  # empty so far, or a partial BOM
    if skip == len(buf):
        raise CsvContentError("the file is empty")
    lines = buf[skip:].splitlines(keepends=True)
    if not final and not lines[-1].endswith(b"\n"):
        lines.pop()  # incomplete, or a "\r" that may yet be followed by "\n"
    handed = [0]  # bytes of ``lines`` handed to the reader
    exhausted = [False]

    def feed() -> Iterator[str]:
        for line in lines:
            problem = _text_problem(line, skip + handed[0])
            if problem:
                raise CsvContentError(problem)
            handed[0] += len(line)
            yield line.decode("utf-8")
        exhausted[0] = True

    reader = csv.reader(feed())
    fields: list[str] = []
    while not fields:
        try:
            fields = next(reader)
        except StopIteration:
            if not final:
                return None
            raise CsvContentError("no header row: the file contains only blank lines") from None
        except csv.Error as exc:
            raise CsvContentError(f"no header row: the first record is malformed: {exc}") from None
        if exhausted[0] and not final:
            return None  # the record may continue past the end of buf
    return _validate_header(fields), skip + handed[0]


def read_header(
    stream: BinaryIO, *, max_header_bytes: int = MAX_HEADER_BYTES
) -> tuple[list[str], int]:
    """Read the header record from ``stream`` (positioned at offset 0).

    Returns ``(names, data_offset)``: the header's column names stripped of surrounding
    whitespace, and the byte offset where the data starts (after the BOM, any leading blank
    lines and the header record including its line ending). Reads only a bounded prefix of the
    stream (at most ``max_header_bytes``); the stream position afterwards is unspecified.

    Raises :class:`CsvContentError` for an empty file, a file with only blank lines, a header
    that is not valid UTF-8 or contains NUL, a header with empty or duplicate names, or when the
    header does not end within the first ``max_header_bytes`` bytes.
    """
    if max_header_bytes < 1:
        raise ValueError("max_header_bytes must be positive")
    _ensure_field_size_limit()
    buf = b""
    want = min(_HEADER_READ_SIZE, max_header_bytes)
    while True:
        eof = False
        while len(buf) < want:
            piece = stream.read(want - len(buf))
            if not piece:
                eof = True
                break
            buf += piece
        result = _parse_header(buf, final=eof)
        if result is not None:
            return result
        if len(buf) >= max_header_bytes:
            raise CsvContentError(f"no header row within the first {max_header_bytes} bytes")
        want = min(2 * want, max_header_bytes)


# --------------------------------------------------------------------------------------------
# chunking


def _iter_line_blocks(stream: BinaryIO, block_size: int) -> Iterator[list[bytes]]:
    """Yield lists of complete lines (with their line endings) read from ``stream``.

    Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r``; the last line may lack an ending.
    """
    max_line = MAX_LINE_BYTES
    parts: list[bytes] = []  # pieces of a line whose end has not been seen yet
    held = 0
    while True:
        block = stream.read(block_size)
        if not block:
            break
        if parts:
            parts.append(block)
            held += len(block)
            if b"\n" not in block and b"\r" not in block:
                if held > max_line:
                    raise CsvContentError(f"a line is longer than {max_line} bytes")
                continue
            block = b"".join(parts)
            parts = []
        lines = block.splitlines(keepends=True)
        if not lines[-1].endswith(b"\n"):
            tail = lines.pop()  # incomplete, or "\r" that may be followed by "\n"
            parts = [tail]
            held = len(tail)
        if lines:
            yield lines
    if parts:
        yield b"".join(parts).splitlines(keepends=True)


def _feed_csv_reader(
    source: Iterator[bytes], pushed: list[bytes], state: list[int]
) -> Iterator[str]:
    """The lines for the chunker's :func:`csv.reader` (see :func:`_iter_record_ends`)."""
    limit = FIELD_SIZE_LIMIT
    while True:
        line = pushed.pop() if pushed else next(source, None)
        if line is None:
            return
        state[0] += len(line)
        if state[1]:
            state[1] = 0
            state[2] = b'"' not in line and len(line) <= limit
        yield line.decode("utf-8", "surrogateescape")


def _iter_record_ends(blocks: Iterable[list[bytes]], total: list[int]) -> Iterator[int]:
    """Yield, for every record, the offset where it ends, relative to the first line.

    A record always ends at a line end. At a record boundary, a line without a quote character
    (and not longer than the field size limit, so that csv cannot reject it) is a whole record,
    or a blank line: outside quotes csv.reader ends a record at every line end. Such lines are
    counted directly. From a line with a quote on, the lines go through :func:`csv.reader`,
    which pulls further lines while it is inside a quoted field; the bytes it has pulled when
    it returns a record are where that record ends. The parse goes back to counting lines
    after the first record (taken by csv.reader) that starts with a line without a quote.
    Appends the total number of bytes seen to ``total`` at the end.
    """
    source = chain.from_iterable(blocks)
    limit = FIELD_SIZE_LIMIT
    blank = _BLANK_LINES
    pushed: list[bytes] = []  # a line for csv.reader to take before the source's
    # [bytes handed to csv.reader for the current record, whether the next line handed out
    # starts a record, whether the current record started with a line without quotes]
    state = [0, 0, 0]
    reader = csv.reader(_feed_csv_reader(source, pushed, state))
    pos = 0
    for line in source:
        size = len(line)
        if size <= limit and b'"' not in line:
            pos += size
            if size > 2 or line not in blank:
                yield pos
            continue
        pushed.append(line)
        while True:
            state[0] = 0
            state[1] = 1
            try:
                is_record = next(reader) != []
            except csv.Error:
                is_record = True  # a rejected record still counts (see iter_records)
            except StopIteration:
                break
            pos += state[0]
            if is_record:
                yield pos
            if state[2]:
                break
    total.append(pos)


def iter_chunks(
    stream: BinaryIO,
    *,
    start: int,
    first_row: int = 1,
    first_seq: int = 0,
    rows_per_chunk: int,
    max_chunk_bytes: int,
) -> Iterator[Chunk]:
    """Cut ``stream`` from ``start`` to EOF into chunks of whole records.

    ``start`` must be a record boundary: the data offset from :func:`read_header`, or the
    ``end`` of a chunk produced earlier (with ``first_row``/``first_seq`` continuing from that
    chunk); resuming that way yields exactly the chunks the uninterrupted run would have.

    * A chunk holds at most ``rows_per_chunk`` records.
    * A chunk is at most ``max_chunk_bytes`` long, unless it holds a single record (a record
      larger than that is a chunk of its own) or it is the last chunk, which is extended over
      any trailing blank lines.
    * Chunks are contiguous: the first starts at ``start``, each starts where the previous one
      ended, the last ends at EOF. A chunk ends right after its last record, so blank lines
      between records belong to the chunk of the following record; blank lines after the last
      record belong to the last chunk. No chunk has zero rows: when there is no record from
      ``start`` to EOF (only blank lines, or nothing), nothing is yielded.
    * An unterminated quoted field runs to EOF and is one record (as with :func:`csv.reader`).

    Raises :class:`CsvContentError` if a single line exceeds :data:`MAX_LINE_BYTES`, and
    ``ValueError`` for bad arguments (both when iteration reaches them). Memory use is bounded
    by the read size (1 MiB) plus the longest line plus, for a record with quotes, csv.reader's
    copy of it (fields of at most :data:`FIELD_SIZE_LIMIT` characters).
    """
    if rows_per_chunk < 1 or max_chunk_bytes < 1:
        raise ValueError("rows_per_chunk and max_chunk_bytes must be positive")
    if start < 0 or first_row < 1 or first_seq < 0:
        raise ValueError("start, first_row and first_seq must not be negative (first_row >= 1)")
    _ensure_field_size_limit()
    stream.seek(start)
    total: list[int] = []
    seq, row, chunk_start, rows, last_end = first_seq, first_row, start, 0, start
    for relative_end in _iter_record_ends(_iter_line_blocks(stream, _BLOCK_SIZE), total):
        end = start + relative_end
        if rows and (rows >= rows_per_chunk or end - chunk_start > max_chunk_bytes):
            yield Chunk(seq, chunk_start, last_end, row, rows)
            seq += 1
            row += rows
            chunk_start = last_end
            rows = 0
        rows += 1
        last_end = end
    if rows:
        yield Chunk(seq, chunk_start, start + total[0], row, rows)


# --------------------------------------------------------------------------------------------
# records


def iter_records(
    data: bytes, first_row: int, *, offset: int = 0
) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """Parse the bytes of one chunk (``[start, end)`` as produced by :func:`iter_chunks`).

    Yields ``(row_number, fields, None)`` for each record, or ``(row_number, None, reason)`` for
    a record that :mod:`csv` rejects or that is not valid UTF-8, then goes on with the next
    record. Blank lines are skipped without using a row number, so the rows yielded for a chunk
    are exactly ``chunk.first_row .. chunk.first_row + chunk.rows - 1``. ``offset`` is the
    position of ``data`` in the file; it is only used to report absolute byte offsets.
    Fields are returned as parsed (not stripped).
    """
    _ensure_field_size_limit()
    lines = data.splitlines(keepends=True)
    utf8_problem: list[str] = []

    def feed() -> Iterator[str]:
        at = offset
        for line in lines:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                if not utf8_problem:
                    utf8_problem.append(
                        f"not valid UTF-8 at byte offset {at + exc.start}: {exc.reason}"
                    )
                text = line.decode("utf-8", "surrogateescape")
            at += len(line)
            yield text

    reader = csv.reader(feed())
    row = first_row
    while True:
        reason = None
        try:
            fields: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            fields = None
            reason = f"malformed CSV record: {exc}"
        if fields == []:
            continue  # blank line: not a record
        if utf8_problem:
            reason = reason or utf8_problem[0]
            utf8_problem.clear()
        yield (row, None, reason) if reason else (row, fields, None)
        row += 1


# --------------------------------------------------------------------------------------------
# upload check


class UploadInspector:
    """Checks an upload while it streams, in bounded memory.

    Call :meth:`feed` with the raw bytes in order (any piece sizes), then :meth:`close`.
    Checks: no NUL byte, valid UTF-8 throughout (an incremental decoder, so a character split
    between pieces is fine), and a usable header record (as :func:`read_header` defines it)
    within the first ``max_header_bytes`` bytes. Records after the header are not checked.
    Once a check has failed, every further call raises the same error.
    """

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        if max_header_bytes < 1:
            raise ValueError("max_header_bytes must be positive")
        self.max_header_bytes = max_header_bytes
        self.bytes_seen = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._head = bytearray()  # the first bytes, until the header has been found
        self._header: list[str] | None = None
        self._next_attempt = 1  # parse the head again once it has this many bytes
        self._error: CsvContentError | None = None
        self._closed = False

    @property
    def header(self) -> list[str] | None:
        """The header's column names once the header record has been seen, else ``None``."""
        return None if self._header is None else list(self._header)

    def feed(self, piece: bytes) -> None:
        """Inspect the next piece; raises :class:`CsvContentError` as soon as a check fails."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ValueError("feed() after close()")
        try:
            base = self.bytes_seen
            self.bytes_seen += len(piece)
            self._check_text(piece, base)
            if self._header is None:
                self._look_for_header(piece)
        except CsvContentError as exc:
            self._error = exc
            raise

    def close(self) -> list[str]:
        """End of the upload: final checks. Returns the header's column names."""
        if self._error is not None:
            raise self._error
        if not self._closed:
            try:
                self._finish()
            except CsvContentError as exc:
                self._error = exc
                raise
            self._closed = True
        assert self._header is not None
        return list(self._header)

    def _check_text(self, piece: bytes, base: int) -> None:
        nul = piece.find(b"\0")
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(piece)
        except UnicodeDecodeError as exc:
            bad = base - pending + exc.start
            if nul < 0 or bad < base + nul:
                raise CsvContentError(
                    f"not valid UTF-8 at byte offset {bad}: {exc.reason}"
                ) from None
        if nul >= 0:
            raise CsvContentError(f"not a text file: found a NUL byte at offset {base + nul}")

    def _look_for_header(self, piece: bytes) -> None:
        room = self.max_header_bytes - len(self._head)
        if room > 0:
            self._head += piece[:room]
        full = len(self._head) >= self.max_header_bytes
        # Parse again only when the head has doubled (or is full): linear total work however
        # small the pieces are.
        if len(self._head) < self._next_attempt and not full:
            return
        self._next_attempt = 2 * len(self._head)
        _ensure_field_size_limit()
        result = _parse_header(bytes(self._head), final=False)
        if result is not None:
            self._header = result[0]
            self._head = bytearray()
        elif full:
            raise CsvContentError(f"no header row within the first {self.max_header_bytes} bytes")

    def _finish(self) -> None:
        pending = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            bad = self.bytes_seen - pending + exc.start
            raise CsvContentError(
                f"not valid UTF-8 at byte offset {bad}: truncated multi-byte sequence at the end"
            ) from None
        if self._header is None:
            # The head holds the whole file: had it filled up, feed() would have raised.
            _ensure_field_size_limit()
            result = _parse_header(bytes(self._head), final=True)
            assert result is not None
            self._header = result[0]
            self._head = bytearray()


# --------------------------------------------------------------------------------------------
# output


def write_rows(rows: Iterable[list[str]]) -> bytes:
    """Format rows as CSV: UTF-8, ``\\n`` line endings, ``csv.QUOTE_MINIMAL``, no header.

    Fields containing a delimiter, quote, ``\\n`` or ``\\r`` are quoted, so the output parses
    back to the same rows with this module's rules. An empty row (``[]``) is written as a blank
    line, which readers skip; a row ``[""]`` is written as ``""``.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    text = out.getvalue()
    if "\r" in text:
        # csv.writer only quotes line-break characters that occur in its lineterminator, and a
        # lone "\r" in an unquoted field would read back as a line break. Write such output
        # with "\r\n" (which quotes both) and replace each record's terminator.
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        for row in rows:
            writer.writerow(row)
            out.seek(out.tell() - 2)
            out.write("\n")
            out.truncate()
        text = out.getvalue()
    return text.encode("utf-8")


def header_line(fields: list[str]) -> bytes:
    """One CSV line for ``fields``, in the format of :func:`write_rows`."""
    return write_rows([fields])
