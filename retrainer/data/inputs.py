"""The input function: one subset of the split, as batches of model inputs, from the shards.

Images are read from the prepared shards (`retrainer.data.shards`); a shard may also hold records
that left the data or belong to another subset, so every record is looked up by key and ETag and
kept only when it is this subset's. A subset that fits the split's memory budget is read once, in
batches of records, and then served from memory; a larger one is streamed from the shards every
epoch.
A subset reads only the shards holding its images (the split file names them). Shards are filled
in the order of the hash that places an image in its subset, so most shards hold one subset's
images and a subset passes over few of the others' records; the subsets still depend on the
fractions, which a run may change, so no shard is assumed to be one subset's.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from retrainer.data.image import input_shape
from retrainer.data.shards import parse_records
from retrainer.data.splits import Example, Subset, read_split
from retrainer.records import DataSplit

if TYPE_CHECKING:
    import tensorflow as tf

# Shards hold their records in the order of the split's hash, so any run of them is already a
# random sample of the classes (`retrainer.data.preparation`); the buffer and the interleave only
# make each epoch's order new. In images, not bytes: at 224 px, 1,024 images take 154 MB.
SHUFFLE_BUFFER_IMAGES = 1024
SHARDS_AT_ONCE = 4
RECORDS_AT_ONCE = 1024
RECORDS_STREAMED_AT_ONCE = 256  # a block of 38 MB at 224 px


def record_id(key: tf.Tensor, etag: tf.Tensor) -> tf.Tensor:
    """What a record is looked up by: its object's key and ETag."""
    import tensorflow as tf

    return tf.strings.join([key, etag], separator="\n")


def input_fn(
    split: DataSplit,
    subset: Subset,
    shuffle: bool,
    seed: int = 0,
    memory_budget: int | None = None,
) -> tf.data.Dataset:
    """Prepared uint8 images of one subset with integer labels, batched and prefetched.

    Images stay uint8 until the model's own Rescaling layer: 4x smaller than float32 in memory and
    in every batch. Every image of the subset comes exactly once per epoch, in a new order each
    epoch when shuffled; without shuffle the order is the same on every pass (the gate pairs
    predictions with labels across passes). A subset that fits `memory_budget` (by default the
    split's, `INPUT_MEMORY_BUDGET`) is held in memory; a larger one streams from the shards.
    """
    split_file = read_split(split)
    examples = split_file.subset(subset)
    shape = input_shape(split.preprocessing)
    budget = split.memory_budget if memory_budget is None else memory_budget
    if fits_in_memory(split, len(examples), budget):
        images, labels = subset_in_memory(split_file.shards[subset], examples, shape)
        return from_memory(images, labels, split.batch_size, shuffle, seed)
    return streamed(split_file.shards[subset], examples, shape, split.batch_size, shuffle, seed)


def fits_in_memory(split: DataSplit, images: int, budget: int | None = None) -> bool:
    """Whether `input_fn` holds this many of the split's images in memory."""
    budget = split.memory_budget if budget is None else budget
    return images * math.prod(input_shape(split.preprocessing)) <= budget


def input_rate(split: DataSplit, subset: Subset, held: bool, batches: int = 50) -> float:
    """Images per second `input_fn` hands `fit` on this node, without a model: streamed from the
    shards, or held in memory (timed after the one read that loads it)."""
    dataset = input_fn(split, subset, shuffle=True, memory_budget=None if held else 0)
    started = time.perf_counter()
    images = sum(int(labels.shape[0]) for _, labels in dataset.take(batches))
    return images / (time.perf_counter() - started)


def subset_in_memory(
    shards: list[str], examples: list[Example], shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The subset's images (in the split file's order) and labels, read once from its shards."""
    import tensorflow as tf

    position = {f"{example.key}\n{example.etag}": index for index, example in enumerate(examples)}
    images = np.empty((len(examples), *shape), np.uint8)
    found = np.zeros(len(examples), bool)
    records = tf.data.TFRecordDataset(shards, num_parallel_reads=tf.data.AUTOTUNE)
    batches = records.batch(RECORDS_AT_ONCE).map(parse_records, num_parallel_calls=tf.data.AUTOTUNE)
    for batch in batches.as_numpy_iterator():
        for key, etag, pixels in zip(batch["key"], batch["etag"], batch["image"], strict=True):
            index = position.get(f"{key.decode()}\n{etag.decode()}")
            if index is not None:
                images[index] = np.frombuffer(pixels, np.uint8).reshape(shape)
                found[index] = True
    if not found.all():
        missing = examples[int(np.argmin(found))].key
        raise ValueError(
            f"{len(found) - int(found.sum())} image(s) of the split are in none of its shards "
            f"(first: {missing}): a shard on this worker lost records; run `retrainer gc` or "
            "delete the worker's shards, and they are downloaded again"
        )
    return images, np.array([example.label for example in examples], np.int32)


def from_memory(
    images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    """Batches of the images in memory, shuffled in full every epoch. tf.data's shuffle buffer
    holds its own copy of the subset, so a subset takes at most twice its size in memory; a
    gather of each batch from one copy measured 0.76-0.84 of this rate at 32 px."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def streamed(
    shards: list[str],
    examples: list[Example],
    shape: tuple[int, int, int],
    batch_size: int,
    shuffle: bool,
    seed: int,
) -> tf.data.Dataset:
    """The shards read again every epoch, each record looked up in a table of the subset; memory
    is bounded however large the subset grows (the shuffle buffer is bounded in images, and there
    is no file cache: with one, peak memory grew 30% at 10x the data; on tcmalloc, as in the
    image, it grows under 10% at 10x, bench.memory)."""
    import tensorflow as tf

    ids = record_id([example.key for example in examples], [example.etag for example in examples])
    labels = [example.label for example in examples]
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(ids, tf.constant(labels, tf.int32)), default_value=-1
    )

    def subset_images(records: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """A block of records to the images and labels of this subset's records among them."""
        parsed = parse_records(records)
        labels = table.lookup(record_id(parsed["key"], parsed["etag"]))
        kept = labels >= 0  # the table's default: another subset's record, or a dead one
        pixels = tf.io.decode_raw(tf.boolean_mask(parsed["image"], kept), tf.uint8)
        return tf.reshape(pixels, (-1, *shape)), tf.boolean_mask(labels, kept)

    files = tf.data.Dataset.from_tensor_slices(shards)
    if shuffle:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
    dataset = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(SHARDS_AT_ONCE, len(shards)) if shuffle else 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    # Records parsed, looked up and decoded in blocks: one tf.data step per image measured 3,900
    # images/s at 32 px, blocks of 256 over 24,000. Each image then leaves its block by unbatch;
    # the shuffle buffer's peak memory with blocks is not yet measured (bench.memory is the one
    # to run before relying on it at 224 px).
    dataset = dataset.batch(RECORDS_STREAMED_AT_ONCE)
    dataset = dataset.map(subset_images, num_parallel_calls=tf.data.AUTOTUNE).unbatch()

    # Every image of the subset exactly once: a shard that lost a record fails here, loudly.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(examples)))
    if shuffle:
        buffer = min(len(examples), SHUFFLE_BUFFER_IMAGES)
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
