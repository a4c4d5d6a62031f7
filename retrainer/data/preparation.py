"""Prepare: every source image is checked and decoded once, by any worker, into shards in the store.

A cold worker starts each night with an empty disk, so the store, not the disk, keeps what was
prepared. Beside the models, under a prefix named by everything that shapes it:

    prepared/<hash of the data URL>/<spec key>/index.json          the PreparedIndex
    prepared/<hash of the data URL>/<spec key>/shards/<sha256>.tfrecord
    prepared/<hash of the data URL>/<spec key>/readers/<run id>   a run that reads it now

The index holds every source object's (key, ETag) verdict and the shard holding its decoded,
resized uint8 pixels. An object whose key and ETag are in the index is never downloaded or decoded
again, by any worker; new or changed objects are prepared in chunks, each into one new shard;
deleted ones leave the index; a shard whose records are mostly dead is compacted (its live records
copied into a new shard). Shards are content-addressed (named by their sha256): writing one twice
is harmless, and a download is checked against its name. Shards no index names are removed by
`retrainer gc`, but never while a run reads the dataset: several models on the same data share it,
each run marks itself a reader from before it reads the index until its shards are on its disk,
and gc leaves the shards of a dataset with a reader alone (an exclusive lease would make two
models' nights wait for each other; a killed run's mark ages out after READER_MARK_AGE).

The shard format and the copies of shards on a worker are `retrainer.data.shards`.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from retrainer.data.fingerprints import exact_fingerprint, perceptual_fingerprint
from retrainer.data.image import decode_failure, header_problem, model_input, size_problem
from retrainer.data.listing import hash_position
from retrainer.data.shards import DOWNLOAD_THREADS, encode_record, live_records, record_writer
from retrainer.layout import (
    PREPARED_INDEX,
    SHARDS,
    prepared_dataset,
    reader_key,
    shard_file,
    shard_in,
    shard_key,
)
from retrainer.records import (
    DataSnapshot,
    ListedObject,
    PreparationChunk,
    PreparationSpec,
    PreparedChunk,
    PreparedData,
    PreparedIndex,
    PreparedObject,
    RefusedObject,
    ShardInfo,
)
from retrainer.settings import join_url
from retrainer.storage import (
    ObjectNotFound,
    ObjectStore,
    copy_file_atomically,
    open_store,
    sha256_of_file,
    unavailable,
    write_atomically,
)

# Objects per chunk, and so per shard: 1,000 photos at 224 px make a shard of about 150 MB.
CHUNK_OBJECTS = 1000
# A shard with fewer live records than this share of what it holds is rewritten.
COMPACT_BELOW = 0.5

logger = logging.getLogger(__name__)


def prepared_url(store_url: str, source_url: str, spec: PreparationSpec) -> str:
    """Where the data at `source_url`, prepared by `spec`, is kept in the store."""
    return join_url(store_url, prepared_dataset(source_url, spec.key()))


def mark_reader(prepared_at: str, run_id: str) -> None:
    """Say that this run reads the prepared dataset now: gc removes none of its shards."""
    open_store(prepared_at).put(reader_key(run_id), b"")


def unmark_reader(prepared_at: str, run_id: str) -> None:
    open_store(prepared_at).delete(reader_key(run_id))


def read_index(store: ObjectStore, source_url: str, spec: PreparationSpec) -> PreparedIndex:
    """The prepared index in the store, or an empty one when there is none or it cannot be used.

    An unreadable index costs a re-preparation, never a wrong image: everything in it can be
    derived again from the source.
    """
    empty = PreparedIndex(source_url=source_url, spec=spec)
    try:
        raw = store.get(PREPARED_INDEX)
    except ObjectNotFound:
        return empty
    try:
        index = PreparedIndex.model_validate_json(raw)
    except ValidationError as error:
        logger.warning(
            "The prepared index %s is unreadable (%s): preparing every image again",
            store.describe(PREPARED_INDEX),
            str(error).splitlines()[0],
        )
        return empty
    if index.spec != spec or index.source_url != source_url:
        logger.warning(
            "The prepared index %s is for other data: ignored", store.describe(PREPARED_INDEX)
        )
        return empty
    return index


def plan_preparation(
    snapshot: DataSnapshot,
    prepared_at: str,
    spec: PreparationSpec,
    keep_in: Path | None = None,
) -> tuple[PreparedIndex, list[PreparationChunk]]:
    """What the store already holds for this listing, and the chunks of work still to do.

    `keep_in`: the training worker's shards folder, when the chunks run on that worker: a copy
    of each new shard is left there, so it is not downloaded again to train.
    """
    store = open_store(prepared_at)
    index = read_index(store, snapshot.source_url, spec)
    # Shards the index names but the store lost (deleted by hand) are prepared again.
    present = {shard_in(info.key) for info in store.list(SHARDS)}
    kept: dict[str, PreparedObject] = {}
    new: list[ListedObject] = []
    for listed in snapshot.read_listing():
        known = index.objects.get(listed.key)
        if (
            known is not None
            and (known.etag, known.size) == (listed.etag, listed.size)
            and (known.shard is None or (known.shard in index.shards and known.shard in present))
            and known.fingerprinted
        ):
            kept[listed.key] = known
        else:
            new.append(listed)
    # Listings come class by class; in the order of the hash that also decides the split, each
    # shard is a random sample of the classes (so a streamed window is one too) and holds one
    # band of split positions (so a subset reads few of the others' records).
    new.sort(key=lambda listed: hash_position(listed.key))

    live = Counter(entry.shard for entry in kept.values() if entry.shard)
    dying = {
        shard
        for shard, count in live.items()
        if count < COMPACT_BELOW * index.shards[shard].records
    }
    carried: dict[str, dict[str, PreparedObject]] = {}
    for key, entry in list(kept.items()):
        if entry.shard in dying:
            carried.setdefault(entry.shard, {})[key] = entry
            del kept[key]
    shards = {shard: index.shards[shard] for shard in live if shard not in dying}
    night = datetime.now(UTC)

    def chunk(
        objects: list[ListedObject], carry: dict[str, dict[str, PreparedObject]]
    ) -> PreparationChunk:
        return PreparationChunk(
            data_url=snapshot.source_url,
            prepared_url=prepared_at,
            spec=spec,
            objects=objects,
            carried=carry,
            night=night,
            keep_in=keep_in,
        )

    chunks = [chunk(new[i : i + CHUNK_OBJECTS], {}) for i in range(0, len(new), CHUNK_OBJECTS)]
    group: dict[str, dict[str, PreparedObject]] = {}
    for shard, records in sorted(carried.items()):
        group[shard] = records
        if sum(map(len, group.values())) >= CHUNK_OBJECTS:
            chunks.append(chunk([], group))
            group = {}
    if group:
        chunks.append(chunk([], group))
    logger.info(
        "Prepared dataset %s: %d of %d objects already prepared; %d new or changed to prepare "
        "in %d chunk(s); %d mostly dead shard(s) to compact",
        prepared_at,
        len(kept),
        snapshot.file_count,
        len(new),
        len(chunks),
        len(dying),
    )
    planned = PreparedIndex(source_url=snapshot.source_url, spec=spec, objects=kept, shards=shards)
    return planned, chunks


def prepare_object(
    source: ObjectStore, listed: ListedObject, spec: PreparationSpec, night: datetime
) -> PreparedObject | RefusedObject | tuple[PreparedObject, bytes]:
    """One source object: refused (vanished), its verdict (unusable), or verdict and pixels."""
    import tensorflow as tf

    verdict = PreparedObject(etag=listed.etag, size=listed.size, first_seen=night)
    if "/" not in listed.key:
        return verdict.model_copy(update={"problem": "not inside a class folder"})
    if problem := size_problem(listed.size, spec):
        # Not even downloaded: the listing's size is enough.
        return verdict.model_copy(update={"problem": problem})
    try:
        contents = source.get_as_listed(listed.key, listed.etag, listed.size)
    except Exception as error:
        if reason := unavailable(error):
            return RefusedObject(key=listed.key, reason=reason)
        raise
    if problem := header_problem(contents, spec):
        return verdict.model_copy(update={"problem": problem})
    try:
        pixels = model_input(tf.constant(contents), spec).numpy()
    except tf.errors.OpError as error:
        return verdict.model_copy(update={"problem": decode_failure(error)})
    raw = pixels.tobytes()
    fingerprints = {"exact": exact_fingerprint(raw), "perceptual": perceptual_fingerprint(pixels)}
    return verdict.model_copy(update=fingerprints), raw


def prepare_chunk(chunk: PreparationChunk) -> PreparedChunk:
    """Prepare one chunk into one new shard in the store: new objects, then carried records."""
    source = open_store(chunk.data_url)
    target = open_store(chunk.prepared_url)
    objects: dict[str, PreparedObject] = {}
    refused: list[RefusedObject] = []
    records = 0
    with tempfile.TemporaryDirectory(prefix="retrainer-shard-") as folder:
        shard_path = Path(folder) / "shard.tfrecord"
        with record_writer(shard_path) as write, ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            # In the chunk's order, so the same chunk always makes the same shard (same name).
            outcomes = pool.map(
                lambda listed: prepare_object(source, listed, chunk.spec, chunk.night),
                chunk.objects,
            )
            for listed, outcome in zip(chunk.objects, outcomes, strict=True):
                if isinstance(outcome, RefusedObject):
                    logger.warning("Refused %r: %s", outcome.key, outcome.reason)
                    refused.append(outcome)
                elif isinstance(outcome, PreparedObject):
                    objects[listed.key] = outcome
                else:
                    verdict, pixels = outcome
                    write(encode_record(listed.key, listed.etag, pixels))
                    objects[listed.key] = verdict
                    records += 1
            for shard, carried in sorted(chunk.carried.items()):
                for key, record in live_records(target, shard, carried, Path(folder)):
                    write(record)
                    objects[key] = carried[key]
                    records += 1
        if records == 0:
            return PreparedChunk(objects=objects, shard=None, shard_info=None, refused=refused)
        shard = sha256_of_file(shard_path)
        target.upload(shard_key(shard), shard_path)
        if chunk.keep_in:
            copy_file_atomically(shard_path, shard_file(chunk.keep_in, shard))
        info = ShardInfo(size=shard_path.stat().st_size, records=records)
    for verdict in objects.values():
        if verdict.problem is None:
            verdict.shard = shard
    return PreparedChunk(objects=objects, shard=shard, shard_info=info, refused=refused)


def record_preparation(
    snapshot: DataSnapshot,
    prepared_at: str,
    planned: PreparedIndex,
    results: list[PreparedChunk],
    index_path: Path,
) -> PreparedData:
    """Write the index of this listing to the store (and a copy to `index_path`).

    Two runs on the same data may write it at once (two models): each index is complete and true
    for its own listing, so the last write wins, and what the other prepared is found again by
    its shards' names the next time it is prepared.
    """
    index = planned.model_copy(deep=True)
    refused = list(snapshot.refused)
    for result in results:
        index.objects.update(result.objects)
        if result.shard and result.shard_info:
            index.shards[result.shard] = result.shard_info
        refused += result.refused
    index.objects = dict(sorted(index.objects.items()))
    payload = index.model_dump_json().encode()
    open_store(prepared_at).put(PREPARED_INDEX, payload)
    write_atomically(index_path, payload)
    prepared = sum(len(chunk.objects) for chunk in results)
    return PreparedData(
        snapshot=snapshot,
        prepared_url=prepared_at,
        spec=index.spec,
        index_path=index_path,
        prepared=prepared,
        reused=len(planned.objects),
        shards_written=sum(1 for result in results if result.shard),
        refused=refused,
    )
