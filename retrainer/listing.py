"""List the data: one pass over a prefix (one sub-folder per class) says what the data is.

Nothing is downloaded here: whether anything changed is decided from the listing alone (its
fingerprint against the champion's), so a night with nothing new costs one LIST. The objects
themselves are read by the prepare stage, and only those never prepared before.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import botocore.exceptions

from retrainer import Log
from retrainer.errors import DataError
from retrainer.records import LISTING, DataSnapshot, ListedObject, RefusedObject
from retrainer.storage import ObjectNotFound, ObjectStore, key_problem, write_atomically

PROGRESS_SECONDS = 10.0

OnProgress = Callable[[int, int], None]  # (items done, items to do)

logger = logging.getLogger(__name__)


def data_fingerprint(objects: Iterable[ListedObject]) -> str:
    """A stable hash over every object's key, ETag and size: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for info in sorted(objects, key=lambda item: item.key):
        digest.update(f"{info.key}\t{info.etag}\t{info.size}\n".encode())
    return digest.hexdigest()


def _split_safe_keys(
    store: ObjectStore, log: Log
) -> tuple[list[ListedObject], list[RefusedObject]]:
    """The objects that can be used, and those refused with the reason.

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
        objects.append(ListedObject(key=info.key, etag=info.etag, size=info.size))
    return objects, refused


def list_data(store: ObjectStore, listing_path: Path, log: Log = logger) -> DataSnapshot:
    """One listing of the data, kept at `listing_path`, and its fingerprint."""
    store.check()
    objects, refused = _split_safe_keys(store, log)
    if not objects:
        # A retry cannot make data appear.
        raise DataError(
            f"no data found at {store.url}: expected one sub-folder of images per class"
        )
    write_atomically(listing_path, LISTING.dump_json(objects))
    return DataSnapshot(
        source_url=store.url,
        fingerprint=data_fingerprint(objects),
        file_count=len(objects),
        listing_path=listing_path,
        refused=refused,
    )


def unavailable(error: BaseException) -> str | None:
    """Why an object listed a moment ago cannot be read now, if that is what `error` says."""
    if isinstance(error, ObjectNotFound):
        return "disappeared between the listing and its download"
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "Forbidden"):
            return f"listed, but its download is forbidden ({code}): check the bucket policy"
    return None


class Progress:
    """Say how far a long step is: a line and a callback every PROGRESS_SECONDS."""

    def __init__(
        self, what: str, total: int, log: Log, on_progress: OnProgress | None = None
    ) -> None:
        self.what = what
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
                "%s: %d of %d (%.0f%%)",
                self.what,
                self.done,
                self.total,
                100 * self.done / self.total,
            )
        if self.on_progress:
            self.on_progress(self.done, self.total)
