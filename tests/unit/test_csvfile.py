from __future__ import annotations

import csv
import io
import random
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common import csvfile
from libs.common.csvfile import (
    FIELD_SIZE_LIMIT,
    Chunk,
    CsvContentError,
    UploadInspector,
    header_line,
    iter_chunks,
    iter_records,
    read_header,
    write_rows,
)

BOM = b"\xef\xbb\xbf"
BIG = 1 << 60  # "no limit" for rows_per_chunk / max_chunk_bytes


@pytest.fixture(autouse=True)
def _restore_csv_field_size_limit():
    before = csv.field_size_limit()
    yield
    csv.field_size_limit(before)


# --------------------------------------------------------------------------------------------
# helpers


def reference(raw: bytes) -> tuple[list[str], list[list[str]]]:
    """Header and data records as csv.reader sees the whole file (blank lines dropped)."""
    text = raw.decode("utf-8")
    text = text.removeprefix("\ufeff")
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    return records[0], records[1:]


def chunk_file(raw: bytes, rows_per_chunk: int = BIG, max_chunk_bytes: int = BIG):
    _, start = read_header(io.BytesIO(raw))
    chunks = list(
        iter_chunks(
            io.BytesIO(raw),
            start=start,
            rows_per_chunk=rows_per_chunk,
            max_chunk_bytes=max_chunk_bytes,
        )
    )
    return start, chunks


def check_chunks(
    raw: bytes, start: int, chunks: list[Chunk], rows_per_chunk: int, max_chunk_bytes: int
) -> list[tuple[int, list[str] | None, str | None]]:
    """Check the chunk invariants; return the records of all chunks re-parsed in order."""
    records = []
    expected_start, expected_row = start, 1
    for seq, chunk in enumerate(chunks):
        assert chunk.seq == seq
        assert chunk.start == expected_start
        assert chunk.first_row == expected_row
        assert 1 <= chunk.rows <= rows_per_chunk
        is_last = seq == len(chunks) - 1
        if not is_last:
            assert chunk.end - chunk.start <= max_chunk_bytes or chunk.rows == 1
        got = list(iter_records(raw[chunk.start : chunk.end], chunk.first_row))
        assert [r[0] for r in got] == list(range(chunk.first_row, chunk.first_row + chunk.rows))
        records.extend(got)
        expected_start, expected_row = chunk.end, chunk.first_row + chunk.rows
    if chunks:
        assert chunks[-1].end == len(raw)
    else:
        assert raw[start:].strip(b"\r\n") == b""  # nothing but blank lines left
    return records


def fields_of(records) -> list[list[str]]:
    records = list(records)
    assert all(reason is None for _, _, reason in records)
    return [fields for _, fields, _ in records]


def chunk_and_compare(raw: bytes, rows_per_chunk: int = BIG, max_chunk_bytes: int = BIG):
    start, chunks = chunk_file(raw, rows_per_chunk, max_chunk_bytes)
    records = check_chunks(raw, start, chunks, rows_per_chunk, max_chunk_bytes)
    assert fields_of(records) == reference(raw)[1]
    return chunks


def inspect(raw: bytes, piece_size: int = 1 << 16, **kwargs) -> list[str]:
    inspector = UploadInspector(**kwargs)
    for i in range(0, len(raw), piece_size):
        inspector.feed(raw[i : i + piece_size])
    header = inspector.close()
    assert inspector.bytes_seen == len(raw)
    return header


# --------------------------------------------------------------------------------------------
# sample files

SAMPLES: dict[str, bytes] = {
    "lf": b"id,name\n1,alice\n2,bob\n3,carol\n",
    "crlf": b"id,name\r\n1,alice\r\n2,bob\r\n3,carol\r\n",
    "bom": BOM + b"id,name\n1,alice\n2,bob\n",
    "bom_crlf": BOM + b"id,name\r\n1,alice\r\n2,bob\r\n",
    "quoted_lf_newline": b'id,text\n1,"line one\nline two"\n2,plain\n3,"a\n\nb"\n',
    "quoted_crlf_newline": b'id,text\r\n1,"line one\r\nline two"\r\n2,plain\r\n',
    "quoted_mixed_newlines": b'id,text\r\n1,"a\nb\r\nc\rd"\n2,"x"\r\n3,y\n',
    "newline_in_quoted_header": b'"first\ncol",second\n1,2\n3,4\n',
    "quotes_and_commas": b'a,b\n"x,y","say ""hi"""\n"",\n,""\n"""",z\n',
    "unicode": 'name,city\nJosé,São Paulo\n李,北京\n😀,"multi\nline ✓"\n'.encode(),
    "ragged": b"a,b,c\n1\n1,2\n1,2,3,4,5\n,\n1,2,3\n",
    "no_trailing_newline": b"a,b\n1,2\n3,4",
    "no_trailing_newline_quoted": b'a,b\n1,2\n3,"x\ny"',
    "blank_lines": b"a,b\n\n1,2\n\n\n3,4\r\n\r\n5,6\n\n",
    "leading_blank_lines": b"\n\r\na,b\n1,2\n",
    "blank_line_in_quotes": b'a,b\n1,"\n"\n2,"\r\n\r\n"\n',
    "trailing_blank_lines": b"a,b\n1,2\n3,4\n\n\n\r\n",
    "lone_cr_line_endings": b"a,b\r1,2\r3,4\r",
    "lone_cr_then_unterminated_last_line": b"a,b\r1,2\r3,4",
    "unterminated_quote_at_eof": b'a,b\n1,2\n3,"never closed\n4,5\n6,7\n',
    "stray_quotes": b'a,b\nx"y,z\n"a"b,c\n1,2"\n"q"",r\n',
    "header_only": b"a,b\n",
    "header_only_no_newline": b"a,b",
    "header_then_blank_lines": b"a,b\n\n\n",
    "single_column": b"v\n1\n\n2\n3\n",
    "spaces": b"a , b \n 1 , 2 \n",
    "nul_in_data": b"a,b\n1,x\x00y\n2,3\n",
}

EXPECTED_ROWS = {
    "lf": [["1", "alice"], ["2", "bob"], ["3", "carol"]],
    "quoted_crlf_newline": [["1", "line one\r\nline two"], ["2", "plain"]],
    "quoted_mixed_newlines": [["1", "a\nb\r\nc\rd"], ["2", "x"], ["3", "y"]],
    "ragged": [["1"], ["1", "2"], ["1", "2", "3", "4", "5"], ["", ""], ["1", "2", "3"]],
    "blank_lines": [["1", "2"], ["3", "4"], ["5", "6"]],
    "blank_line_in_quotes": [["1", "\n"], ["2", "\r\n\r\n"]],
    "lone_cr_line_endings": [["1", "2"], ["3", "4"]],
    "unterminated_quote_at_eof": [["1", "2"], ["3", "never closed\n4,5\n6,7\n"]],
    "header_only": [],
    "header_then_blank_lines": [],
    "spaces": [[" 1 ", " 2 "]],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_reference_matches_expected_rows(name):
    # Pins the semantics the other tests compare against.
    assert reference(SAMPLES[name])[1] == EXPECTED_ROWS[name]


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize(
    ("rows_per_chunk", "max_chunk_bytes"),
    [(1, BIG), (2, BIG), (3, BIG), (1000, BIG), (BIG, 1), (BIG, 12), (2, 20)],
)
def test_samples_chunk_and_reparse(name, rows_per_chunk, max_chunk_bytes):
    chunk_and_compare(SAMPLES[name], rows_per_chunk, max_chunk_bytes)


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("block_size", [1, 2, 3, 7])
def test_samples_with_tiny_read_blocks(monkeypatch, name, block_size):
    # Line endings and multi-byte characters split between reads.
    monkeypatch.setattr(csvfile, "_BLOCK_SIZE", block_size)
    monkeypatch.setattr(csvfile, "_HEADER_READ_SIZE", block_size)
    chunk_and_compare(SAMPLES[name], rows_per_chunk=2)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_header(name):
    raw = SAMPLES[name]
    header, start = read_header(io.BytesIO(raw))
    expected = [field.strip() for field in reference(raw)[0]]
    assert header == expected
    # The data offset is right after the header record.
    assert fields_of(iter_records(raw[start:], 1)) == reference(raw)[1]
    if name != "nul_in_data":
        assert inspect(raw, piece_size=3) == expected


# --------------------------------------------------------------------------------------------
# read_header


@pytest.mark.parametrize(
    ("raw", "header", "start"),
    [
        (b"a,b\n1,2\n", ["a", "b"], 4),
        (b"a,b\r\n1,2\r\n", ["a", "b"], 5),
        (BOM + b"a,b\r\n1,2\r\n", ["a", "b"], 8),
        (b"a,b\r1,2\r", ["a", "b"], 4),
        (b"a,b", ["a", "b"], 3),
        (b"\n\r\n a , b \n1,2\n", ["a", "b"], 11),
        (b'"x\r\ny",z\n1,2\n', ["x\r\ny", "z"], 9),
        (b'"a,b","c""d"\n', ["a,b", 'c"d'], 13),
        ("é,ü\n1,2\n".encode(), ["é", "ü"], 6),
    ],
)
def test_read_header(raw, header, start):
    assert read_header(io.BytesIO(raw)) == (header, start)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "the file is empty"),
        (BOM, "the file is empty"),
        (b"\n", "no header row"),
        (b"\r\n\r\n\n", "no header row"),
        (b"a,b,a\n1,2,3\n", "duplicate column names: 'a'"),
        (b"a, b ,b,a\n", "duplicate column names: 'a', 'b'"),
        (b"a,,b\n", "empty column name at position 2"),
        (b" ,b, \n", "empty column name at positions 1, 3"),
        (b'""\n1\n', "empty column name at position 1"),
        (b"a,\xff\n", "not valid UTF-8 at byte offset 2"),
        (b"ab,c\x00\n", "NUL byte at offset 4"),
        (BOM + b"\n\nx\x00\n", "NUL byte at offset 6"),
    ],
)
def test_read_header_errors(raw, message):
    with pytest.raises(CsvContentError, match=message):
        read_header(io.BytesIO(raw))


def test_read_header_bad_data_after_header_is_not_its_concern():
    raw = b"a,b\n\xff\x00,2\n"
    assert read_header(io.BytesIO(raw)) == (["a", "b"], 4)


def test_read_header_reads_a_bounded_prefix():
    raw = b"a,b\n" + b"1,2\n" * 100_000
    stream = io.BytesIO(raw)
    assert read_header(stream, max_header_bytes=100) == (["a", "b"], 4)
    assert stream.tell() <= 100


@pytest.mark.parametrize("header_size", [10, 99, 100])
def test_read_header_limit(monkeypatch, header_size):
    monkeypatch.setattr(csvfile, "_HEADER_READ_SIZE", 8)  # grows 8, 16, ... up to the limit
    name = "h" * (header_size - 1)
    raw = f"{name}\n1\n".encode()
    assert read_header(io.BytesIO(raw), max_header_bytes=100) == ([name], header_size)
    too_big = f"{name}x\n1\n".encode()
    if header_size == 100:
        with pytest.raises(CsvContentError, match="no header row within the first 100 bytes"):
            read_header(io.BytesIO(too_big), max_header_bytes=100)


def test_read_header_with_long_quoted_header(monkeypatch):
    monkeypatch.setattr(csvfile, "_HEADER_READ_SIZE", 4)
    raw = b'"' + b"x\n" * 500 + b'",y\n1,2\n'
    header, start = read_header(io.BytesIO(raw))
    assert header == ["x\n" * 499 + "x", "y"]  # stripped
    assert raw[start:] == b"1,2\n"


# --------------------------------------------------------------------------------------------
# iter_chunks


def numbered_file(n: int, newline: bytes = b"\n") -> bytes:
    return newline.join([b"id,value", *(f"{i},v{i}".encode() for i in range(1, n + 1))]) + newline


@pytest.mark.parametrize(
    ("rows", "rows_per_chunk", "sizes"),
    [
        (10, 1, [1] * 10),
        (10, 2, [2] * 5),
        (10, 3, [3, 3, 3, 1]),
        (10, 5, [5, 5]),
        (10, 10, [10]),
        (10, 11, [10]),
        (10, 1000, [10]),
        (1, 1, [1]),
        (0, 3, []),
    ],
)
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_rows_per_chunk_boundaries(rows, rows_per_chunk, sizes, newline):
    raw = numbered_file(rows, newline)
    chunks = chunk_and_compare(raw, rows_per_chunk=rows_per_chunk)
    assert [c.rows for c in chunks] == sizes
    for chunk in chunks:
        first = raw[chunk.start : chunk.end].split(b",", 1)[0]
        assert first == str(chunk.first_row).encode()


def test_chunk_values_exact():
    raw = b"h\n1\n\n2\n3\n\n\n"
    #  offsets: 0  2  4 5  7  9 10 (11 = EOF)
    _, start = read_header(io.BytesIO(raw))
    assert start == 2
    assert list(iter_chunks(io.BytesIO(raw), start=2, rows_per_chunk=2, max_chunk_bytes=BIG)) == [
        Chunk(seq=0, start=2, end=7, first_row=1, rows=2),
        # blank lines after the last record belong to the last chunk
        Chunk(seq=1, start=7, end=11, first_row=3, rows=1),
    ]


def test_blank_lines_between_chunks_go_to_the_next_chunk():
    raw = b"h\n1\n\n\n2\n"
    chunks = list(iter_chunks(io.BytesIO(raw), start=2, rows_per_chunk=1, max_chunk_bytes=BIG))
    assert chunks == [Chunk(0, 2, 4, 1, 1), Chunk(1, 4, 8, 2, 1)]


@pytest.mark.parametrize("raw", [b"h\n", b"h\n\n\r\n\r", b"h"])
def test_no_records_no_chunks(raw):
    _, start = read_header(io.BytesIO(raw))
    assert (
        list(iter_chunks(io.BytesIO(raw), start=start, rows_per_chunk=1, max_chunk_bytes=1)) == []
    )


def test_start_at_eof_yields_nothing():
    raw = numbered_file(5)
    assert (
        list(iter_chunks(io.BytesIO(raw), start=len(raw), rows_per_chunk=2, max_chunk_bytes=9))
        == []
    )


@pytest.mark.parametrize("max_chunk_bytes", [1, 5, 6, 11, 12, 13, 30, 1000])
def test_max_chunk_bytes(max_chunk_bytes):
    raw = b"h\n" + b"aaaaa\n" * 10  # records of 6 bytes
    chunks = chunk_and_compare(raw, max_chunk_bytes=max_chunk_bytes)
    per_chunk = min(10, max(1, max_chunk_bytes // 6))
    assert [c.rows for c in chunks[:-1]] == [per_chunk] * (len(chunks) - 1)
    assert sum(c.rows for c in chunks) == 10
    assert all(c.end - c.start <= max(max_chunk_bytes, 6) for c in chunks)


def test_record_larger_than_max_chunk_bytes_is_a_chunk_of_its_own():
    big = b'"' + b"x\n" * 100 + b'"\n'
    raw = b"h\n1\n2\n" + big + b"3\n4\n"
    chunks = chunk_and_compare(raw, rows_per_chunk=10, max_chunk_bytes=50)
    assert [c.rows for c in chunks] == [2, 1, 2]
    assert raw[chunks[1].start : chunks[1].end] == big


def test_both_limits_whichever_first():
    raw = b"h\n" + b"1\n" * 5 + b"22222222\n" * 3 + b"1\n" * 5
    chunks = chunk_and_compare(raw, rows_per_chunk=4, max_chunk_bytes=20)
    # 4 rows (rows limit); "1" + 2 x "22222222" = 20 bytes (the next would exceed 20);
    # "22222222" + 3 x "1" (rows limit); the rest.
    assert [c.rows for c in chunks] == [4, 3, 4, 2]


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize(("rows_per_chunk", "max_chunk_bytes"), [(1, BIG), (2, 15)])
def test_resume_from_each_chunk_end(name, rows_per_chunk, max_chunk_bytes):
    raw = SAMPLES[name]
    _, chunks = chunk_file(raw, rows_per_chunk, max_chunk_bytes)
    for i, chunk in enumerate(chunks):
        rest = iter_chunks(
            io.BytesIO(raw),
            start=chunk.end,
            first_row=chunk.first_row + chunk.rows,
            first_seq=chunk.seq + 1,
            rows_per_chunk=rows_per_chunk,
            max_chunk_bytes=max_chunk_bytes,
        )
        assert list(rest) == chunks[i + 1 :]


@pytest.mark.parametrize("line_breaks_in_field", [True, False])
def test_one_megabyte_field(line_breaks_in_field):
    csv.field_size_limit(128 * 1024)  # the csv default: too small for the field
    unit = "0123456789abcdef\r\n" if line_breaks_in_field else "0123456789abcdefgh"
    field = (unit * 60_000)[:1_048_576]
    raw = b'h,big\n1,"' + field.encode() + b'"\n2,small\n3,"' + field.encode() + b'"'
    chunks = chunk_and_compare(raw, rows_per_chunk=10, max_chunk_bytes=1000)
    assert [c.rows for c in chunks] == [1, 1, 1]
    records = list(iter_records(raw[chunks[0].start : chunks[0].end], 1))
    assert records == [(1, ["1", field], None)]
    assert csv.field_size_limit() == FIELD_SIZE_LIMIT
    unquoted = b"h\n" + field.replace("\r\n", "__").encode() + b"\nx\n"
    chunks = chunk_and_compare(unquoted, rows_per_chunk=1)
    assert [c.end - c.start for c in chunks] == [1_048_577, 2]


def test_unterminated_quote_runs_to_eof():
    raw = b'h\n1\n"open\n2\n3\n'
    chunks = chunk_and_compare(raw, rows_per_chunk=1)
    assert [(c.rows, c.end) for c in chunks] == [(1, 4), (1, len(raw))]
    assert list(iter_records(raw[4:], 2)) == [(2, ["open\n2\n3\n"], None)]


def test_long_line_refused(monkeypatch):
    monkeypatch.setattr(csvfile, "_BLOCK_SIZE", 16)
    monkeypatch.setattr(csvfile, "MAX_LINE_BYTES", 100)
    ok = b"h\n" + b"x" * 90 + b"\n1\n"
    assert [c.rows for c in chunk_file(ok)[1]] == [2]
    with pytest.raises(CsvContentError, match="longer than 100 bytes"):
        chunk_file(b"h\n" + b"x" * 200 + b"\n1\n")


@pytest.mark.parametrize(
    ("kwargs"),
    [
        {"rows_per_chunk": 0, "max_chunk_bytes": 1},
        {"rows_per_chunk": 1, "max_chunk_bytes": 0},
        {"rows_per_chunk": 1, "max_chunk_bytes": 1, "first_row": 0},
        {"rows_per_chunk": 1, "max_chunk_bytes": 1, "start": -1},
    ],
)
def test_iter_chunks_argument_checks(kwargs):
    kwargs.setdefault("start", 0)
    with pytest.raises(ValueError):
        next(iter_chunks(io.BytesIO(b"a\n1\n"), **kwargs))


# --------------------------------------------------------------------------------------------
# iter_records


def test_iter_records_row_numbers_skip_blank_lines():
    data = b"\n1,2\n\r\n3\n\n4,5,6"
    assert list(iter_records(data, 7)) == [
        (7, ["1", "2"], None),
        (8, ["3"], None),
        (9, ["4", "5", "6"], None),
    ]


def test_iter_records_empty():
    assert list(iter_records(b"", 1)) == []
    assert list(iter_records(b"\n\r\n", 1)) == []


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_iter_records_invalid_utf8_reports_and_continues(newline):
    data = newline.join([b"1,ok", b'2,"bad\xff', b'multi"', b"3,\xe2\x82", b"4,fine"]) + newline
    nl = len(newline)
    records = list(iter_records(data, 10, offset=1000))
    assert [r[0] for r in records] == [10, 11, 12, 13]
    assert records[0] == (10, ["1", "ok"], None)
    assert records[1][1] is None
    assert (
        records[1][2] == f"not valid UTF-8 at byte offset {1000 + 4 + nl + 6}: invalid start byte"
    )
    third = 1000 + (4 + nl) + (7 + nl) + (6 + nl) + 2
    assert records[2] == (
        12,
        None,
        f"not valid UTF-8 at byte offset {third}: invalid continuation byte",
    )
    assert records[3] == (13, ["4", "fine"], None)


def test_field_size_limit(monkeypatch):
    monkeypatch.setattr(csvfile, "FIELD_SIZE_LIMIT", 50)
    at_limit = b"y" * 50
    over = b"y" * 51
    raw = b"h,v\n" + b"\n".join(
        [b"1,a", at_limit, over, b'"' + b"q" * 60 + b'"', b"2,b", b'3,"c\nd"', b"4,e"]
    )
    start, chunks = chunk_file(raw, rows_per_chunk=2)
    records = check_chunks(raw, start, chunks, 2, BIG)
    assert [r[0] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    reasons = {row: reason for row, _, reason in records if reason}
    assert set(reasons) == {3, 4}
    assert "field larger than field limit (50)" in reasons[3]
    assert records[1] == (2, ["y" * 50], None)
    assert records[4:] == [(5, ["2", "b"], None), (6, ["3", "c\nd"], None), (7, ["4", "e"], None)]
    assert csv.field_size_limit() == 50


def test_iter_records_terminates_on_junk():
    rng = random.Random(7)
    for _ in range(50):
        data = bytes(rng.choice(b'\x00\xff\xc3\x80"\r\n,ab') for _ in range(rng.randrange(200)))
        records = list(iter_records(data, 1))
        assert len(records) <= data.count(b"\n") + data.count(b"\r") + 1


# --------------------------------------------------------------------------------------------
# property-style: generated files


FIELD_POOL = [
    "",
    "plain",
    "with,comma",
    'quo"te',
    '"',
    '""',
    "multi\nline",
    "crlf\r\ninside",
    "lone\rcr",
    "\n",
    "\r\n",
    "  spaces  ",
    "ünïcödé ✓",
    "😀 emoji",
    "tab\there",
    ",",
]


def random_field(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(FIELD_POOL)
    alphabet = 'ab ,"\n\r\u00e9\u4e2d'
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))


def generated_csv(rng: random.Random) -> bytes:
    newline = rng.choice(["\n", "\r\n"])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    ncols = rng.randrange(1, 6)
    writer.writerow([f"col{i}" for i in range(ncols)])
    for _ in range(rng.randrange(0, 40)):
        if rng.random() < 0.1:
            out.write(rng.choice(["\n", "\r\n"]))  # blank line
        width = ncols if rng.random() < 0.7 else rng.randrange(0, ncols + 3)
        writer.writerow([random_field(rng) for _ in range(width)])
    raw = out.getvalue().encode()
    if rng.random() < 0.3:
        raw = BOM + raw
    if rng.random() < 0.3:
        raw = raw.rstrip(b"\r\n")
    return raw


def junk_csv(rng: random.Random) -> bytes:
    """Arbitrary text from CSV-significant characters: malformed quoting, lone CRs, ..."""
    body = "".join(rng.choice('a,,"\n\r\u00e9 ') for _ in range(rng.randrange(300)))
    return ("h\n" + body).encode()


def quote_soup(rng: random.Random) -> bytes:
    """Pieces that open, close and escape quotes across lines in every possible way."""
    pieces = ['"', '""', ",", "\n", "\r\n", "\r", "a", " ", '"a"', '"\n', '\n"', ',"', '",', "é"]
    return ("h\n" + "".join(rng.choice(pieces) for _ in range(rng.randrange(80)))).encode()


@pytest.mark.parametrize("seed", range(300))
def test_generated_files(seed, monkeypatch):
    rng = random.Random(seed)
    raw = (generated_csv, junk_csv, quote_soup)[seed % 3](rng)
    if rng.random() < 0.5:
        monkeypatch.setattr(csvfile, "_BLOCK_SIZE", rng.randrange(1, 40))
    rows_per_chunk = rng.choice([1, 2, 3, 7, BIG])
    max_chunk_bytes = rng.choice([1, 10, 50, 200, BIG])
    header, start = read_header(io.BytesIO(raw)) if seed % 3 == 0 else (None, 2)
    if header is not None:
        assert header == [name.strip() for name in reference(raw)[0]]
        assert inspect(raw, piece_size=rng.randrange(1, 20)) == header
    chunks = list(
        iter_chunks(
            io.BytesIO(raw),
            start=start,
            rows_per_chunk=rows_per_chunk,
            max_chunk_bytes=max_chunk_bytes,
        )
    )
    records = check_chunks(raw, start, chunks, rows_per_chunk, max_chunk_bytes)
    assert fields_of(records) == reference(raw)[1]
    # Resuming from a chunk's end gives the same remaining chunks.
    if chunks:
        chunk = chunks[rng.randrange(len(chunks))]
        rest = iter_chunks(
            io.BytesIO(raw),
            start=chunk.end,
            first_row=chunk.first_row + chunk.rows,
            first_seq=chunk.seq + 1,
            rows_per_chunk=rows_per_chunk,
            max_chunk_bytes=max_chunk_bytes,
        )
        assert list(rest) == chunks[chunk.seq + 1 :]


def reference_with_errors(raw: bytes) -> list[list[str] | None]:
    """Data records as csv.reader sees the whole file; None for a record it rejects."""
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))
    records: list[list[str] | None] = []
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return records[1:]
        except csv.Error:
            records.append(None)
        else:
            if record:
                records.append(record)


@pytest.mark.parametrize("seed", range(100))
def test_generated_files_with_oversized_fields(seed, monkeypatch):
    # Small field size limits: records csv rejects must count the same way when chunking and
    # when re-parsing, and the parse must go on after them exactly like csv.reader's.
    rng = random.Random(seed)
    monkeypatch.setattr(csvfile, "FIELD_SIZE_LIMIT", rng.randrange(1, 30))
    monkeypatch.setattr(csvfile, "_BLOCK_SIZE", rng.choice([1, 3, 64]))
    raw = quote_soup(rng) if seed % 2 else junk_csv(rng)
    rows_per_chunk = rng.choice([1, 2, 5])
    chunks = list(
        iter_chunks(io.BytesIO(raw), start=2, rows_per_chunk=rows_per_chunk, max_chunk_bytes=BIG)
    )
    records = check_chunks(raw, 2, chunks, rows_per_chunk, BIG)
    expected = reference_with_errors(raw)  # csv's limit is FIELD_SIZE_LIMIT by now
    assert [fields for _, fields, _ in records] == expected
    assert all((fields is None) == (reason is not None) for _, fields, reason in records)


def outcome(function):
    try:
        return ("ok", function())
    except CsvContentError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("seed", range(100))
def test_inspector_agrees_with_read_header(seed, monkeypatch):
    rng = random.Random(seed)
    pieces = ['"', '""', ",", "\n", "\r\n", "\r", "a", "b", " ", "é", "\ufeff"]
    raw = "".join(rng.choice(pieces) for _ in range(rng.randrange(25))).encode()
    if rng.random() < 0.3:
        raw = BOM + raw
    limit = rng.choice([5, 12, 1 << 20])
    monkeypatch.setattr(csvfile, "_HEADER_READ_SIZE", rng.choice([1, 2, 4, 64]))
    piece_size = rng.randrange(1, 6)
    expected = outcome(lambda: read_header(io.BytesIO(raw), max_header_bytes=limit)[0])
    got = outcome(lambda: inspect(raw, piece_size=piece_size, max_header_bytes=limit))
    assert got == expected


# --------------------------------------------------------------------------------------------
# UploadInspector


def feed_until_error(inspector: UploadInspector, pieces: list[bytes]) -> tuple[int, str]:
    """Feed pieces; return the index of the piece that raised and the error message."""
    for i, piece in enumerate(pieces):
        try:
            inspector.feed(piece)
        except CsvContentError as exc:
            return i, str(exc)
    raise AssertionError("no error raised")


def test_inspector_accepts_a_good_file_in_any_pieces():
    raw = BOM + 'id,näme\r\n1,"a\r\nb"\r\n2,€\r\n'.encode()
    for size in (1, 2, 3, 5, len(raw)):
        assert inspect(raw, piece_size=size) == ["id", "näme"]


def test_inspector_multibyte_char_split_across_pieces():
    inspector = UploadInspector()
    euro = "€".encode()  # 3 bytes
    inspector.feed(b"a,b\n1," + euro[:1])
    inspector.feed(euro[1:2])
    inspector.feed(euro[2:] + b"\n" + "😀".encode()[:2])
    inspector.feed("😀".encode()[2:])
    assert inspector.close() == ["a", "b"]
    assert inspector.bytes_seen == 6 + 3 + 1 + 4


@pytest.mark.parametrize(
    ("pieces", "offset", "reason"),
    [
        ([b"a,b\n1,", b"\xff"], 6, "invalid start byte"),
        ([b"a,b\n1,\xe2\x82", b"x"], 6, "invalid continuation byte"),
        ([b"a,b\n1,\xe2", b"\x82", b"x\n"], 6, "invalid continuation byte"),
        ([b"a,b\n", b"", b"12345", b"\xc3(\n"], 9, "invalid continuation byte"),
        ([b"\xef\xbb\xbfa,\xed\xa0\x80\n"], 5, "invalid continuation byte"),  # surrogate
    ],
)
def test_inspector_invalid_utf8_offset(pieces, offset, reason):
    inspector = UploadInspector()
    failed_at, message = feed_until_error(inspector, pieces)
    assert message == f"not valid UTF-8 at byte offset {offset}: {reason}"
    assert failed_at == len(pieces) - 1
    with pytest.raises(CsvContentError):  # sticky
        inspector.close()


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ([b"a,b\n1,2\n", b"3,\x004\n"], "not a text file: found a NUL byte at offset 10"),
        ([b"\x00"], "not a text file: found a NUL byte at offset 0"),
        ([b"a,b\n\xff\x00"], "not valid UTF-8 at byte offset 4"),
        ([b"a,b\n\x00\xff"], "not a text file: found a NUL byte at offset 4"),
        ([b"PK\x03\x04\x14\x00\x00\x00"], "not a text file: found a NUL byte at offset 5"),
    ],
)
def test_inspector_binary(pieces, message):
    failed_at, got = feed_until_error(UploadInspector(), pieces)
    assert got.startswith(message)
    assert failed_at == len(pieces) - 1


def test_inspector_truncated_utf8_at_eof():
    inspector = UploadInspector()
    inspector.feed(b"a,b\n1,")
    inspector.feed("€".encode()[:2])
    with pytest.raises(CsvContentError, match="not valid UTF-8 at byte offset 6: truncated"):
        inspector.close()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "the file is empty"),
        (BOM, "the file is empty"),
        (b"\r\n\n", "no header row"),
    ],
)
def test_inspector_no_header(raw, message):
    inspector = UploadInspector()
    if raw:
        inspector.feed(raw)
    with pytest.raises(CsvContentError, match=message):
        inspector.close()


@pytest.mark.parametrize("raw", [b"a,b\n", b"a,b", b"a,b\r\n\r\n", BOM + b"a,b"])
def test_inspector_header_only_is_ok(raw):
    assert inspect(raw, piece_size=1) == ["a", "b"]


def test_inspector_header_split_across_pieces():
    inspector = UploadInspector()
    for piece in [BOM[:1], BOM[1:], b" na", b'me ,"ag', b"e\r", b"\n", b'", x\n1,2\n']:
        inspector.feed(piece)
    assert inspector.close() == ["name", "age", "x"]  # stripped


def test_inspector_header_incomplete_until_quote_closes():
    inspector = UploadInspector()
    inspector.feed(b'a,"b\n')
    inspector.feed(b"c\n" * 20)
    assert inspector.header is None
    inspector.feed(b'",d\n' + b"1,2,3\n" * 20)
    assert inspector.header == ["a", "b\n" + "c\n" * 19 + "c", "d"]


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (b"a,b,a\n", "duplicate column names: 'a'"),
        (b"a, ,b\n", "empty column name at position 2"),
    ],
)
def test_inspector_bad_header_raises_from_feed(first, message):
    inspector = UploadInspector()
    with pytest.raises(CsvContentError, match=message):
        inspector.feed(first + b"1,2,3\n" * 1000)
    with pytest.raises(CsvContentError, match=message):  # sticky
        inspector.feed(b"1,2,3\n")


def test_inspector_duplicate_header_fed_bytewise():
    raw = b"x,y,x\n" + b"1,2,3\n" * 1000
    with pytest.raises(CsvContentError, match="duplicate"):
        inspect(raw, piece_size=1)


def test_inspector_header_too_long():
    inspector = UploadInspector(max_header_bytes=64)
    failed_at, message = feed_until_error(inspector, [b"a" * 10] * 20)
    assert message == "no header row within the first 64 bytes"
    assert failed_at == 6  # as soon as 64 bytes were in
    ok = UploadInspector(max_header_bytes=64)
    ok.feed(b"h" * 60 + b"\n" + b"1" * 1000 + b"\n")
    assert ok.close() == ["h" * 60]


def test_inspector_feed_after_close():
    inspector = UploadInspector()
    inspector.feed(b"a\n")
    assert inspector.close() == ["a"]
    assert inspector.close() == ["a"]
    with pytest.raises(ValueError):
        inspector.feed(b"1\n")


# --------------------------------------------------------------------------------------------
# output


def test_write_rows_format():
    assert write_rows([["a", "b,c"], ['q"', ""], [""], ["x\ny", "é"]]) == (
        b'a,"b,c"\n"q""",\n""\n"x\ny",\xc3\xa9\n'
    )
    assert header_line(["id", "na me"]) == b"id,na me\n"
    assert write_rows([]) == b""
    assert write_rows(iter([["1"], ["2"]])) == b"1\n2\n"


def test_write_rows_quotes_lone_cr():
    assert write_rows([["a\rb", "c"], ["d"]]) == b'"a\rb",c\nd\n'


@pytest.mark.parametrize("seed", range(20))
def test_write_rows_round_trip(seed):
    rng = random.Random(seed)
    rows = [
        [random_field(rng) for _ in range(rng.randrange(1, 5))] for _ in range(rng.randrange(30))
    ]
    data = write_rows(rows)
    assert not data or data.endswith(b"\n")
    assert fields_of(iter_records(data, 1)) == rows
    assert fields_of(iter_records(header_line(["h"]) + data, 0))[1:] == rows


# --------------------------------------------------------------------------------------------
# module hygiene


def test_import_does_not_change_field_size_limit():
    code = (
        "import csv; before = csv.field_size_limit(); import libs.common.csvfile; "
        "assert csv.field_size_limit() == before, csv.field_size_limit()"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
