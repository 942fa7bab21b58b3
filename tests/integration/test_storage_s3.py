"""Storage on S3 (moto's server) and on file://: one contract, both backends.

``TestContract`` runs every behaviour the services rely on against both backends (the
``backend`` fixture), so they cannot drift apart. The S3-only tests below it prove what
the contract cannot see: how many bytes S3 served per chunk, which requests a write or a
compose makes, and how the boto3 client is configured.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from libs.common import csvfile, s3
from libs.common import storage as storage_module
from libs.common.storage import Storage
from tests.servers import MotoServer

pytestmark = pytest.mark.integration

MiB = 1 << 20
PREFIX = "conveyor/data"


class Boom(Exception):
    pass


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def admin(moto: MotoServer) -> Any:
    """The tests' own client (built once: building a client takes a few hundred ms)."""
    return boto3.session.Session(
        aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key,
        region_name=moto.region,
    ).client("s3", endpoint_url=moto.endpoint)  # fmt: skip


@pytest.fixture
def bucket(aws_env: dict[str, str], admin: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:20]}"
    admin.create_bucket(Bucket=name)
    return name


@dataclass
class Backend:
    store: Storage
    objects: Callable[[], list[str]]  # everything stored (temp files too), relative to the base
    pending_uploads: Callable[
        [], int
    ]  # multipart uploads started and neither completed nor aborted

    @property
    def scheme(self) -> str:
        return self.store.scheme


def _file_backend(root: Path) -> Backend:
    root.mkdir()

    def objects() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    return Backend(Storage(f"file://{root}"), objects, lambda: 0)


def _s3_backend(client: Any, bucket: str) -> Backend:
    def objects() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return sorted(k.removeprefix(f"{PREFIX}/") for k in keys)

    def pending_uploads() -> int:
        return len(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    return Backend(Storage(f"s3://{bucket}/{PREFIX}"), objects, pending_uploads)


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        return _file_backend(tmp_path / "store")
    return _s3_backend(request.getfixturevalue("admin"), request.getfixturevalue("bucket"))


@pytest.fixture
def s3store(bucket: str) -> Storage:
    return Storage(f"s3://{bucket}/{PREFIX}")


@dataclass
class Calls:
    """The requests a store's boto3 client makes, and what each GetObject served."""

    ops: list[str] = field(default_factory=list)
    gets: list[tuple[str, int]] = field(default_factory=list)  # (Content-Range, bytes)

    def attach(self, store: Storage) -> Calls:
        events = store._s3.client.meta.events  # type: ignore[union-attr]
        events.register("before-call.s3", self._call)
        events.register("after-call.s3.GetObject", self._got)
        return self

    def _call(self, model: Any, **_: Any) -> None:
        self.ops.append(model.name)

    def _got(self, parsed: dict[str, Any], **_: Any) -> None:
        self.gets.append((parsed.get("ContentRange", ""), int(parsed["ContentLength"])))

    def clear(self) -> None:
        self.ops.clear()
        self.gets.clear()

    @property
    def served(self) -> int:
        return sum(n for _, n in self.gets)


@pytest.fixture
def calls(s3store: Storage) -> Calls:
    return Calls().attach(s3store)


def blob(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ at every offset of a 251-byte cycle."""
    unit = bytes((i * 7 + seed) % 251 for i in range(251))
    return (unit * (size // len(unit) + 1))[:size]


def make_csv(rows: int) -> bytes:
    lines = [b"id,name,score,city,when\n"]
    lines += [
        f'{i},"name {i}, the {i % 13}th",{i * 7 % 1000}.25,city-{i % 97},2024-01-{i % 28 + 1:02d}\n'
        .encode()
        for i in range(1, rows + 1)
    ]  # fmt: skip
    return b"".join(lines)


# --------------------------------------------------------------------------- the contract


class TestContract:
    def test_write_then_read_back_exact_bytes(self, backend: Backend) -> None:
        store, data = backend.store, b"id,name\r\n1,\xc3\xa9\n\x00\xff binary\n"
        store.write("uploads/x.csv", data)
        with store.open_read("uploads/x.csv") as stream:
            assert stream.read() == data
        assert store.read_range("uploads/x.csv", 0, len(data)) == data
        assert store.size("uploads/x.csv") == len(data)
        assert backend.objects() == ["uploads/x.csv"]

    @pytest.mark.parametrize(
        ("start", "end", "expected"),
        [(0, 0, b""), (0, 3, b"012"), (3, 7, b"3456"), (9, 10, b"9"), (10, 10, b""),
         (0, 10, b"0123456789")],
    )  # fmt: skip
    def test_read_range(self, backend: Backend, start: int, end: int, expected: bytes) -> None:
        backend.store.write("k", b"0123456789")
        assert backend.store.read_range("k", start, end) == expected

    @pytest.mark.parametrize(("start", "end"), [(5, 11), (0, 100), (10, 11), (20, 30), (5, 4)])
    def test_read_range_outside_the_object_raises(
        self, backend: Backend, start: int, end: int
    ) -> None:
        backend.store.write("k", b"0123456789")
        with pytest.raises(ValueError, match=r"expected|bad range"):
            backend.store.read_range("k", start, end)

    def test_a_missing_object_raises_file_not_found(self, backend: Backend) -> None:
        store = backend.store
        for read in (
            lambda: store.read_range("nope.csv", 0, 1),
            lambda: store.read_range("nope.csv", 0, 0),
            lambda: store.open_read("nope.csv"),
            lambda: store.size("nope.csv"),
        ):
            with pytest.raises(FileNotFoundError):
                read()
        assert not store.exists("nope.csv")

    def test_open_read_is_seekable(self, backend: Backend) -> None:
        data = blob(300_000)
        backend.store.write("big", data)
        with backend.store.open_read("big") as stream:
            assert stream.read(10) == data[:10]
            assert stream.seek(250_000) == 250_000
            assert stream.read(1000) == data[250_000:251_000]
            assert stream.tell() == 251_000
            stream.seek(5)  # backwards, as the dispatcher does after reading the header
            assert stream.read() == data[5:]

    def test_open_write_streams_into_place(self, backend: Backend) -> None:
        store = backend.store
        with store.open_write("jobs/j/parts/00000001.csv") as out:
            out.write(b"a,b\n")
            out.write(memoryview(b"c,d\n"))
            assert not store.exists("jobs/j/parts/00000001.csv")  # not before the block exits
        assert store.read_range("jobs/j/parts/00000001.csv", 0, 8) == b"a,b\nc,d\n"
        assert backend.objects() == ["jobs/j/parts/00000001.csv"]

    def test_a_stream_larger_than_several_parts(self, backend: Backend) -> None:
        data = blob(19 * MiB + 123)
        with backend.store.open_write("uploads/big.csv") as out:
            for i in range(0, len(data), MiB):  # the web upload writes 1 MiB blocks
                out.write(data[i : i + MiB])
        assert backend.store.size("uploads/big.csv") == len(data)
        assert backend.store.read_range("uploads/big.csv", 0, len(data)) == data
        assert backend.pending_uploads() == 0

    @pytest.mark.parametrize("size", [10, 9 * MiB], ids=["buffered", "multipart-started"])
    def test_a_failed_write_leaves_nothing(self, backend: Backend, size: int) -> None:
        with pytest.raises(Boom), backend.store.open_write("dir/new.csv") as out:
            out.write(blob(size))
            raise Boom
        assert not backend.store.exists("dir/new.csv")
        assert backend.objects() == []
        assert backend.pending_uploads() == 0

    def test_an_upload_aborted_through_an_exit_stack_leaves_nothing(self, backend: Backend) -> None:
        stack = ExitStack()  # how services/web/upload.py drives the writer
        out = stack.enter_context(backend.store.open_write("uploads/u.csv"))
        out.write(blob(6 * MiB))
        out.write(blob(3 * MiB))
        stack.__exit__(Boom, Boom(), None)
        assert backend.objects() == []
        assert backend.pending_uploads() == 0

    def test_a_failed_write_keeps_the_old_content(self, backend: Backend) -> None:
        backend.store.write("part.csv", b"old content\n")
        with pytest.raises(Boom), backend.store.open_write("part.csv") as out:
            out.write(b"new")
            raise Boom
        assert backend.store.read_range("part.csv", 0, 12) == b"old content\n"
        assert backend.objects() == ["part.csv"]

    def test_overwrite_replaces_content(self, backend: Backend) -> None:
        backend.store.write("part.csv", b"a much longer old content\n")
        backend.store.write("part.csv", b"short\n")
        assert backend.store.size("part.csv") == 6
        assert backend.store.read_range("part.csv", 0, 6) == b"short\n"
        assert backend.objects() == ["part.csv"]

    def test_an_empty_object(self, backend: Backend) -> None:
        backend.store.write("empty", b"")
        assert backend.store.exists("empty")
        assert backend.store.size("empty") == 0
        with backend.store.open_read("empty") as stream:
            assert stream.read() == b""

    def test_compose_writes_head_and_parts_in_order(self, backend: Backend) -> None:
        store = backend.store
        for key, data in [("p/2", b"row3\n"), ("p/0", b"row1\n"), ("p/1", b""), ("p/3", b"row2\n")]:
            store.write(key, data)
        total = store.compose("out.csv", b"h1,h2\n", iter(["p/0", "p/1", "p/3", "p/2"]))
        expected = b"h1,h2\nrow1\nrow2\nrow3\n"
        assert total == len(expected)
        assert store.read_range("out.csv", 0, total) == expected

    def test_compose_copies_in_blocks(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(storage_module, "COPY_BUFFER", 3)
        monkeypatch.setattr(s3, "COPY_BUFFER", 3)
        backend.store.write("a", b"0123456789")
        backend.store.write("b", b"abcdefg")
        assert backend.store.compose("out", b"", ["a", "b"]) == 17
        assert backend.store.read_range("out", 0, 17) == b"0123456789abcdefg"

    @pytest.mark.parametrize("head", [b"head\n", b""])
    def test_compose_with_no_parts_writes_the_head(self, backend: Backend, head: bytes) -> None:
        assert backend.store.compose("out", head, []) == len(head)
        assert backend.store.size("out") == len(head)
        assert backend.store.read_range("out", 0, len(head)) == head

    def test_compose_of_many_small_parts(self, backend: Backend) -> None:
        parts = [blob(10_000, seed=i) for i in range(50)]
        for i, part in enumerate(parts):
            backend.store.write(f"jobs/j/parts/{i:08d}.csv", part)
        keys = (f"jobs/j/parts/{i:08d}.csv" for i in range(50))
        total = backend.store.compose("jobs/j/output.csv", b"a,b,c\n", keys)
        expected = b"a,b,c\n" + b"".join(parts)
        assert total == len(expected) == backend.store.size("jobs/j/output.csv")
        assert backend.store.read_range("jobs/j/output.csv", 0, total) == expected

    def test_compose_of_large_and_small_parts(self, backend: Backend) -> None:
        sizes = [11 * MiB, 6 * MiB, 10_000, 11 * MiB + 7, 3]
        parts = [blob(n, seed=i) for i, n in enumerate(sizes)]
        for i, part in enumerate(parts):
            backend.store.write(f"p/{i}", part)
        total = backend.store.compose("out", b"h\n", [f"p/{i}" for i in range(len(parts))])
        expected = b"h\n" + b"".join(parts)
        assert total == len(expected)
        with backend.store.open_read("out") as stream:
            assert stream.read() == expected
        assert backend.pending_uploads() == 0

    @pytest.mark.parametrize("big", [False, True])
    def test_compose_with_a_missing_part_leaves_no_output(
        self, backend: Backend, big: bool
    ) -> None:
        backend.store.write("p/0", blob(9 * MiB if big else 5))
        with pytest.raises(FileNotFoundError):
            backend.store.compose("out.csv", b"h\n", ["p/0", "p/missing"])
        assert not backend.store.exists("out.csv")
        assert backend.objects() == ["p/0"]
        assert backend.pending_uploads() == 0

    @pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "..", "../store2/x"])
    def test_a_key_escaping_the_root_is_rejected(self, backend: Backend, key: str) -> None:
        store = backend.store
        for use in (
            lambda: store.write(key, b"x"),
            lambda: store.read_range(key, 0, 0),
            lambda: store.open_read(key),
            lambda: store.size(key),
            lambda: store.delete(key),
            lambda: store.delete_prefix(key),
            lambda: store.compose(key, b"", []),
            lambda: store.compose("out", b"", [key]),
        ):
            with pytest.raises(ValueError, match="escapes"):
                use()
        assert backend.objects() == []

    def test_a_key_with_dot_dot_inside_the_root(self, backend: Backend) -> None:
        if backend.scheme == "file":  # resolved, and stays inside the root
            backend.store.write("a/../b.csv", b"ok")
            assert backend.store.read_range("b.csv", 0, 2) == b"ok"
        else:  # refused: S3 servers differ on whether they normalise dot segments
            for key in ("a/../b.csv", "a/./b.csv", "./b.csv"):
                with pytest.raises(ValueError, match="escapes"):
                    backend.store.write(key, b"ok")
            assert backend.objects() == []

    def test_exists_size_delete(self, backend: Backend) -> None:
        store = backend.store
        assert not store.exists("x.csv")
        store.write("x.csv", b"12345")
        assert store.exists("x.csv")
        assert store.size("x.csv") == 5
        store.delete("x.csv")
        assert not store.exists("x.csv")
        store.delete("x.csv")  # deleting a missing object is fine
        assert backend.objects() == []

    def test_delete_prefix_removes_a_folder(self, backend: Backend) -> None:
        store = backend.store
        for key in ("jobs/a/parts/0", "jobs/a/output.csv", "jobs/ab/output.csv", "jobs/b/x"):
            store.write(key, b"1")
        store.delete_prefix("jobs/a")
        assert backend.objects() == ["jobs/ab/output.csv", "jobs/b/x"]
        store.delete_prefix("jobs/nothing-here")  # a missing prefix is fine
        assert backend.objects() == ["jobs/ab/output.csv", "jobs/b/x"]

    def test_delete_prefix_of_more_than_one_listing_page(self, backend: Backend) -> None:
        keys = [f"jobs/a/parts/{i:05d}" for i in range(1005)]  # S3 does 1000 per request
        with ThreadPoolExecutor(16) as pool:  # threads share the store, as in a worker
            list(pool.map(lambda key: backend.store.write(key, b""), keys))
        backend.store.write("jobs/b/keep", b"k")
        backend.store.delete_prefix("jobs/a/")
        assert backend.objects() == ["jobs/b/keep"]


# --------------------------------------------------------------------------- S3 only


def test_a_worker_reads_only_its_chunk(s3store: Storage, calls: Calls) -> None:
    """The dispatcher cuts the stored CSV into 5000-row chunks; each worker's ranged read
    makes one GET that serves exactly its chunk's bytes, never the file."""
    data = make_csv(50_000)
    s3store.write("uploads/big.csv", data)
    with s3store.open_read("uploads/big.csv") as stream:
        _, start = csvfile.read_header(stream)
        chunks = list(
            csvfile.iter_chunks(stream, start=start, rows_per_chunk=5000, max_chunk_bytes=1 << 30)
        )
    assert len(chunks) == 10
    calls.clear()
    for chunk in chunks:
        before = len(calls.gets)
        assert (
            s3store.read_range("uploads/big.csv", chunk.start, chunk.end)
            == (data[chunk.start : chunk.end])
        )
        size = chunk.end - chunk.start
        assert calls.gets[before:] == [(f"bytes {chunk.start}-{chunk.end - 1}/{len(data)}", size)]
        assert size < len(data) / 9
    assert calls.ops == ["GetObject"] * len(chunks)
    assert calls.served == len(data) - start  # every data byte once, in all


def test_the_dispatcher_stream_resumes_at_its_cursor_in_bounded_gets(
    s3store: Storage, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "READ_RANGE", 256 << 10)
    data = blob(1_000_000)
    s3store.write("uploads/big.csv", data)
    calls.clear()
    with s3store.open_read("uploads/big.csv") as stream:
        assert calls.ops == ["HeadObject"]  # opening fetches nothing (defer_seek)
        stream.seek(700_000)  # a restarted dispatcher seeks to its cursor
        assert stream.read() == data[700_000:]
    ranges = [content_range for content_range, _ in calls.gets]
    assert ranges[0].startswith("bytes 700000-")
    assert all(n <= 256 << 10 for _, n in calls.gets)
    assert calls.served == 300_000


def test_a_small_write_is_one_put_and_a_large_one_a_multipart_upload(
    s3store: Storage, calls: Calls
) -> None:
    s3store.write("parts/small.csv", blob(300_000))
    assert calls.ops == ["PutObject"]
    calls.clear()
    with s3store.open_write("uploads/big.csv") as out:
        for _ in range(20):
            out.write(blob(MiB))
    assert calls.ops == [
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPart",
        "UploadPart",
        "CompleteMultipartUpload",
    ]  # fmt: skip  (8 + 8 + 4 MiB)


def test_compose_of_small_parts_streams_them_into_one_put(s3store: Storage, calls: Calls) -> None:
    for i in range(50):
        s3store.write(f"p/{i:02d}", blob(10_000, seed=i))
    calls.clear()
    s3store.compose("out", b"h\n", [f"p/{i:02d}" for i in range(50)])
    assert sorted(set(calls.ops)) == ["GetObject", "HeadObject", "PutObject"]
    assert calls.ops.count("PutObject") == 1
    assert calls.served == 50 * 10_000


def test_compose_copies_large_parts_inside_s3(s3store: Storage, calls: Calls) -> None:
    sizes = [12 * MiB, 6 * MiB, 10_000, 11 * MiB]
    parts = [blob(n, seed=i) for i, n in enumerate(sizes)]
    for i, part in enumerate(parts):
        s3store.write(f"p/{i}", part)
    calls.clear()
    total = s3store.compose("out", b"h1,h2\n", [f"p/{i}" for i in range(len(parts))])
    assert total == 6 + sum(sizes)
    assert s3store.read_range("out", 0, total) == b"h1,h2\n" + b"".join(parts)
    # p/0: 5 MiB - 6 bytes streamed to fill the first part, the rest copied; p/1 copied
    # whole; p/2 streamed; p/3: 5 MiB - 10_000 streamed, the rest copied.
    assert calls.ops.count("UploadPartCopy") == 3
    streamed = (5 * MiB - 6) + 10_000 + (5 * MiB - 10_000)
    assert calls.served - total == streamed  # the check read of the output is all of it


def test_the_client_is_built_lazily_once_and_shared(bucket: str, admin: Any) -> None:
    store = Storage(f"s3://{bucket}")
    assert store._s3 is not None and store._s3._client is None  # nothing at construction
    clients: list[object] = []
    threads = [threading.Thread(target=lambda: clients.append(store._s3.client)) for _ in range(8)]  # type: ignore[union-attr]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(clients) == 8 and all(c is clients[0] for c in clients)
    store.write("at-the-bucket-root", b"x")  # no prefix: the key is the object key
    assert admin.get_object(Bucket=bucket, Key="at-the-bucket-root")["Body"].read() == b"x"


def test_the_s3_specific_endpoint_variable_wins(
    bucket: str, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # e.g. SQS elsewhere
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws_env["AWS_ENDPOINT_URL"])
    store = Storage(f"s3://{bucket}/x")
    store.write("k", b"via AWS_ENDPOINT_URL_S3")
    assert store.read_range("k", 4, 23) == b"AWS_ENDPOINT_URL_S3"


def test_an_explicit_endpoint_overrides_the_environment(
    bucket: str, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    store = Storage(f"s3://{bucket}", endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    store.write("k", b"ok")
    assert store.size("k") == 2


def test_a_missing_bucket_reads_as_missing(aws_env: dict[str, str]) -> None:
    store = Storage(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p")
    assert not store.exists("k")
    with pytest.raises(FileNotFoundError):
        store.read_range("k", 0, 1)


def test_output_streaming_reads_blocks(s3store: Storage) -> None:
    """What the jobs API's download does: read the output in 1 MiB blocks."""
    data = blob(3 * MiB + 5)
    s3store.write("jobs/j/output.csv", data)
    got = io.BytesIO()
    with s3store.open_read("jobs/j/output.csv") as stream:
        while block := stream.read(MiB):
            got.write(block)
    assert got.getvalue() == data
