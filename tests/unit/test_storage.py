"""Unit tests for the file:// storage backend (libs/common/storage.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common import storage as storage_module
from libs.common.storage import Storage


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def store(root: Path) -> Storage:
    return Storage(f"file://{root}")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_url_and_scheme(root: Path) -> None:
    s = Storage(f"file://{root}/")
    assert s.scheme == "file"
    assert s.base_url == f"file://{root}"
    assert s.url("a/b.csv") == f"file://{root}/a/b.csv"


def test_write_then_read_back_exact_bytes(store: Storage, root: Path) -> None:
    data = b"id,name\r\n1,\xc3\xa9\n\x00\xff binary\n"
    store.write("uploads/x.csv", data)
    assert (root / "uploads" / "x.csv").read_bytes() == data
    with store.open_read("uploads/x.csv") as stream:
        assert stream.read() == data
    assert store.read_range("uploads/x.csv", 0, len(data)) == data
    assert store.size("uploads/x.csv") == len(data)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 0, b""),
        (0, 3, b"012"),
        (3, 7, b"3456"),
        (9, 10, b"9"),
        (10, 10, b""),
        (0, 10, b"0123456789"),
    ],
)
def test_read_range(store: Storage, start: int, end: int, expected: bytes) -> None:
    store.write("k", b"0123456789")
    assert store.read_range("k", start, end) == expected


@pytest.mark.parametrize(("start", "end"), [(5, 11), (0, 100), (10, 11), (20, 30)])
def test_read_range_past_the_end_raises(store: Storage, start: int, end: int) -> None:
    store.write("k", b"0123456789")
    with pytest.raises(ValueError, match="expected"):
        store.read_range("k", start, end)


def test_read_missing_object_raises_file_not_found(store: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        store.read_range("nope.csv", 0, 1)
    with pytest.raises(FileNotFoundError):
        store.open_read("nope.csv")
    with pytest.raises(FileNotFoundError):
        store.size("nope.csv")


def test_open_write_streams_into_place(store: Storage, root: Path) -> None:
    with store.open_write("jobs/j/parts/00000001.csv") as out:
        out.write(b"a,b\n")
        out.write(b"c,d\n")
        # Not visible before the block exits.
        assert not store.exists("jobs/j/parts/00000001.csv")
    assert store.read_range("jobs/j/parts/00000001.csv", 0, 8) == b"a,b\nc,d\n"
    assert files_under(root) == ["jobs/j/parts/00000001.csv"]


class Boom(Exception):
    pass


def test_failed_write_leaves_no_object_and_no_temp_file(store: Storage, root: Path) -> None:
    with pytest.raises(Boom), store.open_write("dir/new.csv") as out:
        out.write(b"half of it")
        raise Boom
    assert not store.exists("dir/new.csv")
    assert files_under(root) == []


def test_failed_write_keeps_the_old_content(store: Storage, root: Path) -> None:
    store.write("part.csv", b"old content\n")
    with pytest.raises(Boom), store.open_write("part.csv") as out:
        out.write(b"new")
        raise Boom
    assert store.read_range("part.csv", 0, 12) == b"old content\n"
    assert files_under(root) == ["part.csv"]


def test_overwrite_replaces_content(store: Storage, root: Path) -> None:
    store.write("part.csv", b"a much longer old content\n")
    store.write("part.csv", b"short\n")
    assert store.size("part.csv") == 6
    assert (root / "part.csv").read_bytes() == b"short\n"
    assert files_under(root) == ["part.csv"]


def test_compose_writes_head_and_parts_in_order(store: Storage, root: Path) -> None:
    store.write("p/2", b"row3\n")
    store.write("p/0", b"row1\n")
    store.write("p/1", b"")
    store.write("p/3", b"row2\n")
    total = store.compose("out.csv", b"h1,h2\n", ["p/0", "p/1", "p/3", "p/2"])
    expected = b"h1,h2\nrow1\nrow2\nrow3\n"
    assert total == len(expected)
    assert (root / "out.csv").read_bytes() == expected


def test_compose_copies_in_blocks(store: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "COPY_BUFFER", 3)
    store.write("a", b"0123456789")
    store.write("b", b"abcdefg")
    assert store.compose("out", b"", ["a", "b"]) == 17
    assert store.read_range("out", 0, 17) == b"0123456789abcdefg"


def test_compose_with_no_parts_writes_the_head(store: Storage) -> None:
    assert store.compose("out", b"head\n", []) == 5
    assert store.read_range("out", 0, 5) == b"head\n"


def test_compose_with_a_missing_part_leaves_no_output(store: Storage, root: Path) -> None:
    store.write("p/0", b"row1\n")
    with pytest.raises(FileNotFoundError):
        store.compose("out.csv", b"h\n", ["p/0", "p/missing"])
    assert not store.exists("out.csv")
    assert files_under(root) == ["p/0"]


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "..", "../store2/x"])
def test_key_escaping_the_root_is_rejected(store: Storage, root: Path, key: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        store.write(key, b"x")
    with pytest.raises(ValueError, match="escapes"):
        store.read_range(key, 0, 0)
    with pytest.raises(ValueError, match="escapes"):
        store.delete(key)
    assert not (root.parent / "x").exists()
    assert not (root.parent / "store2").exists()


def test_key_with_dot_dot_inside_the_root_is_allowed(store: Storage) -> None:
    store.write("a/../b.csv", b"ok")
    assert store.read_range("b.csv", 0, 2) == b"ok"


def test_exists_size_delete(store: Storage) -> None:
    assert not store.exists("x.csv")
    store.write("x.csv", b"12345")
    assert store.exists("x.csv")
    assert store.size("x.csv") == 5
    store.delete("x.csv")
    assert not store.exists("x.csv")
    store.delete("x.csv")  # deleting a missing object is fine
    assert not store.exists("x.csv")


def test_delete_prefix(store: Storage) -> None:
    store.write("jobs/a/parts/0", b"1")
    store.write("jobs/a/output.csv", b"2")
    store.write("jobs/b/output.csv", b"3")
    store.delete_prefix("jobs/a")
    assert not store.exists("jobs/a/parts/0")
    assert not store.exists("jobs/a/output.csv")
    assert store.exists("jobs/b/output.csv")
    store.delete_prefix("jobs/nothing-here")  # missing prefix is fine
    assert store.exists("jobs/b/output.csv")


# --------------------------------------------------------------------------- s3:// without a server
# (the S3 behaviours run against moto in tests/integration/test_storage_s3.py)


def test_s3_url_and_object_keys() -> None:
    s = Storage("s3://bucket/some/prefix/")
    assert s.scheme == "s3"
    assert s.base_url == "s3://bucket/some/prefix"
    assert s.url("jobs/j/output.csv") == "s3://bucket/some/prefix/jobs/j/output.csv"
    assert s._key("jobs/j/output.csv") == "some/prefix/jobs/j/output.csv"
    assert Storage("s3://bucket")._key("a/b") == "a/b"


def test_s3_builds_no_client_until_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module.s3.boto3, "session", None)  # would fail if touched
    s = Storage("s3://bucket/p")
    assert s._s3 is not None and s._s3._client is None


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "..", "a/../b.csv", "./b", "a/./b", ""]
)
def test_s3_rejects_keys_with_dot_segments_before_any_request(key: str) -> None:
    s = Storage("s3://bucket/p")
    for use in (
        lambda: s.write(key, b"x"),
        lambda: s.read_range(key, 0, 1),
        lambda: s.open_read(key),
        lambda: s.exists(key),
        lambda: s.delete(key),
        lambda: s.delete_prefix(key),
        lambda: s.compose(key, b"", []),
    ):
        with pytest.raises(ValueError, match="escapes"):
            use()
    assert s._s3 is not None and s._s3._client is None


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("s3://", {}, "s3://bucket"),
        ("s3://bucket", {"part_size": 1 << 20}, "part_size"),
        ("gs://bucket/x", {}, "unsupported"),
        ("/no/scheme", {}, "unsupported"),
    ],
)
def test_bad_storage_settings_are_refused(url: str, kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Storage(url, **kwargs)  # type: ignore[arg-type]
