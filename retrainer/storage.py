"""Object storage: one small interface, an S3 backend (boto3) and a local-folder backend.

Both backends give the same guarantees: a reader never sees a half-written object, every write can
be repeated safely, and `put_if` is a compare-and-swap used to move the champion pointer.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.exceptions
from botocore.config import Config

# Retries live in botocore, not in our code: "standard" mode retries throttling (503 SlowDown),
# 5xx answers, timeouts and dropped connections with backoff.
S3_CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 8},
    connect_timeout=10,
    read_timeout=60,
    max_pool_connections=32,
)


class StoreError(RuntimeError):
    """The store cannot be used as configured; the message says what to fix."""


class ObjectNotFound(KeyError):
    """No object under that key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


def check_key(key: str) -> str:
    """Refuse keys that would escape the store's root or a cache folder."""
    parts = PurePosixPath(key).parts
    if (
        not key
        or "\\" in key
        or key.startswith("/")
        or any(part in ("..", ".") for part in parts)
        or "\x00" in key
    ):
        raise ValueError(f"unsafe object key {key!r}: keys must be relative, without '..' or '\\'")
    return key


class ObjectStore(ABC):
    """A flat namespace of keys under one root URL."""

    url: str

    @abstractmethod
    def check(self) -> None:
        """Raise StoreError, naming the problem, when the store cannot be read and written."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def download(self, key: str, destination: Path) -> None:
        """Copy an object to a file; the file appears whole or not at all."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def upload(self, key: str, source: Path) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing one that is not there is not an error."""

    @abstractmethod
    def put_if(self, key: str, data: bytes, expected_etag: str | None) -> bool:
        """Write only if the object's ETag is still `expected_etag` (None: only if absent).

        Returns False when another writer got there first.
        """

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def describe(self, key: str) -> str:
        return self.url.rstrip("/") + "/" + key


def write_atomically(destination: Path, data: bytes) -> None:
    """Write to a temporary file beside `destination`, then rename it into place."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class LocalStore(ObjectStore):
    """A folder on disk with object-store semantics; the embedded default."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @staticmethod
    def _etag(path: Path) -> str:
        # Size and modification time, like a web server's weak ETag: cheap for large datasets,
        # and every write through this class (a rename of a new file) changes it.
        stat = path.stat()
        return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} exists and is not a folder")
        if self.root.exists() and not os.access(self.root, os.W_OK):
            raise StoreError(f"folder {self.root} is not writable")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the folder the prefix points into, not the whole store.
        start = self.root / check_key(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not start.is_dir():
            return
        paths = sorted(
            path
            for path in start.rglob("*")
            if path.is_file() and not path.name.startswith((".tmp-", ".lock-"))
        )
        for path in paths:
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                yield ObjectInfo(key=key, size=path.stat().st_size, etag=self._etag(path))

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(key=key, size=path.stat().st_size, etag=self._etag(path))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(self.describe(key)) from None

    def download(self, key: str, destination: Path) -> None:
        write_atomically(destination, self.get(key))

    def put(self, key: str, data: bytes) -> None:
        write_atomically(self._path(key), data)

    def upload(self, key: str, source: Path) -> None:
        self.put(key, source.read_bytes())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def put_if(self, key: str, data: bytes, expected_etag: str | None) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # An exclusive lock beside the object makes read-compare-rename one step for every
        # process on this machine.
        with open(path.parent / f".lock-{path.name}", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.head(key)
            current_etag = current.etag if current else None
            if current_etag != expected_etag:
                # Same answer as S3Store gives a repeated write of identical bytes.
                return current is not None and path.read_bytes() == data
            write_atomically(path, data)
            return True


class S3Store(ObjectStore):
    """An S3 bucket prefix through boto3; any S3-compatible store via AWS_ENDPOINT_URL."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.client = client or boto3.session.Session().client("s3", config=S3_CLIENT_CONFIG)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def check(self) -> None:
        try:
            # A one-key listing of our own prefix, not HeadBucket: a least-privilege policy grants
            # s3:ListBucket only under the prefixes this job uses.
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except botocore.exceptions.NoCredentialsError:
            raise StoreError(
                "no AWS credentials found: set AWS_PROFILE, AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or run on a machine with an instance role"
            ) from None
        except botocore.exceptions.EndpointConnectionError as error:
            raise StoreError(f"cannot reach the S3 endpoint: {error}") from None
        except botocore.exceptions.ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise StoreError(f"bucket '{self.bucket}' does not exist") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StoreError(
                    f"access to bucket '{self.bucket}' denied: check the AWS credentials "
                    "and the bucket policy"
                ) from None
            raise StoreError(f"bucket '{self.bucket}' cannot be used: {code}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"][len(self.prefix) :],
                    size=int(item["Size"]),
                    etag=str(item["ETag"]).strip('"'),
                )

    def head(self, key: str) -> ObjectInfo | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(
            key=key, size=int(answer["ContentLength"]), etag=str(answer["ETag"]).strip('"')
        )

    def _get_object(self, key: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise ObjectNotFound(self.describe(key)) from None
            raise

    def get(self, key: str) -> bytes:
        return bytes(self._get_object(key)["Body"].read())

    def download(self, key: str, destination: Path) -> None:
        # One GET streamed to a temporary file: for the many small images of a dataset this is
        # about twice as fast as boto3's download_file, which sets up a transfer manager per call.
        answer = self._get_object(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as file:
                for chunk in answer["Body"].iter_chunks(1 << 20):
                    file.write(chunk)
            os.replace(temporary, destination)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload(self, key: str, source: Path) -> None:
        self.client.upload_file(str(source), self.bucket, self._key(key))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def put_if(self, key: str, data: bytes, expected_etag: str | None) -> bool:
        condition = {"IfNoneMatch": "*"} if expected_etag is None else {"IfMatch": expected_etag}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            return True
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise
        # A 412 can also answer botocore's retry of our own write whose first answer was lost:
        # the object then holds exactly our bytes, and the write did succeed.
        try:
            return self.get(key) == data
        except ObjectNotFound:
            return False


def open_store(url: str) -> ObjectStore:
    """The store for an `s3://bucket/prefix`, `file:///path` or plain folder URL."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.netloc + parsed.path))
    if parsed.scheme == "":
        return LocalStore(Path(url))
    raise StoreError(f"unknown URL scheme '{parsed.scheme}://' in '{url}'")


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
