"""The two store backends keep the same promises; S3 runs against the loopback HTTP server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from retrainer.storage import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StoreError,
    open_store,
)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket = request.getfixturevalue("bucket")
    return S3Store(bucket, "some/prefix")


def test_a_put_object_reads_back_lists_in_order_and_heads_with_its_size(store: ObjectStore) -> None:
    store.put("a/1.txt", b"one")
    store.put("a/2.txt", b"two")
    store.put("b/3.txt", b"three")
    assert store.get("a/2.txt") == b"two"
    assert [info.key for info in store.list("a/")] == ["a/1.txt", "a/2.txt"]
    assert [info.key for info in store.list()] == ["a/1.txt", "a/2.txt", "b/3.txt"]
    info = store.head("b/3.txt")
    assert info is not None and info.size == 5
    assert store.head("missing") is None
    assert not store.exists("a/3.txt")
    with pytest.raises(ObjectNotFound):
        store.get("missing")


def test_upload_and_download_are_whole_files(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    store.upload("models/model.bin", source)
    target = tmp_path / "copy" / "model.bin"
    store.download("models/model.bin", target)
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["model.bin"]


def test_conditional_put_is_compare_and_swap(store: ObjectStore) -> None:
    assert store.put_if("pointer.json", b"first", expected_etag=None)
    assert not store.put_if("pointer.json", b"other", expected_etag=None)
    first = store.head("pointer.json")
    assert first is not None
    assert store.put_if("pointer.json", b"second", expected_etag=first.etag)
    assert not store.put_if("pointer.json", b"third", expected_etag=first.etag)
    assert store.get("pointer.json") == b"second"


def test_same_size_writes_in_quick_succession_each_get_a_new_etag(store: ObjectStore) -> None:
    """A pointer rewritten faster than a file system's timestamp tick: no ETag comes back, so a
    writer holding an old one is always refused."""
    assert store.put_if("pointer.json", b"version-00", expected_etag=None)
    seen = []
    for version in range(1, 20):
        current = store.head("pointer.json")
        assert current is not None
        seen.append(current.etag)
        assert store.put_if("pointer.json", f"version-{version:02d}".encode(), current.etag)
    assert len(set(seen)) == len(seen)
    assert not store.put_if("pointer.json", b"version-99", expected_etag=seen[0])
    assert store.get("pointer.json") == b"version-19"


def test_a_local_file_rewritten_in_place_with_its_size_and_time_kept_gets_a_new_etag(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("cats/1.jpg", b"original")
    listed = store.head("cats/1.jpg")
    assert listed is not None
    path = tmp_path / "store" / "cats" / "1.jpg"
    kept = path.stat()
    time.sleep(0.05)  # a later edit: past the kernel's timestamp tick
    with open(path, "r+b") as file:  # another program edits the photo where it lies
        file.write(b"edited!!")
    os.utime(path, ns=(kept.st_atime_ns, kept.st_mtime_ns))  # and sets its time back
    (again,) = store.list("cats/")
    assert (again.size, again.modified) == (listed.size, listed.modified)
    assert again.etag != listed.etag  # its change time moved, and nobody can set that back


def test_a_local_write_is_modified_after_the_file_it_replaces_even_with_the_clock_behind(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("pointer.json", b"first")
    path = tmp_path / "store" / "pointer.json"
    ahead = time.time_ns() + 3600 * 10**9  # written by a machine whose clock is an hour ahead
    os.utime(path, ns=(ahead, ahead))
    before = store.head("pointer.json")
    store.put("pointer.json", b"other")
    after = store.head("pointer.json")
    assert before is not None and after is not None
    assert path.stat().st_mtime_ns > ahead
    assert after.etag != before.etag


def test_repeated_conditional_put_of_the_same_bytes_counts_as_done(store: ObjectStore) -> None:
    """What botocore's retry of a landed write sees: 412, yet the object holds our bytes."""
    assert store.put_if("pointer.json", b"mine", expected_etag=None)
    assert store.put_if("pointer.json", b"mine", expected_etag=None)


@pytest.mark.parametrize("prefix", ["file://", "file://localhost"])
def test_a_file_url_is_the_folder_at_its_path_on_this_machine(tmp_path: Path, prefix: str) -> None:
    store = open_store(f"{prefix}{tmp_path}/store")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "store"


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a/../../b", "a\\b", ""])
def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="unsafe object key"):
        store.put(key, b"x")


def test_missing_bucket_is_named(s3_env: str) -> None:
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        S3Store("no-such-bucket").check()


def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for index in range(5):
        store.put("x.json", str(index).encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_stores_that_reject_crc_checksums_are_served_by_boto3s_own_settings(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    config = S3Store("any-bucket").client.meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.retries["total_max_attempts"] == 3


def test_the_stores_own_time_is_the_first_date_header_even_behind_a_proxy_that_adds_one() -> None:
    from datetime import UTC, datetime

    from retrainer.storage import http_date

    both = "Mon, 30 Nov 2026 02:51:41 GMT, Mon, 30 Nov 2026 02:51:43 GMT"
    assert http_date(both) == datetime(2026, 11, 30, 2, 51, 41, tzinfo=UTC)
    assert http_date("not a date") is None and http_date(None) is None
