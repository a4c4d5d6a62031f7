"""Garbage collection: what the store and the worker's disk may lose, and what they always keep.

Always kept: the champion and every version in its history (the rollback targets), the newest
`keep` versions that were not promoted, work records (a few hundred bytes each; they stop a
rejected work from being retrained every night) and the lease.

Removed from the store:
- versions without a manifest untouched for a day: a publication that died half-way (readers
  never follow them; a younger one may be a run still uploading, whose lease this gc outlived);
- partial writes: multipart uploads never completed, `.tmp-` files of the local store;
- checkpoints of work that finished (written before its work record; a forced rerun's are newer)
  or that nobody touched for `older_than` (abandoned: its data or parameters changed before it
  could finish);
- versions that were not promoted, older than `older_than`, beyond the newest `keep`;
- served copies of former champions (`serving/<model>/<n>/` but the champion's own number),
  older than `older_than`;
- prepared shards no prepared index names (compacted, or of data that changed), older than
  `older_than` (younger ones may belong to a preparation still running), unless a run of any
  model reads that prepared dataset now (see retrainer.data.preparation).

Removed from the worker's disk (a cache: everything there can be fetched again): run folders,
checkpoint copies, prepared shards and champion models (but the current champion's) untouched
for a day.

It runs under the model's lease, so no run of the model is live while it deletes.
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from retrainer.layout import (
    MANIFEST_FILE,
    PREPARED,
    PREPARED_INDEX,
    READERS,
    SHARDS,
    LocalCache,
    dataset_in,
    shard_key,
    work_folder,
)
from retrainer.records import PreparedIndex
from retrainer.registry import ModelRegistry
from retrainer.storage import ObjectInfo, ObjectNotFound

logger = logging.getLogger(__name__)

LOCAL_LEFTOVER_AGE = timedelta(days=1)
# A run reads a prepared dataset from its plan to its shards on disk, within its timeout (12 h by
# default); the mark of a killed run no longer protects the dataset's unused shards after this.
READER_MARK_AGE = timedelta(days=1)
# A version without a manifest younger than this may still be uploading (its run's lease can have
# lapsed in an outage while it goes on): it is left alone, whatever `older_than` says.
UNFINISHED_VERSION_AGE = timedelta(days=1)
VERSION_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


def collect_garbage(
    registry: ModelRegistry,
    cache: LocalCache,
    keep: int,
    older_than: timedelta,
    dry_run: bool,
    now: datetime | None = None,
) -> list[str]:
    """Remove what is no longer needed; one line per thing removed (or that would be)."""
    now = now or datetime.now(UTC)
    cutoff = now - older_than
    removed = [f"store: {item}" for item in registry.store.remove_partials(cutoff, dry_run)]
    removed += _collect_versions(registry, keep, cutoff, now - UNFINISHED_VERSION_AGE, dry_run)
    removed += _collect_checkpoints(registry, cutoff, dry_run)
    removed += _collect_shards(registry, cutoff, dry_run)
    removed += _collect_served(registry, cutoff, dry_run)
    removed += _collect_local(registry, cache, now - LOCAL_LEFTOVER_AGE, dry_run)
    return removed


def _delete_all(registry: ModelRegistry, objects: list[ObjectInfo], dry_run: bool) -> None:
    if not dry_run:
        for info in objects:
            registry.store.delete(info.key)


def _version_time(version: str, objects: list[ObjectInfo]) -> datetime:
    try:
        return datetime.strptime(version.split("-", 1)[0], VERSION_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return max((info.modified for info in objects if info.modified), default=datetime.now(UTC))


def _collect_versions(
    registry: ModelRegistry, keep: int, cutoff: datetime, unfinished_cutoff: datetime, dry_run: bool
) -> list[str]:
    keys = registry.keys
    objects: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in registry.store.list(keys.versions):
        objects[keys.version_in(info.key)].append(info)
    champion, _ = registry.read_champion()
    protected = set()
    if champion is not None:
        protected = {champion.version, *(entry.version for entry in champion.previous)}

    removed = []
    unpromoted = []
    for version in sorted(objects):
        files = objects[version]
        if not any(info.key == keys.version_file(version, MANIFEST_FILE) for info in files):
            newest = max((info.modified or unfinished_cutoff) for info in files)
            if newest >= unfinished_cutoff:
                continue
            removed.append(
                f"store: {keys.version(version)} (no manifest: publication never finished)"
            )
            _delete_all(registry, files, dry_run)
        elif version not in protected:
            unpromoted.append(version)
    for version in unpromoted[: max(0, len(unpromoted) - keep)]:
        files = objects[version]
        if _version_time(version, files) < cutoff:
            removed.append(f"store: {keys.version(version)} (not promoted, past retention)")
            _delete_all(registry, files, dry_run)
    return removed


def _collect_checkpoints(registry: ModelRegistry, cutoff: datetime, dry_run: bool) -> list[str]:
    """Checkpoints of finished work (written before its work record: a forced rerun of the same
    work writes newer ones, which it resumes from) or untouched since `cutoff`."""
    keys = registry.keys
    finished = {
        work_folder(keys.work_in(info.key)): info.modified
        for info in registry.store.list(keys.works)
    }
    objects: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in registry.store.list(keys.checkpoints):
        objects[keys.checkpointed_work_in(info.key)].append(info)
    removed = []
    for folder, files in sorted(objects.items()):
        newest = max((info.modified for info in files if info.modified), default=cutoff)
        if folder in finished and newest <= (finished[folder] or newest):
            removed.append(f"store: {keys.checkpoint(folder)} (checkpoints of finished work)")
        elif newest < cutoff:
            removed.append(f"store: {keys.checkpoint(folder)} (checkpoints of abandoned work)")
        else:
            continue
        _delete_all(registry, files, dry_run)
    return removed


def _collect_shards(registry: ModelRegistry, cutoff: datetime, dry_run: bool) -> list[str]:
    """Shards no index names, older than `cutoff`, of datasets no run reads now."""
    datasets: dict[str, dict[str, ObjectInfo]] = defaultdict(dict)
    for info in registry.store.list(PREPARED):
        dataset, name = dataset_in(info.key)
        datasets[dataset][name] = info
    removed = []
    for dataset, objects in sorted(datasets.items()):
        try:
            index = PreparedIndex.model_validate_json(
                registry.store.get(f"{dataset}/{PREPARED_INDEX}")
            )
        except (ObjectNotFound, ValidationError):
            continue  # without a readable index nothing can be shown unused
        named = {shard_key(shard) for shard in index.shards}
        unused = [
            info
            for name, info in objects.items()
            if name.startswith(SHARDS) and name not in named and (info.modified or cutoff) < cutoff
        ]
        # Listed again after the index: a run marks itself before it reads the index, so a mark
        # missing here belongs to a run that reads this index or a later one, never a shard of
        # an earlier one.
        marks = {
            dataset_in(info.key)[1]: info for info in registry.store.list(f"{dataset}/{READERS}")
        }
        if unused and (readers := _live_readers(registry, marks)):
            logger.info("Kept the shards of %s: read now by %s", dataset, ", ".join(readers))
            continue
        removed += [f"store: {info.key} (prepared shard no index names)" for info in unused]
        _delete_all(registry, unused, dry_run)
    return removed


def _live_readers(registry: ModelRegistry, marks: dict[str, ObjectInfo]) -> list[str]:
    """The runs whose reader mark is younger than READER_MARK_AGE, by the store's own clock."""
    live = []
    for name, mark in marks.items():
        info = registry.store.head(mark.key)  # its answer carries the store's time
        if info and info.age is not None and info.age < READER_MARK_AGE:
            live.append(name.removeprefix(READERS))
    return live


def _collect_served(registry: ModelRegistry, cutoff: datetime, dry_run: bool) -> list[str]:
    """Served folders but the champion's own (by its number, whichever is highest)."""
    champion, _ = registry.read_champion()
    keys = registry.keys
    served: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in registry.store.list(f"{keys.serving}/"):
        served[keys.served_number_in(info.key)].append(info)
    removed = []
    kept = str(champion.serving_number) if champion else None
    for number in sorted((n for n in served if n != kept), key=int):
        files = served[number]
        if max((info.modified or cutoff) for info in files) < cutoff:
            removed.append(
                f"store: {keys.served(int(number))} (served before the current champion)"
            )
            _delete_all(registry, files, dry_run)
    return removed


def _newest_change(path: Path) -> datetime:
    times = [path.stat().st_mtime, *(child.stat().st_mtime for child in path.rglob("*"))]
    return datetime.fromtimestamp(max(times), UTC)


def _collect_local(
    registry: ModelRegistry, cache: LocalCache, cutoff: datetime, dry_run: bool
) -> list[str]:
    champion, _ = registry.read_champion()
    candidates = [
        *(cache.runs_dir.glob("*")),
        *cache.checkpoints_dir(registry.model_name).glob("*"),
        *cache.shards_dir.glob("*"),
    ]
    candidates += [
        path
        for path in cache.champions_dir.glob("*")
        if champion is None or path.name != champion.version
    ]
    stale = [path for path in candidates if _newest_change(path) < cutoff]
    removed = []
    for path in sorted(stale):
        removed.append(f"local: {path}")
        if dry_run:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
