"""Object storage: one small interface, an S3 backend (boto3) and a local-folder backend.

Both backends give the same guarantees: a reader never sees a half-written object, every write can
be repeated safely, and `put_if` is a compare-and-swap used to move the champion pointer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

import boto3
import botocore.exceptions
from botocore.config import Config
from pydantic import BaseModel, ValidationError

from retrainer.errors import redact
from retrainer.layout import CONDITIONAL_WRITES_PROBES, CONDITIONAL_WRITES_PROOF
from retrainer.settings import ENDPOINT_VARIABLES


def s3_client_config() -> Config:
    """Retries live in botocore, not in our code: "standard" mode retries throttling (503
    SlowDown), 5xx answers, timeouts and dropped connections with backoff; 8 attempts unless
    boto3's own AWS_MAX_ATTEMPTS says otherwise (read when a store is opened)."""
    return Config(
        retries={
            "mode": "standard",
            "total_max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "8")),
        },
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=32,
    )


class StoreError(RuntimeError):
    """The store cannot be used as configured; the message says what to fix."""


class ObjectNotFound(KeyError):
    """No object under that key."""


class ObjectChanged(RuntimeError):
    """The object under a key is no longer the one listed (another ETag, or more bytes)."""


def unavailable(error: BaseException) -> str | None:
    """Why an object listed a moment ago cannot be read now, if that is what `error` says."""
    if isinstance(error, ObjectNotFound):
        return "disappeared between the listing and its download"
    if isinstance(error, ObjectChanged):
        return "changed between the listing and its download: the next night reads it"
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "Forbidden"):
            return f"listed, but its download is forbidden ({code}): check the bucket policy"
    return None


class ConditionalWritesIgnored(StoreError):
    """The store accepts conditional writes but does not honour them: no safe promotion."""


class ConditionalWritesProof(BaseModel):
    """`_retrainer/conditional-writes-proven.json`: the store refused the writes it should
    refuse, through this endpoint, when the object was last written."""

    endpoint: str
    if_none_match: bool = True
    if_match: bool = True


# A proof is taken again after this long: a store's gateway or its configuration can change.
PROOF_AGE = timedelta(days=1)


# A 409 ConditionalRequestConflict means "another conditional write to this key is in flight":
# retried with these pauses (seconds), then decided by what the object finally holds.
CONFLICT_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: datetime | None = field(default=None, compare=False)
    refused: str = field(default="", compare=False)  # why it must not be copied, if it must not
    # The store's own clock when it answered (a HEAD's Date): compared with `modified`, the
    # object's age without trusting this machine's clock.
    store_now: datetime | None = field(default=None, compare=False)

    @property
    def age(self) -> timedelta | None:
        """How long ago the store wrote the object, by the store's clock alone (None: unknown)."""
        if self.modified is None or self.store_now is None:
            return None
        return self.store_now - self.modified


MAX_NAME_BYTES = 255  # the longest file name ext4, XFS, APFS and NTFS accept


def key_problem(key: str) -> str | None:
    """Why `key` does not map to exactly one safe local path, or None when it does.

    Components are read as written: `a//x.png` or `a/./x.png` would become `a/x.png` on disk,
    another object's path, so they are refused rather than normalised.
    """
    if not key or "\x00" in key:
        return "empty or holds a NUL byte"
    if "\\" in key:
        return "holds a backslash"
    if key.startswith("/"):
        return "is absolute"
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has an empty, '.' or '..' component"
    if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        return f"has a name longer than {MAX_NAME_BYTES} bytes"
    return None


def check_key(key: str) -> str:
    """Refuse keys that would escape the store's root or a cache folder, or alias another key."""
    if problem := key_problem(key):
        raise ValueError(f"unsafe object key {key!r}: it {problem}")
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
    def get_as_listed(self, key: str, etag: str, size: int) -> bytes:
        """The object's bytes if it is still the one a listing saw (that ETag and size), reading
        no more than that size and one byte: ObjectChanged otherwise. An object swapped for a
        huge one after the listing is never read whole."""

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
    def remove_partials(self, older_than: datetime, dry_run: bool) -> tuple[str, ...]:
        """Remove what interrupted writes left (older than `older_than`); say what."""

    @abstractmethod
    def put_if(self, key: str, data: bytes, expected_etag: str | None) -> bool:
        """Write only if the object's ETag is still `expected_etag` (None: only if absent).

        Returns False when another writer got there first.
        """

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def prove_conditional_writes(self) -> None:
        """Raise ConditionalWritesIgnored unless the store refuses writes it should refuse.

        Some S3-compatible servers accept `If-None-Match`/`If-Match` and simply overwrite; on those
        two runs could both "win" a promotion. Proven once per store; the proof is remembered in
        the store itself, so a cold worker does not ask again.
        """
        if self._proof_holds():
            return
        probe = f"{CONDITIONAL_WRITES_PROBES}{uuid.uuid4().hex}"
        try:
            if not self.put_if(probe, b"first", None):
                raise ConditionalWritesIgnored(f"{self.url}: a create-if-absent write was refused")
            if self.put_if(probe, b"second", None):
                raise ConditionalWritesIgnored(
                    f"{self.url} ignores If-None-Match: a second create-if-absent overwrote the "
                    "first; use a store that honours conditional writes (AWS S3, MinIO, R2, Ceph)"
                )
            if self.put_if(probe, b"third", "0" * 32):
                raise ConditionalWritesIgnored(
                    f"{self.url} ignores If-Match: a write with a wrong ETag overwrote the object; "
                    "use a store that honours conditional writes (AWS S3, MinIO, R2, Ceph)"
                )
        finally:
            self.delete(probe)
        proof = ConditionalWritesProof(endpoint=self.endpoint())
        self.put(CONDITIONAL_WRITES_PROOF, proof.model_dump_json().encode())

    def _proof_holds(self) -> bool:
        """A proof of this store, taken through this endpoint, younger than PROOF_AGE by the
        store's own clock: a gateway that ignores If-* headers, or one put in front later, is
        probed again."""
        info = self.head(CONDITIONAL_WRITES_PROOF)
        if info is None or info.age is None or info.age > PROOF_AGE:
            return False
        try:
            proof = ConditionalWritesProof.model_validate_json(self.get(CONDITIONAL_WRITES_PROOF))
        except (ValidationError, ObjectNotFound):
            return False  # a proof of an older release, or unreadable: asked again
        return proof.endpoint == self.endpoint()

    @abstractmethod
    def endpoint(self) -> str:
        """How this process reaches the store (no credentials): what a proof of it is tied to."""

    def describe(self, key: str) -> str:
        return self.url.rstrip("/") + "/" + key


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files appear with the permissions a plain `open()` would give them (mkstemp's are 0600), so a
# serving process of another user can read a published model.
FILE_MODE = 0o666 & ~_current_umask()


def write_atomically(destination: Path, data: bytes, modified_after_ns: int | None = None) -> None:
    """Write to a temporary file beside `destination`, then rename it into place (with a
    modification time after `modified_after_ns`, when given)."""
    write_stream_atomically(destination, lambda file: file.write(data), modified_after_ns)


def copy_file_atomically(source: Path, destination: Path) -> None:
    """Stream `source` into a temporary file beside `destination`, then rename it into place."""
    with open(source, "rb") as reader:
        write_stream_atomically(destination, lambda file: shutil.copyfileobj(reader, file, 1 << 20))


def write_stream_atomically(
    destination: Path, write: Callable[[BinaryIO], object], modified_after_ns: int | None = None
) -> None:
    """`write` fills a temporary file beside `destination`; it then replaces it in one rename."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, FILE_MODE)
        if modified_after_ns is not None:
            make_modified_after(temporary, modified_after_ns)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def make_modified_after(path: str, mtime_ns: int) -> None:
    """Move the file's modification time past `mtime_ns` if the clock has not: a file system
    keeps times to its own tick (a second or two on some), so the step grows until it holds."""
    step = 1
    while (stat := os.stat(path)).st_mtime_ns <= mtime_ns:
        os.utime(path, ns=(stat.st_atime_ns, mtime_ns + step))
        step *= 1000


def change_token(stat: os.stat_result) -> str:
    """A local file's ETag: its inode, size and times, not its bytes (see LocalStore)."""
    identity = f"{stat.st_ino}-{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ctime_ns}"
    return hashlib.md5(identity.encode(), usedforsecurity=False).hexdigest()


class LocalStore(ObjectStore):
    """A folder on disk with object-store semantics; the embedded default.

    An object's ETag is a change token from `stat` (inode, size, modification and change times),
    not its content's MD5: listing 10^6 photos or a folder of 150 MB shards is then a walk, not a
    read of every byte. It changes whenever the bytes do: every write here is a new file (a new
    inode) renamed into place with a modification time later than the one it replaces, so even
    a reused inode within one timestamp tick of a coarse file system (NFS, SMB) never repeats a
    token the champion pointer's compare-and-swap could mistake; an edit in place by another
    program changes the change time, which no user can set back. What it trusts: the file
    system's inodes and times. What it costs: a copy of the folder (rsync, a restored backup)
    gets new tokens, so its photos are prepared once again.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def endpoint(self) -> str:
        return self.url

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} exists and is not a folder")
        if self.root.exists() and not os.access(self.root, os.W_OK):
            raise StoreError(f"folder {self.root} is not writable")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the folder the prefix points into, not the whole store: one stat a file.
        start = self.root / check_key(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not start.is_dir():
            return
        real_root = self.root.resolve()
        for key, entry in sorted(self._files_under(start), key=lambda item: item[0]):
            if not key.startswith(prefix):
                continue
            if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(real_root):
                # Copying it would copy whatever it points to (/etc/passwd, another dataset).
                yield ObjectInfo(key, 0, "", refused="a symbolic link out of the folder")
                continue
            yield self._info(key, entry.stat())

    def _files_under(self, folder: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """Every file below `folder` with its key (links to folders are not followed), but the
        temporary files and locks of writes."""
        root = len(str(self.root)) + 1
        pending = [str(folder)]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file() and not entry.name.startswith((".tmp-", ".lock-")):
                        yield entry.path[root:], entry

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        # The folder's times and this clock are the same machine's (or its file server's).
        return replace(self._info(key, path.stat()), store_now=datetime.now(UTC))

    @staticmethod
    def _info(key: str, stat: os.stat_result) -> ObjectInfo:
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        return ObjectInfo(key=key, size=stat.st_size, etag=change_token(stat), modified=modified)

    def remove_partials(self, older_than: datetime, dry_run: bool) -> tuple[str, ...]:
        """Temporary files of writes that never finished (a killed process), older than that."""
        removed: tuple[str, ...] = ()
        for path in self.root.rglob(".tmp-*"):
            if datetime.fromtimestamp(path.stat().st_mtime, UTC) < older_than:
                removed += (path.relative_to(self.root).as_posix(),)
                if not dry_run:
                    path.unlink(missing_ok=True)
        return removed

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(self.describe(key)) from None

    def get_as_listed(self, key: str, etag: str, size: int) -> bytes:
        try:
            with open(self._path(key), "rb") as file:
                if change_token(os.fstat(file.fileno())) != etag:
                    raise ObjectChanged(self.describe(key))
                contents = file.read(size + 1)
        except FileNotFoundError:
            raise ObjectNotFound(self.describe(key)) from None
        if len(contents) != size:
            raise ObjectChanged(self.describe(key))
        return contents

    def download(self, key: str, destination: Path) -> None:
        try:
            copy_file_atomically(self._path(key), destination)
        except FileNotFoundError:
            raise ObjectNotFound(self.describe(key)) from None

    def put(self, key: str, data: bytes) -> None:
        self._replace(self._path(key), data)

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        """Write `data` to `path`: a new file, modified after the one it replaces (its token is
        then new, see the class)."""
        try:
            replaced: int | None = path.stat().st_mtime_ns
        except FileNotFoundError:
            replaced = None
        write_atomically(path, data, replaced)

    def upload(self, key: str, source: Path) -> None:
        copy_file_atomically(source, self._path(key))

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
            self._replace(path, data)
            return True


class S3Store(ObjectStore):
    """An S3 bucket prefix through boto3; any S3-compatible store via AWS_ENDPOINT_URL."""

    list_page_size = 1000  # keys per LIST request: S3's maximum

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.client = client or boto3.session.Session().client("s3", config=s3_client_config())

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def endpoint(self) -> str:
        return redact(str(self.client.meta.endpoint_url))

    def endpoint_named(self) -> str:
        """The endpoint as the user set it: `AWS_ENDPOINT_URL=...` (redacted), else the URL."""
        endpoint = redact(str(self.client.meta.endpoint_url))
        for variable in ENDPOINT_VARIABLES:
            if os.environ.get(variable):
                return f"{variable}={redact(os.environ[variable])}"
        return endpoint

    def check_reachable(self) -> None:
        """A wrong port, host or scheme in the endpoint is said within seconds, naming it: the
        full retries (a minute of backoff) are for outages, not for a typo."""
        quick = boto3.session.Session().client(
            "s3",
            config=s3_client_config().merge(
                Config(
                    retries={"mode": "standard", "total_max_attempts": 2},
                    connect_timeout=3,
                    read_timeout=10,
                )
            ),
        )
        try:
            quick.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except botocore.exceptions.SSLError as error:
            raise StoreError(
                f"TLS with the S3 endpoint {self.endpoint_named()} failed (is it http://, not "
                f"https://?): {redact(str(error))[:200]}"
            ) from None
        except botocore.exceptions.EndpointConnectionError:
            raise StoreError(
                f"cannot connect to the S3 endpoint {self.endpoint_named()}: check its host and "
                "port (nothing answers there)"
            ) from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            pass  # anything else is judged by the full check, with every retry

    def check(self) -> None:
        self.check_reachable()
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
            raise StoreError(f"cannot reach the S3 endpoint: {redact(str(error))}") from None
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
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix + prefix,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"][len(self.prefix) :],
                    size=int(item["Size"]),
                    etag=str(item["ETag"]).strip('"'),
                    modified=item.get("LastModified"),
                )

    def remove_partials(self, older_than: datetime, dry_run: bool) -> tuple[str, ...]:
        """Multipart uploads under our prefix never completed (billed until aborted)."""
        removed: tuple[str, ...] = ()
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < older_than:
                    removed += (f"{upload['Key'][len(self.prefix) :]} (multipart upload)",)
                    if not dry_run:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
        return removed

    def _missing(self, key: str, error: botocore.exceptions.ClientError) -> bool:
        """Whether `error` says the object is not there.

        S3 answers 403, not 404, for a missing key when the caller may not list it (a policy
        that grants s3:ListBucket only under an s3:prefix condition): a listing of exactly that
        key, which such a policy does allow, then tells "missing" from "forbidden".
        """
        code = error.response.get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NotFound"):
            return True
        if code not in ("403", "AccessDenied", "Forbidden"):
            return False
        answer = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key), MaxKeys=1)
        return not any(item["Key"] == self._key(key) for item in answer.get("Contents", []))

    def head(self, key: str) -> ObjectInfo | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except botocore.exceptions.ClientError as error:
            if self._missing(key, error):
                return None
            raise
        date = answer["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        return ObjectInfo(
            key=key,
            size=int(answer["ContentLength"]),
            etag=str(answer["ETag"]).strip('"'),
            modified=answer.get("LastModified"),
            store_now=http_date(date),
        )

    def _get_object(self, key: str, **conditions: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **conditions)
        except botocore.exceptions.ClientError as error:
            if self._missing(key, error):
                raise ObjectNotFound(self.describe(key)) from None
            raise

    def get(self, key: str) -> bytes:
        return bytes(self._get_object(key)["Body"].read())

    def get_as_listed(self, key: str, etag: str, size: int) -> bytes:
        try:
            answer = self._get_object(key, IfMatch=etag)
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("412", "PreconditionFailed"):
                raise ObjectChanged(self.describe(key)) from None
            raise
        # A store that ignores If-Match is caught by the size: at most one byte too many is read.
        with contextlib.closing(answer["Body"]) as body:
            contents = bytes(body.read(size + 1)) if answer["ContentLength"] <= size else b""
        if len(contents) != size:
            raise ObjectChanged(self.describe(key))
        return contents

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
        for delay in (*CONFLICT_RETRY_DELAYS, None):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, **condition
                )
                return True
            except botocore.exceptions.ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                if code in ("ConditionalRequestConflict", "409") and delay is not None:
                    time.sleep(delay)  # a concurrent conditional write: not yet an answer
                    continue
                if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    raise
                break
        # A 412 can also answer botocore's retry of our own write whose first answer was lost:
        # the object then holds exactly our bytes, and the write did succeed.
        try:
            return self.get(key) == data
        except ObjectNotFound:
            return False


class GuardedStore(ObjectStore):
    """Another store whose every write first calls `guard`, which raises to refuse it."""

    def __init__(self, store: ObjectStore, guard: Callable[[], None]) -> None:
        self.inner = store
        self.guard = guard
        self.url = store.url

    def check(self) -> None:
        self.inner.check()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_as_listed(self, key: str, etag: str, size: int) -> bytes:
        return self.inner.get_as_listed(key, etag, size)

    def endpoint(self) -> str:
        return self.inner.endpoint()

    def download(self, key: str, destination: Path) -> None:
        self.inner.download(key, destination)

    def put(self, key: str, data: bytes) -> None:
        self.guard()
        self.inner.put(key, data)

    def upload(self, key: str, source: Path) -> None:
        self.guard()
        self.inner.upload(key, source)

    def delete(self, key: str) -> None:
        self.guard()
        self.inner.delete(key)

    def remove_partials(self, older_than: datetime, dry_run: bool) -> tuple[str, ...]:
        self.guard()
        return self.inner.remove_partials(older_than, dry_run)

    def put_if(self, key: str, data: bytes, expected_etag: str | None) -> bool:
        self.guard()
        return self.inner.put_if(key, data, expected_etag)


def http_date(header: str | None) -> datetime | None:
    """The time in a `Date` header, in UTC; None when there is none or it cannot be read.

    Only the first date counts: a proxy can add its own, which botocore joins with a comma.
    """
    if not header:
        return None
    try:
        parsed = parsedate_to_datetime(header[: len("Mon, 30 Nov 2026 02:51:41 GMT")])
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def open_store(url: str) -> ObjectStore:
    """The store for an `s3://bucket/prefix`, `file:///path` or plain folder URL."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        return LocalStore(
            Path(parsed.path)
        )  # file:///x or file://localhost/x (checked in settings)
    if parsed.scheme == "":
        return LocalStore(Path(url))
    raise StoreError(f"unknown URL scheme '{parsed.scheme}://' in '{url}'")


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
