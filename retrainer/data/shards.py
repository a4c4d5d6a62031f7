"""The shard format, and this worker's verified copies of the shards.

A shard is a TFRecord file of prepared images: each record holds the source object's key and ETag
and its prepared pixels (uint8, row-major, the shape of `image.input_shape`). TFRecord, because
`tf.data` reads it natively, in parallel and streaming, with a CRC on every record: a shard damaged
on a worker's disk fails loudly instead of training on garbage. Shards are content-addressed (named
by their sha256): writing one twice is harmless, and every copy is checked against its name.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from retrainer.layout import shard_file, shard_key
from retrainer.progress import OnProgress, Progress
from retrainer.records import PreparedData, PreparedObject
from retrainer.storage import ObjectStore, open_store, sha256_of_file

if TYPE_CHECKING:
    import tensorflow as tf

DOWNLOAD_THREADS = 16
RECORD_FEATURES = ("key", "etag", "image")

logger = logging.getLogger(__name__)


class ShardCorrupt(RuntimeError):
    """A shard's bytes do not match its name (sha256): a damaged or tampered copy."""


def encode_record(key: str, etag: str, pixels: bytes) -> bytes:
    import tensorflow as tf

    feature = {
        name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        for name, value in zip(RECORD_FEATURES, (key.encode(), etag.encode(), pixels), strict=True)
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_records(records: tf.Tensor) -> dict[str, tf.Tensor]:
    """A batch of serialized records to their key, ETag and raw pixel bytes."""
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in RECORD_FEATURES}
    return tf.io.parse_example(records, spec)


@contextlib.contextmanager
def record_writer(path: Path) -> Iterator[Callable[[bytes], None]]:
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


def live_records(
    store: ObjectStore, shard: str, wanted: dict[str, PreparedObject], folder: Path
) -> Iterator[tuple[str, bytes]]:
    """The records of a shard whose object (key and ETag) is `wanted`: key and serialized bytes."""
    import tensorflow as tf

    by_identity = {(key, verdict.etag): key for key, verdict in wanted.items()}
    local = shard_file(folder, shard)
    download_shard(store, shard, local)
    for record in tf.data.TFRecordDataset(str(local)):
        parsed = parse_records(tf.expand_dims(record, 0))
        identity = (parsed["key"][0].numpy().decode(), parsed["etag"][0].numpy().decode())
        if identity in by_identity:
            yield by_identity[identity], record.numpy()
    local.unlink()


def cached_intact(path: Path, shard: str) -> bool:
    """Whether this worker's copy of `shard` is there and holds exactly its bytes."""
    if not path.is_file():
        return False
    if sha256_of_file(path) == shard:
        return True
    logger.warning(
        "Shard %s on this disk is damaged (its sha256 differs): downloading it again", path
    )
    path.unlink()
    return False


def fetch_shards(
    prepared: PreparedData, shards_dir: Path, on_progress: OnProgress | None = None
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
    paths = {shard: shard_file(shards_dir, shard) for shard in needed}
    missing = [shard for shard in needed if not cached_intact(paths[shard], shard)]
    for shard in set(needed) - set(missing):
        os.utime(paths[shard])  # in use: `retrainer gc` keeps recently used shards
    progress = Progress("Downloading shards", len(missing), logger, on_progress)
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        for _ in pool.map(lambda shard: download_shard(store, shard, paths[shard]), missing):
            progress.advance()
    total = sum(index.shards[shard].size for shard in missing)
    logger.info(
        "Shards: %d on this worker already, %d downloaded (%.1f MB)",
        len(needed) - len(missing),
        len(missing),
        total / 1e6,
    )
    return paths
