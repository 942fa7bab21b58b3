"""The CSV task handler: read one byte range, map its rows, write the part, report."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Protocol

from libs.common import csvfile, mapping, messages
from libs.common.retry import PermanentError


class TaskStorage(Protocol):
    """What a CSV task needs of storage: ``Storage``, or presigned URLs (``task_urls``)."""

    def read_range(self, key: str, start: int, end: int) -> bytes: ...

    def write(self, key: str, data: bytes) -> None: ...


@lru_cache(maxsize=16)
def _mapper(spec_json: str, header: tuple[str, ...]) -> mapping.Mapper:
    try:
        return mapping.Mapper(mapping.parse_spec(spec_json), list(header))
    except mapping.SpecError as exc:  # validated at upload, so only a corrupt message
        raise PermanentError(f"invalid mapping spec: {exc}") from exc


def handle_csv(
    task: messages.CsvTask, storage: TaskStorage, *, worker: str, max_errors: int
) -> messages.TaskResult:
    started = time.monotonic()
    mapper = _mapper(task.spec, tuple(task.header))
    data = storage.read_range(task.source, task.start, task.end)
    out: list[list[str]] = []
    errors: list[messages.RowError] = []
    rows_in = failed = filtered = 0
    records = csvfile.iter_records(data, task.first_row, offset=task.start)
    for row_number, fields, problem in records:
        rows_in += 1
        if fields is None:
            failed += 1
            errors.append(messages.RowError(row_number, None, problem or "unreadable record"))
            continue
        values, row_errors = mapper.map_row(row_number, fields)
        if row_errors:
            failed += 1
            errors.extend(messages.RowError(e.row, e.column, e.reason) for e in row_errors)
        elif values is None:
            filtered += 1
        if values is not None:
            out.append(values)
    storage.write(task.output, csvfile.write_rows(out))
    return messages.TaskResult(
        task_id=task.task_id,
        seq=task.seq,
        rows_in=rows_in,
        rows_out=len(out),
        rows_failed=failed,
        rows_filtered=filtered,
        errors=errors[:max_errors],
        errors_truncated=max(0, len(errors) - max_errors),
        worker=worker,
        elapsed=time.monotonic() - started,
    )
