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

TFRecord, because `tf.data` reads it natively, in parallel and streaming, with a CRC on every
record: a shard damaged on a worker's disk fails loudly instead of training on garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import ValidationError

from retrainer import Log
from retrainer.listing import Progress, unavailable
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
    write_atomically,
)

INDEX_KEY = "index.json"
# Objects per chunk, and so per shard: 1,000 photos at 224 px make a shard of about 150 MB.
CHUNK_OBJECTS = 1000
# A shard with fewer live records than this share of what it holds is rewritten.
COMPACT_BELOW = 0.5
DOWNLOAD_THREADS = 16

logger = logging.getLogger(__name__)


class ShardCorrupt(RuntimeError):
    """A shard's bytes do not match its name (sha256): a damaged or tampered copy."""


def prepared_url(store_url: str, source_url: str, spec: PreparationSpec) -> str:
    """Where the data at `source_url`, prepared by `spec`, is kept in the store."""
    data = hashlib.sha256(source_url.encode()).hexdigest()[:16]
    return join_url(store_url, f"prepared/{data}/{spec.key()}")


def shard_key(shard: str) -> str:
    return f"shards/{shard}.tfrecord"


def reader_key(run_id: str) -> str:
    return f"readers/{run_id}"


def mark_reader(prepared_at: str, run_id: str) -> None:
    """Say that this run reads the prepared dataset now: gc removes none of its shards."""
    open_store(prepared_at).put(reader_key(run_id), b"")


def unmark_reader(prepared_at: str, run_id: str) -> None:
    open_store(prepared_at).delete(reader_key(run_id))


def read_index(
    store: ObjectStore, source_url: str, spec: PreparationSpec, log: Log
) -> PreparedIndex:
    """The prepared index in the store, or an empty one when there is none or it cannot be used.

    An unreadable index costs a re-preparation, never a wrong image: everything in it can be
    derived again from the source.
    """
    empty = PreparedIndex(source_url=source_url, spec=spec)
    try:
        raw = store.get(INDEX_KEY)
    except ObjectNotFound:
        return empty
    try:
        index = PreparedIndex.model_validate_json(raw)
    except ValidationError as error:
        log.warning(
            "The prepared index %s is unreadable (%s): preparing every image again",
            store.describe(INDEX_KEY),
            str(error).splitlines()[0],
        )
        return empty
    if index.spec != spec or index.source_url != source_url:
        log.warning("The prepared index %s is for other data: ignored", store.describe(INDEX_KEY))
        return empty
    return index


def plan_preparation(
    snapshot: DataSnapshot,
    prepared_at: str,
    spec: PreparationSpec,
    keep_in: Path | None = None,
    log: Log = logger,
) -> tuple[PreparedIndex, list[PreparationChunk]]:
    """What the store already holds for this listing, and the chunks of work still to do.

    `keep_in`: the training worker's shards folder, when the chunks run on that worker: a copy
    of each new shard is left there, so it is not downloaded again to train.
    """
    store = open_store(prepared_at)
    index = read_index(store, snapshot.source_url, spec, log)
    # Shards the index names but the store lost (deleted by hand) are prepared again.
    present = {
        info.key.removeprefix("shards/").removesuffix(".tfrecord") for info in store.list("shards/")
    }
    kept: dict[str, PreparedObject] = {}
    new: list[ListedObject] = []
    for listed in snapshot.read_listing():
        known = index.objects.get(listed.key)
        if (
            known is not None
            and (known.etag, known.size) == (listed.etag, listed.size)
            and (known.shard is None or (known.shard in index.shards and known.shard in present))
        ):
            kept[listed.key] = known
        else:
            new.append(listed)

    live = Counter(entry.shard for entry in kept.values() if entry.shard)
    dying = {
        shard
        for shard, count in live.items()
        if count < COMPACT_BELOW * index.shards[shard].records
    }
    carried: dict[str, list[ListedObject]] = {}
    for key, entry in list(kept.items()):
        if entry.shard in dying:
            carried.setdefault(entry.shard, []).append(
                ListedObject(key=key, etag=entry.etag, size=entry.size)
            )
            del kept[key]
    shards = {shard: index.shards[shard] for shard in live if shard not in dying}

    def chunk(
        objects: list[ListedObject], carry: dict[str, list[ListedObject]]
    ) -> PreparationChunk:
        return PreparationChunk(
            data_url=snapshot.source_url,
            prepared_url=prepared_at,
            spec=spec,
            objects=objects,
            carried=carry,
            keep_in=keep_in,
        )

    chunks = [chunk(new[i : i + CHUNK_OBJECTS], {}) for i in range(0, len(new), CHUNK_OBJECTS)]
    group: dict[str, list[ListedObject]] = {}
    for shard, records in sorted(carried.items()):
        group[shard] = records
        if sum(map(len, group.values())) >= CHUNK_OBJECTS:
            chunks.append(chunk([], group))
            group = {}
    if group:
        chunks.append(chunk([], group))
    log.info(
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
    source: ObjectStore, listed: ListedObject, spec: PreparationSpec
) -> PreparedObject | RefusedObject | tuple[PreparedObject, bytes]:
    """One source object: refused (vanished), its verdict (unusable), or verdict and pixels."""
    import tensorflow as tf

    from retrainer.dataset import decode_failure, decode_image, resize_image
    from retrainer.validation import header_problem, size_problem

    verdict = PreparedObject(etag=listed.etag, size=listed.size)
    if "/" not in listed.key:
        return verdict.model_copy(update={"problem": "not inside a class folder"})
    if problem := size_problem(listed.size, spec):
        # Not even downloaded: the listing's size is enough.
        return verdict.model_copy(update={"problem": problem})
    try:
        contents = source.get(listed.key)
    except Exception as error:
        if reason := unavailable(error):
            return RefusedObject(key=listed.key, reason=reason)
        raise
    if problem := header_problem(contents, spec):
        return verdict.model_copy(update={"problem": problem})
    try:
        pixels = resize_image(decode_image(tf.constant(contents)), spec.image_size)
    except tf.errors.OpError as error:
        return verdict.model_copy(update={"problem": decode_failure(error)})
    return verdict, pixels.numpy().tobytes()


def prepare_chunk(chunk: PreparationChunk, log: Log = logger) -> PreparedChunk:
    """Prepare one chunk into one new shard in the store: new objects, then carried records."""
    from retrainer.dataset import encode_record

    source = open_store(chunk.data_url)
    target = open_store(chunk.prepared_url)
    objects: dict[str, PreparedObject] = {}
    refused: list[RefusedObject] = []
    records = 0
    with tempfile.TemporaryDirectory(prefix="retrainer-shard-") as folder:
        shard_path = Path(folder) / "shard.tfrecord"
        with _record_writer(shard_path) as write, ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            # In the chunk's order, so the same chunk always makes the same shard (same name).
            outcomes = pool.map(
                lambda listed: prepare_object(source, listed, chunk.spec), chunk.objects
            )
            for listed, outcome in zip(chunk.objects, outcomes, strict=True):
                if isinstance(outcome, RefusedObject):
                    log.warning("Refused %r: %s", outcome.key, outcome.reason)
                    refused.append(outcome)
                elif isinstance(outcome, PreparedObject):
                    objects[listed.key] = outcome
                else:
                    verdict, pixels = outcome
                    write(encode_record(listed.key, listed.etag, pixels))
                    objects[listed.key] = verdict
                    records += 1
            for shard, carried in sorted(chunk.carried.items()):
                for listed, record in _live_records(target, shard, carried, Path(folder)):
                    write(record)
                    objects[listed.key] = PreparedObject(etag=listed.etag, size=listed.size)
                    records += 1
        if records == 0:
            return PreparedChunk(objects=objects, shard=None, shard_info=None, refused=refused)
        shard = sha256_of_file(shard_path)
        target.upload(shard_key(shard), shard_path)
        if chunk.keep_in:
            copy_file_atomically(shard_path, chunk.keep_in / f"{shard}.tfrecord")
        info = ShardInfo(size=shard_path.stat().st_size, records=records)
    for verdict in objects.values():
        if verdict.problem is None:
            verdict.shard = shard
    return PreparedChunk(objects=objects, shard=shard, shard_info=info, refused=refused)


@contextlib.contextmanager
def _record_writer(path: Path) -> Iterator[Callable[[bytes], None]]:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        yield writer.write


def download_shard(store: ObjectStore, shard: str, destination: Path) -> None:
    """Copy a shard out of the store, refusing bytes that do not match its name."""
    store.download(shard_key(shard), destination)
    if (actual := sha256_of_file(destination)) != shard:
        destination.unlink(missing_ok=True)
        raise ShardCorrupt(
            f"{store.describe(shard_key(shard))} holds bytes with sha256 {actual[:12]}, not "
            f"{shard[:12]}: the copy is damaged; run `retrainer gc` or delete it, and it is "
            "prepared again"
        )


def _live_records(
    store: ObjectStore, shard: str, carried: list[ListedObject], folder: Path
) -> Iterator[tuple[ListedObject, bytes]]:
    """The records of a shard whose object is still live, as serialized bytes."""
    import tensorflow as tf

    from retrainer.dataset import parse_records

    wanted = {(listed.key, listed.etag): listed for listed in carried}
    local = folder / f"{shard}.tfrecord"
    download_shard(store, shard, local)
    for record in tf.data.TFRecordDataset(str(local)):
        parsed = parse_records(tf.expand_dims(record, 0))
        identity = (parsed["key"][0].numpy().decode(), parsed["etag"][0].numpy().decode())
        if identity in wanted:
            yield wanted[identity], record.numpy()
    local.unlink()


def record_preparation(
    snapshot: DataSnapshot,
    prepared_at: str,
    planned: PreparedIndex,
    results: list[PreparedChunk],
    index_path: Path,
    log: Log = logger,
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
    open_store(prepared_at).put(INDEX_KEY, payload)
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


def cached_intact(path: Path, shard: str, log: Log) -> bool:
    """Whether this worker's copy of `shard` is there and holds exactly its bytes."""
    if not path.is_file():
        return False
    if sha256_of_file(path) == shard:
        return True
    log.warning("Shard %s on this disk is damaged (its sha256 differs): downloading it again", path)
    path.unlink()
    return False


def fetch_shards(
    prepared: PreparedData,
    shards_dir: Path,
    log: Log = logger,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Every shard holding a usable image, on this worker's disk: reused when already there.

    Every shard, cached or downloaded, is checked against its name (its sha256): a cached copy
    damaged on disk is downloaded again rather than failing every night on this worker. Hashing
    costs one read of the cached shards, small beside the epochs that read them again.
    """
    index = prepared.read_index()
    needed = sorted({entry.shard for entry in index.objects.values() if entry.shard})
    store = open_store(prepared.prepared_url)
    shards_dir.mkdir(parents=True, exist_ok=True)
    paths = {shard: shards_dir / f"{shard}.tfrecord" for shard in needed}
    missing = [shard for shard in needed if not cached_intact(paths[shard], shard, log)]
    for shard in set(needed) - set(missing):
        os.utime(paths[shard])  # in use: `retrainer gc` keeps recently used shards
    progress = Progress("Downloading shards", len(missing), log, on_progress)
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        for _ in pool.map(lambda shard: download_shard(store, shard, paths[shard]), missing):
            progress.advance()
    total = sum(index.shards[shard].size for shard in missing)
    log.info(
        "Shards: %d on this worker already, %d downloaded (%.1f MB)",
        len(needed) - len(missing),
        len(missing),
        total / 1e6,
    )
    return paths
