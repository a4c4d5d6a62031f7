"""List the data: one pass over a prefix (one sub-folder per class) says what the data is.

Nothing is downloaded here: whether anything changed is decided from the listing alone (its
fingerprint against the champion's), so a night with nothing new costs one LIST. The objects
themselves are read by the prepare stage, and only those never prepared before.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from retrainer.errors import DataError
from retrainer.records import LISTING, DataSnapshot, ListedObject, RefusedObject
from retrainer.storage import ObjectStore, key_problem, write_atomically

logger = logging.getLogger(__name__)


def hash_position(key: str) -> float:
    """Where a key falls in [0, 1): the same answer on every run, machine and Python process. It
    decides the key's split (`retrainer.data.splits`) and its place in the shards."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def data_fingerprint(objects: Iterable[ListedObject]) -> str:
    """A stable hash over every object's key, ETag and size: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for info in sorted(objects, key=lambda item: item.key):
        digest.update(f"{info.key}\t{info.etag}\t{info.size}\n".encode())
    return digest.hexdigest()


def _split_safe_keys(store: ObjectStore) -> tuple[list[ListedObject], list[RefusedObject]]:
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
            logger.warning("Refused %r: %s", info.key, reason)
            continue
        objects.append(ListedObject(key=info.key, etag=info.etag, size=info.size))
    return objects, refused


def list_data(store: ObjectStore, listing_path: Path) -> DataSnapshot:
    """One listing of the data, kept at `listing_path`, and its fingerprint."""
    store.check()
    objects, refused = _split_safe_keys(store)
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
