"""Batches: a stable train/validation split and the one tf.data input function for every dataset.

The split hashes each file's path, so as the dataset grows an image never moves between training
and validation, and comparisons night after night stay honest.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from retrainer.errors import DataError
from retrainer.records import Batches, ValidatedData
from retrainer.storage import write_atomically

if TYPE_CHECKING:
    import tensorflow as tf

CHANNELS = 3
SHUFFLE_BUFFER_BYTES = 32 * 1024 * 1024


def is_validation(relative_path: str, validation_fraction: float) -> bool:
    """Place a file by a hash of its path: the same answer on every run and every machine."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction


def split_data(
    data: ValidatedData,
    work_dir: Path,
    image_size: int,
    batch_size: int,
    validation_fraction: float,
    cache_decoded: bool = True,
) -> Batches:
    """Write the split to disk and describe it; the datasets are built where they are used."""
    index: list[list[object]] = json.loads(data.index_path.read_text())
    train: list[list[object]] = []
    validation: list[list[object]] = []
    for relative, label in index:
        chosen = validation if is_validation(str(relative), validation_fraction) else train
        chosen.append([str(data.snapshot.cache_dir / str(relative)), label])

    missing = sorted(
        set(range(len(data.class_names))) - {int(str(label)) for _, label in validation}
    )
    if not train or missing:
        names = ", ".join(data.class_names[i] for i in missing) or "all"
        raise DataError(
            f"the validation split has no images of {names}: add images or raise "
            "RETRAINER_VALIDATION_FRACTION"
        )

    split_path = work_dir / f"split-{data.snapshot.fingerprint[:16]}.json"
    split = {"class_names": data.class_names, "train": train, "validation": validation}
    write_atomically(split_path, json.dumps(split).encode())
    return Batches(
        split_path=split_path,
        class_names=data.class_names,
        image_size=image_size,
        batch_size=batch_size,
        train_count=len(train),
        validation_count=len(validation),
        train_per_class=count_per_class(train, data.class_names),
        validation_per_class=count_per_class(validation, data.class_names),
        data_fingerprint=data.snapshot.fingerprint,
        cache_decoded=cache_decoded,
    )


def count_per_class(examples: list[list[object]], class_names: list[str]) -> dict[str, int]:
    counts = Counter(int(str(label)) for _, label in examples)
    return {name: counts[index] for index, name in enumerate(class_names)}


def input_fn(batches: Batches, subset: str, shuffle: bool, seed: int = 0) -> tf.data.Dataset:
    """Decoded, resized uint8 images with integer labels, batched and prefetched.

    Images stay uint8 until the model's own Rescaling layer: 4x smaller than float32 in the cache
    and in every batch. With `cache_decoded`, files are decoded once, in the first epoch, into a
    cache file beside the split (decoding on 2 cores competes with training for the same cores).
    Memory stays flat however large the dataset grows: the shuffle buffer is bounded in bytes.
    """
    import tensorflow as tf

    split = json.loads(batches.split_path.read_text())
    examples = split[subset]
    paths = [path for path, _ in examples]
    labels = [label for _, label in examples]
    size = batches.image_size

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=CHANNELS, expand_animations=False
        )
        image = tf.image.resize(image, (size, size))
        return tf.cast(tf.round(image), tf.uint8), label

    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        # File names are cheap to shuffle in full; the cache then holds a random order.
        dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=False)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if batches.cache_decoded:
        dataset = dataset.cache(str(decoded_cache_path(batches, subset)))
    if shuffle:
        buffer = max(1, min(len(examples), SHUFFLE_BUFFER_BYTES // (size * size * CHANNELS)))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batches.batch_size).prefetch(tf.data.AUTOTUNE)


def decoded_cache_path(batches: Batches, subset: str) -> Path:
    """One cache per split, subset and image size; a stale lock of a killed run is removed."""
    prefix = batches.split_path.with_name(
        f"{batches.split_path.stem}-{subset}-{batches.image_size}px.cache"
    )
    for stale in prefix.parent.glob(f"{prefix.name}*.lockfile"):
        stale.unlink()
    return prefix
