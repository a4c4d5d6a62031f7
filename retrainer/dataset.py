"""Batches: three stable splits and the one tf.data input function for every dataset.

Each image is placed by a hash of its path into training, validation (early stopping, checkpoint
choice) or test (the gate only). As the dataset grows an image never changes split, so no version
ever trained on, or was selected on, a test image, and comparisons night after night stay honest.

The test split is the lowest `test_fraction` of the hash range: where round 1 kept its validation
images (the lowest 20%). A store upgraded from two splits therefore gates on images no earlier
version trained on (their old validation images, which early stopping did see: that favours the
old champion on the first night, so the gate errs towards keeping it).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from retrainer.errors import DataError
from retrainer.records import Batches, ValidatedData
from retrainer.storage import write_atomically

if TYPE_CHECKING:
    import tensorflow as tf

CHANNELS = 3
SHUFFLE_BUFFER_BYTES = 32 * 1024 * 1024

Subset = Literal["train", "validation", "test"]


class Example(BaseModel):
    path: str
    label: int


class Split(BaseModel):
    """The split file: every usable image, by subset, with its class index."""

    class_names: list[str]
    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def subset(self, name: Subset) -> list[Example]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def hash_position(relative_path: str) -> float:
    """Where a path falls in [0, 1): the same answer on every run, machine and Python process."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def subset_of(relative_path: str, validation_fraction: float, test_fraction: float) -> Subset:
    position = hash_position(relative_path)
    if position < test_fraction:
        return "test"
    if position < test_fraction + validation_fraction:
        return "validation"
    return "train"


def split_data(
    data: ValidatedData,
    work_dir: Path,
    image_size: int,
    batch_size: int,
    validation_fraction: float,
    test_fraction: float,
    cache_decoded: bool = True,
) -> Batches:
    """Write the split to disk and describe it; the datasets are built where they are used."""
    subsets: dict[Subset, list[Example]] = {"train": [], "validation": [], "test": []}
    for entry in data.read_index():
        chosen = subset_of(entry.path, validation_fraction, test_fraction)
        path = str(data.snapshot.cache_dir / entry.path)
        subsets[chosen].append(Example(path=path, label=entry.label))
    split = Split(class_names=data.class_names, **subsets)

    if not split.train:
        raise DataError(
            "no image falls in the training split: add images or lower "
            "RETRAINER_VALIDATION_FRACTION and RETRAINER_TEST_FRACTION"
        )
    held_out: tuple[tuple[Subset, str], ...] = (("validation", "VALIDATION"), ("test", "TEST"))
    for name, setting in held_out:
        present = {example.label for example in split.subset(name)}
        missing = [data.class_names[i] for i in range(len(data.class_names)) if i not in present]
        if missing:
            raise DataError(
                f"the {name} split has no images of {', '.join(missing)}: add images of "
                f"{'it' if len(missing) == 1 else 'them'} or raise RETRAINER_{setting}_FRACTION"
            )

    # Named by everything that shapes it, so a decoded-image cache beside it is never reused for
    # other data or other fractions.
    shape = f"{data.snapshot.fingerprint}|{validation_fraction}|{test_fraction}"
    split_path = work_dir / f"split-{hashlib.sha256(shape.encode()).hexdigest()[:16]}.json"
    write_atomically(split_path, split.model_dump_json().encode())
    return Batches(
        split_path=split_path,
        class_names=data.class_names,
        image_size=image_size,
        batch_size=batch_size,
        train_count=len(split.train),
        validation_count=len(split.validation),
        test_count=len(split.test),
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        train_per_class=count_per_class(split.train, data.class_names),
        validation_per_class=count_per_class(split.validation, data.class_names),
        test_per_class=count_per_class(split.test, data.class_names),
        data_fingerprint=data.snapshot.fingerprint,
        cache_decoded=cache_decoded,
    )


def count_per_class(examples: list[Example], class_names: list[str]) -> dict[str, int]:
    counts = Counter(example.label for example in examples)
    return {name: counts[index] for index, name in enumerate(class_names)}


def read_split(batches: Batches) -> Split:
    return Split.model_validate_json(batches.split_path.read_text())


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes to uint8 RGB: how training reads every image, and validation checks."""
    import tensorflow as tf

    return tf.io.decode_image(contents, channels=CHANNELS, expand_animations=False)


def decode_problem(contents: bytes) -> str | None:
    """Why TensorFlow cannot decode these bytes as `decode_image` does, or None when it can."""
    import tensorflow as tf

    try:
        decode_image(tf.constant(contents))
    except tf.errors.OpError as error:
        # "{{function_node ...}} Invalid PNG data, size 852 [Op:DecodeImage] name: "
        message = re.sub(r"^\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", error.message.splitlines()[0])
        return f"does not decode: {message}"
    return None


def input_fn(batches: Batches, subset: Subset, shuffle: bool, seed: int = 0) -> tf.data.Dataset:
    """Decoded, resized uint8 images with integer labels, batched and prefetched.

    Images stay uint8 until the model's own Rescaling layer: 4x smaller than float32 in the cache
    and in every batch. With `cache_decoded`, files are decoded once, in the first epoch, into a
    cache file beside the split (decoding on 2 cores competes with training for the same cores).
    Memory stays flat however large the dataset grows: the shuffle buffer is bounded in bytes.
    """
    import tensorflow as tf

    examples = read_split(batches).subset(subset)
    paths = [example.path for example in examples]
    labels = [example.label for example in examples]
    size = batches.image_size

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = decode_image(tf.io.read_file(path))
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
