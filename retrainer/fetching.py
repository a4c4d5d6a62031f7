"""Fetch: mirror a data prefix (one sub-folder per class) into a local cache, incrementally.

The cache keeps a manifest of key -> ETag and size. A later fetch downloads only new or changed
objects and removes deleted ones, so a nightly run costs what changed, not what exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import botocore.exceptions

from retrainer import Log
from retrainer.cache import LocalCache
from retrainer.errors import DataError
from retrainer.records import DataSnapshot, RefusedObject
from retrainer.storage import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    key_problem,
    write_atomically,
)

MANIFEST_NAME = ".fetch-manifest.json"
LOCK_NAME = ".fetch-lock"
DOWNLOAD_THREADS = 16
DOWNLOAD_SLICE = 1024
PROGRESS_SECONDS = 10.0

OnProgress = Callable[[int, int], None]  # (objects downloaded, objects to download)

logger = logging.getLogger(__name__)


def data_fingerprint(objects: Iterable[ObjectInfo]) -> str:
    """A stable hash over every object's key, ETag and size: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for info in sorted(objects, key=lambda item: item.key):
        digest.update(f"{info.key}\t{info.etag}\t{info.size}\n".encode())
    return digest.hexdigest()


def read_manifest(cache_dir: Path) -> dict[str, list[object]]:
    """What the cache holds: key -> [ETag, size] of the object each file came from."""
    try:
        manifest = json.loads((cache_dir / MANIFEST_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _split_safe_keys(store: ObjectStore, log: Log) -> tuple[list[ObjectInfo], list[RefusedObject]]:
    """The objects that can be cached, and those refused with the reason.

    Folder markers (`class_a/`, what the S3 console's "Create folder" writes) are not data and
    are passed over silently.
    """
    objects, refused = [], []
    for info in store.list():
        if info.key.endswith("/") and info.size == 0:
            continue
        reason = info.refused or key_problem(info.key)
        if reason:
            refused.append(RefusedObject(key=info.key, reason=reason))
            log.warning("Refused %r: %s", info.key, reason)
            continue
        objects.append(info)
    return objects, refused


def _unavailable(error: BaseException) -> str | None:
    """Why an object listed a moment ago cannot be read now, if that is what `error` says."""
    if isinstance(error, ObjectNotFound):
        return "disappeared between the listing and its download"
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "Forbidden"):
            return f"listed, but its download is forbidden ({code}): check the bucket policy"
    return None


def fetch_data(
    store: ObjectStore,
    cache_root: Path,
    log: Log = logger,
    on_progress: OnProgress | None = None,
) -> DataSnapshot:
    """Bring the local cache in line with the store; only changed objects cross the network."""
    store.check()
    objects, refused = _split_safe_keys(store, log)
    if not objects:
        # A retry cannot make data appear.
        raise DataError(
            f"no data found at {store.url}: expected one sub-folder of images per class"
        )

    cache_dir = LocalCache(cache_root).data_dir(store.url)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Two models trained from the same data may fetch at once: one at a time per cache folder, or
    # one would remove the other's downloads in flight as leftovers.
    with open(cache_dir / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _mirror(store, objects, refused, cache_dir, log, on_progress)


class Progress:
    """Say how far a long download is: a line and a callback every PROGRESS_SECONDS."""

    def __init__(self, total: int, log: Log, on_progress: OnProgress | None) -> None:
        self.total = total
        self.done = 0
        self.log = log
        self.on_progress = on_progress
        self.last = time.monotonic()

    def advance(self) -> None:
        self.done += 1
        if time.monotonic() - self.last < PROGRESS_SECONDS and self.done < self.total:
            return
        self.last = time.monotonic()
        if self.done < self.total:
            self.log.info(
                "Downloaded %d of %d objects (%.0f%%)",
                self.done,
                self.total,
                100 * self.done / self.total,
            )
        if self.on_progress:
            self.on_progress(self.done, self.total)


def _mirror(
    store: ObjectStore,
    objects: list[ObjectInfo],
    refused: list[RefusedObject],
    cache_dir: Path,
    log: Log,
    on_progress: OnProgress | None,
) -> DataSnapshot:
    known = read_manifest(cache_dir)
    wanted = {info.key: info for info in objects}

    stale = [
        info
        for info in objects
        if known.get(info.key) != [info.etag, info.size] or not (cache_dir / info.key).is_file()
    ]
    removed = _remove_files_not_in(cache_dir, set(wanted))

    log.info(
        "Fetching %s: %d objects, %d to download, %d removed from the cache",
        store.url,
        len(objects),
        len(stale),
        removed,
    )
    pending = {info.key for info in stale}
    failures: list[BaseException] = []
    progress = Progress(len(stale), log, on_progress)
    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        # In slices, so memory for the queued work stays flat however many objects there are.
        for start in range(0, len(stale), DOWNLOAD_SLICE):
            downloads = {
                pool.submit(store.download, info.key, cache_dir / info.key): info.key
                for info in stale[start : start + DOWNLOAD_SLICE]
            }
            for done in as_completed(downloads):
                key = downloads[done]
                if (error := done.exception()) and (reason := _unavailable(error)):
                    # One object gone or forbidden is not worth the night: it is listed instead.
                    log.warning("Refused %r: %s", key, reason)
                    refused.append(RefusedObject(key=key, reason=reason))
                    pending.discard(key)
                    wanted.pop(key)
                elif error:
                    failures.append(error)
                else:
                    pending.discard(key)
                progress.advance()
    # Recorded after a failure too: what did arrive is kept, so a rerun fetches only the rest.
    manifest = {
        key: [info.etag, info.size] for key, info in sorted(wanted.items()) if key not in pending
    }
    write_atomically(cache_dir / MANIFEST_NAME, json.dumps(manifest).encode())
    if failures:
        log.error("%d of %d downloads failed", len(failures), len(stale))
        raise failures[0]
    return DataSnapshot(
        source_url=store.url,
        cache_dir=cache_dir,
        fingerprint=data_fingerprint(wanted.values()),
        file_count=len(wanted),
        downloaded=len(stale),
        deleted=removed,
        refused=refused,
    )


def _remove_files_not_in(cache_dir: Path, keys: set[str]) -> int:
    """Delete cached files whose object is gone, and leftovers of an interrupted download."""
    removed = 0
    for path in cache_dir.rglob("*"):
        if not path.is_file() or path.name in (MANIFEST_NAME, LOCK_NAME):
            continue
        if path.relative_to(cache_dir).as_posix() not in keys:
            path.unlink()
            removed += 1
    return removed
