"""Unit tests for the worker's CSV task handler (services/worker/csv_map.py).

The CSV goes into a real file:// Storage and the byte ranges come from the same csvfile
functions the dispatcher uses, so each task is what the worker would receive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from libs.common import csvfile, messages
from libs.common.retry import DeadLetter, PermanentError, RetryPolicy, decide
from libs.common.storage import Storage
from services.worker.csv_map import handle_csv

JOB = "0123456789abcdef0123456789abcdef"
SOURCE = f"uploads/{JOB}.csv"

# Rows: 1 ok, 2 bad age, 3 filtered (refunded), 4 ok with a quoted comma, 5 ok with empty age,
# then a blank line (no row number), 6 ragged, 7 not valid UTF-8, 8 ok with a quoted newline.
CSV = (
    b"id,name,age,status\r\n"
    b"1, ada ,36,paid\r\n"
    b"2,grace,x,paid\r\n"
    b"3,alan,41,refunded\r\n"
    b'4,"smith, j",50,paid\r\n'
    b"5,bob,,paid\r\n"
    b"\r\n"
    b"6,eve\r\n"
    b"7,\xff\xfe,1,paid\r\n"
    b'8,"multi\nline",9,paid\r\n'
)
SPEC = json.dumps(
    {
        "columns": [
            {"name": "id", "type": "int"},
            {"name": "name", "trim": True, "case": "title"},
            {"name": "age", "type": "int"},
        ],
        "filter": [{"column": "status", "op": "eq", "value": "paid"}],
    }
)
BIG = 1 << 40


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(f"file://{tmp_path / 'store'}")


def make_tasks(
    storage: Storage, spec: str, *, rows_per_chunk: int = 1000, source: str = SOURCE
) -> list[messages.CsvTask]:
    with storage.open_read(source) as stream:
        header, start = csvfile.read_header(cast(BinaryIO, stream))
    with storage.open_read(source) as stream:
        chunks = list(
            csvfile.iter_chunks(
                cast(BinaryIO, stream),
                start=start,
                rows_per_chunk=rows_per_chunk,
                max_chunk_bytes=BIG,
            )
        )
    return [
        messages.CsvTask(
            task_id=messages.task_id(JOB, chunk.seq),
            seq=chunk.seq,
            source=source,
            start=chunk.start,
            end=chunk.end,
            first_row=chunk.first_row,
            rows=chunk.rows,
            header=header,
            spec=spec,
            output=f"jobs/{JOB}/parts/{chunk.seq:08d}.csv",
        )
        for chunk in chunks
    ]


def run(storage: Storage, task: messages.CsvTask, max_errors: int = 100) -> messages.TaskResult:
    return handle_csv(task, storage, worker="w-1", max_errors=max_errors)


def read_output(storage: Storage, task: messages.CsvTask) -> bytes:
    return storage.read_range(task.output, 0, storage.size(task.output))


def test_whole_file_with_spec(storage: Storage) -> None:
    storage.write(SOURCE, CSV)
    [task] = make_tasks(storage, SPEC)
    assert (task.first_row, task.rows) == (1, 8)

    result = run(storage, task)

    assert (result.task_id, result.seq, result.worker) == (task.task_id, 0, "w-1")
    assert result.rows_in == 8
    assert result.rows_out == 4
    assert result.rows_failed == 3
    assert result.rows_filtered == 1
    assert result.elapsed >= 0
    assert read_output(storage, task) == (b'1,Ada,36\n4,"Smith, J",50\n5,Bob,\n8,"Multi\nLine",9\n')
    assert read_output(storage, task) == csvfile.write_rows(
        [["1", "Ada", "36"], ["4", "Smith, J", "50"], ["5", "Bob", ""], ["8", "Multi\nLine", "9"]]
    )
    rows = [(e.row, e.column) for e in result.errors]
    assert rows == [(2, "age"), (6, None), (7, None)]
    reasons = {e.row: e.reason for e in result.errors}
    assert "not a valid int" in reasons[2]
    assert reasons[6] == "expected 4 fields, found 2"
    assert "not valid UTF-8" in reasons[7]
    assert result.errors_truncated == 0


def test_passthrough_copies_records_with_normalised_line_endings(storage: Storage) -> None:
    storage.write(SOURCE, b'a,b\r\n1,2\r\n\r\n3,"x,y"\r\n')
    [task] = make_tasks(storage, "")
    result = run(storage, task)
    assert (result.rows_in, result.rows_out, result.rows_failed, result.rows_filtered) == (
        2,
        2,
        0,
        0,
    )
    assert result.errors == []
    assert read_output(storage, task) == b'1,2\n3,"x,y"\n'


@pytest.mark.parametrize("rows_per_chunk", [1, 2, 3, 5])
def test_chunks_add_up_to_the_whole(storage: Storage, rows_per_chunk: int) -> None:
    storage.write(SOURCE, CSV)
    [whole] = make_tasks(storage, SPEC)
    expected = run(storage, whole)
    expected_output = read_output(storage, whole)

    tasks = make_tasks(storage, SPEC, rows_per_chunk=rows_per_chunk)
    assert len(tasks) == -(-8 // rows_per_chunk)
    results = [run(storage, task) for task in tasks]

    assert [r.seq for r in results] == list(range(len(tasks)))
    assert [r.rows_in for r in results] == [t.rows for t in tasks]
    assert sum(r.rows_in for r in results) == expected.rows_in
    assert sum(r.rows_out for r in results) == expected.rows_out
    assert sum(r.rows_failed for r in results) == expected.rows_failed
    assert sum(r.rows_filtered for r in results) == expected.rows_filtered
    errors = [e for r in results for e in r.errors]
    assert [(e.row, e.column) for e in errors] == [(e.row, e.column) for e in expected.errors]
    assert b"".join(read_output(storage, t) for t in tasks) == expected_output


@pytest.mark.parametrize("rows_per_chunk", [1000, 1])
def test_utf8_error_reports_the_offset_in_the_file(storage: Storage, rows_per_chunk: int) -> None:
    storage.write(SOURCE, CSV)
    offset = CSV.index(b"\xff")
    tasks = make_tasks(storage, SPEC, rows_per_chunk=rows_per_chunk)
    reasons = [e.reason for task in tasks for e in run(storage, task).errors if e.row == 7]
    assert reasons == [f"not valid UTF-8 at byte offset {offset}: invalid start byte"]


def test_row_numbers_follow_first_row(storage: Storage) -> None:
    storage.write(SOURCE, CSV)
    tasks = make_tasks(storage, SPEC, rows_per_chunk=2)
    # rows 5 (ok) + 6 (ragged): chunk 2 starts at row 5 and reports row 6.
    result = run(storage, tasks[2])
    assert tasks[2].first_row == 5
    assert [(e.row, e.column) for e in result.errors] == [(6, None)]
    assert read_output(storage, tasks[2]) == b"5,Bob,\n"


@pytest.mark.parametrize(
    ("max_errors", "kept", "truncated"),
    [(1, 1, 5), (3, 3, 3), (6, 6, 0), (100, 6, 0)],
)
def test_errors_are_truncated_but_counts_stay_exact(
    storage: Storage, max_errors: int, kept: int, truncated: int
) -> None:
    storage.write(SOURCE, b"n,m\n" + b"".join(b"x%d,y\n" % i for i in range(3)))
    spec = json.dumps({"columns": [{"name": "n", "type": "int"}, {"name": "m", "type": "int"}]})
    [task] = make_tasks(storage, spec)
    result = run(storage, task, max_errors=max_errors)
    # 3 rows, each with 2 cell errors: 6 errors in all
    assert result.rows_failed == 3
    assert result.rows_out == 0
    assert len(result.errors) == kept
    assert result.errors_truncated == truncated
    expected = [(row, col) for row in (1, 2, 3) for col in ("n", "m")]
    assert [(e.row, e.column) for e in result.errors] == expected[:kept]
    assert read_output(storage, task) == b""


def test_filter_counts_filtered_rows(storage: Storage) -> None:
    storage.write(SOURCE, b"k,v\na,1\nb,2\na,3\nc,4\n")
    spec = json.dumps({"filter": [{"column": "k", "op": "in", "value": ["a", "c"]}]})
    [task] = make_tasks(storage, spec)
    result = run(storage, task)
    assert (result.rows_in, result.rows_out, result.rows_filtered, result.rows_failed) == (
        4,
        3,
        1,
        0,
    )
    assert read_output(storage, task) == b"a,1\na,3\nc,4\n"


def test_on_error_keep_outputs_the_failing_row(storage: Storage) -> None:
    storage.write(SOURCE, b"sku,qty\nab,3\ncd,three\n")
    spec = json.dumps(
        {"on_error": "keep", "columns": [{"name": "sku"}, {"name": "qty", "type": "int"}]}
    )
    [task] = make_tasks(storage, spec)
    result = run(storage, task)
    assert (result.rows_in, result.rows_out, result.rows_failed, result.rows_filtered) == (
        2,
        2,
        1,
        0,
    )
    assert read_output(storage, task) == b"ab,3\ncd,three\n"
    assert [(e.row, e.column) for e in result.errors] == [(2, "qty")]


def test_rerun_overwrites_the_part(storage: Storage) -> None:
    storage.write(SOURCE, CSV)
    [task] = make_tasks(storage, SPEC)
    storage.write(task.output, b"stale garbage from an earlier attempt\n" * 10)
    first = run(storage, task)
    output = read_output(storage, task)
    second = run(storage, task)
    assert read_output(storage, task) == output
    assert (first.rows_out, first.errors) == (second.rows_out, second.errors)


@pytest.mark.parametrize(
    "spec",
    [
        "{not json",
        json.dumps({"columns": []}),
        json.dumps({"columns": [{"name": "id", "type": "integr"}]}),
        json.dumps({"colums": [{"name": "id"}]}),
        json.dumps({"columns": [{"name": "nope"}]}),  # not in the header
        json.dumps({"filter": [{"column": "id", "op": "equals", "value": 1}]}),
    ],
)
def test_invalid_spec_is_a_permanent_error(storage: Storage, spec: str) -> None:
    storage.write(SOURCE, CSV)
    [task] = make_tasks(storage, spec)
    with pytest.raises(PermanentError, match="invalid mapping spec"):
        run(storage, task)
    assert not storage.exists(task.output)
    decision = decide(1, PermanentError("invalid mapping spec"), RetryPolicy())
    assert isinstance(decision, DeadLetter)


def test_missing_source_is_file_not_found_and_dead_letters(storage: Storage) -> None:
    storage.write(SOURCE, CSV)
    [task] = make_tasks(storage, SPEC)
    storage.delete(SOURCE)
    with pytest.raises(FileNotFoundError) as caught:
        run(storage, task)
    assert not storage.exists(task.output)
    decision = decide(1, caught.value, RetryPolicy(max_attempts=5))
    assert isinstance(decision, DeadLetter)
    assert "FileNotFoundError" in decision.cause


def test_truncated_source_raises_and_writes_nothing(storage: Storage) -> None:
    storage.write(SOURCE, CSV)
    [task] = make_tasks(storage, SPEC)
    storage.write(SOURCE, CSV[: task.end - 10])
    with pytest.raises(ValueError, match="expected"):
        run(storage, task)
    assert not storage.exists(task.output)


def test_result_round_trips_on_the_wire(storage: Storage) -> None:
    storage.write(SOURCE, CSV)
    [task] = make_tasks(storage, SPEC)
    result = run(storage, task)
    env = messages.decode(messages.encode(messages.envelope(JOB, result)))
    decoded: Any = env.body
    assert decoded == result
